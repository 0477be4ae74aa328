"""What the status says of a queued job: Kueue's Workload conditions (shapes as Kueue 0.19
writes them, taken from a run of tests/integration/test_kueue.py)."""

from __future__ import annotations

from typing import Any

from ftoperator.kueue import MAX_MESSAGE, QueueState, owned_workload, queue_state

INSUFFICIENT = ("couldn't assign flavors to pod set main: insufficient unused quota for "
                "nvidia.com/gpu in flavor fto-tests-h100, 8 more needed")  # fmt: skip
PREEMPTED = ("Preempted to accommodate a workload (UID: 6b7f, JobUID: 41e6) due to "
             "prioritization in the ClusterQueue")  # fmt: skip


def workload(job_uid: str, *conditions: tuple[str, str, str, str]) -> dict[str, Any]:
    return {
        "metadata": {"name": "job-x-0-abc12", "ownerReferences": [
            {"apiVersion": "batch/v1", "kind": "Job", "name": "x-0", "uid": job_uid,
             "controller": True}]},
        "status": {"conditions": [
            {"type": t, "status": s, "reason": r, "message": m} for t, s, r, m in conditions]},
    }  # fmt: skip


def test_the_workload_is_the_one_the_job_controls() -> None:
    mine, other = workload("uid-1"), workload("uid-2")
    assert owned_workload([other, mine], "uid-1") is mine
    assert owned_workload([other], "uid-1") is None
    pod_owned = workload("uid-1")
    pod_owned["metadata"]["ownerReferences"][0]["kind"] = "Pod"
    assert owned_workload([pod_owned], "uid-1") is None


def test_over_quota_is_queued_with_kueues_words() -> None:
    state = queue_state(workload("u", ("QuotaReserved", "False", "Pending", INSUFFICIENT)))
    assert state == QueueState("Queued", f"Kueue: {INSUFFICIENT}")


def test_a_preempted_workload_says_so_until_it_is_admitted_again() -> None:
    evicted = ("Evicted", "True", "Preempted", PREEMPTED)
    pending = ("QuotaReserved", "False", "Pending", INSUFFICIENT)
    state = queue_state(workload("u", pending, evicted, ("Admitted", "False", "NoReservation", "")))
    assert state == QueueState("Preempted", f"preempted by Kueue: {PREEMPTED}")
    # Evicted while still marked admitted (Kueue writes the conditions one after the other),
    # and readmitted: nothing to say, the Job is about to change.
    assert queue_state(workload("u", evicted, ("Admitted", "True", "Admitted", ""))) is None


def test_other_evictions_are_not_called_preemptions() -> None:
    state = queue_state(workload("u", ("Evicted", "True", "InactiveWorkload", "deactivated")))
    assert state == QueueState("Evicted", "evicted by Kueue: deactivated")


def test_no_workload_or_no_verdict_yet_says_nothing() -> None:
    assert queue_state(None) is None
    assert queue_state(workload("u")) is None
    assert queue_state(workload("u", ("QuotaReserved", "True", "QuotaReserved", "ok"))) is None


def test_a_long_message_is_clipped_for_the_status() -> None:
    state = queue_state(workload("u", ("QuotaReserved", "False", "Pending", "x" * 5000)))
    assert state is not None and len(state.message) == MAX_MESSAGE
    assert state.message.endswith("...")
