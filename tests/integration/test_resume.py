"""Kill the trainer (SIGKILL) and start it again: it resumes from the newest complete
checkpoint on the real S3 server and ends where an uninterrupted run ends, with the same
losses at the same steps.

The kills land in each phase of the protocol: during training steps (a random delay after the
attempt's first or second logged step), during a checkpoint upload (right after "uploading
checkpoint-N" is logged) and during retention (right after the manifest is written). The
trainer runs as `finetune run` in a subprocess, exactly as in a pod."""

from __future__ import annotations

import json
import os
import queue
import random
import signal
import subprocess
import sys
import threading
import time
import uuid
from pathlib import Path
from typing import Any

import pytest
import yaml

from ftapi import load_job
from fttrainer.checkpointing.protocol import job_identity
from fttrainer.checkpointing.store import CheckpointStore
from fttrainer.storage import open_store
from fttrainer.tiny import save_tiny_model
from tests.integration.conftest import Cluster

pytestmark = pytest.mark.integration
FINETUNE = Path(sys.executable).parent / "finetune"
STARTUP_TIMEOUT = 600


@pytest.fixture(scope="module")
def model(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return save_tiny_model("llama", tmp_path_factory.mktemp("models") / "tiny-llama")


@pytest.fixture(scope="module")
def bucket(cluster: Cluster) -> str:
    name = f"resume-{uuid.uuid4().hex[:10]}"
    cluster.s3().create_bucket(Bucket=name)
    return name


def _env(cluster: Cluster) -> dict[str, str]:
    keys = ("AWS_ACCESS_KEY_ID", "AWS_SECRET_ACCESS_KEY", "AWS_REGION")
    # Unbuffered: the per-step loss lines are printed to stdout, a pipe here, and the kills are
    # timed by them.
    return {**os.environ, **{k: cluster.env[k] for k in keys}, "OMP_NUM_THREADS": "1",
            "PYTHONUNBUFFERED": "1"}  # fmt: skip


def _data(folder: Path, kind: str) -> Path:
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


def _job(
    folder: Path, model: Path, cluster: Cluster, uri: str, *, steps: int, variant: str
) -> Path:
    spec: dict[str, Any] = {
        "model": {"name": str(model)},
        "dataset": {"train": {"uri": str(_data(folder, "qa"))}, "format": "qa",
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
        spec["dataset"] = {"train": {"uri": str(_data(folder, "preference"))},
                           "format": "preference", "maxSeqLength": 64}  # fmt: skip
        spec["trainer"] = {"type": "dpo"}
    elif variant == "grpo":
        spec["dataset"] = {"train": {"uri": str(_data(folder, "prompts"))},
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


def _run_uninterrupted(job: Path, output: Path, env: dict[str, str]) -> dict[int, float]:
    attempt = Attempt(job, output, env)
    assert attempt.finish() == 0, "".join(attempt.log[-40:])
    return _losses(output)


def _losses(output: Path) -> dict[int, float]:
    steps = json.loads((output / "step_metrics.json").read_text())
    return {m["step"]: m["loss"] for m in steps}


def _assert_same_curve(resumed: dict[int, float], reference: dict[int, float]) -> None:
    assert sorted(resumed) == sorted(reference)
    for step, loss in reference.items():
        assert resumed[step] == pytest.approx(loss, rel=1e-3, abs=1e-4), f"step {step}"


def test_kills_at_random_moments_lose_nothing(
    cluster: Cluster, model: Path, bucket: str, tmp_path: Path
) -> None:
    env = _env(cluster)
    steps = 64  # long enough to outlast the 12 kills
    reference = _run_uninterrupted(
        _job(tmp_path, model, cluster, f"s3://{bucket}/reference", steps=steps, variant="lora"),
        tmp_path / "reference", env,
    )  # fmt: skip
    assert sorted(reference) == list(range(1, steps + 1))
    uri = f"s3://{bucket}/killed"
    job = _job(tmp_path, model, cluster, uri, steps=steps, variant="lora")
    rng = random.Random(1234)
    kills: dict[str, int] = {"step": 0, "upload": 0, "retention": 0}
    attempt_number = 0
    while True:
        attempt_number += 1
        assert attempt_number < 40, f"no end after {kills}"
        output = tmp_path / f"attempt-{attempt_number}"
        attempt = Attempt(job, output, env)
        phase = rng.choice(list(kills)) if sum(kills.values()) < 12 else "none"
        if phase == "upload":
            # The second upload of this attempt, so that every attempt commits one checkpoint.
            alive = attempt.wait_for("uploading checkpoint-", count=2)
            time.sleep(rng.uniform(0, 0.03))
        elif phase == "retention":
            alive = attempt.wait_for("checkpoint checkpoint-")
        elif phase == "step":
            # Timed by the attempt's own progress, not by the clock: a fast machine trains all
            # 64 steps within seconds, and a kill that comes too late kills nothing.
            alive = attempt.wait_for("{'loss'", count=rng.randint(1, 2))
            time.sleep(rng.uniform(0, 0.1))  # most often inside the next step
        else:
            assert attempt.finish() == 0, "".join(attempt.log[-40:])
            break
        if not alive or attempt.process.poll() is not None:
            assert attempt.finish() == 0, "".join(attempt.log[-40:])
            break
        attempt.kill()
        kills[phase] += 1
    assert sum(kills.values()) >= 10, kills
    final = json.loads((output / "final_metrics.json").read_text())
    assert final["global_step"] == steps
    _assert_same_curve(_losses(output), reference)
    # What is left in S3: complete checkpoints only, at most saveTotalLimit of them.
    store = CheckpointStore(open_store(uri, client=cluster.s3()), job_identity(load_job(job)))
    complete = store.complete()
    assert 1 <= len(complete) <= 2 and complete[0].step == steps
    print(f"\nkills by phase: {kills}; attempts: {attempt_number}")


@pytest.mark.parametrize("variant", ["full", "dpo", "grpo"])
def test_resume_is_exact_for_each_trainer_and_method(
    cluster: Cluster, model: Path, bucket: str, tmp_path: Path, variant: str
) -> None:
    env = _env(cluster)
    reference_job = _job(
        tmp_path, model, cluster, f"s3://{bucket}/{variant}-reference", steps=8, variant=variant
    )
    reference = _run_uninterrupted(reference_job, tmp_path / "reference", env)
    job = _job(tmp_path, model, cluster, f"s3://{bucket}/{variant}-killed", steps=8,
               variant=variant)  # fmt: skip
    first = Attempt(job, tmp_path / "first", env)
    assert first.wait_for("checkpoint checkpoint-4")
    first.kill()
    second = Attempt(job, tmp_path / "second", env)
    assert second.finish() == 0, "".join(second.log[-40:])
    assert any("resuming from" in line and "checkpoint-4" in line for line in second.log)
    _assert_same_curve(_losses(tmp_path / "second"), reference)
