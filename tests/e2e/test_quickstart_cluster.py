"""`make quickstart-cluster`, as a user types it: the cluster with its node, the images, the
operator from the chart, and `finetune submit examples/quickstart-cpu.yaml --follow` (the
local quick start's manifest, unchanged): its local model and data uploaded to MinIO, the
job trained in a real pod, followed until it succeeds; then what a user does next."""

from __future__ import annotations

import os
import re
import subprocess
from pathlib import Path

from fttestkit.cluster import Cluster
from fttestkit.paths import REPO


def test_make_quickstart_cluster_submits_the_local_manifest_and_follows_it(
    cluster: Cluster, node: str, images: dict[str, str]
) -> None:
    env = {k: v for k, v in os.environ.items() if not k.startswith(("MAKE", "FINETUNE_"))}
    config = Path(cluster.env["FTO_STATE"]) / "quickstart-client.yaml"  # the script writes it
    user = {**env, **cluster.env, "PATH": cluster.path, "FINETUNE_CONFIG": str(config)}
    finetune = str(REPO / ".venv/bin/finetune")
    try:
        done = subprocess.run(
            ["make", "--no-print-directory", "quickstart-cluster"], cwd=REPO, env=env,
            capture_output=True, text=True, timeout=900, check=False,
        )  # fmt: skip
        out = done.stdout + done.stderr
        assert done.returncode == 0, out[-5000:]
        # What the user does next, as the script says: the log, and a second submit.
        logs = subprocess.run([finetune, "logs", "quickstart"], cwd=REPO, env=user,
                              capture_output=True, text=True, timeout=60, check=False)  # fmt: skip
        again = subprocess.run(
            [finetune, "submit", "examples/quickstart-cpu.yaml", "--name", "again", "--dry-run"],
            cwd=REPO, env=user, capture_output=True, text=True, timeout=60, check=False,
        )  # fmt: skip
    finally:  # what it leaves for a user to look at, the other tests need the CPU of
        subprocess.run(
            ["helm", "uninstall", "finetune-operator", "--namespace", "finetune-system",
             "--wait", "--timeout", "120s"],
            env={**env, **cluster.env, "PATH": cluster.path}, capture_output=True, check=False,
        )  # fmt: skip
        cluster.kubectl("delete", "namespace", "quickstart", "--wait=false", check=False)
    # Validated first (the data report), then every local path uploaded and rewritten.
    assert "data report:" in done.stdout and "dropped (duplicate): 2" in done.stdout
    uploaded = re.search(r"uploaded (\d+) file\(s\) .*; (\d+) already there", done.stdout)
    assert uploaded, done.stdout
    local = [p for p in (REPO / ".quickstart/tiny-llama").rglob("*") if p.is_file()]
    assert int(uploaded.group(1)) + int(uploaded.group(2)) == len(local) + 1
    assert (
        "spec.model.name: .quickstart/tiny-llama -> s3://quickstart/staging/trees/" in done.stdout
    )
    output = re.search(r"spec.output.uri: results/quickstart -> (s3://\S+)", done.stdout)
    assert output, done.stdout
    # Followed: the phases in order, the progress, the end.
    followed = [line for line in done.stdout.splitlines() if line.startswith("quickstart")]
    said = [
        line.removeprefix("quickstart: ") for line in followed if line.startswith("quickstart: ")
    ]
    phases = [line.split()[0] for line in said if not line.startswith("step ")]
    assert phases[-1] == "Succeeded" and "Running" in phases, followed
    assert any(re.match(r"quickstart: step \d+/\d+ \(100%\)  loss \d", line) for line in followed)
    assert f"quickstart Succeeded; the model is at {output.group(1)}/final" in done.stdout
    assert "phase:      Succeeded" in done.stdout  # `finetune status` at the end
    assert cluster.env["AWS_SECRET_ACCESS_KEY"] not in out
    # The training log, and nothing uploaded twice.
    assert logs.returncode == 0 and "'loss'" in logs.stdout, logs.stdout[-3000:] + logs.stderr
    assert again.returncode == 0, again.stderr
    assert f"would upload 0 file(s) (0.0 MiB); {len(local) + 1} already there" in again.stdout
