"""A training pod deleted mid-run (what a preemption, a node drain or a spot reclaim does):
the kubelet's SIGTERM makes the trainer save a checkpoint at the end of its step within the
grace period, the operator restarts the job, and the new attempt resumes from that step."""

from __future__ import annotations

from pathlib import Path

from fttestkit.cluster import eventually
from fttestkit.finetunejobs import create_ftj, phase_is, read_ftj
from fttestkit.release import Release
from tests.e2e.realnode import Bucket, pod_logs, tiny_cpu_job, training_pod

STEPS = 400  # the deletion comes at the first logged loss (step 10), well before the end


def test_a_deleted_pod_saves_on_sigterm_and_the_restart_resumes_from_that_step(
    operator_release: Release, bucket: Bucket, tmp_path: Path
) -> None:
    cluster, ns, name = operator_release.cluster, operator_release.watched, "preempted"
    # No periodic checkpoint within the run: the one a restart finds is SIGTERM's.
    job = tiny_cpu_job(operator_release, bucket, tmp_path, name, steps=STEPS,
                       save_steps=100_000, log_every=10)  # fmt: skip
    # The first loss in the log is step 10's (not step 1's), so the SIGTERM comes after it.
    job["spec"]["logging"]["firstStep"] = False
    create_ftj(cluster, ns, job)

    pod = eventually(lambda: training_pod(operator_release, name), timeout=300, interval=0.5,
                     what="a training pod's first loss")  # fmt: skip
    # What the status had reported by now: the restart must not start before it.
    reported = ((read_ftj(cluster, ns, name).get("status") or {}).get("progress") or {}).get(
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
