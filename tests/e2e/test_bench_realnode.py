"""`make bench-realnode` at its smallest: one FineTuneJob and one TrainJob of Kubeflow Trainer
(tuned) run the same trainer pod on the real node, and every latency it reports is there
and in order (the script itself fails unless both jobs trained every step and published)."""

from __future__ import annotations

import json
import os
import subprocess
from pathlib import Path

from fttestkit.cluster import Cluster
from fttestkit.paths import REPO


def test_the_real_node_benchmark_runs_both_sides_at_its_smallest(
    cluster: Cluster, images: dict[str, str], tmp_path: Path
) -> None:
    out = tmp_path / "realnode.json"
    env = {k: v for k, v in os.environ.items() if not k.startswith("MAKE")}
    done = subprocess.run(
        ["make", "--no-print-directory", "bench-realnode",
         f"BENCH_REALNODE_ARGS=--jobs 1 --steps 2 --no-warmup --json {out}"],
        cwd=REPO, capture_output=True, text=True, timeout=600, check=False, env=env,
    )  # fmt: skip
    assert done.returncode == 0, (done.stdout + done.stderr)[-4000:]
    runs = {run["side"]: run for run in json.loads(out.read_text())["runs"]}
    assert set(runs) == {"operator", "kubeflow-tuned"}, runs
    for side, run in runs.items():
        started, step, finished = (run[f"{k}_p50_s"] for k in ("started", "first_step", "done"))
        # The pod's process starts after the create, trains a step later, and its Job is
        # complete after that step (whole seconds: completionTime's resolution).
        assert 0 < started < step < finished + 1, (side, run)
        assert run["jobs"] == 1 and run["first_step_s"] == [step], (side, run)
        # The slowest jobs' pod logs are kept, to see where their time went.
        (log,) = run["slowest_logs"].values()
        assert "{'loss'" in log and log.split(" ", 1)[0].endswith("Z"), (side, log[-1000:])
    assert "| first step p50 s |" in done.stdout, done.stdout
    print(done.stdout[-1500:])
