"""Real `finetune run` processes against the local S3 server, killed and resumed: what
test_resume.py and test_graceful_stop.py share (a run's environment, its job file, an
Attempt that can be killed at a moment, the loss curve it logged)."""

from __future__ import annotations

import json
import os
import queue
import signal
import subprocess
import sys
import threading
import time
from pathlib import Path
from typing import Any

import pytest
import yaml

from fttestkit.cluster import Cluster

pytestmark = pytest.mark.integration
FINETUNE = Path(sys.executable).parent / "finetune"
STARTUP_TIMEOUT = 600


def run_env(cluster: Cluster) -> dict[str, str]:
    keys = ("AWS_ACCESS_KEY_ID", "AWS_SECRET_ACCESS_KEY", "AWS_REGION")
    # Unbuffered: the per-step loss lines are printed to stdout, a pipe here, and the kills are
    # timed by them.
    return {**os.environ, **{k: cluster.env[k] for k in keys}, "OMP_NUM_THREADS": "1",
            "PYTHONUNBUFFERED": "1"}  # fmt: skip


def qa_data(folder: Path, kind: str) -> Path:
    path = folder / f"{kind}.jsonl"
    if kind == "qa":
        rows: list[dict[str, Any]] = [
            {"question": f"What is {i} plus {i}?", "answer": f"It is {2 * i}."} for i in range(64)
        ]
    elif kind == "preference":
        rows = [{"prompt": f"Say {i}.", "chosen": f"{i}", "rejected": "no"} for i in range(32)]
    else:
        rows = [{"prompt": f"What is 2+{i}?", "answer": str(2 + i)} for i in range(32)]
    path.write_text("".join(json.dumps(r) + "\n" for r in rows))
    return path


def write_job(
    folder: Path, model: Path, cluster: Cluster, uri: str, *, steps: int, variant: str
) -> Path:
    spec: dict[str, Any] = {
        "model": {"name": str(model)},
        "dataset": {"train": {"uri": str(qa_data(folder, "qa"))}, "format": "qa",
                    "maxSeqLength": 64},
        "method": {"type": "lora"},
        "training": {"maxSteps": steps, "batchSize": 4, "learningRate": 1e-2, "seed": 7},
        "evaluation": {"strategy": "no"},
        "logging": {"steps": 1},
        "output": {"uri": uri, "saveSteps": 2, "saveTotalLimit": 2,
                   "s3": {"endpoint": cluster.env["FTO_S3_ENDPOINT"], "forcePathStyle": True}},
        "resources": {"gpusPerNode": 0},
    }  # fmt: skip
    if variant == "full":
        spec["method"] = {"type": "full"}
        spec["training"]["learningRate"] = 1e-3
    elif variant == "dpo":
        spec["dataset"] = {"train": {"uri": str(qa_data(folder, "preference"))},
                           "format": "preference", "maxSeqLength": 64}  # fmt: skip
        spec["trainer"] = {"type": "dpo"}
    elif variant == "grpo":
        spec["dataset"] = {"train": {"uri": str(qa_data(folder, "prompts"))},
                           "format": "prompt_only", "maxSeqLength": 64}  # fmt: skip
        spec["trainer"] = {"type": "grpo", "grpo": {
            "numGenerations": 4, "maxCompletionLength": 8,
            "rewards": [{"type": "regex", "pattern": r"\d"}]}}  # fmt: skip
    manifest = {"apiVersion": "finetune.dev/v1alpha1", "kind": "FineTuneJob",
                "metadata": {"name": f"resume-{variant}"}, "spec": spec}  # fmt: skip
    path = folder / f"{variant}.yaml"
    path.write_text(yaml.safe_dump(manifest))
    return path


class Attempt:
    """One `finetune run` process whose output lines can be waited for."""

    def __init__(self, job: Path, output: Path, env: dict[str, str]) -> None:
        self.process = subprocess.Popen(
            [str(FINETUNE), "run", str(job), "--output", str(output)],
            stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True, env=env,
        )  # fmt: skip
        self.lines: queue.Queue[str | None] = queue.Queue()
        self.log: list[str] = []
        self.ended = False  # the output reached its end (read once from the queue)
        threading.Thread(target=self._read, daemon=True).start()

    def _read(self) -> None:
        assert self.process.stdout is not None
        for line in self.process.stdout:
            self.lines.put(line)
        self.lines.put(None)

    def wait_for(self, text: str, count: int = 1, timeout: float = STARTUP_TIMEOUT) -> bool:
        """True when the count-th line containing text arrived; False if the run ended."""
        deadline = time.monotonic() + timeout
        seen = 0
        while not self.ended and time.monotonic() < deadline:
            try:
                line = self.lines.get(timeout=1)
            except queue.Empty:
                continue
            if line is None:
                self.ended = True
                return False
            self.log.append(line)
            seen += text in line
            if seen >= count:
                return True
        if self.ended:
            return False
        raise AssertionError(f"no {text!r} within {timeout} s:\n{''.join(self.log[-40:])}")

    def kill(self) -> None:
        self.process.send_signal(signal.SIGKILL)
        self.process.wait(timeout=60)

    def finish(self) -> int:
        while self.wait_for("\0", timeout=STARTUP_TIMEOUT):
            pass
        return self.process.wait(timeout=60)


def run_uninterrupted(job: Path, output: Path, env: dict[str, str]) -> dict[int, float]:
    attempt = Attempt(job, output, env)
    assert attempt.finish() == 0, "".join(attempt.log[-40:])
    return losses(output)


def losses(output: Path) -> dict[int, float]:
    steps = json.loads((output / "step_metrics.json").read_text())
    return {m["step"]: m["loss"] for m in steps}


def assert_same_curve(resumed: dict[int, float], reference: dict[int, float]) -> None:
    assert sorted(resumed) == sorted(reference)
    for step, loss in reference.items():
        assert resumed[step] == pytest.approx(loss, rel=1e-3, abs=1e-4), f"step {step}"
