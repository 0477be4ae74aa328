"""Two processes under torchrun (DDP over gloo on CPU), the way the operator runs a pod:
the data is prepared once for both, training shards it, and only rank 0 writes the
results."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

from fttestkit.paths import REPO
from fttestkit.ports import free_port
from fttrainer.tiny import save_tiny_model


def test_two_process_ddp_run(tmp_path: Path) -> None:
    model = save_tiny_model("llama", tmp_path / "model")
    out = tmp_path / "out"
    torchrun = Path(sys.executable).parent / "torchrun"
    result = subprocess.run(
        [str(torchrun), "--nproc-per-node", "2", "--master-addr", "127.0.0.1",
         "--master-port", str(free_port()), "-m", "fttrainer.cli", "run",
         str(REPO / "examples/quickstart-cpu.yaml"), "--set", f"model.name={model}",
         "--set", "training.maxSteps=4", "--set", "evaluation.strategy=no",
         "--set", f"output.uri={tmp_path / 'published'}", "--output", str(out)],
        cwd=REPO, capture_output=True, text=True, check=False, timeout=300,
        env={**os.environ, "OMP_NUM_THREADS": "1", "XDG_CACHE_HOME": str(tmp_path / "cache")},
    )  # fmt: skip
    assert result.returncode == 0, result.stderr[-3000:]
    assert result.stdout.count("done:") == 1  # rank 0 reports, rank 1 does not
    # One rank prepares and tokenizes while the other waits, then reads what it made.
    log = result.stdout + result.stderr
    assert log.count("data: prepared ") == log.count("data: tokenized ") == 1, log[-3000:]
    assert log.count("data: reused ") == 2  # the other rank: the samples, then the tokens
    final = json.loads((out / "final_metrics.json").read_text())
    assert final["global_step"] == 4
    # 52 training samples at 8 per process: with 2 processes an epoch is 4 steps, so step 1
    # is epoch 0.25 (a single process needs 7 steps per epoch: 1/7).
    first = json.loads((out / "step_metrics.json").read_text())[0]
    assert (first["step"], first["epoch"]) == (1, pytest.approx(0.25))
    assert (out / "final" / "adapter_model.safetensors").stat().st_size > 0
