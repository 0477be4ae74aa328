"""hack/gpu/run.sh, the one command a lent GPU machine runs, works here too (CPU): the GPU
tier is collected and skipped with its reason, the attention benchmark checks its kernels,
the bench runs once per BENCH_RUNS entry after the model was prepared in the background, the
variants step runs our side once per change, and the summary table comes last. No
device minute goes to a broken script."""

from __future__ import annotations

import os
import subprocess
from pathlib import Path

from fttestkit.paths import REPO


def test_the_gpu_script_runs_on_cpu(tmp_path: Path) -> None:
    env = {**os.environ, "OUT": str(tmp_path),
           "GPU_STEPS": "versions prepare tests attention trainer variants",
           "GPU_VARIANTS": "training.batchSize=2", "BENCH_ARGS": "--steps 2 --repeats 1",
           "BENCH_RUNS": "--sides ours,trl-tuned;--sides unsloth",
           "BENCH_WORKDIR": str(tmp_path / "bench")}  # fmt: skip
    done = subprocess.run(["bash", "hack/gpu/run.sh"], cwd=REPO, env=env, capture_output=True,
                          text=True, timeout=600, check=False)  # fmt: skip
    assert done.returncode == 0, done.stdout[-3000:] + done.stderr[-3000:]
    summary = done.stdout.split("== hack/gpu/run.sh summary")[1]
    assert "skipped" in summary and "failed" not in summary
    assert "2 kernels correct" in summary  # padded and sdpa-block on CPU
    log = (tmp_path / "gpu-tests.log").read_text()
    assert "needs a CUDA GPU" in log
    assert (tmp_path / "attention.json").exists() and (tmp_path / "versions.txt").exists()
    # One run of our side per variant, the variant's change applied (here on the tiny model).
    assert "1 runs of ours" in summary
    variants = (tmp_path / "variants.log").read_text()
    assert "ours with --set training.batchSize=2" in variants and "FAILED" not in variants
    assert "  ours      #0:" in variants
    # The model was prepared in the background while the tier ran; one bench per BENCH_RUNS
    # entry, one JSON each, one log for all (the device returns at most 8 files).
    assert "prepare    started in the background" in summary
    assert (tmp_path / "trainer-0.json").exists() and (tmp_path / "trainer-1.json").exists()
    log = (tmp_path / "trainer.log").read_text()
    assert "== trainer-0: --steps 2 --repeats 1 --sides ours,trl-tuned" in log
    assert "ratio ours/trl-tuned" in log
    assert "FAILED  unsloth" in log  # no CUDA here: recorded, and the script went on
    # 2 steps, 1 untimed: the profile window is cut short by the run's end and says so.
    assert (
        "steps 2-2 (timed: tokens/s includes the profiler)"
        in (tmp_path / "profile.txt").read_text()
    )
