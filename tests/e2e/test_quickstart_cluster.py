"""`make quickstart-cluster`, as a user types it: the cluster with its node, the images, the
operator from the chart, the tiny model and data in MinIO, the quick start as a real pod,
and the `kubectl get ftj -w` rows it prints until the job succeeds."""

from __future__ import annotations

import os
import subprocess

from fttestkit.cluster import Cluster
from fttestkit.paths import REPO


def test_make_quickstart_cluster_trains_in_a_pod_and_shows_it(
    cluster: Cluster, node: str, images: dict[str, str]
) -> None:
    env = {k: v for k, v in os.environ.items() if not k.startswith("MAKE")}
    try:
        done = subprocess.run(
            ["make", "--no-print-directory", "quickstart-cluster"], cwd=REPO, env=env,
            capture_output=True, text=True, timeout=900, check=False,
        )  # fmt: skip
    finally:  # what it leaves for a user to look at, the other tests need the CPU of
        subprocess.run(
            ["helm", "uninstall", "finetune-operator", "--namespace", "finetune-system",
             "--wait", "--timeout", "120s"],
            env={**env, **cluster.env, "PATH": cluster.path}, capture_output=True, check=False,
        )  # fmt: skip
        cluster.kubectl("delete", "namespace", "quickstart", "--wait=false", check=False)
    out = done.stdout + done.stderr
    assert done.returncode == 0, out[-5000:]
    # kubectl's watch: the header, then rows as the phase and progress change.
    assert "NAME" in out and "PHASE" in out and "PROGRESS" in out, out[-3000:]
    rows = [line for line in done.stdout.splitlines() if line.startswith("quickstart ")]
    assert any(" Running " in row for row in rows), rows
    assert rows[-1].split()[1] == "Succeeded", rows
    assert "the model is at s3://quickstart/results/final" in done.stdout
    assert cluster.env["AWS_SECRET_ACCESS_KEY"] not in out
