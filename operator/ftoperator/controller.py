"""One reconcile pass for one FineTuneJob: read the cache, plan, write status, act.

    observed (cache) --reconcile()--> Plan --> status first, then Jobs/children, then Events

The status goes first: it records the attempt being started or torn down, so an operator
killed between two writes picks up where it stopped, and a crash can never make it create
an attempt twice (children's names are deterministic; creating an existing one is a no-op).

One exception: a new job's first status ("Pending, waiting for the pods") is held back for
up to FIRST_STATUS_GRACE_SECONDS after its children are created, and written as "Running"
at once when the pods start within that time (its "Created" Event, held with it, is then
left out: the "Running" Event names the attempt). A status that is replaced a second later tells
no one anything, and it is the most expensive request of a job's start (the API server
validates and stores the whole object again). Nothing is lost when the operator dies
meanwhile: attempt 0 is what an empty status means, its children's creates are idempotent,
and the settings the first attempt used are read back from its Job (config.settings_of).

The cache may lag behind the operator's own status write by one watch event; the object
that write returned is kept and used until the watch shows that very resourceVersion
(compared for equality only: it is opaque), so a pass never plans from a status older than
one it wrote itself.

What the controller keeps of a job between passes is one JobState; reconcile() reads top
to bottom: observe what the cache cannot answer, plan (planner.py decides), write the
status and act (children/ renders, kube.py sends), verify the children, re-queue.
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from datetime import UTC, datetime
from typing import Any, TypeVar, cast

from pydantic import ValidationError

from ftapi.constants import KIND, VERSION
from ftapi.loading import InvalidSpecError
from ftapi.skew import Loc, NewerFields, kept, newer_fields, parse_stored_job, read_status
from ftapi.v1alpha1 import FineTuneJob, FineTuneJobStatus
from ftapi.v1alpha1.status import TERMINAL_PHASES

from .cache import Cache, Key, as_written
from .children import (
    LABEL_ATTEMPT,
    LABEL_JOB,
    Children,
    Names,
    build_children,
    build_namespace_identity,
)
from .config import DEFAULTS, OPERATOR, Settings, settings_of, with_recorded
from .kube import ChildError, Kube, owned_by
from .kueue import owned_workload, queue_state
from .merge_patch import merge_patch
from .observability import METRICS, Metrics
from .planner import (
    WAITING_FOR_PODS,
    CreateAttempt,
    DeleteJob,
    DeleteSelf,
    Event,
    Observed,
    Plan,
    Stored,
    SuspendJob,
    decide,
    rejected,
)
from .status_format import status_needs_newer_operator
from .timestamps import api_time
from .workqueue import WorkQueue

log = logging.getLogger("ftoperator")
T = TypeVar("T")
CREATE_FAILURE_POLL_SECONDS = 10.0
CREATE_FAILURE_GRACE_SECONDS = 5.0
# A queued job asks Kueue why it waits every QUEUE_POLL_SECONDS; one list of a namespace's
# Workloads serves all its queued jobs for QUEUE_READ_SECONDS.
QUEUE_POLL_SECONDS = 30.0
QUEUE_READ_SECONDS = 5.0
# A Job held from its create's answer (Cache.observe_created_job) is read from the API
# server when its watch event has not come after this long: deleted at once, or a watch broken.
UNCONFIRMED_JOB_SECONDS = 30.0
# How long a new job's first status may wait for its pods to start (see the module).
FIRST_STATUS_GRACE_SECONDS = float(DEFAULTS["first-status-grace-seconds"])
# The parses kept (_parse_once), the most recently used: about 17 KB each in Python objects.
PARSE_CACHE_SIZE = 4096
# A namespace's shared trainer identity is made sure of (three GETs) at most this often, by
# the attempts created or checked then: one deleted meanwhile is made again within a minute.
IDENTITY_FRESH_SECONDS = 60.0
# How long the object a status write returned is planned from while its watch event has
# not come (Controller._freshest); past it, the watch is trusted (it may have listed again).
WRITTEN_KEPT_SECONDS = 60.0


@dataclass
class Held:
    """A new job's first status, held back until its pods start or `due` (loop time)."""

    due: float
    status: dict[str, Any] = field(default_factory=dict)
    events: list[Event] = field(default_factory=list)

    def events_to_tell(self, phase: str | None) -> list[Event]:
        """The Events held with it, when the status is finally written: "Created" says
        nothing the "Running" Event posted with it does not (one Event fewer per job)."""
        if phase == "Running":
            return [e for e in self.events if e.reason != "Created"]
        return list(self.events)


@dataclass(slots=True)
class JobState:
    """What the controller keeps of one FineTuneJob between its passes, in one place:
    forgetting a job is one pop (Controller._forget)."""

    written: dict[str, Any] | None = None
    """The object this operator's last status write returned, until the watch has brought
    it back (_freshest)."""
    written_at: float = 0.0
    """Monotonic time of that write."""
    held: Held | None = None
    """A new job's first status, planned but held back with its Events (_hold)."""
    parsed: tuple[tuple[Any, ...], Parsed] | None = None
    """The last parse of its spec, with what it was parsed from (_parse_once)."""
    planned: dict[tuple[str, str], str] = field(default_factory=dict)
    """The objects its last pass planned from: (kind, name) -> resourceVersion."""
    requeue: float = 0.0
    """The soonest re-queue the pass under way wants (_requeue_after), in seconds."""
    children_checked: float | None = None
    """Loop time of the last verification of its children (_check_children)."""
    children_changed: bool = False
    """One of its prerequisites changed or vanished (child_changed): the next pass checks."""
    unknown_status: list[Loc] = field(default_factory=list)
    """Where its stored status holds fields newer than this code (written back as is)."""
    told_unreadable: str | None = None
    """The message told (Event) when its status holds values this code cannot read."""
    awaiting_pods: str | None = None
    """The name of its Job that lacks pods past the grace (_await_pods)."""


class Controller:
    def __init__(
        self, kube: Kube, settings: Settings, *, workers: int = 64, metrics: Metrics = METRICS
    ) -> None:
        self.kube = kube
        self.metrics = metrics
        self.settings = settings
        self.cache = Cache()
        self.queue = WorkQueue(self.reconcile, workers=workers)
        self._jobs: dict[Key, JobState] = {}
        self.first_status_grace_seconds = FIRST_STATUS_GRACE_SECONDS
        # (what, namespace) -> (loop time, the read made then): _shared_read
        self._shared_reads: dict[tuple[str, str], tuple[float, asyncio.Future[Any]]] = {}
        self.resync_seconds = float(DEFAULTS["resync-seconds"])
        self.child_check_seconds = float(DEFAULTS["child-check-seconds"])
        # The stored CRD's schema (the served version's openAPIV3Schema), from its watch:
        # what a field newer than this code defaults to (ftapi.skew).
        self.crd_schema: dict[str, Any] | None = None
        # The jobs whose parse is kept, the most recently used last (_parse_once); a key
        # whose job was forgotten meanwhile is dropped when it comes first.
        self._recent_parses: dict[Key, None] = {}
        # The jobs whose Job lacks pods past the grace, by namespace, and each namespace's
        # poll of their FailedCreate Events (_poll_create_failures).
        self._awaiting_pods: dict[str, set[Key]] = {}
        self._polls: dict[str, asyncio.TimerHandle] = {}
        self._poll_tasks: set[asyncio.Task[None]] = set()

    def observe_crd(self, crd: dict[str, Any] | None) -> None:
        """The FineTuneJob CRD changed (an upgrade applied a newer one): every job is looked
        at again, since what its newer fields hold may now read differently."""
        schema = served_schema(crd)
        if schema != self.crd_schema:
            self.crd_schema = schema
            for key in list(self.cache.jobs):
                self.queue.add(key)

    # --- the pass -------------------------------------------------------------------------

    async def reconcile(self, key: Key) -> None:
        """One pass: observe what the cache cannot answer, plan, write the status and act,
        verify the children, re-queue."""
        stored = self._freshest(key)
        if stored is None:
            self._forget(key)
            return
        state = self._state(key)
        if stored.get("metadata", {}).get("deletionTimestamp"):
            state.held = None
            return  # garbage collection removes the children (owner references)
        body = self._with_held_status(key, stored)
        started = time.monotonic()
        state.requeue = self.resync_seconds
        try:
            await self._observe(key, body)
            state.planned = self._versions(key, stored)
            job, plan = self.plan(key, body)
            if await self._execute(key, stored, job, plan):
                await self._check_children(key, body, job, plan)
        except Exception as error:
            self.metrics.count_reconcile_error(type(error).__name__)
            raise
        finally:
            self.metrics.observe_reconcile(time.monotonic() - started)
        self._requeue(key, state, plan)

    def _state(self, key: Key) -> JobState:
        return self._jobs.setdefault(key, JobState())

    def _forget(self, key: Key) -> None:
        """The job is gone: nothing of it is kept (its parse's place in _recent_parses and
        its entry in a namespace's poll are dropped when next seen)."""
        self._jobs.pop(key, None)

    async def _observe(self, key: Key, body: dict[str, Any]) -> None:
        """What the pass needs and the cache may not hold: the current attempt's Job and
        pods when the cache is behind, why pods are missing, why Kueue holds the job."""
        await self._read_through(key, body)
        await self._read_create_failure(key, body)
        await self._read_queue_state(key, body)

    def _requeue(self, key: Key, state: JobState, plan: Plan) -> None:
        """The next pass: the soonest of what the pass's steps and its plan asked for, and
        of a held first status's grace."""
        delay = state.requeue
        if plan.requeue_after is not None:
            delay = min(delay, plan.requeue_after + 0.5)
        if state.held is not None:  # its grace ends: written then, whatever else happens
            delay = min(delay, state.held.due - asyncio.get_running_loop().time() + 0.05)
        # Replacing the re-queue the last pass asked for: a reason it had (pods missing, a
        # status held back) that is gone now costs no pass (docs/operator.md).
        self.queue.requeue_after(key, delay)

    def _requeue_after(self, key: Key, seconds: float) -> None:
        """This pass wants the job re-queued within `seconds` (reconcile asks for the
        soonest of what its steps wanted)."""
        state = self._state(key)
        state.requeue = min(state.requeue, seconds)

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
        # One held from its create's answer is trusted while its watch event may still come.
        if job is None or self.cache.unconfirmed_for(key, name) > UNCONFIRMED_JOB_SECONDS:
            held = job is not None
            job = await asyncio.to_thread(self.kube.get_job, key[0], name)
            if held and job is None:  # deleted before any watch event: forget it
                self.cache.observe_child("Job", key, name, None)
            if job is None or not owned_by(job, body["metadata"].get("uid", "")):
                return  # absent, or a stranger's (the create will say ChildConflict)
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

    async def _read_create_failure(self, key: Key, body: dict[str, Any]) -> None:
        """While the current attempt's Job runs without all of its pods, ask why (the Job
        controller's FailedCreate Events; nothing else records it) and look again soon:
        otherwise a quota or a missing PriorityClass would read "0 of N running" forever."""
        status = body.get("status") or {}
        attempt = status.get("attempt", 0)
        uid = body.get("metadata", {}).get("uid", "")
        jobs, pods = self._owned(key, uid, attempt)
        batch_job = jobs.get(Names(key[1], attempt).batch_job)
        missing = (
            status.get("phase") not in TERMINAL_PHASES
            and batch_job is not None
            and not (batch_job.get("spec") or {}).get("suspend")
            and len(pods) < int((batch_job.get("spec") or {}).get("parallelism") or 1)
        )
        if not missing:
            self.cache.create_failures.pop(key, None)
            self._stop_awaiting(key)
            return
        assert batch_job is not None
        age = _age_seconds(batch_job)
        if age < CREATE_FAILURE_GRACE_SECONDS:  # pods normally appear within a second
            self._requeue_after(key, CREATE_FAILURE_GRACE_SECONDS - age + 0.5)
            return
        job_name = Names(key[1], attempt).batch_job
        self._set_create_failure(key, (await self._create_failures_in(key[0])).get(job_name))
        # From now on the namespace's poll reads it for every such job, and queues this one
        # only when its reason changes (_poll_create_failures), not a pass per job every
        # CREATE_FAILURE_POLL_SECONDS while the Job controller is slow to create the pods.
        self._await_pods(key, job_name)

    def _set_create_failure(self, key: Key, failure: str | None) -> bool:
        """Keep the job's FailedCreate reason; whether it changed."""
        if failure == self.cache.create_failures.get(key):
            return False
        if failure is None:
            self.cache.create_failures.pop(key, None)
        else:
            self.cache.create_failures[key] = failure
        return True

    def _await_pods(self, key: Key, job_name: str) -> None:
        """The job's Job lacks pods past the grace: the namespace's poll watches for why."""
        namespace = key[0]
        self._state(key).awaiting_pods = job_name
        self._awaiting_pods.setdefault(namespace, set()).add(key)
        if namespace not in self._polls:
            loop = asyncio.get_running_loop()
            self._polls[namespace] = loop.call_later(
                CREATE_FAILURE_POLL_SECONDS, self._start_poll, namespace
            )

    def _stop_awaiting(self, key: Key) -> None:
        state = self._jobs.get(key)
        if state is not None:
            state.awaiting_pods = None
        awaiting = self._awaiting_pods.get(key[0])
        if awaiting is not None:
            awaiting.discard(key)

    def _start_poll(self, namespace: str) -> None:
        self._polls.pop(namespace, None)
        task = asyncio.ensure_future(self._poll_create_failures(namespace))
        self._poll_tasks.add(task)
        task.add_done_callback(self._poll_tasks.discard)

    async def _poll_create_failures(self, namespace: str) -> None:
        """One read of the namespace's FailedCreate Events for all its jobs still lacking
        pods; a pass only for those whose reason changed. Again every
        CREATE_FAILURE_POLL_SECONDS while any is left (their passes drop them once the pods
        exist, or the job is gone or finished)."""
        awaiting = self._awaiting_pods.get(namespace) or set()
        awaiting -= {key for key in awaiting if self._awaited_job(key) is None}  # forgotten
        if awaiting:
            try:
                failures = await self._create_failures_in(namespace)
            except Exception as error:  # the next poll reads again
                log.warning("%s: reading FailedCreate Events failed: %s", namespace, error)
            else:
                for key in list(awaiting):
                    job_name = self._awaited_job(key)
                    if job_name is not None and self._set_create_failure(
                        key, failures.get(job_name)
                    ):
                        self.queue.add(key)
        if self._awaiting_pods.get(namespace):
            self._polls[namespace] = asyncio.get_running_loop().call_later(
                CREATE_FAILURE_POLL_SECONDS, self._start_poll, namespace
            )
        else:
            self._awaiting_pods.pop(namespace, None)

    def _awaited_job(self, key: Key) -> str | None:
        state = self._jobs.get(key)
        return state.awaiting_pods if state is not None else None

    async def stop(self) -> None:
        """Stop the namespaces' polls, then the workers."""
        for timer in self._polls.values():
            timer.cancel()
        for task in self._poll_tasks:
            task.cancel()
        await asyncio.gather(*self._poll_tasks, return_exceptions=True)
        await self.queue.stop()

    async def _create_failures_in(self, namespace: str) -> dict[str, str]:
        """FailedCreate messages by Job name, shared by every job there that lacks pods: a
        burst of new jobs whose pods the Job controller is slow to create would otherwise
        cost one list per job every CREATE_FAILURE_POLL_SECONDS."""
        return await self._shared_read(
            "FailedCreate", namespace, self.kube.pod_create_failures, CREATE_FAILURE_POLL_SECONDS
        )

    async def _read_queue_state(self, key: Key, body: dict[str, Any]) -> None:
        """While the attempt's Job waits suspended in a Kueue queue, ask Kueue why (its
        Workload's conditions: over quota, preempted) and look again now and then: the Job
        itself only says "suspended"."""
        status = body.get("status") or {}
        scheduling = (body.get("spec") or {}).get("scheduling") or {}
        attempt = status.get("attempt", 0)
        uid = body.get("metadata", {}).get("uid", "")
        batch_job = self._owned(key, uid, attempt)[0].get(Names(key[1], attempt).batch_job)
        waiting = (
            scheduling.get("queueName")
            and not scheduling.get("suspend")
            and status.get("phase") not in TERMINAL_PHASES
            and batch_job is not None
            and (batch_job.get("spec") or {}).get("suspend")
        )
        if not waiting:
            self.cache.queue_states.pop(key, None)
            return
        assert batch_job is not None
        workloads = await self._shared_read(
            "Workload", key[0], self.kube.workloads, QUEUE_READ_SECONDS
        )
        job_uid = str(batch_job.get("metadata", {}).get("uid") or "")
        workload = owned_workload(workloads, job_uid)
        state = queue_state(workload)
        if state is None:
            self.cache.queue_states.pop(key, None)
        else:
            self.cache.queue_states[key] = state
        # A Workload without a verdict yet (just created, or the read predates an eviction):
        # look again as soon as a fresh read can be made; otherwise now and then.
        soon = workload is not None and state is None
        self._requeue_after(key, QUEUE_READ_SECONDS + 0.5 if soon else QUEUE_POLL_SECONDS)

    async def _shared_read(
        self, what: str, namespace: str, read: Callable[[str], T], fresh_seconds: float
    ) -> T:
        """One read of `what` per namespace every `fresh_seconds`, shared by every job there
        that asks meanwhile (and retried at once after a failed read)."""
        loop = asyncio.get_running_loop()
        now = loop.time()
        slot = (what, namespace)
        held = self._shared_reads.get(slot)
        stale = held is None or now - held[0] >= fresh_seconds
        if stale or (held is not None and held[1].done() and held[1].exception()):
            for old in [s for s, (at, _) in self._shared_reads.items() if now - at >= 60.0]:
                del self._shared_reads[old]  # namespaces nobody asked about for a minute
            future: asyncio.Future[Any] = asyncio.ensure_future(asyncio.to_thread(read, namespace))
            held = self._shared_reads[slot] = (now, future)
        assert held is not None
        return cast(T, await asyncio.shield(held[1]))

    async def _ensure_identity(self, namespace: str, children: Children) -> None:
        """The namespace's shared trainer identity (children.access), made sure of once per
        namespace every IDENTITY_FRESH_SECONDS for all its jobs: three GETs, where a per-job
        identity costs three creates and three watch events per job."""
        if children.shared_identity:
            await self._shared_read(
                "identity", namespace, self._make_identity, IDENTITY_FRESH_SECONDS
            )

    def _make_identity(self, namespace: str) -> None:
        for body in build_namespace_identity(namespace):  # the RoleBinding after its Role
            self.kube.ensure_shared(namespace, body)

    def _attempt_pods(self, key: Key, attempt: int) -> list[dict[str, Any]]:
        return [
            pod
            for pod in self.cache.pods.get(key, {}).values()
            if pod.get("metadata", {}).get("labels", {}).get(LABEL_ATTEMPT) == str(attempt)
        ]

    def planned_from(self, key: Key, kind: str, name: str, body: dict[str, Any]) -> bool:
        """Whether this job's last pass (done, or under way) planned from this very object:
        the watch event of the operator's own status write, or of a Job held from its
        create's answer, or of pods a pass listed, then shows nothing new, and queuing the
        job for it would only plan the same again. Any other change brings an event of its
        own, and time-based passes come from timers."""
        version = _version(body)
        state = self._jobs.get(key)
        return bool(version) and state is not None and state.planned.get((kind, name)) == version

    def child_changed(self, key: Key, event: str, body: dict[str, Any]) -> bool:
        """A watch event of one of the job's prerequisites (its ConfigMap, Service,
        ServiceAccount, Role, RoleBinding, NetworkPolicy, progress object): whether the job
        must be looked at, its children then verified by the pass (_check_children). Its
        creation (ADDED, this job's own) is not; an edit or a deletion is, and so is an
        object of a stranger under a child's name. A job that is gone or finished has
        nothing to verify."""
        stored = self.cache.jobs.get(key)
        if stored is None or (stored.get("status") or {}).get("phase") in TERMINAL_PHASES:
            return False
        uid = str((stored.get("metadata") or {}).get("uid") or "")
        if event == "ADDED" and owned_by(body, uid):
            return False
        self._state(key).children_changed = True
        return True

    def _versions(self, key: Key, stored: dict[str, Any]) -> dict[tuple[str, str], str]:
        """What a pass plans from, for planned_from: the FineTuneJob as stored (unless it is
        a write of ours with an older spec, which no event shows), its Jobs and pods."""
        versions = {
            (kind, name): _version(child)
            for kind, group in (("Job", self.cache.batch_jobs), ("Pod", self.cache.pods))
            for name, child in group.get(key, {}).items()
        }
        if stored is self.cache.jobs.get(key) or stored is self._state(key).written:
            versions[KIND, key[1]] = _version(stored)
        return versions

    def _owned(
        self, key: Key, uid: str, attempt: int
    ) -> tuple[dict[str, dict[str, Any]], list[dict[str, Any]]]:
        """This FineTuneJob's Jobs and the current attempt's pods, by ownership: labels are
        only how the watches find candidates, and anyone who may create pods can set them.
        A Job counts when its controller is this FineTuneJob's UID, a pod when its
        controller is one of those Jobs."""
        jobs = {
            name: job
            for name, job in self.cache.batch_jobs.get(key, {}).items()
            if owned_by(job, uid)
        }
        job_uids = {job.get("metadata", {}).get("uid") for job in jobs.values()}
        pods = [
            pod
            for pod in self._attempt_pods(key, attempt)
            if any(owned_by(pod, job_uid) for job_uid in job_uids if job_uid)
        ]
        return jobs, pods

    def plan(self, key: Key, body: dict[str, Any]) -> tuple[FineTuneJob | None, Plan]:
        """The parsed spec (None when it does not parse) and the plan for it."""
        job, plan = self._plan(key, body)
        if plan.status.phase in TERMINAL_PHASES:  # few passes left: not worth its memory
            self._state(key).parsed = None
        return job, plan

    def _plan(self, key: Key, body: dict[str, Any]) -> tuple[FineTuneJob | None, Plan]:
        """What the stored object and the cache say, handed to the planner, which decides.
        Lenient: a newer operator (before a rollback) may have written fields or values
        this one does not know; _execute writes them back as they were."""
        state = self._state(key)
        status, state.unknown_status, unreadable = read_status(body.get("status") or {})
        job, invalid, unknown = self._parse_once(key, body)
        stored = Stored(
            job=job,
            invalid=invalid,
            generation=body.get("metadata", {}).get("generation"),
            raw_ttl=_raw_ttl(body),
            unreadable=tuple(unreadable),
            told_unreadable=state.told_unreadable,
            newer=self._newer_fields(key, body, unknown),
        )
        plan = decide(stored, self._observed(key, body, status), self.settings, OPERATOR)
        if unreadable:
            state.told_unreadable = status_needs_newer_operator(unreadable, OPERATOR)
            log.warning("%s/%s: %s", *key, state.told_unreadable)
        else:
            state.told_unreadable = None
        return job, plan

    def _newer_fields(
        self, key: Key, body: dict[str, Any], unknown: list[Loc]
    ) -> NewerFields | None:
        """Where the spec holds fields newer than this code, judged against the stored
        CRD's schema; None while that has not been seen (the operator just started)."""
        if not unknown:
            return NewerFields()
        if self.crd_schema is None:
            log.info("%s/%s: fields newer than this operator; waiting for the CRD", *key)
            return None
        return newer_fields(body, unknown, self.crd_schema)

    def _observed(self, key: Key, body: dict[str, Any], status: FineTuneJobStatus) -> Observed:
        """What the cache holds of the job's world: its attempt's Job and pods (by owner),
        the trainer's reports, lost nodes, why pods are missing or the job is queued."""
        names = Names(key[1], status.attempt)
        uid = body.get("metadata", {}).get("uid", "")
        batch_jobs, attempt_pods = self._owned(key, uid, status.attempt)
        others = [
            name
            for name, child in batch_jobs.items()
            if name != names.batch_job and not child.get("metadata", {}).get("deletionTimestamp")
        ]
        return Observed(
            status=status,
            now=datetime.now(UTC),
            batch_job=batch_jobs.get(names.batch_job),
            pods=attempt_pods,
            other_jobs=sorted(others),
            progress=self.cache.progress_of(key),
            ranks=self.cache.ranks_of(key),
            lost_nodes=self.cache.nodes.lost(time.monotonic()),
            pod_create_failure=self.cache.create_failures.get(key),
            queue_state=self.cache.queue_states.get(key),
            progress_error=self.cache.progress_error_of(key),
        )

    def _parse_once(self, key: Key, body: dict[str, Any]) -> Parsed:
        """_parse, again only when what it reads changed: a job's spec and identity change
        rarely, its status and resourceVersion on every write, and validating the whole
        spec on every pass costs more CPU than anything else in it. The cache's bodies are
        replaced per watch event, never edited, so comparing against the parts kept from
        the last parse is exact. The price is memory (a parsed job holds every default of
        its spec), so only the PARSE_CACHE_SIZE most recently used are kept, sized so that
        a burst's passes still find theirs, and a finished job's is dropped (plan); the
        figures are in docs/results/history.md."""
        signature = _parsed_from(body)
        state = self._state(key)
        held = state.parsed
        if held is not None and held[0] == signature:
            parsed = held[1]
        else:
            parsed = _parse(_manifest_of(signature))
        # The signature of this body, not the last one's: an equal copy kept from a body the
        # cache has since replaced would hold a second copy of the spec.
        state.parsed = (signature, parsed)
        self._recent_parses.pop(key, None)
        self._recent_parses[key] = None  # last: the most recently used
        if len(self._recent_parses) > PARSE_CACHE_SIZE:
            oldest = next(iter(self._recent_parses))
            del self._recent_parses[oldest]
            if oldest in self._jobs:
                self._jobs[oldest].parsed = None
        return parsed

    async def _execute(
        self, key: Key, body: dict[str, Any], job: FineTuneJob | None, plan: Plan
    ) -> bool:
        """Write the status (or hold a new job's first one back: _hold), act, post the
        Events. `body` is the object as stored (its status is what the patch is made
        against). False when the job is gone or failed on a child here (nothing more to do
        in this pass)."""
        namespace, name = key
        before = body.get("status") or {}
        after = plan.status.model_dump(mode="json", by_alias=True, exclude_none=True)
        state = self._state(key)
        if state.unknown_status:
            after = kept(after, before, state.unknown_status)
        patch = merge_patch(before, after)
        held = bool(patch) and self._hold(key, before, plan, after)
        events = [] if held else plan.events
        if patch and not held:
            stored = await asyncio.to_thread(self.kube.patch_status, namespace, name, patch)
            released, state.held = state.held, None
            if released is not None:
                events = released.events_to_tell(plan.status.phase) + events
            if stored is None:  # gone: kopf does not tell of a job deleted while its
                self.cache.observe_job(key, None)  # watch was down and listed again
                self.queue.add(key)  # the next pass forgets it
                return False
            self._wrote(state, as_written(body, patch, stored, self._status_schema()))
        try:
            if plan.actions:  # most passes act on nothing: no copy of the settings for them
                settings = with_recorded(self.settings, plan.status.settings)
                for action in plan.actions:
                    await self._act(key, job, action, settings)
        except ChildError as error:
            await self._fail_child(key, body, job, plan.status, error)
            return False
        for event in events:
            await asyncio.to_thread(
                self.kube.post_event, body, event.type, event.reason, event.message
            )
            log.info("%s/%s: %s: %s", namespace, name, event.reason, event.message)
        return True

    async def _fail_child(
        self,
        key: Key,
        body: dict[str, Any],
        job: FineTuneJob | None,
        status: FineTuneJobStatus,
        error: ChildError,
    ) -> None:
        """Retrying cannot help (an invalid child, a name held by a stranger): the job fails
        with the API server's or the owner check's words, once. `status` is the one this
        pass wrote, so the failure is patched over it."""
        ttl = job.spec.run_policy.ttl_seconds_after_finished if job else _raw_ttl(body)
        failed = rejected(
            status,
            error.message,
            body.get("metadata", {}).get("generation"),
            datetime.now(UTC),
            error.reason,
            ttl,
        )
        # Held: nothing was stored yet; its Events ("Created") were not true after all.
        state = self._state(key)
        held, state.held = state.held, None
        written = {} if held else status.model_dump(mode="json", by_alias=True, exclude_none=True)
        await self._execute(key, {**body, "status": written}, job, failed)

    async def _check_children(
        self, key: Key, body: dict[str, Any], job: FineTuneJob | None, plan: Plan
    ) -> None:
        """While an attempt runs, its other children are verified (one GET each when intact)
        when the watch saw one of them change or vanish (child_changed), and every
        child_check_seconds when that is set, not only when the next attempt is created: a
        Role or RoleBinding deleted or edited mid-attempt would otherwise cut the trainer's
        progress reports (or keep widened rights) until a restart that may never come.
        Deleted children are created again, edited Roles/RoleBindings/NetworkPolicies put
        back (drift.REPAIRABLE), a stranger's object under a child's name fails the job
        (ChildConflict). An attempt's creation verifies them all (so does the next one)."""
        state = self._state(key)
        if job is None or plan.status.phase in TERMINAL_PHASES:
            state.children_checked, state.children_changed = None, False
            return
        now = asyncio.get_running_loop().time()
        if any(isinstance(action, CreateAttempt) for action in plan.actions):
            state.children_checked, state.children_changed = now, False
            return
        if state.children_checked is None:
            state.children_checked = now
        every = self.child_check_seconds
        due = state.children_changed or (every > 0 and now - state.children_checked >= every)
        if plan.actions or not due:
            return
        attempt = plan.status.attempt
        uid = job.metadata.uid or ""
        jobs, _ = self._owned(key, uid, attempt)
        state.children_changed = False  # a change from now on brings another pass
        if Names(key[1], attempt).batch_job not in jobs:
            return  # not started (or torn down): its creation verifies the children
        state.children_checked = now
        settings = with_recorded(self.settings, plan.status.settings)
        children = build_children(job, attempt=attempt, settings=settings)
        *prerequisites, _ = children.stages()
        try:
            await self._ensure_identity(key[0], children)
            for stage in prerequisites:
                await _gather_all(
                    asyncio.to_thread(self.kube.ensure, key[0], child, uid) for child in stage
                )
        except ChildError as error:
            await self._fail_child(key, body, job, plan.status, error)
        except Exception:
            state.children_changed = True  # not verified: the pass's retry checks again
            raise

    async def _act(
        self, key: Key, job: FineTuneJob | None, action: Any, settings: Settings
    ) -> None:
        namespace, name = key
        if isinstance(action, CreateAttempt):
            if job is None:  # never planned for an unparsable spec
                return
            children = build_children(job, attempt=action.attempt, settings=settings)
            uid = job.metadata.uid
            # Stage by stage (children.Children.stages); within a stage, all at once. Every
            # child is verified as this job's, on every attempt (a deleted one is re-created).
            *prerequisites, (batch_job,) = children.stages()
            await self._ensure_identity(namespace, children)
            for stage in prerequisites:
                await _gather_all(
                    asyncio.to_thread(self.kube.create, namespace, c, uid) for c in stage
                )
            created = await asyncio.to_thread(self.kube.create_object, namespace, batch_job, uid)
            if created is not None:
                self.cache.observe_created_job(key, batch_job["metadata"]["name"], created)
                self.metrics.count_job_created()
                if action.attempt > 0:
                    self.metrics.count_restart()
            elif action.attempt == 0:
                await self._adopt_settings(key, batch_job["metadata"]["name"])
        elif isinstance(action, DeleteJob):
            await asyncio.to_thread(self.kube.delete_job, namespace, action.name)
        elif isinstance(action, SuspendJob):
            await asyncio.to_thread(self.kube.suspend_job, namespace, action.name, action.suspend)
        elif isinstance(action, DeleteSelf):
            log.info("%s/%s: ttlSecondsAfterFinished passed: deleting it", namespace, name)
            await asyncio.to_thread(self.kube.delete_finetunejob, namespace, name)

    async def _adopt_settings(self, key: Key, batch_job_name: str) -> None:
        """Attempt 0's Job already existed (an operator that died before writing the first
        status, its watch not caught up yet): record the settings it was made with, not
        today's (docs/install.md: restarts run what the first attempt ran)."""
        namespace, name = key
        existing = await asyncio.to_thread(self.kube.get_job, namespace, batch_job_name)
        spec = (self.cache.jobs.get(key) or {}).get("spec") or {}
        named_hub = (spec.get("model") or {}).get("hubEndpoint")
        used = settings_of(existing, named_hub) if existing is not None else None
        if used is None:
            return
        recorded = used.model_dump(mode="json", by_alias=True, exclude_none=True)
        state = self._state(key)
        if state.held is not None:
            state.held.status["settings"] = recorded
            return
        body = state.written or self.cache.jobs.get(key) or {}
        if (body.get("status") or {}).get("settings") != recorded:
            patch = {"settings": recorded}
            stored = await asyncio.to_thread(self.kube.patch_status, namespace, name, patch)
            if stored is not None:
                self._wrote(state, as_written(body, patch, stored, self._status_schema()))

    def _status_schema(self) -> dict[str, Any] | None:
        """The stored CRD's schema of the status (its defaults: cache.as_written); None
        until the CRD's watch has delivered."""
        status = ((self.crd_schema or {}).get("properties") or {}).get("status")
        return status if isinstance(status, dict) else None

    def _hold(self, key: Key, stored: dict[str, Any], plan: Plan, planned: dict[str, Any]) -> bool:
        """Whether to hold back this pass's status write: only a new job's first status
        while it would say "Pending, waiting for the pods" and its grace has not run out
        (the module's docstring). Held, it is what the next passes plan from, and each pass
        asks for a look when the grace ends (reconcile)."""
        if stored or plan.status.attempt != 0 or plan.status.phase != "Pending":
            return False
        if plan.status.message != WAITING_FOR_PODS:  # a reason the user must read: now
            return False
        now = asyncio.get_running_loop().time()
        state = self._state(key)
        held = state.held or Held(due=now + self.first_status_grace_seconds)
        if now >= held.due:
            return False
        held.status = planned
        held.events += [e for e in plan.events if e not in held.events]  # told once
        state.held = held
        return True

    def _with_held_status(self, key: Key, stored: dict[str, Any]) -> dict[str, Any]:
        """The object to plan from: as stored, or with the first status this operator holds
        back for it (as long as nothing has been stored since: another operator's write, a
        leader change, wins)."""
        state = self._jobs.get(key)
        if state is None or state.held is None:
            return stored
        if stored.get("status"):
            state.held = None
            return stored
        return {**stored, "status": state.held.status}

    def _wrote(self, state: JobState, written: dict[str, Any]) -> None:
        state.written = written
        state.written_at = time.monotonic()

    def _freshest(self, key: Key) -> dict[str, Any] | None:
        """The object to plan from: as watched, or what this operator's last status write
        returned (with the spec as watched) until the watch brings that write back.
        resourceVersions are opaque: the watch has caught up when it shows the write's very
        version (events come in order), and a write is trusted at most WRITTEN_KEPT_SECONDS
        (a watch that listed again may never show that version)."""
        watched = self.cache.jobs.get(key)
        state = self._jobs.get(key)
        written = state.written if state is not None else None
        if watched is None or state is None or written is None:
            return watched
        if (
            written["metadata"].get("uid") != watched["metadata"].get("uid")  # made again
            or _version(written) == _version(watched)
            or time.monotonic() - state.written_at > WRITTEN_KEPT_SECONDS
        ):
            state.written = None
            return watched
        if written.get("spec") == watched.get("spec"):
            return written
        return {**written, "spec": watched.get("spec", written.get("spec"))}

    def jobs_now(self) -> list[dict[str, Any]]:
        """Every FineTuneJob in the cache, with the status this operator last wrote when the
        watch has not brought it back yet (what /metrics reports)."""
        return [self._freshest_for_metrics(key, body) for key, body in self.cache.jobs.items()]

    def _freshest_for_metrics(self, key: Key, watched: dict[str, Any]) -> dict[str, Any]:
        state = self._jobs.get(key)
        if state is not None and state.written is not None:
            return state.written
        return self._with_held_status(key, watched)


async def _gather_all(calls: Any) -> None:
    """Await every call even when one fails (no create left running unobserved), then raise
    the first ChildError, else the first other error."""
    results = await asyncio.gather(*calls, return_exceptions=True)
    errors = [r for r in results if isinstance(r, BaseException)]
    for error in sorted(errors, key=lambda e: not isinstance(e, ChildError)):
        raise error


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


Parsed = tuple[FineTuneJob | None, str | None, list[Loc]]
# What of a stored object's metadata the FineTuneJob model reads (ftapi's ObjectMeta); the
# rest (resourceVersion, managedFields, ...) changes with every write and means nothing to it.
PARSED_METADATA = (
    "name",
    "generateName",
    "namespace",
    "labels",
    "annotations",
    "generation",
    "uid",
)


def _parsed_from(body: dict[str, Any]) -> tuple[Any, ...]:
    """The parts of a stored FineTuneJob its parse depends on: everything but its status
    and the metadata the model does not read."""
    metadata = body.get("metadata") or {}
    kept = {k: metadata[k] for k in PARSED_METADATA if k in metadata}
    rest = tuple(sorted((k, v) for k, v in body.items() if k not in ("status", "metadata")))
    return (kept, rest)


def _manifest_of(signature: tuple[Any, ...]) -> dict[str, Any]:
    kept, rest = signature
    return {**dict(rest), "metadata": kept}


def _parse(manifest: dict[str, Any]) -> Parsed:
    """The stored job (without its status), or why it is invalid; and where it holds fields
    newer than this code (ftapi.skew)."""
    try:
        job, unknown = parse_stored_job(manifest)
        return job, None, unknown
    except (InvalidSpecError, ValidationError, ValueError) as error:
        return None, str(error)[:2000], []


def _raw_ttl(body: dict[str, Any]) -> int | None:
    """ttlSecondsAfterFinished of a spec that does not parse as a whole (the CRD schema
    still guarantees the field itself is a non-negative integer when present)."""
    run_policy = (body.get("spec") or {}).get("runPolicy") or {}
    value = run_policy.get("ttlSecondsAfterFinished")
    return value if isinstance(value, int) and not isinstance(value, bool) and value >= 0 else None


def _age_seconds(obj: dict[str, Any]) -> float:
    born = api_time(obj.get("metadata", {}).get("creationTimestamp"))
    if born is None:
        return float("inf")  # unknown: old enough
    return (datetime.now(UTC) - born).total_seconds()


def _version(body: dict[str, Any]) -> str:
    """An object's resourceVersion: opaque, only ever compared for equality."""
    return str(body.get("metadata", {}).get("resourceVersion") or "")


def served_schema(crd: dict[str, Any] | None) -> dict[str, Any] | None:
    """The openAPIV3Schema of this operator's API version in a CRD object (None if absent)."""
    for version in ((crd or {}).get("spec") or {}).get("versions") or []:
        if version.get("name") == VERSION:
            schema = (version.get("schema") or {}).get("openAPIV3Schema")
            return schema if isinstance(schema, dict) else None
    return None
