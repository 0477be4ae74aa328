"""One reconcile pass for one FineTuneJob: read the cache, plan, write status, act.

    observed (cache) --reconcile()--> Plan --> status first, then Jobs/children, then Events

The status goes first: it records the attempt being started or torn down, so an operator
killed between two writes picks up where it stopped, and a crash can never make it create
an attempt twice (children's names are deterministic; creating an existing one is a no-op).

The cache may lag behind the operator's own status write by one watch event; the object
that write returned is kept and used until the watch has caught up (by resourceVersion),
so a pass never plans from a status older than one it wrote itself.
"""

from __future__ import annotations

import asyncio
import logging
import time
from datetime import UTC, datetime
from typing import Any

from pydantic import ValidationError

from ftapi import parse_job
from ftapi.loading import InvalidSpecError
from ftapi.v1alpha1 import FineTuneJob, FineTuneJobStatus
from ftapi.v1alpha1.status import TERMINAL_PHASES

from .cache import Cache, Key, WorkQueue
from .desired import LABEL_ATTEMPT, LABEL_JOB, Names, Settings, desired, policy_violation
from .kube import Kube
from .observability import METRICS, Metrics
from .status import (
    CreateAttempt,
    DeleteJob,
    DeleteSelf,
    Observed,
    Plan,
    SuspendJob,
    reconcile,
    rejected,
)

log = logging.getLogger("ftoperator")


class Controller:
    def __init__(
        self, kube: Kube, settings: Settings, *, workers: int = 64, metrics: Metrics = METRICS
    ) -> None:
        self.kube = kube
        self.metrics = metrics
        self.settings = settings
        self.cache = Cache()
        self.queue = WorkQueue(self.reconcile, workers=workers)
        self._written: dict[Key, dict[str, Any]] = {}  # the status writes not yet watched
        self.resync_seconds = 60.0

    # --- the pass -------------------------------------------------------------------------

    async def reconcile(self, key: Key) -> None:
        body = self._freshest(key)
        if body is None:
            self._written.pop(key, None)
            return
        if body.get("metadata", {}).get("deletionTimestamp"):
            return  # garbage collection removes the children (owner references)
        started = time.monotonic()
        try:
            await self._read_through(key, body)
            job, plan = self.plan(key, body)
            await self._execute(key, body, job, plan)
        except Exception as error:
            self.metrics.count_reconcile_error(type(error).__name__)
            raise
        finally:
            self.metrics.observe_reconcile(time.monotonic() - started)
        delay = self.resync_seconds
        if plan.requeue_after is not None:
            delay = min(delay, plan.requeue_after + 0.5)
        self.queue.add_after(key, delay)

    async def _read_through(self, key: Key, body: dict[str, Any]) -> None:
        """Ask the API server when the cache is behind: the current attempt's Job is not in
        it (not created yet, or its watch event has not arrived), or the Job counts more
        pods than the cache holds, or says it failed while no cached pod did (pod events
        lag Job events, most of all right after the operator starts). Without this, a pass
        could report a running attempt as pending, or a failure without its real reason."""
        status = body.get("status") or {}
        if not status or status.get("phase") in TERMINAL_PHASES:
            # No status yet: no child either (the status is written before any child).
            # Terminal: nothing will be created for it again, the cache is enough.
            return
        attempt = status.get("attempt", 0)
        name = Names(key[1], attempt).batch_job
        job = self.cache.batch_jobs.get(key, {}).get(name)
        if job is None:
            job = await asyncio.to_thread(self.kube.get_job, key[0], name)
            if job is None:
                return
            self.cache.observe_child("Job", key, name, job)
        elif not pods_behind(job, self._attempt_pods(key, attempt)):
            return
        selector = f"{LABEL_JOB}={key[1]},{LABEL_ATTEMPT}={attempt}"
        listed = await asyncio.to_thread(self.kube.list_pods, key[0], selector)
        names = {pod["metadata"]["name"] for pod in listed}
        for cached in self._attempt_pods(key, attempt):
            if cached["metadata"]["name"] not in names:  # gone: its DELETED event is late
                self.cache.observe_child("Pod", key, cached["metadata"]["name"], None)
        for pod in listed:
            self.cache.observe_child("Pod", key, pod["metadata"]["name"], pod)

    def _attempt_pods(self, key: Key, attempt: int) -> list[dict[str, Any]]:
        return [
            pod
            for pod in self.cache.pods.get(key, {}).values()
            if pod.get("metadata", {}).get("labels", {}).get(LABEL_ATTEMPT) == str(attempt)
        ]

    def plan(self, key: Key, body: dict[str, Any]) -> tuple[FineTuneJob | None, Plan]:
        """The parsed spec (None when it does not parse) and the plan for it."""
        status = FineTuneJobStatus.model_validate(body.get("status") or {})
        now = datetime.now(UTC)
        job, invalid = _parse(body)
        names = Names(key[1], status.attempt)
        batch_jobs = self.cache.batch_jobs.get(key, {})
        attempt_pods = self._attempt_pods(key, status.attempt)
        others = [
            name
            for name, child in batch_jobs.items()
            if name != names.batch_job and not child.get("metadata", {}).get("deletionTimestamp")
        ]
        observed = Observed(
            status=status,
            now=now,
            batch_job=batch_jobs.get(names.batch_job),
            pods=attempt_pods,
            other_jobs=sorted(others),
            progress=self.cache.progress.get(key),
            lost_nodes=frozenset(self.cache.lost_nodes),
        )
        generation = body.get("metadata", {}).get("generation")
        if job is None:
            ttl = _raw_ttl(body)
            return None, rejected(status, invalid or "invalid spec", generation, now, ttl=ttl)
        refused = policy_violation(job, self.settings)
        # Checked before every attempt is created (a restart after the allow-list changed
        # too), never against a Job that already runs.
        if refused is not None and names.batch_job not in batch_jobs:
            ttl = job.spec.run_policy.ttl_seconds_after_finished
            return job, rejected(status, refused, generation, now, "ImageNotAllowed", ttl)
        return job, reconcile(job, observed)

    async def _execute(
        self, key: Key, body: dict[str, Any], job: FineTuneJob | None, plan: Plan
    ) -> None:
        namespace, name = key
        before = body.get("status") or {}
        after = plan.status.model_dump(mode="json", by_alias=True, exclude_none=True)
        if after != before:
            stored = await asyncio.to_thread(self.kube.patch_status, namespace, name, after)
            if stored is None:
                return
            self._written[key] = stored
        for action in plan.actions:
            await self._act(key, job, action)
        for event in plan.events:
            await asyncio.to_thread(self.kube.post_event, body, event.type, event.reason,
                                    event.message)  # fmt: skip
            log.info("%s/%s: %s: %s", namespace, name, event.reason, event.message)
        if plan.status.phase != (before.get("phase") or "Pending") or not before:
            self.metrics.set_job_counts(self.phase_counts())

    async def _act(self, key: Key, job: FineTuneJob | None, action: Any) -> None:
        namespace, name = key
        if isinstance(action, CreateAttempt):
            if job is None:  # never planned for an unparsable spec
                return
            children = desired(job, attempt=action.attempt, settings=self.settings)
            # What the pods reference first, all at once (they do not depend on each other;
            # a RoleBinding may name a ServiceAccount that does not exist yet), then the Job.
            *prerequisites, batch_job = children.all()
            await asyncio.gather(
                *(asyncio.to_thread(self.kube.create, namespace, c) for c in prerequisites)
            )
            if await asyncio.to_thread(self.kube.create, namespace, batch_job):
                self.metrics.count_job_created()
                if action.attempt > 0:
                    self.metrics.count_restart()
        elif isinstance(action, DeleteJob):
            await asyncio.to_thread(self.kube.delete_job, namespace, action.name)
        elif isinstance(action, SuspendJob):
            await asyncio.to_thread(self.kube.suspend_job, namespace, action.name, action.suspend)
        elif isinstance(action, DeleteSelf):
            log.info("%s/%s: ttlSecondsAfterFinished passed: deleting it", namespace, name)
            await asyncio.to_thread(self.kube.delete_finetunejob, namespace, name)

    def _freshest(self, key: Key) -> dict[str, Any] | None:
        watched = self.cache.jobs.get(key)
        written = self._written.get(key)
        if watched is None or written is None:
            return watched
        if written["metadata"].get("uid") != watched["metadata"].get("uid"):
            self._written.pop(key, None)  # deleted and created again under the same name
            return watched
        if _version(written) > _version(watched):
            # Our write's result, with the spec as the watch last saw it.
            return {**written, "spec": watched.get("spec", written.get("spec"))}
        self._written.pop(key, None)
        return watched

    def phase_counts(self) -> dict[str, int]:
        counts: dict[str, int] = {}
        for key, body in self.cache.jobs.items():
            status = (self._written.get(key) or body).get("status") or {}
            phase = status.get("phase", "Pending")
            counts[phase] = counts.get(phase, 0) + 1
        return counts


def pods_behind(job: dict[str, Any], cached: list[dict[str, Any]]) -> bool:
    """Whether the Job knows of more pods, or of a failed one, than the cache holds."""
    counts = job.get("status") or {}
    uncounted = counts.get("uncountedTerminatedPods") or {}
    known = sum(int(counts.get(k) or 0) for k in ("active", "succeeded", "failed"))
    known += len(uncounted.get("succeeded") or []) + len(uncounted.get("failed") or [])
    if known > len(cached):
        return True
    failed = any(
        c.get("type") in ("Failed", "FailureTarget") and c.get("status") == "True"
        for c in counts.get("conditions") or []
    )
    return failed and not any(p.get("status", {}).get("phase") == "Failed" for p in cached)


def _parse(body: dict[str, Any]) -> tuple[FineTuneJob | None, str | None]:
    manifest = {k: v for k, v in body.items() if k != "status"}
    try:
        return parse_job(manifest), None
    except (InvalidSpecError, ValidationError, ValueError) as error:
        return None, str(error)[:2000]


def _raw_ttl(body: dict[str, Any]) -> int | None:
    """ttlSecondsAfterFinished of a spec that does not parse as a whole (the CRD schema
    still guarantees the field itself is a non-negative integer when present)."""
    run_policy = (body.get("spec") or {}).get("runPolicy") or {}
    value = run_policy.get("ttlSecondsAfterFinished")
    return value if isinstance(value, int) and not isinstance(value, bool) and value >= 0 else None


def _version(body: dict[str, Any]) -> int:
    try:
        return int(body.get("metadata", {}).get("resourceVersion", 0))
    except ValueError:
        return 0
