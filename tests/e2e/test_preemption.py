"""A training pod deleted mid-run (what a preemption, a node drain or a spot reclaim does):
the kubelet's SIGTERM makes the trainer save a checkpoint at the end of its step within the
grace period, the operator restarts the job, and the new attempt resumes from that step."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

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

STEPS = 400  # the deletion comes at the first logged loss (step 10), well before the end


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

    selector = f"finetune.dev/job-name={name}"

    def training_pod() -> dict[str, Any] | None:
        """The pod, once its log shows a logged step (its training is under way)."""
        status = finetunejob(cluster, ns, name).get("status") or {}
        assert status.get("phase") not in ("Failed", "Succeeded"), (
            f"{status}\n{pod_logs(operator_release, name)}"
        )
        pods = json.loads(cluster.kubectl("get", "pods", "-n", ns, "-l", selector, "-o", "json"))
        running = [p for p in pods["items"] if p["status"].get("phase") == "Running"]
        if not running:
            return None
        log = cluster.kubectl("logs", "-n", ns, running[0]["metadata"]["name"], check=False)
        return running[0] if "{'loss'" in log else None

    pod = eventually(training_pod, timeout=300, interval=0.5, what="a training pod's first loss")
    # What the status had reported by now: the restart must not start before it.
    reported = ((finetunejob(cluster, ns, name).get("status") or {}).get("progress") or {}).get(
        "step"
    ) or 0
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
    assert resumed is not None and resumed >= max(reported, 10), (resumed, reported)
    final = bucket.get_json(f"{name}/final_metrics.json")
    assert final["global_step"] == STEPS
