"""Kill the trainer (SIGKILL) and start it again: it resumes from the newest complete
checkpoint on the real S3 server and ends where an uninterrupted run ends, with the same
losses at the same steps.

The kills land in each phase of the protocol: during training steps (a random delay after the
attempt's first or second logged step), during a checkpoint upload (right after "uploading
checkpoint-N" is logged) and during retention (right after the manifest is written). The
trainer runs as `finetune run` in a subprocess, exactly as in a pod."""

from __future__ import annotations

import json
import random
import time
from pathlib import Path

import pytest

from ftapi import load_job
from fttestkit.cluster import Cluster
from fttrainer.checkpointing.protocol import job_identity
from fttrainer.checkpointing.store import CheckpointStore
from fttrainer.storage import open_store
from tests.integration.training_runs import (
    Attempt,
    assert_same_curve,
    losses,
    run_env,
    run_uninterrupted,
    write_job,
)

pytestmark = pytest.mark.integration


def test_kills_at_random_moments_lose_nothing(
    cluster: Cluster, tiny_llama: Path, s3_bucket: str, tmp_path: Path
) -> None:
    env = run_env(cluster)
    steps = 64  # long enough to outlast the 12 kills
    reference_job = write_job(
        tmp_path, tiny_llama, cluster, f"s3://{s3_bucket}/reference", steps=steps, variant="lora"
    )
    reference = run_uninterrupted(reference_job, tmp_path / "reference", env)
    assert sorted(reference) == list(range(1, steps + 1))
    uri = f"s3://{s3_bucket}/killed"
    job = write_job(tmp_path, tiny_llama, cluster, uri, steps=steps, variant="lora")
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
    assert_same_curve(losses(output), reference)
    # What is left in S3: complete checkpoints only, at most saveTotalLimit of them.
    store = CheckpointStore(open_store(uri, client=cluster.s3()), job_identity(load_job(job)))
    complete = store.complete()
    assert 1 <= len(complete) <= 2 and complete[0].step == steps
    print(f"\nkills by phase: {kills}; attempts: {attempt_number}")


@pytest.mark.parametrize("variant", ["full", "dpo", "grpo"])
def test_resume_is_exact_for_each_trainer_and_method(
    cluster: Cluster, tiny_llama: Path, s3_bucket: str, tmp_path: Path, variant: str
) -> None:
    env = run_env(cluster)
    reference_job = write_job(
        tmp_path,
        tiny_llama,
        cluster,
        f"s3://{s3_bucket}/{variant}-reference",
        steps=8,
        variant=variant,
    )
    reference = run_uninterrupted(reference_job, tmp_path / "reference", env)
    job = write_job(tmp_path, tiny_llama, cluster, f"s3://{s3_bucket}/{variant}-killed", steps=8,
               variant=variant)  # fmt: skip
    first = Attempt(job, tmp_path / "first", env)
    assert first.wait_for("checkpoint checkpoint-4")
    first.kill()
    second = Attempt(job, tmp_path / "second", env)
    assert second.finish() == 0, "".join(second.log[-40:])
    assert any("resuming from" in line and "checkpoint-4" in line for line in second.log)
    assert_same_curve(losses(tmp_path / "second"), reference)
