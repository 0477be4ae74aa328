"""decide(stored, observed, settings) -> Plan: the FineTuneJob's next status and what to do.
Pure: every decision from what the controller observed to what it writes and does.

    plan = decide(Stored(job=..., ...), Observed(status=..., batch_job=..., pods=[...], now=...),
                  settings, operator)
    plan.status      # FineTuneJobStatus to write (phase, conditions, progress, restarts...)
    plan.actions     # CreateAttempt / DeleteJob / SuspendJob / DeleteSelf, in order
    plan.events      # one Event per transition

decide() decides, in order: a status this operator cannot read (left alone), fields newer
than it whose meaning it cannot judge yet (wait), a spec that does not parse or that the
policy refuses (Failed), newer fields set (held), else the lifecycle (reconcile()).

Level-triggered: the same observation always gives the same plan, so a handler may run it
any number of times, and an operator killed halfway through a plan finds, on restart, the
status it wrote first and finishes the work (names are deterministic: no duplicate Jobs).

The lifecycle: an attempt is one Indexed Job. When any of its pods fails (exit code,
OOMKilled, preemption, eviction, a lost node) the whole attempt is torn down and the next
one created, up to runPolicy.maxRestarts; the trainer resumes from its newest checkpoint.
A terminal job (Succeeded, Failed) never gets children again; only its TTL acts on it.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from datetime import datetime, timedelta
from typing import Any

from ftapi.contract import TRAINER_CONTAINER, worse_than_base
from ftapi.loading import FieldError
from ftapi.progress import ProgressReport, RankReport, heartbeat_seconds
from ftapi.skew import NewerFields
from ftapi.v1alpha1 import FineTuneJob, FineTuneJobStatus
from ftapi.v1alpha1.scheduling import MAX_SECONDS
from ftapi.v1alpha1.status import (
    CONDITION_TYPES,
    FAILED,
    IMPROVED,
    PROGRESS_READABLE,
    RESOURCES_CREATED,
    RUNNING,
    SUCCEEDED,
    SUSPENDED,
    TERMINAL_PHASES,
    VALIDATED,
    Condition,
    ConditionStatus,
)

from .children import Names
from .config import Settings, settings_of, settings_used, with_recorded
from .failures import (
    BLOCKERS,
    FINAL,
    Failure,
    attempt_failure,
    job_condition,
    pending_reason,
    refused_as_invalid,
)
from .kueue import QueueState
from .policy import policy_violation
from .ranks import (
    other_stalls,
    peer_stalls_due,
    silences,
    straggler_message,
    track_stragglers,
    where,
)
from .status_format import (
    copy_progress,
    needs_newer_operator,
    spoken,
    status_needs_newer_operator,
    summarise,
)
from .timestamps import api_time

# Reasons of version skew (ftapi.skew).
NEEDS_NEWER_OPERATOR = "NeedsNewerOperator"
NEWER_FIELDS_IGNORED = "NewerFieldsIgnored"
PROGRESS_UNREADABLE = "ProgressUnreadable"

WAITING_FOR_PODS = "waiting for the pods to start"
MAX_MESSAGE = 4096  # the CRD's limit on status.message


@dataclass(frozen=True)
class Observed:
    """What the operator sees of one FineTuneJob's world, read from its watches."""

    status: FineTuneJobStatus
    now: datetime
    batch_job: dict[str, Any] | None = None
    """The current attempt's Job (named Names(job, status.attempt).batch_job), if any."""
    pods: list[dict[str, Any]] = field(default_factory=list)
    """The current attempt's pods."""
    other_jobs: list[str] = field(default_factory=list)
    """Names of this FineTuneJob's Jobs from other attempts that still exist."""
    progress: ProgressReport | None = None
    ranks: dict[int, RankReport] = field(default_factory=dict)
    """Each rank's own last report (liveness and pace), by rank."""
    lost_nodes: frozenset[str] = frozenset()
    """Nodes that are NotReady or gone: their pods will not finish."""
    pod_create_failure: str | None = None
    """Why the Job controller could not create the current attempt's pods (its latest
    FailedCreate Event: a ResourceQuota, a missing PriorityClass, Pod Security), if any."""
    queue_state: QueueState | None = None
    """Why Kueue holds the current attempt's suspended Job (its Workload), if it says."""
    progress_error: str | None = None
    """Why the trainer's newest report could not be read (`progress` is the last readable)."""


@dataclass(frozen=True)
class CreateAttempt:
    attempt: int


@dataclass(frozen=True)
class DeleteJob:
    name: str


@dataclass(frozen=True)
class SuspendJob:
    name: str
    suspend: bool


@dataclass(frozen=True)
class DeleteSelf:
    """ttlSecondsAfterFinished has passed."""


Action = CreateAttempt | DeleteJob | SuspendJob | DeleteSelf


@dataclass(frozen=True)
class Event:
    type: str  # Normal | Warning
    reason: str
    message: str


@dataclass
class Plan:
    status: FineTuneJobStatus
    actions: list[Action] = field(default_factory=list)
    events: list[Event] = field(default_factory=list)
    requeue_after: float | None = None
    """Look again after this many seconds even if nothing changes (TTL, deadline)."""


@dataclass(frozen=True)
class Stored:
    """What the stored FineTuneJob says before any decision is made from it."""

    job: FineTuneJob | None
    """Its spec, parsed; None when it does not parse (`invalid` says why)."""
    invalid: str | None = None
    generation: int | None = None
    raw_ttl: int | None = None
    """ttlSecondsAfterFinished read from the raw manifest (for a spec that does not parse)."""
    unreadable: tuple[FieldError, ...] = ()
    """Values in its status this operator cannot read (an operator newer than it wrote them)."""
    told_unreadable: str | None = None
    """What was told (an Event) the last time its status could not be read."""
    newer: NewerFields | None = field(default_factory=NewerFields)
    """Where its spec holds fields newer than this operator; None while they cannot be
    judged (the CRD's schema, which says their defaults, has not been seen yet)."""


def decide(stored: Stored, observed: Observed, settings: Settings, operator: str) -> Plan:
    """The job's next status and actions: every decision from what is observed (the
    module's docstring lists them in order)."""
    status, now, generation = observed.status, observed.now, stored.generation
    if stored.unreadable:
        # Acting on a state it cannot read could restart a job that runs or end one that
        # is done: the job is left as it is, and the reason told once.
        message = status_needs_newer_operator(list(stored.unreadable), operator)
        told = stored.told_unreadable == message
        events = [] if told else [Event("Warning", NEEDS_NEWER_OPERATOR, message)]
        return Plan(status=editable(status), events=events)
    if stored.newer is None:  # nothing changes until the CRD's watch has delivered
        return Plan(status=editable(status), requeue_after=2.0)
    job = stored.job
    if job is None:
        invalid = stored.invalid or "invalid spec"
        return rejected(status, invalid, generation, now, ttl=stored.raw_ttl)
    if observed.batch_job is None:
        # Checked before every attempt is created (a restart after the allow-list changed
        # too), never against a Job that already runs.
        refused = policy_violation(job, with_recorded(settings, status.settings))
        if refused is not None:
            reason, message = refused
            ttl = job.spec.run_policy.ttl_seconds_after_finished
            return rejected(status, message, generation, now, reason, ttl)
        if stored.newer.set and status.phase not in TERMINAL_PHASES:
            return held_for_newer_operator(status, stored.newer, operator, generation, now)
    planned = reconcile(job, observed)
    if stored.newer:
        note_newer_fields(planned, status, stored.newer, operator, generation, now)
    if planned.status.settings is None:
        # Recorded with the first status (docs/install.md): what the attempt's Job was made
        # with when it exists (an operator that died before writing the first status, then
        # started with other settings), else what it is about to be.
        if observed.batch_job is not None:
            hub = job.spec.model.hub_endpoint
            planned.status.settings = settings_of(observed.batch_job, hub)
        elif any(isinstance(a, CreateAttempt) for a in planned.actions):
            planned.status.settings = settings_used(job, settings)
    return planned


def editable(status: FineTuneJobStatus) -> FineTuneJobStatus:
    """A deep copy of `status` for a plan to change, the one it came from kept as it was:
    rebuilt from its dump, which is faster than model_copy(deep=True)'s deepcopy
    (docs/results/history.md)."""
    return FineTuneJobStatus.model_validate(status.model_dump(by_alias=True))


def reconcile(job: FineTuneJob, observed: Observed) -> Plan:
    """The lifecycle of a valid job the policy admits: phase, conditions, restarts,
    progress and the actions on its attempts' Jobs."""
    previous = observed.status
    plan = Plan(status=editable(previous))
    status = plan.status
    generation = job.metadata.generation
    now = observed.now
    names = Names(job.name, status.attempt)

    if previous.phase in TERMINAL_PHASES:
        batch_job = observed.batch_job
        if (
            previous.phase == "Failed"
            and batch_job is not None
            and not _finished(batch_job)
            and not batch_job.get("spec", {}).get("suspend")
        ):  # failed, but its pods were not stopped yet (an operator restart in between)
            plan.actions.append(SuspendJob(names.batch_job, True))
        # A late report still says where it stopped; a success keeps its 100 %.
        copy_progress(status, observed.progress, counts=previous.phase == "Failed")
        _ttl(job.spec.run_policy.ttl_seconds_after_finished, plan, now)
        return _finish(plan, previous, generation)

    _condition(status, VALIDATED, "True", "Valid", "the spec is valid", generation, now)
    copy_progress(status, observed.progress)
    _progress_readable(plan, previous, observed.progress_error, generation, now)
    plan.actions += [DeleteJob(name) for name in observed.other_jobs]

    batch_job = observed.batch_job
    if batch_job is not None and job_condition(batch_job, "Complete"):
        _succeed(plan, job, observed.progress, generation, now)
        return _finish(plan, previous, generation)

    deadline = job.spec.run_policy.active_deadline_seconds
    # From when the job first ran, or else from when its Job started its pods: a job stuck
    # Pending (no GPU fits, an image that does not pull) reaches its deadline too; one that
    # waits in a Kueue queue or suspended before it ever ran does not.
    started = status.start_time or _job_start(batch_job)
    if deadline is not None and started is not None:
        remaining = (started + _seconds(deadline) - now).total_seconds()
        if remaining <= 0:
            message = f"the job ran longer than activeDeadlineSeconds ({deadline} s)"
            _fail(plan, Failure("DeadlineExceeded", message), generation, now)
            if observed.batch_job is not None:
                plan.actions.append(DeleteJob(names.batch_job))
            return _finish(plan, previous, generation)
        plan.requeue_after = remaining

    scheduling = job.spec.scheduling
    if batch_job is None:
        plan.actions.append(CreateAttempt(status.attempt))
        message = f"created attempt {status.attempt} (Job {names.batch_job})"
        _condition(status, RESOURCES_CREATED, "True", "Created", message, generation, now)
        plan.events.append(Event("Normal", "Created", message))
        if status.phase != "Restarting":
            _waiting(status, job, generation, now)
        return _finish(plan, previous, generation)

    job_suspended = bool(batch_job.get("spec", {}).get("suspend"))
    # Pods a suspension stops (exit 143) are not failures: only the Job's verdict counts then.
    pods = [] if job_suspended else observed.pods
    failure = attempt_failure(batch_job, pods, observed.lost_nodes)
    if failure is not None and failure.reason == "Stalled":  # every rank that stalled
        wait = peer_stalls_due(
            observed.ranks, status.attempt, failure.message, _first_failed_at(pods), now
        )
        if wait is not None:  # the others' watchdogs are about to say what they waited on
            _requeue_after(plan, wait)
            return _finish(plan, previous, generation)
        also = other_stalls(observed.ranks, status.attempt, failure.message)
        failure = Failure(failure.reason, failure.message + also)
    if failure is None and not job_suspended:
        failure, wait = report_silence(job, observed.progress, observed.ranks, status.attempt, now)
        _requeue_after(plan, wait)
    if failure is None and not job_suspended:
        failure, wait = first_report_overdue(
            job, observed.progress, observed.pods, status.attempt, now
        )
        _requeue_after(plan, wait)
    if failure is not None:
        _attempt_failed(plan, job, failure, names, generation, now, stop=not _finished(batch_job))
        return _finish(plan, previous, generation)

    if job_condition(batch_job, "SuccessCriteriaMet"):
        _succeed(plan, job, observed.progress, generation, now)
        return _finish(plan, previous, generation)

    if scheduling.suspend:
        if not job_suspended:
            plan.actions.append(SuspendJob(names.batch_job, True))
        _set_suspended(status, True, generation, now)
        status.phase = "Suspended"
        status.message = "suspended (spec.scheduling.suspend): the pods are stopped"
        _condition(status, RUNNING, "False", "Suspended", status.message, generation, now)
        return _finish(plan, previous, generation)
    _set_suspended(status, False, generation, now)
    if job_suspended:
        if scheduling.queue_name:  # Kueue admits the Job by unsuspending it
            _waiting(status, job, generation, now, observed.queue_state)
        else:  # the user resumed a suspended job
            plan.actions.append(SuspendJob(names.batch_job, False))
            status.phase = "Pending"
            status.message = "resuming"
        return _finish(plan, previous, generation)

    create_failure = observed.pod_create_failure
    if create_failure and refused_as_invalid(create_failure) and not observed.pods:
        message = f"the API server refuses the job's pods: {create_failure}"
        _fail(plan, Failure("PodRejected", message), generation, now)
        plan.actions.append(SuspendJob(names.batch_job, True))  # the Job controller retries
        return _finish(plan, previous, generation)
    _active(status, job, observed.pods, generation, now, create_failure)
    _warnings(plan, observed.progress)
    _stragglers(plan, job, observed.ranks, now)
    return _finish(plan, previous, generation)


def _progress_readable(
    plan: Plan,
    previous: FineTuneJobStatus,
    error: str | None,
    generation: int | None,
    now: datetime,
) -> None:
    """A report the operator cannot read freezes the progress it shows: the condition says
    so (and an Event, once), rather than a log line only the platform team sees."""
    before = _find(previous, PROGRESS_READABLE)
    if error is None:
        if before is not None and before.status == "False":
            _condition(
                plan.status,
                PROGRESS_READABLE,
                "True",
                "Readable",
                "the trainer's reports are read again",
                generation,
                now,
            )
        return
    message = (
        f"the trainer's newest progress report cannot be read ({error}); the status "
        "shows the last one that could"
    )
    _condition(
        plan.status, PROGRESS_READABLE, "False", PROGRESS_UNREADABLE, message, generation, now
    )
    if before is None or before.status != "False":
        plan.events.append(Event("Warning", PROGRESS_UNREADABLE, message))


def _first_failed_at(pods: list[dict[str, Any]]) -> datetime | None:
    """When the first of these pods' containers ended in failure (its finishedAt)."""
    ended = [
        parsed
        for pod in pods
        for container in (pod.get("status") or {}).get("containerStatuses") or []
        if ((container.get("state") or {}).get("terminated") or {}).get("exitCode")
        and (parsed := api_time(container["state"]["terminated"].get("finishedAt")))
    ]
    return min(ended, default=None)


def _requeue_after(plan: Plan, seconds: float | None) -> None:
    if seconds is not None:
        plan.requeue_after = min(seconds, plan.requeue_after or seconds)


def _warnings(plan: Plan, report: ProgressReport | None) -> None:
    """The current attempt's warnings (loss spikes) into status, each new one an Event."""
    status = plan.status
    if report is None or report.attempt != status.attempt:
        return
    seen = {(w.reason, w.step, w.message) for w in status.warnings}
    for warning in report.warnings:
        if (warning.reason, warning.step, warning.message) not in seen:
            plan.events.append(Event("Warning", warning.reason, warning.message))
    status.warnings = [w.model_copy() for w in report.warnings]


def _stragglers(plan: Plan, job: FineTuneJob, ranks: dict[int, RankReport], now: datetime) -> None:
    """status.stragglers, and a Warning Event for each rank slow for windowSeconds on end."""
    spec = job.spec.run_policy.straggler_detection
    found = track_stragglers(plan.status.stragglers, ranks, plan.status.attempt, spec, now)
    plan.status.stragglers = found.now
    for straggler in found.due:
        plan.events.append(Event("Warning", "Straggler", straggler_message(straggler, spec)))
    _requeue_after(plan, found.requeue_after)


def report_silence(
    job: FineTuneJob,
    report: ProgressReport | None,
    ranks: dict[int, RankReport],
    attempt: int,
    now: datetime,
) -> tuple[Failure | None, float | None]:
    """Stalled when this attempt's trainer, having reported, has been silent longer than
    runPolicy.stallDetection.minimumSeconds: rank 0's progress report, or any rank's own
    report (ranks.py). A running trainer re-sends them at least every
    ftapi.progress.heartbeat_seconds from a thread of its own, so silence means a stopped or
    frozen process (one whose threads cannot run, which its own watchdog cannot catch
    either). Else the seconds until that could be so, to look again then."""
    spec = job.spec.run_policy.stall_detection
    if not spec.enabled or report is None or report.attempt != attempt or report.stage == "done":
        return None, None
    limit = spec.minimum_seconds
    live = silences(ranks, attempt, now)
    quiet = [(r, seconds) for r, seconds in live if seconds > limit]
    silent = (now - report.updated_at).total_seconds()
    if silent <= limit and not quiet:
        return None, limit - max([silent, *(seconds for _, seconds in live)]) + 1.0
    every = f"a running trainer reports at least every {heartbeat_seconds(limit):g} s"
    if quiet:
        named = "; ".join(
            f"{where(r.rank, r.pod, r.node)} silent for {seconds:.0f} s, its last report at "
            f"step {r.step}"
            for r, seconds in quiet
        )
        message = (
            f"{named} (runPolicy.stallDetection.minimumSeconds {limit}; {every}): "
            f"the process is stopped or frozen; rank 0 was at step {report.step}, "
            f"stage {report.stage}"
        )
    else:
        message = (
            f"no progress report from the trainer for {silent:.0f} s (runPolicy.stallDetection."
            f"minimumSeconds {limit}; {every}): the last one was at step {report.step}, stage "
            f"{report.stage}, at {report.updated_at:%H:%M:%S}Z; the process is stopped or frozen"
        )
    return Failure("Stalled", message), None


def first_report_overdue(
    job: FineTuneJob,
    report: ProgressReport | None,
    pods: list[dict[str, Any]],
    attempt: int,
    now: datetime,
) -> tuple[Failure | None, float | None]:
    """Stalled when this attempt's pods have all been running longer than
    runPolicy.stallDetection.startupSeconds plus a margin with no progress report from it.
    The trainer's own watchdog, started before its imports, stops a process still starting
    at startupSeconds and names the phase; this catches what it cannot: torchrun waiting in
    its rendezvous before any worker runs, a process whose threads cannot run. The clock
    starts when the last pod's trainer container started (a gang waiting for its last pod
    to be scheduled is not stalled). Else the seconds until that could be so."""
    spec = job.spec.run_policy.stall_detection
    if not spec.enabled or (report is not None and report.attempt == attempt):
        return None, None
    nodes = job.spec.resources.nodes
    started = [t for pod in pods if (t := _trainer_started_at(pod)) is not None]
    if len(started) < nodes:
        return None, None
    margin = first_report_margin(spec.minimum_seconds)
    limit = spec.startup_seconds + margin
    waited = (now - max(started)).total_seconds()
    if waited <= limit:
        return None, limit - waited + 1.0
    message = (
        f"no progress report from the trainer {waited:.0f} s after its pods started "
        f"(runPolicy.stallDetection.startupSeconds {spec.startup_seconds} + "
        f"{margin:g} s): the trainer's own watchdog, "
        "which names the phase, did not stop it either, so it is stuck where that cannot "
        "run: torchrun's rendezvous before its workers start (a peer that never joins), or a "
        "process whose threads cannot run"
    )
    return Failure("Stalled", message), None


def first_report_margin(minimum_seconds: int) -> float:
    """What the operator waits past startupSeconds before calling a silent new attempt
    stalled: time for the trainer's watchdog, which fires at startupSeconds, to write its
    stacks and verdict and end the pod (its verdict names the phase; the operator's cannot)."""
    return float(min(minimum_seconds, 120))


def _trainer_started_at(pod: dict[str, Any]) -> datetime | None:
    """When the pod's trainer container started running (None: not running)."""
    for container in (pod.get("status") or {}).get("containerStatuses") or []:
        if container.get("name") == TRAINER_CONTAINER:
            running = (container.get("state") or {}).get("running") or {}
            return api_time(running.get("startedAt"))
    return None


def rejected(
    previous: FineTuneJobStatus,
    message: str,
    generation: int | None,
    now: datetime,
    reason: str = "InvalidSpec",
    ttl: int | None = None,
) -> Plan:
    """A spec the CRD schema let through but the full validation (InvalidSpec) or the
    operator's policy (e.g. ImageNotAllowed) refuses: Failed, and no children, ever.

    ttlSecondsAfterFinished applies as to any finished job (the caller reads it from the raw
    manifest when the spec does not parse), so refused jobs do not pile up."""
    plan = Plan(status=editable(previous))
    if previous.phase not in TERMINAL_PHASES:
        _condition(plan.status, VALIDATED, "False", reason, message, generation, now)
        _fail(plan, Failure(reason, message), generation, now)
    _ttl(ttl, plan, now)
    return _finish(plan, previous, generation)


def held_for_newer_operator(
    previous: FineTuneJobStatus,
    newer: NewerFields,
    operator: str,
    generation: int | None,
    now: datetime,
) -> Plan:
    """No attempt starts: the spec asks for something (`newer.set`) that this operator does
    not know. Not a failure: an operator that knows the fields picks the job up as it is."""
    plan = Plan(status=editable(previous))
    status = plan.status
    message = needs_newer_operator(newer, operator)
    _condition(status, VALIDATED, "False", NEEDS_NEWER_OPERATOR, message, generation, now)
    _condition(status, RUNNING, "False", NEEDS_NEWER_OPERATOR, message, generation, now)
    status.phase, status.message = "Pending", message
    return _finish(plan, previous, generation)


def note_newer_fields(
    plan: Plan,
    previous: FineTuneJobStatus,
    newer: NewerFields,
    operator: str,
    generation: int | None,
    now: datetime,
) -> None:
    """The plan of a job whose spec holds fields newer than this operator: those holding the
    CRD's default mean "as before" and are ignored; an attempt already running goes on as
    it was made (by an operator that knew the fields), but none is started while fields
    this operator does not know are set (the next pass holds the job instead)."""
    if plan.status.phase in TERMINAL_PHASES:
        return
    if newer.set and any(isinstance(a, CreateAttempt) for a in plan.actions):
        # The attempt ended and a restart was planned: the old one is torn down as planned,
        # the new one waits (the restart stays counted).
        plan.actions = [a for a in plan.actions if not isinstance(a, CreateAttempt)]
        message = needs_newer_operator(newer, operator)
        plan.status.phase = "Pending"
        plan.status.message = message
        for type_ in (VALIDATED, RUNNING):
            _condition(plan.status, type_, "False", NEEDS_NEWER_OPERATOR, message, generation, now)
        was = _find(previous, RUNNING)
        if was is None or was.reason != NEEDS_NEWER_OPERATOR:
            plan.events.append(Event("Warning", NEEDS_NEWER_OPERATOR, message))
        return
    if newer.set:
        message = needs_newer_operator(newer, operator) + "; the running attempt goes on"
    else:
        one = len(newer.at_default) == 1
        message = (
            f"{spoken(newer.at_default)} {'is' if one else 'are'} newer than this operator "
            f"({operator}) and {'holds' if one else 'hold'} the CRD's default: ignored (a "
            "field added to the API defaults to the behaviour from before it)"
        )
    _condition(plan.status, VALIDATED, "True", NEWER_FIELDS_IGNORED, message, generation, now)
    was = _find(previous, VALIDATED)
    if was is None or was.message != message:
        plan.events.append(
            Event("Warning" if newer.set else "Normal", NEWER_FIELDS_IGNORED, message)
        )


# --- transitions ------------------------------------------------------------------------


def _attempt_failed(
    plan: Plan,
    job: FineTuneJob,
    failure: Failure,
    names: Names,
    generation: int | None,
    now: datetime,
    *,
    stop: bool,
) -> None:
    status = plan.status
    limit = job.spec.run_policy.max_restarts
    what = f"attempt {status.attempt} failed ({failure.reason}): {failure.message}"
    final = failure.reason in FINAL  # a restart would fail the same way
    if status.restarts < limit and not final:
        status.restarts += 1
        status.attempt += 1
        status.stragglers = []  # the new attempt's ranks are measured afresh
        status.phase = "Restarting"
        status.message = (
            f"{what}; restart {status.restarts} of {limit} resumes from the newest checkpoint"
        )
        _condition(status, RUNNING, "False", failure.reason, status.message, generation, now)
        plan.actions += [DeleteJob(names.batch_job), CreateAttempt(status.attempt)]
        plan.events.append(Event("Warning", "Restarting", status.message))
        return
    reason = failure.reason
    message = f"{what}; no restarts left (maxRestarts {limit})" if limit else what
    if final:
        message = (
            f"{what}; not restarted: a restart would fail the same way (fix its "
            "cause, then create the job again)"
        )
    _fail(plan, Failure(reason, message), generation, now)
    if reason == "PublishFailed" and status.model_uri is None:
        # The trainer says so only once the final model is in output.uri; its report naming
        # it may reach the operator after the pod's failure (then it is copied as a late one).
        status.model_uri = _final_uri(job)
    if stop:  # the attempt's other pods; the Job and its failed pods stay for their logs
        plan.actions.append(SuspendJob(names.batch_job, True))


def _settle(status: FineTuneJobStatus) -> None:
    """A finished job shows no in-flight figures: pace, time left, the optimizer's step
    size and gradient norm describe a run that is no longer happening."""
    if status.progress is not None:
        status.progress.tokens_per_second = None
        status.progress.eta_seconds = status.progress.eta = None
    if status.metrics is not None:
        status.metrics.learning_rate = status.metrics.grad_norm = None
    status.stragglers = []


def _fail(plan: Plan, failure: Failure, generation: int | None, now: datetime) -> None:
    status = plan.status
    _settle(status)
    status.phase = "Failed"
    status.failure_reason = failure.reason
    status.message = failure.message
    status.completion_time = now
    _condition(status, FAILED, "True", failure.reason, failure.message, generation, now)
    _condition(status, RUNNING, "False", failure.reason, failure.message, generation, now)
    _condition(status, SUCCEEDED, "False", failure.reason, failure.message, generation, now)


def _succeed(
    plan: Plan,
    job: FineTuneJob,
    progress: ProgressReport | None,
    generation: int | None,
    now: datetime,
) -> None:
    status = plan.status
    status.phase = "Succeeded"
    status.completion_time = now
    status.model_uri = (progress.model_uri if progress else None) or _final_uri(job)
    status.message = f"training finished; model at {status.model_uri}"
    if status.model_image:  # this attempt's report, copied by _copy_progress
        status.message += f" and {status.model_image}"
    _settle(status)
    if status.progress is not None and status.progress.total_steps:
        status.progress.step = status.progress.total_steps
        summarise(status.progress)
        status.progress.eta_seconds, status.progress.eta = 0, "0s"
    _condition(status, SUCCEEDED, "True", "Completed", status.message, generation, now)
    _condition(status, RUNNING, "False", "Completed", status.message, generation, now)
    _condition(status, FAILED, "False", "Completed", status.message, generation, now)
    _judge_improvement(plan, generation, now)


def _judge_improvement(plan: Plan, generation: int | None, now: datetime) -> None:
    """Improved: the validation loss after training against the base model's (both are in
    the final metrics when evaluation.compareBase); worse is a Warning Event too."""
    metrics = plan.status.metrics
    before = metrics.additional.get("eval_loss/base") if metrics else None
    after = metrics.eval_loss if metrics else None
    if before is None or after is None:
        return
    message = worse_than_base(before, after)
    if message is not None:
        _condition(plan.status, IMPROVED, "False", "WorseThanBase", message, generation, now)
        plan.events.append(Event("Warning", "WorseThanBase", message))
    else:
        message = f"the validation loss went from {before:.4g} before training to {after:.4g}"
        _condition(plan.status, IMPROVED, "True", "BetterThanBase", message, generation, now)


def _waiting(
    status: FineTuneJobStatus,
    job: FineTuneJob,
    generation: int | None,
    now: datetime,
    queued: QueueState | None = None,
) -> None:
    scheduling = job.spec.scheduling
    if scheduling.suspend:
        status.phase, status.message = "Suspended", "suspended (spec.scheduling.suspend)"
        _set_suspended(status, True, generation, now)
    elif scheduling.queue_name:
        status.phase = "Queued"
        status.message = f"waiting for Kueue to admit it (queue {scheduling.queue_name})"
        if queued is not None:
            status.message += f": {queued.message}"
    else:
        status.phase, status.message = "Pending", WAITING_FOR_PODS
    reason = {"Suspended": "Suspended", "Queued": "Queued"}.get(status.phase, "Pending")
    if status.phase == "Queued" and queued is not None:
        reason = queued.reason
    _condition(status, RUNNING, "False", reason, status.message, generation, now)


def _active(
    status: FineTuneJobStatus,
    job: FineTuneJob,
    pods: list[dict[str, Any]],
    generation: int | None,
    now: datetime,
    create_failure: str | None = None,
) -> None:
    nodes = job.spec.resources.nodes
    running = [p for p in pods if p.get("status", {}).get("phase") in ("Running", "Succeeded")]
    if len(running) >= nodes:
        if status.start_time is None:
            status.start_time = now
        status.phase = "Running"
        status.message = f"training on {nodes} node(s), attempt {status.attempt}"
        _condition(status, RUNNING, "True", "PodsRunning", status.message, generation, now)
        return
    blocked = pending_reason(pods)
    if blocked is None and create_failure and len(pods) < nodes:
        blocked = Failure(
            "FailedCreate", f"the Job controller cannot create the pods: {create_failure}"
        )
    if status.phase != "Restarting" or blocked is not None:
        status.phase = "Pending"
    if blocked is not None:
        status.message = blocked.message
        _condition(status, RUNNING, "False", blocked.reason, blocked.message, generation, now)
    else:
        # Nothing running yet reads as before the Job existed: no status write (and no
        # watch event) per job only to say "0 of 1".
        status.message = (
            f"{len(running)} of {nodes} pod(s) running" if running else WAITING_FOR_PODS
        )
        reason = "Restarting" if status.phase == "Restarting" else "Pending"
        _condition(status, RUNNING, "False", reason, status.message, generation, now)


def _seconds(seconds: int) -> timedelta:
    """A spec duration as a timedelta, capped at the API's maximum: an unparseable spec's
    raw ttlSecondsAfterFinished reaches here unchecked, and a date overflow would fail every
    reconcile pass of the job."""
    return timedelta(seconds=min(seconds, MAX_SECONDS))


def _ttl(ttl: int | None, plan: Plan, now: datetime) -> None:
    finished = plan.status.completion_time
    if ttl is None or finished is None:
        return
    remaining = (finished + _seconds(ttl) - now).total_seconds()
    if remaining <= 0:
        plan.actions.append(DeleteSelf())
    else:
        plan.requeue_after = remaining


# --- status pieces ----------------------------------------------------------------------


def _set_suspended(
    status: FineTuneJobStatus, suspended: bool, generation: int | None, now: datetime
) -> None:
    if suspended:
        _condition(
            status,
            SUSPENDED,
            "True",
            "Suspended",
            "spec.scheduling.suspend is true",
            generation,
            now,
        )
    elif _find(status, SUSPENDED) is not None:
        _condition(
            status,
            SUSPENDED,
            "False",
            "Resumed",
            "spec.scheduling.suspend is false",
            generation,
            now,
        )


def _condition(
    status: FineTuneJobStatus,
    type_: str,
    value: ConditionStatus,
    reason: str,
    message: str,
    generation: int | None,
    now: datetime,
) -> None:
    """Set one condition; its lastTransitionTime moves only when its status changes."""
    existing = _find(status, type_)
    transition = now
    if existing is not None and existing.status == value:
        transition = existing.last_transition_time
    condition = Condition(
        type=type_,
        status=value,
        reason=reason,
        message=message[:32768],
        last_transition_time=transition,
        observed_generation=generation,
    )
    status.conditions = [c for c in status.conditions if c.type != type_] + [condition]
    status.conditions.sort(
        key=lambda c: CONDITION_TYPES.index(c.type) if c.type in CONDITION_TYPES else 99
    )


def _find(status: FineTuneJobStatus, type_: str) -> Condition | None:
    return next((c for c in status.conditions if c.type == type_), None)


def _job_start(batch_job: dict[str, Any] | None) -> datetime | None:
    """When the Job controller started the Job's pods (it clears this on suspension)."""
    if batch_job is None or batch_job.get("spec", {}).get("suspend"):
        return None
    return api_time(batch_job.get("status", {}).get("startTime"))


def _finished(batch_job: dict[str, Any]) -> bool:
    return bool(job_condition(batch_job, "Failed") or job_condition(batch_job, "Complete"))


def _final_uri(job: FineTuneJob) -> str:
    return f"{job.spec.output.uri.rstrip('/')}/final"


def _finish(plan: Plan, previous: FineTuneJobStatus, generation: int | None) -> Plan:
    """observedGeneration, and an Event for a phase change not already explained."""
    status = plan.status
    status.observed_generation = generation
    if status.message is not None and len(status.message) > MAX_MESSAGE:
        status.message = status.message[: MAX_MESSAGE - 3] + "..."
    if status.phase != previous.phase and not any(e.reason == "Restarting" for e in plan.events):
        kind = "Warning" if status.phase == "Failed" else "Normal"
        reason = status.failure_reason if status.phase == "Failed" else status.phase
        plan.events.append(Event(kind, reason or status.phase, status.message or status.phase))
    for event in _new_blockers(previous, status):
        plan.events.append(event)
    return plan


def _new_blockers(previous: FineTuneJobStatus, status: FineTuneJobStatus) -> list[Event]:
    """A Warning when the Running condition starts to name a problem (once, not per look)."""
    now_running = _find(status, RUNNING)
    before = _find(previous, RUNNING)
    if now_running is None or now_running.reason not in BLOCKERS:
        return []
    if before is not None and before.reason == now_running.reason:
        return []
    return [Event("Warning", now_running.reason, now_running.message)]
