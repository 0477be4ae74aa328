"""SIGTERM (what a pod gets on preemption or a node drain): the trainer finishes the step
that is running, uploads its checkpoint, exits with EXIT_STOPPED without publishing, and the
next run resumes from that step on the same curve as an uninterrupted run. The trainer runs
as `finetune run` in a subprocess, as in a pod (tests/e2e/test_preemption.py does it to a
real pod)."""

from __future__ import annotations

import json
import signal
from pathlib import Path

import pytest
import yaml

from ftapi import contract, load_job
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


def test_sigterm_saves_at_the_next_step_and_the_restart_loses_nothing(
    cluster: Cluster,
    tiny_llama: Path,
    s3_bucket: str,
    tmp_path: Path,
) -> None:
    """SIGTERM (what a pod gets on preemption or a node drain): the step that is running ends,
    its checkpoint is uploaded, the process exits with EXIT_STOPPED without publishing, and
    the next run resumes from that step, on the same curve as an uninterrupted run."""
    env = run_env(cluster)
    steps = 40
    reference_uri = f"s3://{s3_bucket}/sigterm-reference"
    reference_job = write_job(
        tmp_path, tiny_llama, cluster, reference_uri, steps=steps, variant="lora"
    )
    reference = run_uninterrupted(reference_job, tmp_path / "reference", env)
    uri = f"s3://{s3_bucket}/sigterm"
    job = write_job(tmp_path, tiny_llama, cluster, uri, steps=steps, variant="lora")
    # No periodic checkpoint before the signal: the one that is there is SIGTERM's.
    manifest = yaml.safe_load(job.read_text())
    manifest["spec"]["output"]["saveSteps"] = 1000
    job.write_text(yaml.safe_dump(manifest))
    first = Attempt(job, tmp_path / "first", env)
    assert first.wait_for("{'loss'", count=5), "".join(first.log[-40:])
    logged = sum("{'loss'" in line for line in first.log)
    first.process.send_signal(signal.SIGTERM)
    assert first.finish() == contract.EXIT_STOPPED, "".join(first.log[-40:])
    stopped = [line for line in first.log if "stopped on SIGTERM after saving" in line]
    assert stopped, "".join(first.log[-40:])
    step = int(stopped[0].split("checkpoint of step ")[1].split(":")[0])
    # The step that was running when the signal came (the next one, if it came between two).
    assert logged <= step <= logged + 2, (logged, step)
    assert not (tmp_path / "first" / "final").exists()  # not finished: nothing published
    store = CheckpointStore(open_store(uri, client=cluster.s3()), job_identity(load_job(job)))
    assert [m.step for m in store.complete()] == [step]

    second = Attempt(job, tmp_path / "second", env)
    assert second.finish() == 0, "".join(second.log[-40:])
    result = json.loads((tmp_path / "second" / "result.json").read_text())
    assert result["resumed_from_step"] == step
    assert_same_curve(losses(tmp_path / "second"), reference)
