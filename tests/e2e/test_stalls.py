"""A trainer that stops (SIGSTOP through `kubectl exec`: a frozen process, whose own watchdog
cannot fire either) goes silent; the operator calls it Stalled within
runPolicy.stallDetection.minimumSeconds, deletes its pods, and the restart resumes from the
last checkpoint and succeeds."""

from __future__ import annotations

import time
from pathlib import Path

from fttestkit.cluster import Cluster, eventually
from fttestkit.finetunejobs import create_ftj, phase_is, read_ftj
from fttestkit.release import Release
from tests.e2e.realnode import Bucket, job_pods, pod_logs, tiny_cpu_job, training_pod

STEPS = 300
SILENCE = 20  # minimumSeconds: the trainer re-sends its report every 4 s


def restarting_events(cluster: Cluster, ns: str, name: str) -> str:
    """The messages of the job's Restarting Events (posted right after the status write)."""
    return cluster.kubectl("get", "events", "-n", ns, "--field-selector",
                           f"involvedObject.name={name},reason=Restarting", "-o",
                           "jsonpath={.items[*].message}")  # fmt: skip


def test_a_frozen_trainer_is_stalled_and_the_restart_resumes_from_its_checkpoint(
    operator_release: Release, bucket: Bucket, tmp_path: Path
) -> None:
    cluster, ns, name = operator_release.cluster, operator_release.watched, "frozen"
    job = tiny_cpu_job(operator_release, bucket, tmp_path, name, steps=STEPS, save_steps=10,
                       log_every=10)  # fmt: skip
    job["spec"]["runPolicy"] = {"terminationGracePeriodSeconds": 10,
                                "stallDetection": {"minimumSeconds": SILENCE}}  # fmt: skip
    create_ftj(cluster, ns, job)

    def checkpointed() -> dict[str, object] | None:
        status = read_ftj(cluster, ns, name).get("status") or {}
        assert status.get("phase") not in ("Failed", "Succeeded"), pod_logs(operator_release, name)
        return status if (status.get("checkpoint") or {}).get("step") else None

    eventually(checkpointed, timeout=300, interval=0.5, what="a committed checkpoint")
    pod = training_pod(operator_release, name)
    assert pod is not None
    # kill(-1): every process of the container's PID namespace but its init (tini) and the
    # caller: torchrun and its worker.
    freeze = "import os, signal; os.kill(-1, signal.SIGSTOP)"
    cluster.kubectl("exec", "-n", ns, pod["metadata"]["name"], "-c", "trainer", "--",
                    "python", "-c", freeze)  # fmt: skip
    stopped_at = time.monotonic()
    before = read_ftj(cluster, ns, name)["status"]
    frozen_step = before["progress"]["step"]

    def restarted() -> dict[str, object] | None:
        status = read_ftj(cluster, ns, name).get("status") or {}
        return status if status.get("restarts", 0) >= 1 else None

    # The Running condition says Stalled only until the new attempt's pass rewrites it; the
    # restart count and the Warning Event stay.
    eventually(restarted, timeout=SILENCE + 60, interval=0.5, what="the restart")
    detected = time.monotonic() - stopped_at
    assert SILENCE - 5 <= detected <= SILENCE + 30, detected
    events = eventually(lambda: restarting_events(cluster, ns, name), timeout=30,
                        what="the Restarting event")  # fmt: skip
    # Every rank reports on its own (through the pod's own Role): the verdict names it.
    frozen_rank = f"failed (Stalled): rank 0 (pod {pod['metadata']['name']} on node "
    assert frozen_rank in events, events

    status = eventually(lambda: phase_is(cluster, ns, name, "Succeeded", "Failed"),
                        timeout=600, interval=1.0, what="the job to finish")  # fmt: skip
    assert status["phase"] == "Succeeded", pod_logs(operator_release, name)
    assert status.get("restarts", 0) == 1, status
    resumed = bucket.get_json(f"{name}/result.json")["resumed_from_step"]
    assert resumed is not None and 10 <= resumed <= frozen_step, (resumed, frozen_step)
    assert bucket.get_json(f"{name}/final_metrics.json")["global_step"] == STEPS
    print(f"stalled: detected {detected:.1f} s after SIGSTOP (minimumSeconds {SILENCE}); "
          f"frozen at step {frozen_step}, resumed from {resumed}: "
          f"{frozen_step - resumed} steps lost")  # fmt: skip


def test_one_frozen_rank_of_two_pods_is_named_and_the_gang_restarts(
    operator_release: Release, bucket: Bucket, tmp_path: Path
) -> None:
    """Two pods, one rank each: rank 1's pod is frozen, rank 0 waits for it in a collective
    and, its heartbeat thread alive, keeps reporting. The verdict names rank 1 (its pod and
    node); the whole gang restarts and the job succeeds. stepTimeFactor is high here so that
    rank 0's own watchdog, which would also stop the gang, does not fire first."""
    cluster, ns, name = operator_release.cluster, operator_release.watched, "frozen-rank"
    job = tiny_cpu_job(operator_release, bucket, tmp_path, name, steps=60, save_steps=10,
                       log_every=10)  # fmt: skip
    job["spec"]["resources"]["nodes"] = 2
    job["spec"]["runPolicy"] = {"terminationGracePeriodSeconds": 10, "stallDetection": {
        "minimumSeconds": SILENCE, "stepTimeFactor": 1000}}  # fmt: skip
    create_ftj(cluster, ns, job)

    def rank_1_training() -> dict[str, object] | None:
        status = read_ftj(cluster, ns, name).get("status") or {}
        assert status.get("phase") not in ("Failed", "Succeeded"), pod_logs(operator_release, name)
        if not (status.get("progress") or {}).get("step"):
            return None
        return next((p for p in job_pods(operator_release, name) if p["metadata"][
            "annotations"]["batch.kubernetes.io/job-completion-index"] == "1"), None)  # fmt: skip

    pod = eventually(rank_1_training, timeout=300, interval=0.5, what="both ranks training")
    freeze = "import os, signal; os.kill(-1, signal.SIGSTOP)"
    cluster.kubectl("exec", "-n", ns, pod["metadata"]["name"], "-c", "trainer", "--",
                    "python", "-c", freeze)  # fmt: skip
    stopped_at = time.monotonic()

    def restarted() -> dict[str, object] | None:
        status = read_ftj(cluster, ns, name).get("status") or {}
        return status if status.get("restarts", 0) >= 1 else None

    eventually(restarted, timeout=SILENCE + 60, interval=0.5, what="the restart")
    detected = time.monotonic() - stopped_at
    events = eventually(lambda: restarting_events(cluster, ns, name), timeout=30,
                        what="the Restarting event")  # fmt: skip
    named = f"failed (Stalled): rank 1 (pod {pod['metadata']['name']} on node "
    assert named in events and "rank 0 (" not in events, events
    status = eventually(lambda: phase_is(cluster, ns, name, "Succeeded", "Failed"),
                        timeout=600, interval=1.0, what="the job to finish")  # fmt: skip
    assert status["phase"] == "Succeeded", pod_logs(operator_release, name)
    assert status.get("restarts", 0) == 1, status
    print(f"frozen rank 1 of 2: named {detected:.1f} s after SIGSTOP (minimumSeconds {SILENCE})")
