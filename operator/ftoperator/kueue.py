"""What Kueue says about a queued job: read from its Workload, never decided here.

With `spec.scheduling.queueName` the operator creates the attempt's Job suspended with the
`kueue.x-k8s.io/queue-name` label; Kueue makes a Workload for it (owned by the Job), admits it
against its ClusterQueue's quota by unsuspending the Job, and may later evict it (preemption
by a higher-priority workload, a deactivated workload) by suspending it again. The Job alone
says only "suspended"; why is in the Workload's conditions, which this module turns into the
status' reason and message. The Workload is read through kueue.x-k8s.io/v1beta2 (Kueue 0.15+).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

WORKLOAD_API = "kueue.x-k8s.io/v1beta2"
MAX_MESSAGE = 400


@dataclass(frozen=True)
class QueueState:
    """Why Kueue holds the job: `reason` is the status condition's (Queued, Preempted,
    Evicted), `message` Kueue's own words."""

    reason: str
    message: str


def owned_workload(workloads: list[dict[str, Any]], job_uid: str) -> dict[str, Any] | None:
    """The Workload whose controller is the Job with this UID (Kueue names it after the Job
    with a hash, so the owner reference is what ties them)."""
    for workload in workloads:
        for owner in workload.get("metadata", {}).get("ownerReferences") or []:
            if owner.get("uid") == job_uid and owner.get("kind") == "Job":
                return workload
    return None


def queue_state(workload: dict[str, Any] | None) -> QueueState | None:
    """Why the Workload is not running, or None when Kueue has nothing to say yet (no
    Workload, or admitted: the Job is about to be unsuspended)."""
    if workload is None:
        return None
    conditions = {c.get("type"): c for c in (workload.get("status") or {}).get("conditions") or []}

    def holds(kind: str) -> dict[str, Any] | None:
        condition = conditions.get(kind)
        return condition if condition and condition.get("status") == "True" else None

    evicted = holds("Evicted")
    admitted = holds("Admitted")
    if evicted is not None and admitted is None:
        reason = "Preempted" if evicted.get("reason") == "Preempted" else "Evicted"
        verb = "preempted" if reason == "Preempted" else "evicted"
        return QueueState(reason, _clip(f"{verb} by Kueue: {_said(evicted)}"))
    if admitted is not None:
        return None
    pending = conditions.get("QuotaReserved")
    if pending is not None and pending.get("status") == "False" and _said(pending):
        return QueueState("Queued", _clip(f"Kueue: {_said(pending)}"))
    return None


def _said(condition: dict[str, Any]) -> str:
    return str(condition.get("message") or condition.get("reason") or "").strip()


def _clip(text: str) -> str:
    return text if len(text) <= MAX_MESSAGE else text[: MAX_MESSAGE - 3] + "..."
