"""A training pod deleted mid-run (what a preemption, a node drain or a spot reclaim does):
the kubelet's SIGTERM makes the trainer save a checkpoint at the end of its step within the
grace period, the operator restarts the job, and the new attempt resumes from that step."""

from __future__ import annotations

import json
from pathlib import Path

from fttrainer.tiny import save_tiny_model
from tests.e2e.conftest import (
    Bucket,
    Release,
    cpu_job,
    create_finetunejob,
    finetunejob,
    phase_is,
    pod_logs,
    qa_rows,
)
from tests.integration.conftest import eventually

STEPS = 600  # ~40 s of training on one CPU: the deletion lands half-way


def test_a_deleted_pod_saves_on_sigterm_and_the_restart_resumes_from_that_step(
    operator_release: Release, bucket: Bucket, tmp_path: Path
) -> None:
    cluster, ns, name = operator_release.cluster, operator_release.jobs, "preempted"
    model = bucket.put_dir(save_tiny_model("llama", tmp_path / "tiny-llama"), "models/tiny")
    data = bucket.put_text("data/qa.jsonl", qa_rows(64))
    secret = bucket.credentials_secret(ns, f"s3-{bucket.name}")
    # No periodic checkpoint within the run: the one a restart finds is SIGTERM's.
    job = cpu_job(name, model, data, bucket, secret, steps=STEPS, save_steps=100_000,
                  log_every=10)  # fmt: skip
    create_finetunejob(cluster, ns, job)

    def training() -> int:
        status = finetunejob(cluster, ns, name).get("status") or {}
        step = (status.get("progress") or {}).get("step") or 0
        return int(step) if 0 < step < STEPS else 0

    reported = eventually(training, timeout=300, interval=0.5, what="a mid-run progress report")
    selector = f"finetune.dev/job-name={name}"
    pods = json.loads(cluster.kubectl("get", "pods", "-n", ns, "-l", selector, "-o", "json"))
    (pod,) = pods["items"]
    assert pod["spec"]["terminationGracePeriodSeconds"] == 120
    # As a preemption does: a graceful delete (SIGTERM, then the grace period).
    cluster.kubectl("delete", "pod", "-n", ns, pod["metadata"]["name"], "--wait=false")

    status = eventually(lambda: phase_is(cluster, ns, name, "Succeeded", "Failed"),
                        timeout=480, interval=1.0, what="the job to finish")  # fmt: skip
    assert status["phase"] == "Succeeded", pod_logs(operator_release, name)
    assert status.get("restarts", 0) == 1, status
    result = bucket.get_json(f"{name}/result.json")
    resumed = result["resumed_from_step"]
    # The checkpoint saved on SIGTERM: past the last step the status had reported (at most
    # the step that was running is lost; without it the restart would start from 0).
    assert resumed is not None and resumed >= reported, (resumed, reported)
    final = bucket.get_json(f"{name}/final_metrics.json")
    assert final["global_step"] == STEPS
