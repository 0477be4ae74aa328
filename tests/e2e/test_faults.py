"""Faults at a chosen step, through the whole stack: the trainer's test hooks
(fttrainer/supervision/faults.py) reach real training pods on the real node through the
`finetune.dev/test-faults` annotation, which only an operator started with
FTO_TEST_FAULTS=true copies (ftoperator/fault_hooks.py; the chart cannot set it, so the
release is switched for this module with `kubectl set env` and switched back after).

  - NaN at step 5 with onNonFinite stop: Failed as Diverged, the step and the NaN named, and
    no checkpoint at or after it; with rollback: one RolledBack restart from the checkpoint
    before it at a halved learning rate, then Succeeded; with skip: the batch counted in
    status.progress.skippedSteps, and Succeeded.
  - Two pods, rank 1 a straggler (0.3 s more in every forward) that then sleeps 600 s in one
    step: the Straggler warning names rank 1 while it is slow; rank 0, blocked in the
    all-reduce rank 1 never joins, and rank 1 are both stopped by their watchdogs, and the
    Restarting Event names both and the collective; the gang restarts from the last
    checkpoint and succeeds.
  - A trainer that hangs in its imports, before its first report: its own watchdog, started
    before them, stops it at startupSeconds, naming the imports; one frozen there (no
    thread runs) is called Stalled by the operator at startupSeconds plus a margin. Both
    are restarted.
"""

from __future__ import annotations

import json
import re
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from fttestkit.cluster import eventually
from fttestkit.finetunejobs import create_ftj, phase_is, read_ftj
from fttestkit.release import Release
from tests.e2e.realnode import Bucket, job_pods, object_events, pod_logs, renamed, tiny_cpu_job

ANNOTATION = "finetune.dev/test-faults"


@pytest.fixture(scope="module")
def faulty_release(operator_release: Release) -> Iterator[Release]:
    """The session's release with FTO_TEST_FAULTS=true for this module's tests."""
    release = operator_release
    deployment = f"deployment/{release.fullname}"

    def set_env(change: str) -> None:
        release.cluster.kubectl("set", "env", "-n", release.namespace, deployment, change)
        release.cluster.kubectl("rollout", "status", "-n", release.namespace, deployment,
                                "--timeout=180s")  # fmt: skip

    set_env("FTO_TEST_FAULTS=true")
    try:
        yield release
    finally:
        set_env("FTO_TEST_FAULTS-")


def _with_faults(job: dict[str, Any], **faults: str) -> dict[str, Any]:
    job["metadata"]["annotations"] = {ANNOTATION: json.dumps(faults)}
    return job


def _ended(release: Release, name: str) -> dict[str, Any]:
    status: dict[str, Any] = eventually(
        lambda: phase_is(release.cluster, release.watched, name, "Failed", "Succeeded"),
        timeout=600, interval=1.0, what=f"{name} to end",
    )  # fmt: skip
    return status


def _nan_job(base: dict[str, Any], name: str, at: int, **training: Any) -> dict[str, Any]:
    """`base` (the tiny job) renamed, with a NaN loss at step `at`; 500m of CPU, so that
    three run at once on the real node."""
    job = renamed(base, name)
    job["spec"]["training"].update(training)
    job["spec"]["resources"]["cpu"] = "500m"
    return _with_faults(job, FINETUNE_FAULT_NAN_AT_STEP=str(at))


def test_a_nan_step_stops_skips_or_rolls_back_as_the_job_says(
    faulty_release: Release, bucket: Bucket, tmp_path: Path
) -> None:
    release, cluster, ns = faulty_release, faulty_release.cluster, faulty_release.watched
    base = tiny_cpu_job(release, bucket, tmp_path, "nan", steps=8, save_steps=2, log_every=1)
    for job in (
        _nan_job(base, "nan-stop", 5),
        _nan_job(base, "nan-skip", 3, onNonFinite="skip"),
        _nan_job(base, "nan-rollback", 5, onNonFinite="rollback", rollbackLearningRateFactor=0.5),
    ):
        create_ftj(cluster, ns, job)

    # stop: Failed as Diverged at step 5, nothing kept from it, the loss shown as NaN.
    status = _ended(release, "nan-stop")
    assert status["phase"] == "Failed", pod_logs(release, "nan-stop")
    assert status["failureReason"] == "Diverged", status
    failed = next(c for c in status["conditions"] if c["type"] == "Failed")
    assert "step 5: train_loss NaN" in failed["message"], failed
    assert "last finite loss" in failed["message"], failed
    assert status.get("restarts", 0) == 0, status  # a restart cannot cure it
    assert status["checkpoint"]["step"] == 4, status["checkpoint"]
    assert not [k for k in bucket.keys("nan-stop/") if "checkpoint-6" in k or "/final/" in k]
    assert status["progress"]["loss"] == "NaN", status["progress"]  # never the last finite
    assert "train_loss" in status["metrics"]["nonFinite"], status["metrics"]
    assert status["metrics"].get("trainLoss") is None, status["metrics"]
    print(f"NaN at step 5, stop: {failed['message'][:200]}")

    # skip: the batch counted, the run goes on.
    status = _ended(release, "nan-skip")
    assert status["phase"] == "Succeeded", pod_logs(release, "nan-skip")
    assert status["progress"]["skippedSteps"] == 1, status["progress"]
    assert status.get("restarts", 0) == 0, status
    assert bucket.get_json("nan-skip/final_metrics.json")["global_step"] == 8

    # rollback: one restart from the checkpoint before it, at half the learning rate.
    status = _ended(release, "nan-rollback")
    assert status["phase"] == "Succeeded", pod_logs(release, "nan-rollback")
    assert status.get("restarts", 0) == 1, status
    events = object_events(cluster, ns, "FineTuneJob", "nan-rollback")
    rolled = [m for r, m in events if r == "Restarting" and "RolledBack" in m]
    assert rolled and "step 5: train_loss NaN" in rolled[0], events
    assert "rolling back to checkpoint step 4" in rolled[0], rolled
    assert bucket.get_json("nan-rollback/result.json")["resumed_from_step"] == 4
    steps = bucket.get_json("nan-rollback/step_metrics.json")
    rates = {m["step"]: m["learning_rate"] for m in steps if "learning_rate" in m}
    assert rates[5] < 0.6 * rates[4], rates  # halved after the rollback
    losses = [m["loss"] for m in steps if "loss" in m]
    assert all(loss == loss for loss in losses), losses  # no NaN reached the record
    assert bucket.get_json("nan-rollback/final_metrics.json")["global_step"] == 8
    print(f"NaN at step 5, rollback: {rolled[0][:200]}")


STRAGGLER_WINDOW = 10  # stragglerDetection.windowSeconds
BLOCKED_AT = 80
STEPS = 100
# Rank 1's sleep in every forward: BLOCKED_AT of them are the time the operator has to name
# it (windowSeconds, then reports every 3 s and a reconcile). At 0.3 s (24 s in all) a fresh
# CI run of 2026-11-26, its two CPUs shared by four lanes, saw the gang stop first.
SLOW_FORWARD_SECONDS = 0.5


def test_a_straggler_is_named_then_its_blocked_collective_stops_the_gang(
    faulty_release: Release, bucket: Bucket, tmp_path: Path
) -> None:
    release, cluster, ns, name = (faulty_release, faulty_release.cluster,
                                  faulty_release.watched, "straggler")  # fmt: skip
    job = tiny_cpu_job(release, bucket, tmp_path, name, steps=STEPS, save_steps=10,
                       log_every=10)  # fmt: skip
    job["spec"]["resources"]["nodes"] = 2
    job["spec"]["runPolicy"] = {
        "terminationGracePeriodSeconds": 10,
        "stragglerDetection": {"windowSeconds": STRAGGLER_WINDOW},
        # Rank 0's watchdog stops a step that takes 15 s (its steps take well under 1 s).
        "stallDetection": {"minimumSeconds": 15},
    }
    # Rank 1 sleeps (its threads run, so it keeps reporting: not a silence) in every forward,
    # then 600 s in step BLOCKED_AT's: rank 0 waits in that step's gradient all-reduce.
    _with_faults(job, FINETUNE_FAULT_RANK="1",
                 FINETUNE_FAULT_SLEEP=f"every:{SLOW_FORWARD_SECONDS},{BLOCKED_AT}:600")  # fmt: skip
    create_ftj(cluster, ns, job)

    def straggler_named() -> str | None:
        status = read_ftj(cluster, ns, name).get("status") or {}
        assert status.get("restarts", 0) == 0, f"restarted before the warning: {status}"
        assert status.get("phase") not in ("Failed", "Succeeded"), pod_logs(release, name)
        warned = [m for r, m in object_events(cluster, ns, "FineTuneJob", name)
                  if r == "Straggler"]  # fmt: skip
        return warned[0] if warned else None

    warning = eventually(straggler_named, timeout=300, interval=1.0, what="the Straggler warning")
    assert re.match(r"rank 1 \(pod \S+ on node \S+\) computes [\d.]+x slower", warning), warning
    listed = read_ftj(cluster, ns, name)["status"].get("stragglers") or []
    assert [s["rank"] for s in listed] == [1], listed

    def restarted() -> dict[str, Any] | None:
        status = read_ftj(cluster, ns, name).get("status") or {}
        return status if status.get("restarts", 0) >= 1 else None

    began = time.monotonic()
    eventually(restarted, timeout=300, interval=0.5, what="the restart")
    restarting = eventually(
        lambda: [m for r, m in object_events(cluster, ns, "FineTuneJob", name)
                 if r == "Restarting"],
        timeout=30, what="the Restarting event",
    )  # fmt: skip
    verdict = restarting[0]
    assert "Stalled" in verdict and "rank 1" in verdict, verdict
    assert f"optimizer step {BLOCKED_AT} has not ended" in verdict, verdict
    # Both ranks' watchdogs have the same deadline (15 s from the same step's start). When
    # rank 0's fires first, both stall: rank 0 in the all-reduce rank 1 never joined (the
    # flight recorder names it), rank 1 in its sleep, and the verdict names both (one from
    # the termination message, the other from its last report). When rank 1's fires first,
    # its exit breaks rank 0's all-reduce before rank 0's deadline: the verdict is rank 1's
    # alone. Two CI runs of 2026-11-26/27 took the second branch, the operator's wait for the
    # other watchdogs (ranks.PEER_STALL_GRACE_SECONDS) notwithstanding; which one comes first
    # is a race this test cannot fix, so each branch is checked for what it must say.
    if "also stopped by its watchdog" in verdict:
        assert "rank 0" in verdict, verdict
        assert re.search(r"in flight: gloo:\w+", verdict), verdict
    else:
        assert "stuck in faults.py" in verdict, verdict  # rank 1's own stack: its sleep
    status = _ended(release, name)
    assert status["phase"] == "Succeeded", pod_logs(release, name)
    assert status.get("restarts", 0) == 1, status
    resumed = bucket.get_json(f"{name}/result.json")["resumed_from_step"]
    assert resumed is not None and BLOCKED_AT - 10 <= resumed < BLOCKED_AT, resumed
    assert bucket.get_json(f"{name}/final_metrics.json")["global_step"] == STEPS
    print(f"straggler: {warning[:120]}; restart {time.monotonic() - began:.0f} s after the "
          f"warning; verdict: {verdict[:300]}; resumed from {resumed}")  # fmt: skip


STARTUP_SECONDS = 20


def _hung_before_its_first_report(
    release: Release, base: dict[str, Any], name: str, **faults: str
) -> tuple[str, float]:
    """`base` renamed, its first attempt hanging before its first report: (the Restarting
    Event's message, seconds from its trainer's start to the restart). The job is deleted
    then (its next attempt is not the point)."""
    cluster, ns = release.cluster, release.watched
    job = renamed(base, name)
    job["spec"]["runPolicy"] = {"terminationGracePeriodSeconds": 5, "stallDetection": {
        "startupSeconds": STARTUP_SECONDS, "minimumSeconds": 10}}  # fmt: skip
    create_ftj(cluster, ns, _with_faults(job, **faults))

    def started() -> float | None:
        for pod in job_pods(release, name):
            for container in (pod.get("status") or {}).get("containerStatuses") or []:
                if (container.get("state") or {}).get("running"):
                    return time.monotonic()
        return None

    running_at = eventually(started, timeout=300, interval=0.5, what="the trainer running")

    def restarted() -> dict[str, Any] | None:
        status = read_ftj(cluster, ns, name).get("status") or {}
        assert status.get("phase") not in ("Failed", "Succeeded"), pod_logs(release, name)
        return status if status.get("restarts", 0) >= 1 else None

    eventually(restarted, timeout=STARTUP_SECONDS + 120, interval=0.5, what="the restart")
    detected = time.monotonic() - running_at
    verdict = eventually(
        lambda: [m for r, m in object_events(cluster, ns, "FineTuneJob", name)
                 if r == "Restarting"],
        timeout=30, what="the Restarting event",
    )[0]  # fmt: skip
    cluster.kubectl("delete", "finetunejob", "-n", ns, name, "--wait=false")
    return verdict, detected


def test_a_trainer_that_hangs_before_its_first_report_is_stalled_and_restarted(
    faulty_release: Release, bucket: Bucket, tmp_path: Path
) -> None:
    """Hung in its imports, the trainer's own watchdog (started before them) stops it at
    startupSeconds and names the imports; frozen whole there (SIGSTOP: no thread of it
    runs), the operator's bound on the first report, startupSeconds plus a margin
    (minimumSeconds here), does."""
    base = tiny_cpu_job(faulty_release, bucket, tmp_path, "hung", steps=5, save_steps=5,
                        log_every=1)  # fmt: skip
    verdict, detected = _hung_before_its_first_report(
        faulty_release, base, "hung-imports", FINETUNE_FAULT_SLEEP="imports:600"
    )
    assert "Stalled" in verdict, verdict
    assert "training has not started (it was importing torch" in verdict, verdict
    assert STARTUP_SECONDS - 5 <= detected <= STARTUP_SECONDS + 60, detected
    frozen, silent = _hung_before_its_first_report(
        faulty_release, base, "frozen-imports", FINETUNE_FAULT_FREEZE_AT_STEP="imports"
    )
    assert "Stalled" in frozen and "no progress report from the trainer" in frozen, frozen
    assert f"startupSeconds {STARTUP_SECONDS} + 10 s" in frozen, frozen
    assert STARTUP_SECONDS + 10 - 5 <= silent <= STARTUP_SECONDS + 10 + 60, silent
    print(f"hung in its imports: restarted {detected:.1f} s after the trainer started (its "
          f"watchdog, startupSeconds {STARTUP_SECONDS}); frozen there: {silent:.1f} s (the "
          f"operator, startupSeconds + 10 s)")  # fmt: skip
