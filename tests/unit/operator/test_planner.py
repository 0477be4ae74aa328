"""reconcile(): a FineTuneJob's lifecycle from what the operator observes. Pure, no cluster.

The Job and pod dicts below are shaped as the Kubernetes API returns them (camelCase), and
`World` passes reconcile() what the controller does: the current attempt's Job and pods
(those labelled with status.attempt), the names of the other attempts' Jobs, and the status
written by the previous pass, read back through the schema as the API server would.
"""

from __future__ import annotations

from collections.abc import Callable
from datetime import datetime, timedelta
from typing import Any

import pytest

from ftapi import parse_job
from ftapi.contract import INVALID_INPUT_MARKER, STALLED, VERDICTS
from ftapi.contract import Verdict as TrainerVerdict
from ftapi.progress import CheckpointReport, ProgressReport, RankReport
from ftapi.v1alpha1 import FineTuneJob, FineTuneJobStatus
from ftapi.v1alpha1.status import (
    FAILED,
    RESOURCES_CREATED,
    RUNNING,
    SUCCEEDED,
    SUSPENDED,
    VALIDATED,
    Condition,
    RunWarning,
    Startup,
)
from ftoperator.children import LABEL_ATTEMPT, Names
from ftoperator.failures import Failure, attempt_failure, pod_failure
from ftoperator.kueue import QueueState
from ftoperator.planner import (
    WAITING_FOR_PODS,
    CreateAttempt,
    DeleteJob,
    DeleteSelf,
    Event,
    Observed,
    Plan,
    SuspendJob,
    reconcile,
    rejected,
)
from ftoperator.ranks import PEER_STALL_GRACE_SECONDS
from ftoperator.status_format import MAX_ADDITIONAL_METRICS, human_duration, metrics_from
from fttestkit.builders import (
    T0,
    BatchJobBuilder,
    PodBuilder,
    make_batch_job,
    make_job,
    make_pod,
    stamp,
)

NAME = "llama"
GENERATION = 3


def at(seconds: float) -> datetime:
    return T0 + timedelta(seconds=seconds)


# --- the FineTuneJob and its status -----------------------------------------------------


def make(**changes: Any) -> FineTuneJob:
    """The FineTuneJob `llama`; keyword paths use `__` for dots (runPolicy__maxRestarts)."""
    builder = (
        make_job(NAME)
        .set("metadata.namespace", "team-a")
        .set("metadata.uid", "u1")
        .set("metadata.generation", GENERATION)
    )
    for path, value in changes.items():
        builder.set(path.replace("__", "."), value)
    return parse_job(builder.obj())


def status(**fields: Any) -> FineTuneJobStatus:
    return FineTuneJobStatus(**fields)


def roundtrip(value: FineTuneJobStatus) -> FineTuneJobStatus:
    """What the next pass reads back: the status as written (JSON), validated by the schema
    (the CRD has the same limits, so a status failing here is refused by the API server)."""
    written = value.model_dump(mode="json", by_alias=True, exclude_none=True)
    return FineTuneJobStatus.model_validate(written)


def cond(value: FineTuneJobStatus, type_: str) -> Condition:
    found = [c for c in value.conditions if c.type == type_]
    assert len(found) == 1, f"{type_} in {[c.type for c in value.conditions]}"
    return found[0]


def has_cond(value: FineTuneJobStatus, type_: str) -> bool:
    return any(c.type == type_ for c in value.conditions)


def job_name(attempt: int) -> str:
    name: str = Names(NAME, attempt).batch_job
    return name


def report(attempt: int = 0, **fields: Any) -> ProgressReport:
    return ProgressReport(attempt=attempt, stage="training", updated_at=T0, **fields)


# --- one pass, and a world of passes ----------------------------------------------------


def observe(
    job: FineTuneJob, previous: FineTuneJobStatus, now: datetime = T0, **observed: Any
) -> Plan:
    return reconcile(job, Observed(status=previous, now=now, **observed))


def running_status(attempt: int = 0, restarts: int = 0, started: float = 0) -> FineTuneJobStatus:
    """The status after a pass saw attempt `attempt` running."""
    job = make()
    previous = status(attempt=attempt, restarts=restarts)
    plan = observe(
        job,
        previous,
        at(started),
        batch_job=make_batch_job(attempt).obj(),
        pods=[make_pod(0, attempt=attempt).obj()],
    )
    assert plan.status.phase == "Running"
    return roundtrip(plan.status)


class World:
    """One FineTuneJob's cluster, as the controller reads it: Jobs by name, all pods (each
    labelled with its attempt); every pass is given the current attempt's Job and pods."""

    def __init__(self, job: FineTuneJob, previous: FineTuneJobStatus | None = None) -> None:
        self.job = job
        self.status = previous or FineTuneJobStatus()
        self.jobs: dict[str, dict[str, Any]] = {}
        self.pods: list[dict[str, Any]] = []
        self.progress: ProgressReport | None = None
        self.lost_nodes: frozenset[str] = frozenset()
        self.deleted = False

    def observed(self, now: datetime) -> Observed:
        current = job_name(self.status.attempt)
        return Observed(
            status=self.status,
            now=now,
            batch_job=self.jobs.get(current),
            pods=[
                p
                for p in self.pods
                if p["metadata"]["labels"][LABEL_ATTEMPT] == str(self.status.attempt)
            ],
            other_jobs=sorted(name for name in self.jobs if name != current),
            progress=self.progress,
            lost_nodes=self.lost_nodes,
        )

    def step(self, now: datetime, *, act: bool = True) -> Plan:
        plan = reconcile(self.job, self.observed(now))
        self.status = roundtrip(plan.status)
        if act:
            for action in plan.actions:
                self.apply(action)
        return plan

    def apply(self, action: Any) -> None:
        if isinstance(action, CreateAttempt):
            scheduling = self.job.spec.scheduling
            suspend = bool(scheduling.suspend or scheduling.queue_name)
            self.jobs.setdefault(
                job_name(action.attempt), make_batch_job(action.attempt, suspend=suspend).obj()
            )
        elif isinstance(action, DeleteJob):
            self.jobs.pop(action.name, None)
            self.pods = [p for p in self.pods if p["metadata"]["labels"]["job-name"] != action.name]
        elif isinstance(action, SuspendJob):
            self.jobs[action.name]["spec"]["suspend"] = action.suspend
        elif isinstance(action, DeleteSelf):
            self.deleted = True

    def run(self, attempt: int, nodes: int = 1) -> None:
        self.pods = [p for p in self.pods if p["metadata"]["labels"][LABEL_ATTEMPT] != str(attempt)]
        self.pods += [make_pod(i, attempt=attempt).on(f"gpu-{i + 1}").obj() for i in range(nodes)]

    def finish(self, attempt: int) -> None:
        """The attempt's Job completes: its status becomes the success conditions alone."""
        done = make_batch_job(attempt).complete().obj()
        self.jobs[job_name(attempt)]["status"] = {"conditions": done["status"]["conditions"]}


# === no Job yet =========================================================================


@pytest.mark.parametrize(
    ("changes", "phase", "reason", "suspended"),
    [
        pytest.param({}, "Pending", "Pending", False, id="plain"),
        pytest.param({"scheduling__queueName": "team-q"}, "Queued", "Queued", False, id="queue"),
        pytest.param({"scheduling__suspend": True}, "Suspended", "Suspended", True, id="suspend"),
        pytest.param(
            {"scheduling__suspend": True, "scheduling__queueName": "team-q"},
            "Suspended",
            "Suspended",
            True,
            id="suspend-and-queue",
        ),
    ],
)
def test_first_pass_creates_attempt_zero(
    changes: dict[str, Any], phase: str, reason: str, suspended: bool
) -> None:
    plan = observe(make(**changes), status(), T0)
    assert plan.actions == [CreateAttempt(0)]
    new = plan.status
    assert (new.phase, new.attempt, new.restarts) == (phase, 0, 0)
    assert new.start_time is None and new.completion_time is None
    created = cond(new, RESOURCES_CREATED)
    assert (created.status, created.reason) == ("True", "Created")
    assert "llama-0" in created.message
    validated = cond(new, VALIDATED)
    assert (validated.status, validated.reason) == ("True", "Valid")
    running = cond(new, RUNNING)
    assert (running.status, running.reason) == ("False", reason)
    assert has_cond(new, SUSPENDED) is suspended
    if suspended:
        assert cond(new, SUSPENDED).status == "True"
    if changes.get("scheduling__queueName") and not suspended:
        assert "team-q" in (new.message or "")
    # "Created", then a Normal event for a phase change (Pending is where every job starts).
    created_event = Event("Normal", "Created", created.message)
    changed = [] if phase == "Pending" else [Event("Normal", phase, new.message or "")]
    assert plan.events == [created_event, *changed]
    assert plan.requeue_after is None


@pytest.mark.parametrize("attempt", [1, 4])
def test_missing_job_of_a_later_attempt_is_created_under_that_attempt(attempt: int) -> None:
    plan = observe(make(), status(attempt=attempt, restarts=attempt, phase="Running"), T0)
    assert plan.actions == [CreateAttempt(attempt)]
    assert plan.status.attempt == attempt
    assert f"llama-{attempt}" in cond(plan.status, RESOURCES_CREATED).message
    assert plan.status.phase == "Pending"


def test_restarting_stays_restarting_until_the_new_job_exists() -> None:
    previous = status(attempt=1, restarts=1, phase="Restarting")
    plan = observe(make(), previous, T0, other_jobs=[job_name(0)])
    assert plan.actions == [DeleteJob(job_name(0)), CreateAttempt(1)]
    assert plan.status.phase == "Restarting"
    assert (plan.status.attempt, plan.status.restarts) == (1, 1)
    assert plan.events == [Event("Normal", "Created", "created attempt 1 (Job llama-1)")]


# === running ============================================================================


@pytest.mark.parametrize("nodes", [1, 2, 4])
def test_all_pods_running_is_running(nodes: int) -> None:
    job = make(resources__nodes=nodes)
    plan = observe(
        job,
        status(phase="Pending"),
        at(30),
        batch_job=make_batch_job(0, nodes=nodes).obj(),
        pods=[make_pod(i).on(f"gpu-{i + 1}").obj() for i in range(nodes)],
    )
    new = plan.status
    assert new.phase == "Running"
    assert new.start_time == at(30)
    assert new.message == f"training on {nodes} node(s), attempt 0"
    running = cond(new, RUNNING)
    assert (running.status, running.reason, running.last_transition_time) == (
        "True",
        "PodsRunning",
        at(30),
    )
    assert plan.actions == []
    assert plan.events == [Event("Normal", "Running", new.message)]


def test_succeeded_pods_count_as_running() -> None:
    job = make(resources__nodes=2)
    pods = [make_pod(0).succeeded().obj(), make_pod(1).obj()]
    plan = observe(job, status(), T0, batch_job=make_batch_job(0, nodes=2).obj(), pods=pods)
    assert plan.status.phase == "Running"


def test_start_time_is_set_once_and_later_passes_change_nothing() -> None:
    job = make()
    first = observe(
        job, status(), at(10), batch_job=make_batch_job(0).obj(), pods=[make_pod(0).obj()]
    )
    second = observe(
        job,
        roundtrip(first.status),
        at(500),
        batch_job=make_batch_job(0).obj(),
        pods=[make_pod(0).obj()],
    )
    assert second.status.start_time == at(10)
    assert cond(second.status, RUNNING).last_transition_time == at(10)
    assert second.status == first.status
    assert (second.actions, second.events) == ([], [])


def test_start_time_survives_restarts() -> None:
    previous = running_status(attempt=0, started=10)
    job = make()
    plan = observe(
        job,
        status(**{**previous.model_dump(), "attempt": 1, "restarts": 1, "phase": "Restarting"}),
        at(900),
        batch_job=make_batch_job(1).obj(),
        pods=[make_pod(0, attempt=1).obj()],
    )
    assert plan.status.phase == "Running"
    assert plan.status.start_time == at(10)
    assert plan.status.message == "training on 1 node(s), attempt 1"


@pytest.mark.parametrize(
    ("pods", "running"),
    [
        pytest.param([], 0, id="none-yet"),
        pytest.param([make_pod(0).pending().unscheduled().obj()], 0, id="one-pending"),
        pytest.param(
            [make_pod(0).obj(), make_pod(1).pending().unscheduled().obj()], 1, id="one-of-two"
        ),
        pytest.param(
            [
                make_pod(0).obj(),
                make_pod(1).pending().on("gpu-2").waiting("ContainerCreating", "").obj(),
            ],
            1,
            id="container-creating",
        ),
    ],
)
def test_some_pods_not_running_is_pending_k_of_n(pods: list[dict[str, Any]], running: int) -> None:
    job = make(resources__nodes=2)
    plan = observe(
        job, status(phase="Queued"), T0, batch_job=make_batch_job(0, nodes=2).obj(), pods=pods
    )
    new = plan.status
    assert new.phase == "Pending"
    assert new.message == (f"{running} of 2 pod(s) running" if running else WAITING_FOR_PODS)
    assert (cond(new, RUNNING).status, cond(new, RUNNING).reason) == ("False", "Pending")
    assert new.start_time is None
    assert plan.actions == []
    assert plan.events == [Event("Normal", "Pending", new.message)]


def test_a_created_job_whose_pods_have_not_started_needs_no_status_write() -> None:
    """What the status says before the Job exists still holds once it exists with no pod
    running: reconcile plans no change, so the operator writes nothing (a burst of new jobs
    would otherwise cost one write and one watch event each)."""
    job = make()
    created = observe(job, FineTuneJobStatus(), T0).status
    assert created.message == WAITING_FOR_PODS
    later = T0 + timedelta(seconds=2)
    for pods in ([], [make_pod(0).pending().obj()]):
        plan = observe(job, created, later, batch_job=make_batch_job(0).obj(), pods=pods)
        assert plan.status == created
        assert plan.events == []


def test_restarting_with_pods_starting_stays_restarting() -> None:
    job = make(resources__nodes=2)
    previous = status(attempt=1, restarts=1, phase="Restarting")
    plan = observe(
        job,
        previous,
        T0,
        batch_job=make_batch_job(1, nodes=2).obj(),
        pods=[make_pod(0, attempt=1).obj()],
    )
    assert plan.status.phase == "Restarting"
    assert plan.status.message == "1 of 2 pod(s) running"
    assert cond(plan.status, RUNNING).reason == "Restarting"
    assert plan.events == []


# === blocked pods: Unschedulable, image pulls ===========================================

SCHEDULER_MESSAGE = (
    "0/6 nodes are available: 2 Insufficient nvidia.com/gpu, 4 node(s) had untolerated "
    "taint {dedicated: infra}. preemption: 0/6 nodes are available: 6 No preemption "
    "victims found for incoming pod."
)
PULL_MESSAGE = 'Back-off pulling image "registry.example/trainer:nope"'

BLOCKED = [
    pytest.param(
        make_pod(0).pending().unschedulable(SCHEDULER_MESSAGE).obj(),
        "Unschedulable",
        SCHEDULER_MESSAGE,
        id="unschedulable",
    ),
    pytest.param(
        make_pod(0).pending().waiting("ImagePullBackOff", PULL_MESSAGE).obj(),
        "ImagePullBackOff",
        PULL_MESSAGE,
        id="image-pull-backoff",
    ),
    pytest.param(
        make_pod(0).pending().waiting("ErrImagePull", "rpc error: not found").obj(),
        "ImagePullBackOff",
        "rpc error: not found",
        id="err-image-pull",
    ),
    pytest.param(
        make_pod(0).pending().waiting("InvalidImageName", "").obj(),
        "ImagePullBackOff",
        "InvalidImageName",
        id="invalid-image-name",
    ),
]


@pytest.mark.parametrize(("blocked", "reason", "detail"), BLOCKED)
@pytest.mark.parametrize("before", ["Pending", "Queued", "Restarting"])
def test_blocked_pod_is_pending_with_reason_and_one_warning(
    blocked: dict[str, Any], reason: str, detail: str, before: str
) -> None:
    job = make()
    world = World(job, status(phase=before, attempt=1 if before == "Restarting" else 0))
    attempt = world.status.attempt
    world.jobs[job_name(attempt)] = make_batch_job(attempt).obj()
    blocked = {
        **blocked,
        "metadata": {
            **blocked["metadata"],
            "labels": {**blocked["metadata"]["labels"], LABEL_ATTEMPT: str(attempt)},
        },
    }
    world.pods = [blocked]

    first = world.step(at(5))
    assert first.status.phase == "Pending"
    running = cond(first.status, RUNNING)
    assert (running.status, running.reason) == ("False", reason)
    assert detail in running.message
    assert first.status.message == running.message
    warnings = [e for e in first.events if e.type == "Warning"]
    assert warnings == [Event("Warning", reason, running.message)]
    assert first.actions == []

    second = world.step(at(65))
    assert second.events == []
    assert second.actions == []
    assert second.status == first.status


def test_a_different_blocker_warns_again() -> None:
    job = make()
    world = World(job)
    world.jobs[job_name(0)] = make_batch_job(0).obj()
    world.pods = [make_pod(0).pending().unschedulable("no gpu").obj()]
    assert [e.reason for e in world.step(at(1)).events] == ["Unschedulable"]
    world.pods = [make_pod(0).pending().waiting("ImagePullBackOff", "nope").obj()]
    assert [e.reason for e in world.step(at(2)).events] == ["ImagePullBackOff"]
    world.pods = [make_pod(0).obj()]
    assert [e.reason for e in world.step(at(3)).events] == ["Running"]


def test_scheduler_message_change_alone_does_not_warn_again() -> None:
    job = make()
    world = World(job)
    world.jobs[job_name(0)] = make_batch_job(0).obj()
    world.pods = [make_pod(0).pending().unschedulable("0/3 nodes").obj()]
    assert len(world.step(at(1)).events) == 1
    world.pods = [make_pod(0).pending().unschedulable("0/4 nodes").obj()]
    plan = world.step(at(2))
    assert plan.events == []
    assert "0/4 nodes" in cond(plan.status, RUNNING).message


def test_scheduled_pod_and_pod_scheduled_true_are_not_blockers() -> None:
    scheduled = {"type": "PodScheduled", "status": "True", "lastTransitionTime": stamp()}
    pending = make_pod(0).pending().waiting("ContainerCreating", "").condition(scheduled).obj()
    plan = observe(make(), status(), T0, batch_job=make_batch_job(0).obj(), pods=[pending])
    assert cond(plan.status, RUNNING).reason == "Pending"
    assert plan.events == []


# === failures ===========================================================================

TRACEBACK = (
    "Traceback (most recent call last):\n"
    '  File "/app/fttrainer/train.py", line 10, in main\n'
    "KeyError: 'text'\n"
)

# What the Job controller concluded, applied to the attempt's Job (None: nothing yet).
Verdict = Callable[[BatchJobBuilder], BatchJobBuilder]

FAILURES = [
    pytest.param(
        [make_pod(0).failed(3, "Error", TRACEBACK).obj()],
        None,
        frozenset(),
        "ExitCode",
        "exited with code 3: KeyError: 'text'",
        False,
        id="exit-code-with-message-tail",
    ),
    pytest.param(
        [make_pod(0).failed(1, "Error").obj()],
        BatchJobBuilder.failed,
        frozenset(),
        "ExitCode",
        "container trainer exited with code 1",
        True,
        id="exit-code-job-already-failed",
    ),
    pytest.param(
        [make_pod(0).failed(137, "OOMKilled").obj()],
        None,
        frozenset(),
        "OOMKilled",
        "ran out of memory (exit code 137)",
        False,
        id="oom-killed",
    ),
    pytest.param(
        [
            make_pod(0)
            .failed(143, "Error")
            .disrupted(
                "PreemptionByScheduler",
                "Kube-scheduler: preempting to accommodate a higher priority pod",
            )
            .obj()
        ],
        None,
        frozenset(),
        "Preempted",
        "on gpu-1: Kube-scheduler: preempting to accommodate a higher priority pod",
        False,
        id="preempted",
    ),
    pytest.param(
        [make_pod(0).disrupted("EvictionByEvictionAPI", "Eviction API: evicting").obj()],
        None,
        frozenset(),
        "Evicted",
        "Eviction API: evicting",
        False,
        id="evicted-api",
    ),
    pytest.param(
        [
            make_pod(0)
            .disrupted("TerminationByKubelet", "The node was low on resource: memory.")
            .because("Evicted", "The node was low on resource: memory.")
            .obj()
        ],
        None,
        frozenset(),
        "Evicted",
        "low on resource: memory",
        False,
        id="evicted-kubelet",
    ),
    pytest.param(
        [
            make_pod(0)
            .disrupted("DeletionByTaintManager", "Taint manager: deleting due to NoExecute taint")
            .obj()
        ],
        None,
        frozenset(),
        "NodeLost",
        "Taint manager",
        False,
        id="taint-manager",
    ),
    pytest.param(
        [make_pod(0).disrupted("DeletionByPodGC", "PodGC: node gone").obj()],
        None,
        frozenset(),
        "NodeLost",
        "PodGC: node gone",
        False,
        id="pod-gc",
    ),
    pytest.param(
        [make_pod(0).on("gpu-1").obj(), make_pod(1).on("gpu-2").obj()],
        None,
        frozenset({"gpu-2"}),
        "NodeLost",
        "node gpu-2 is not ready",
        False,
        id="lost-node",
    ),
    pytest.param(
        [],
        BatchJobBuilder.failed,
        frozenset(),
        "BackoffLimitExceeded",
        "Job has reached the specified backoff limit",
        True,
        id="job-failed-no-pods",
    ),
    pytest.param(
        [],
        lambda job: job.condition("FailureTarget", "PodFailurePolicy", "Container trainer failed"),
        frozenset(),
        "PodFailurePolicy",
        "Container trainer failed",
        False,
        id="job-failure-target",
    ),
    pytest.param(
        [
            make_pod(0)
            .failed()
            .because(
                "UnexpectedAdmissionError", "Allocate failed due to no healthy devices present"
            )
            .obj()
        ],
        None,
        frozenset(),
        "UnexpectedAdmissionError",
        "no healthy devices present",
        False,
        id="pod-failed-reason",
    ),
]


def _attempt_fails(
    pods: list[dict[str, Any]], verdict: Verdict | None, lost: frozenset[str],
    *, attempt: int, max_restarts: int,
) -> Plan:  # fmt: skip
    """A running job (attempt == restarts so far) whose attempt shows one of FAILURES."""
    nodes = max(len(pods), 1)
    job = make(resources__nodes=nodes, runPolicy__maxRestarts=max_restarts)
    previous = status(phase="Running", attempt=attempt, restarts=attempt, start_time=T0)
    batch_job = make_batch_job(attempt, nodes=nodes)
    if verdict is not None:
        verdict(batch_job)
    return observe(
        job,
        previous,
        at(600),
        batch_job=batch_job.obj(),
        pods=[relabel(p, attempt) for p in pods],
        lost_nodes=lost,
    )


@pytest.mark.parametrize(("pods", "verdict", "lost", "reason", "detail", "finished"), FAILURES)
@pytest.mark.parametrize("attempt", [0, 2])
def test_failed_attempt_with_restarts_left_restarts(
    pods: list[dict[str, Any]],
    verdict: Verdict | None,
    lost: frozenset[str],
    reason: str,
    detail: str,
    finished: bool,
    attempt: int,
) -> None:
    plan = _attempt_fails(pods, verdict, lost, attempt=attempt, max_restarts=3)
    new = plan.status
    assert new.phase == "Restarting"
    assert (new.attempt, new.restarts) == (attempt + 1, attempt + 1)
    assert plan.actions == [DeleteJob(job_name(attempt)), CreateAttempt(attempt + 1)]
    assert new.failure_reason is None and new.completion_time is None
    assert new.start_time == T0
    assert f"attempt {attempt} failed ({reason})" in (new.message or "")
    assert detail in (new.message or "")
    assert f"restart {attempt + 1} of 3" in (new.message or "")
    running = cond(new, RUNNING)
    assert (running.status, running.reason, running.message) == ("False", reason, new.message)
    assert not has_cond(new, FAILED)
    assert plan.events == [Event("Warning", "Restarting", new.message or "")]
    roundtrip(new)


@pytest.mark.parametrize(("pods", "verdict", "lost", "reason", "detail", "finished"), FAILURES)
@pytest.mark.parametrize(("max_restarts", "restarts"), [(0, 0), (2, 2), (1, 3)])
def test_failed_attempt_without_restarts_left_fails(
    pods: list[dict[str, Any]],
    verdict: Verdict | None,
    lost: frozenset[str],
    reason: str,
    detail: str,
    finished: bool,
    max_restarts: int,
    restarts: int,
) -> None:
    plan = _attempt_fails(pods, verdict, lost, attempt=restarts, max_restarts=max_restarts)
    new = plan.status
    assert new.phase == "Failed"
    assert new.failure_reason == reason
    assert new.completion_time == at(600)
    assert (new.attempt, new.restarts) == (restarts, restarts)
    assert detail in (new.message or "")
    if max_restarts:
        assert f"no restarts left (maxRestarts {max_restarts})" in (new.message or "")
    for type_, value in ((FAILED, "True"), (RUNNING, "False"), (SUCCEEDED, "False")):
        condition = cond(new, type_)
        assert (condition.status, condition.reason) == (value, reason)
        assert condition.last_transition_time == at(600)
    # The Job and its failed pods stay for their logs; a still-running Job is stopped.
    expected = [] if finished else [SuspendJob(job_name(restarts), True)]
    assert plan.actions == expected
    assert not any(isinstance(a, CreateAttempt) for a in plan.actions)
    assert plan.events == [Event("Warning", reason, new.message or "")]
    roundtrip(new)


def relabel(value: dict[str, Any], attempt: int) -> dict[str, Any]:
    """The same pod as one of attempt `attempt`."""
    index = value["metadata"]["labels"]["batch.kubernetes.io/job-completion-index"]
    owner = job_name(attempt)
    labels = {
        **value["metadata"]["labels"],
        LABEL_ATTEMPT: str(attempt),
        "batch.kubernetes.io/job-name": owner,
        "job-name": owner,
    }
    metadata = {**value["metadata"], "name": f"{owner}-{index}-x{index}k9z", "labels": labels}
    return {**value, "metadata": metadata}


@pytest.mark.parametrize(
    ("value", "lost", "expected"),
    [
        pytest.param(make_pod(0).obj(), frozenset(), None, id="running"),
        pytest.param(make_pod(0).obj(), frozenset({"gpu-9"}), None, id="running-other-node-lost"),
        pytest.param(
            make_pod(0).pending().unscheduled().obj(), frozenset({"gpu-1"}), None, id="unscheduled"
        ),
        pytest.param(
            make_pod(0).pending().on("gpu-1").obj(),
            frozenset({"gpu-1"}),
            "NodeLost",
            id="pending-on-lost-node",
        ),
        pytest.param(
            make_pod(0).succeeded().obj(),
            frozenset({"gpu-1"}),
            None,
            id="succeeded-on-lost-node",
        ),
        pytest.param(
            make_pod(0).failed(0, "Completed").obj(),
            frozenset(),
            "PodFailed",
            id="failed-without-reason",
        ),
        pytest.param(
            make_pod(0)
            .failed(9, "OOMKilled")
            .disrupted("PreemptionByScheduler", "preempted")
            .obj(),
            frozenset(),
            "Preempted",
            id="disruption-wins-over-exit-code",
        ),
        pytest.param(
            make_pod(0).disrupted("SomethingNew", "").obj(),
            frozenset(),
            "Preempted",
            id="unknown-disruption-reason",
        ),
        pytest.param(
            make_pod(0)
            .failed(1, "Error")
            .disrupted("PreemptionByScheduler", "x", status="False")
            .obj(),
            frozenset(),
            "ExitCode",
            id="disruption-false-ignored",
        ),
    ],
)
def test_pod_failure(value: dict[str, Any], lost: frozenset[str], expected: str | None) -> None:
    failure = pod_failure(value, lost)
    assert (failure.reason if failure else None) == expected


def test_exit_code_message_keeps_only_the_last_line_of_the_termination_message() -> None:
    value = make_pod(0).failed(2, "Error", "line one\nline two\n\nCUDA error: boom\n  ").obj()
    failure = pod_failure(value)
    assert failure == Failure(
        "ExitCode", "pod llama-0-0-x0k9z: container trainer exited with code 2: CUDA error: boom"
    )
    bare = pod_failure(make_pod(0).failed(2, "Error").obj())
    assert bare is not None
    assert bare.message == "pod llama-0-0-x0k9z: container trainer exited with code 2"


def test_attempt_failure_none_while_it_can_still_succeed() -> None:
    pods = [make_pod(0).obj(), make_pod(1).pending().unschedulable("x").obj()]
    assert attempt_failure(make_batch_job(0, nodes=2).obj(), pods) is None
    assert attempt_failure(make_batch_job(0).complete().obj(), []) is None
    assert attempt_failure(make_batch_job(0, suspend=True).obj(), []) is None


def test_a_pod_failure_is_preferred_over_the_jobs_generic_condition() -> None:
    pods = [make_pod(0).failed(137, "OOMKilled").obj()]
    failure = attempt_failure(make_batch_job(0).failed().obj(), pods)
    assert failure is not None and failure.reason == "OOMKilled"


def test_failure_of_a_job_with_failed_condition_but_no_reason() -> None:
    bare = make_batch_job(0).condition("Failed").obj()  # no reason, no message
    assert attempt_failure(bare, []) == Failure("BackoffLimitExceeded", "the Job failed")


def test_restart_after_restart_counts_up_to_max_then_fails() -> None:
    job = make(runPolicy__maxRestarts=2)
    world = World(job)
    reasons = []
    for attempt in range(3):
        world.step(at(attempt * 100))  # creates the attempt's Job
        assert job_name(attempt) in world.jobs
        world.run(attempt)
        assert world.step(at(attempt * 100 + 10)).status.phase == "Running"
        world.pods = [make_pod(0, attempt=attempt).failed(137, "OOMKilled").obj()]
        plan = world.step(at(attempt * 100 + 50))
        reasons.append(plan.status.phase)
    assert reasons == ["Restarting", "Restarting", "Failed"]
    assert (world.status.restarts, world.status.attempt) == (2, 2)
    assert world.status.failure_reason == "OOMKilled"
    assert world.status.start_time == at(10)
    assert list(world.jobs) == [job_name(2)]  # older attempts deleted, the last one kept


# === success ============================================================================


@pytest.mark.parametrize(
    ("progress", "output", "model_uri"),
    [
        pytest.param(None, "s3://models/tiny", "s3://models/tiny/final", id="no-report"),
        pytest.param(None, "s3://models/tiny/", "s3://models/tiny/final", id="trailing-slash"),
        pytest.param(
            report(step=10), "s3://models/tiny", "s3://models/tiny/final", id="report-without-model"
        ),
        pytest.param(
            report(step=10, model_uri="hf://org/llama-ft"),
            "s3://models/tiny",
            "hf://org/llama-ft",
            id="report-with-model",
        ),
    ],
)
def test_complete_job_succeeds(
    progress: ProgressReport | None, output: str, model_uri: str
) -> None:
    job = make(output__uri=output)
    previous = running_status()
    plan = observe(
        job,
        previous,
        at(3600),
        batch_job=make_batch_job(0).complete().obj(),
        pods=[make_pod(0).succeeded().obj()],
        progress=progress,
    )
    new = plan.status
    assert new.phase == "Succeeded"
    assert new.model_uri == model_uri
    assert new.completion_time == at(3600)
    assert new.failure_reason is None
    assert model_uri in (new.message or "")
    for type_, value in ((SUCCEEDED, "True"), (RUNNING, "False"), (FAILED, "False")):
        condition = cond(new, type_)
        assert (condition.status, condition.reason) == (value, "Completed")
    assert plan.actions == []
    assert plan.events == [Event("Normal", "Succeeded", new.message or "")]


def test_a_pushed_image_is_in_status_pinned_by_digest_and_named_in_the_message() -> None:
    image = "oci://r.example:5000/tuned/llama:v1@sha256:" + "a" * 64
    merged = "oci://r.example:5000/tuned/llama:v1-merged@sha256:" + "b" * 64
    plan = observe(
        make(output__uri="s3://models/tiny"), running_status(), at(3600),
        batch_job=make_batch_job(0).complete().obj(), pods=[make_pod(0).succeeded().obj()],
        progress=report(step=10, model_uri="s3://models/tiny/final", model_image=image,
                        merged_model_image=merged),
    )  # fmt: skip
    new = plan.status
    assert (new.phase, new.model_image, new.merged_model_image) == ("Succeeded", image, merged)
    assert image in (new.message or "")
    without = observe(
        make(output__uri="s3://models/tiny"),
        running_status(),
        at(3600),
        batch_job=make_batch_job(0).complete().obj(),
        pods=[make_pod(0).succeeded().obj()],
        progress=report(step=10, model_uri="s3://models/tiny/final"),
    ).status
    assert (without.model_image, without.merged_model_image) == (None, None)


def test_where_the_start_went_is_in_status_until_a_later_attempt_takes_its_first_step() -> None:
    first = Startup(
        data_seconds=80.5,
        data_reused=False,
        model_seconds=20.0,
        first_step_seconds=4.0,
        total_seconds=120.0,
    )
    running = observe(
        make(),
        running_status(),
        at(60),
        batch_job=make_batch_job(0).obj(),
        pods=[make_pod(0).obj()],
        progress=report(step=1, startup=first),
    ).status
    assert running.startup == first
    # Attempt 1 runs; until its first step its report has no startup: attempt 0's stays.
    restarted = running.model_copy(update={"attempt": 1})

    def during_attempt_1(progress: ProgressReport) -> FineTuneJobStatus:
        return observe(
            make(),
            restarted,
            at(600),
            batch_job=make_batch_job(1).obj(),
            pods=[make_pod(0, attempt=1).obj()],
            progress=progress,
        ).status

    assert during_attempt_1(report(attempt=1, step=1)).startup == first
    second = Startup(
        data_seconds=0.4,
        data_reused=True,
        model_seconds=19.0,
        first_step_seconds=4.0,
        total_seconds=35.0,
    )
    # A late report of another attempt is not taken.
    assert during_attempt_1(report(attempt=0, startup=second)).startup == first
    assert during_attempt_1(report(attempt=1, startup=second)).startup == second


def test_success_criteria_met_alone_is_success() -> None:
    met = make_batch_job(0).condition(
        "SuccessCriteriaMet", "CompletionsReached", "Reached expected number of succeeded pods"
    )
    plan = observe(make(), running_status(), T0, batch_job=met.obj())
    assert plan.status.phase == "Succeeded"


@pytest.mark.parametrize(
    ("total", "step", "eta_seconds"),
    [(1000, 990, 30), (1000, 1000, 0), (1000, 120, 4000)],
)
def test_success_shows_full_progress_when_total_known(
    total: int, step: int, eta_seconds: int
) -> None:
    plan = observe(
        make(),
        running_status(),
        at(100),
        batch_job=make_batch_job(0).complete().obj(),
        progress=report(step=step, total_steps=total, eta_seconds=eta_seconds),
    )
    progress = plan.status.progress
    assert progress is not None
    assert (progress.step, progress.percent, progress.summary) == (
        total,
        100.0,
        f"{total}/{total} (100%)",
    )
    assert (progress.eta_seconds, progress.eta) == (0, "0s")


def test_success_without_total_leaves_progress_as_reported() -> None:
    plan = observe(
        make(),
        running_status(),
        at(100),
        batch_job=make_batch_job(0).complete().obj(),
        progress=report(step=57),
    )
    progress = plan.status.progress
    assert progress is not None
    assert (progress.step, progress.percent, progress.summary) == (57, None, "57")


def test_the_jobs_complete_verdict_wins_over_a_stray_failed_pod() -> None:
    """With backoffLimit 0 a Job whose pod failed cannot complete; when the Job controller
    says Complete, it counted every index done: training finished."""
    pods = [make_pod(0).failed(1, "Error").obj()]
    plan = observe(
        make(runPolicy__maxRestarts=0),
        running_status(),
        T0,
        batch_job=make_batch_job(0).complete().obj(),
        pods=pods,
    )
    assert plan.status.phase == "Succeeded"
    assert plan.actions == []  # the Job is finished: nothing to stop


# === terminal jobs are never resurrected ================================================

OBSERVATIONS = [
    pytest.param({}, id="nothing"),
    pytest.param({"batch_job": make_batch_job(0).obj()}, id="job-running"),
    pytest.param({"batch_job": make_batch_job(0, suspend=True).obj()}, id="job-suspended"),
    pytest.param(
        {
            "batch_job": make_batch_job(0).failed().obj(),
            "pods": [make_pod(0).failed(1).obj()],
        },
        id="job-failed",
    ),
    pytest.param(
        {"pods": [make_pod(0).failed(137, "OOMKilled").obj()]},
        id="failed-pods-no-job",
    ),
    pytest.param({"batch_job": make_batch_job(0).complete().obj()}, id="job-complete"),
    pytest.param({"other_jobs": [job_name(1), job_name(7)]}, id="other-jobs"),
    pytest.param({"pods": [make_pod(0).obj()], "lost_nodes": frozenset({"gpu-1"})}, id="lost-node"),
]


@pytest.mark.parametrize("observed", OBSERVATIONS)
@pytest.mark.parametrize("phase", ["Succeeded", "Failed"])
@pytest.mark.parametrize(
    "changes",
    [{}, {"scheduling__suspend": True}, {"scheduling__queueName": "team-q"}],
    ids=["plain", "suspend", "queue"],
)
def test_terminal_job_gets_no_new_children(
    observed: dict[str, Any], phase: str, changes: dict[str, Any]
) -> None:
    reason = None if phase == "Succeeded" else "OOMKilled"
    previous = status(
        phase=phase,
        failure_reason=reason,
        completion_time=at(10),
        attempt=0,
        restarts=0,
        model_uri="s3://m/final" if reason is None else None,
    )
    plan = observe(make(**changes), previous, at(20), **observed)
    assert not any(isinstance(a, CreateAttempt | DeleteJob) for a in plan.actions)
    running = observed.get("batch_job") == make_batch_job(0).obj()
    # A Failed job whose Job still runs (the operator stopped between two writes) is stopped.
    stop = [SuspendJob(job_name(0), True)] if phase == "Failed" and running else []
    assert plan.actions == stop
    assert plan.events == []
    assert plan.status.phase == phase
    assert plan.status.failure_reason == reason
    assert plan.status.completion_time == at(10)
    assert plan.status.conditions == previous.conditions


def test_terminal_pass_still_copies_the_final_report() -> None:
    previous = status(
        phase="Failed", failure_reason="OOMKilled", completion_time=T0, attempt=2, restarts=2
    )
    checkpoint = CheckpointReport(latest="s3://ckpt/step-400", step=400, count=2)
    plan = observe(
        make(),
        previous,
        at(1),
        progress=report(attempt=2, step=410, total_steps=1000, checkpoint=checkpoint),
    )
    assert plan.status.progress is not None and plan.status.progress.step == 410
    assert plan.status.checkpoint is not None
    assert plan.status.checkpoint.latest == "s3://ckpt/step-400"


# === TTL ================================================================================


# ttl, seconds since the job finished, deleted, requeued after
TTL_CASES = [
    pytest.param(None, 10**7, False, None, id="no-ttl"),
    pytest.param(3600, 0, False, 3600.0, id="just-finished"),
    pytest.param(3600, 600, False, 3000.0, id="before"),
    pytest.param(3600, 3599.5, False, 0.5, id="just-before"),
    pytest.param(3600, 3600, True, None, id="due"),
    pytest.param(3600, 90000, True, None, id="long-after"),
    pytest.param(0, 0, True, None, id="zero"),
]


@pytest.mark.parametrize(("ttl", "elapsed", "delete", "requeue"), TTL_CASES)
@pytest.mark.parametrize("phase", ["Succeeded", "Failed"])
def test_ttl_after_finished(
    ttl: int | None, elapsed: float, delete: bool, requeue: float | None, phase: str
) -> None:
    changes = {} if ttl is None else {"runPolicy__ttlSecondsAfterFinished": ttl}
    previous = status(
        phase=phase, completion_time=T0, failure_reason="ExitCode" if phase == "Failed" else None
    )
    plan = observe(make(**changes), previous, at(elapsed))
    assert plan.actions == ([DeleteSelf()] if delete else [])
    assert plan.requeue_after == (None if requeue is None else pytest.approx(requeue))


def test_ttl_does_not_apply_to_a_live_job() -> None:
    # Days into a run (no stall detection here: it would call the silence a stall).
    job = make(runPolicy__ttlSecondsAfterFinished=0, runPolicy__stallDetection__enabled=False)
    plan = observe(
        job,
        running_status(),
        at(10**6),
        batch_job=make_batch_job(0).obj(),
        pods=[make_pod(0).obj()],
    )
    assert DeleteSelf() not in plan.actions
    assert plan.status.phase == "Running"


def test_full_lifecycle_ends_in_deletion_after_ttl() -> None:
    job = make(runPolicy__ttlSecondsAfterFinished=600, runPolicy__maxRestarts=1)
    world = World(job)
    assert world.step(at(0)).actions == [CreateAttempt(0)]
    world.run(0)
    assert world.step(at(10)).status.phase == "Running"
    world.pods = [make_pod(0).disrupted("PreemptionByScheduler", "preempting").obj()]
    plan = world.step(at(20))
    assert plan.actions == [DeleteJob(job_name(0)), CreateAttempt(1)]
    assert list(world.jobs) == [job_name(1)] and world.pods == []
    assert world.step(at(21)).status.phase == "Restarting"
    world.run(1)
    world.progress = report(attempt=1, step=500, total_steps=500, model_uri="s3://models/x")
    assert world.step(at(30)).status.phase == "Running"
    world.finish(1)
    done = world.step(at(40))
    assert done.status.phase == "Succeeded"
    assert done.status.model_uri == "s3://models/x"
    assert world.step(at(100)).requeue_after == pytest.approx(540)
    assert not world.deleted
    assert world.step(at(640)).actions == [DeleteSelf()]
    assert world.deleted


# === activeDeadlineSeconds ==============================================================


def test_deadline_not_reached_requeues_for_the_remaining_time() -> None:
    job = make(runPolicy__activeDeadlineSeconds=3600)
    plan = observe(
        job,
        running_status(started=0),
        at(600),
        batch_job=make_batch_job(0).obj(),
        pods=[make_pod(0).obj()],
    )
    assert plan.status.phase == "Running"
    assert plan.requeue_after == pytest.approx(3000)
    assert plan.actions == []


@pytest.mark.parametrize("elapsed", [3600, 3601, 86400])
def test_running_past_the_deadline_fails_and_deletes_the_job(elapsed: int) -> None:
    job = make(runPolicy__activeDeadlineSeconds=3600)
    plan = observe(
        job,
        running_status(started=0),
        at(elapsed),
        batch_job=make_batch_job(0).obj(),
        pods=[make_pod(0).obj()],
    )
    new = plan.status
    assert new.phase == "Failed"
    assert new.failure_reason == "DeadlineExceeded"
    assert "3600" in (new.message or "")
    assert new.completion_time == at(elapsed)
    assert (cond(new, FAILED).status, cond(new, FAILED).reason) == ("True", "DeadlineExceeded")
    assert plan.actions == [DeleteJob(job_name(0))]
    assert plan.events == [Event("Warning", "DeadlineExceeded", new.message or "")]


def test_deadline_counts_restarts_and_needs_no_job_to_fail() -> None:
    job = make(runPolicy__activeDeadlineSeconds=100)
    previous = status(phase="Restarting", attempt=1, restarts=1, start_time=T0)
    plan = observe(job, previous, at(100), other_jobs=[job_name(0)])
    assert plan.status.phase == "Failed"
    assert plan.status.failure_reason == "DeadlineExceeded"
    assert plan.actions == [DeleteJob(job_name(0))]  # the old attempt only; nothing created


@pytest.mark.parametrize(("elapsed", "failed"), [(50, False), (100, True)])
def test_a_job_stuck_pending_reaches_its_deadline_from_when_its_pods_were_created(
    elapsed: int, failed: bool
) -> None:
    job = make(runPolicy__activeDeadlineSeconds=100)
    stuck = [make_pod(0).pending().unschedulable("0/3 nodes").obj()]
    plan = observe(
        job, status(phase="Pending"), at(elapsed), batch_job=make_batch_job(0).obj(), pods=stuck
    )
    assert plan.status.start_time is None  # it never ran
    if failed:
        assert (plan.status.phase, plan.status.failure_reason) == ("Failed", "DeadlineExceeded")
        assert plan.actions == [DeleteJob(job_name(0))]
    else:
        assert plan.status.phase == "Pending"
        assert plan.requeue_after == pytest.approx(50)


def test_deadline_does_not_run_before_the_job_started() -> None:
    job = make(runPolicy__activeDeadlineSeconds=10, scheduling__queueName="team-q")
    plan = observe(
        job, status(phase="Queued"), at(10**6), batch_job=make_batch_job(0, suspend=True).obj()
    )
    assert plan.status.phase == "Queued"
    assert plan.actions == []
    assert plan.requeue_after is None
    assert plan.status.failure_reason is None


# === suspend ============================================================================


def test_suspending_a_running_job_suspends_its_job() -> None:
    job = make(scheduling__suspend=True)
    previous = running_status()
    plan = observe(
        job, previous, at(60), batch_job=make_batch_job(0).obj(), pods=[make_pod(0).obj()]
    )
    new = plan.status
    assert plan.actions == [SuspendJob(job_name(0), True)]
    assert new.phase == "Suspended"
    assert (cond(new, SUSPENDED).status, cond(new, SUSPENDED).reason) == ("True", "Suspended")
    assert (cond(new, RUNNING).status, cond(new, RUNNING).reason) == ("False", "Suspended")
    assert cond(new, RUNNING).last_transition_time == at(60)
    assert plan.events == [Event("Normal", "Suspended", new.message or "")]
    assert new.start_time == previous.start_time


def test_suspended_job_already_suspended_needs_nothing() -> None:
    job = make(scheduling__suspend=True)
    world = World(job, running_status())
    world.jobs[job_name(0)] = make_batch_job(0).obj()
    first = world.step(at(60))
    assert first.actions == [SuspendJob(job_name(0), True)]
    world.pods = []
    second = world.step(at(120))
    assert (second.actions, second.events) == ([], [])
    assert second.status == first.status


def test_resuming_without_a_queue_unsuspends_the_job() -> None:
    job = make()
    suspended = observe(
        make(scheduling__suspend=True),
        running_status(),
        at(60),
        batch_job=make_batch_job(0, suspend=True).obj(),
    )
    plan = observe(
        job, roundtrip(suspended.status), at(120), batch_job=make_batch_job(0, suspend=True).obj()
    )
    assert plan.actions == [SuspendJob(job_name(0), False)]
    assert plan.status.phase == "Pending"
    resumed = cond(plan.status, SUSPENDED)
    assert (resumed.status, resumed.reason, resumed.last_transition_time) == (
        "False",
        "Resumed",
        at(120),
    )


def test_queued_job_waits_for_kueue_to_unsuspend_it() -> None:
    job = make(scheduling__queueName="team-q")
    world = World(job)
    assert world.step(at(0)).actions == [CreateAttempt(0)]
    assert world.jobs[job_name(0)]["spec"]["suspend"] is True
    plan = world.step(at(5))
    assert plan.status.phase == "Queued"
    assert plan.actions == []  # no unsuspend: Kueue admits the Job
    assert plan.events == []  # "Created" and "Queued" were told once, on the first pass
    assert not has_cond(plan.status, SUSPENDED)
    world.jobs[job_name(0)]["spec"]["suspend"] = False  # admitted
    world.run(0)
    assert world.step(at(10)).status.phase == "Running"


def test_user_suspend_of_a_queued_job_wins() -> None:
    job = make(scheduling__queueName="team-q", scheduling__suspend=True)
    plan = observe(job, status(phase="Queued"), T0, batch_job=make_batch_job(0, suspend=True).obj())
    assert plan.actions == []
    assert plan.status.phase == "Suspended"


def test_suspended_condition_appears_only_once_a_job_was_suspended() -> None:
    plan = observe(
        make(), status(), T0, batch_job=make_batch_job(0).obj(), pods=[make_pod(0).obj()]
    )
    assert not has_cond(plan.status, SUSPENDED)


# === other attempts' Jobs ===============================================================


@pytest.mark.parametrize(
    "others",
    [[], [job_name(0)], [job_name(0), job_name(1), job_name(2)]],
    ids=["none", "one", "three"],
)
def test_other_attempts_jobs_are_deleted_first(others: list[str]) -> None:
    previous = running_status(attempt=3, restarts=3)
    plan = observe(
        make(),
        previous,
        T0,
        batch_job=make_batch_job(3).obj(),
        pods=[make_pod(0, attempt=3).obj()],
        other_jobs=others,
    )
    assert plan.actions == [DeleteJob(name) for name in others]
    assert plan.status.phase == "Running"


def test_other_jobs_deleted_along_with_creating_the_current_one() -> None:
    previous = status(phase="Restarting", attempt=2, restarts=2)
    plan = observe(make(), previous, T0, other_jobs=[job_name(1)])
    assert plan.actions == [DeleteJob(job_name(1)), CreateAttempt(2)]


# === progress, ETA, metrics =============================================================


@pytest.mark.parametrize(
    ("seconds", "text"),
    [
        (0, "0s"),
        (1, "1s"),
        (59, "59s"),
        (60, "1m00s"),
        (200, "3m20s"),
        (3599, "59m59s"),
        (3600, "1h00m"),
        (4320, "1h12m"),
        (86399, "23h59m"),
        (86400, "1d0h"),
        (90000, "1d1h"),
        (-5, "0s"),
    ],
)
def test_human_duration(seconds: int, text: str) -> None:
    assert human_duration(seconds) == text


@pytest.mark.parametrize(
    ("step", "total", "percent", "summary"),
    [
        (120, 1000, 12.0, "120/1000 (12%)"),
        (0, 1000, 0.0, "0/1000 (0%)"),
        (1, 3, 33.3, "1/3 (33.3%)"),
        (1000, 1000, 100.0, "1000/1000 (100%)"),
        (1200, 1000, 100.0, "1200/1000 (100%)"),
        (120, None, None, "120"),
        (120, 0, None, "120"),
    ],
)
def test_progress_is_copied_with_percent_and_summary(
    step: int, total: int | None, percent: float | None, summary: str
) -> None:
    progress = report(
        step=step, total_steps=total, epoch=0.4, tokens_per_second=1234.5, eta_seconds=4320
    )
    plan = observe(
        make(),
        running_status(),
        at(60),
        batch_job=make_batch_job(0).obj(),
        pods=[make_pod(0).obj()],
        progress=progress,
    )
    copied = plan.status.progress
    assert copied is not None
    assert (copied.step, copied.total_steps, copied.percent, copied.summary) == (
        step,
        total,
        percent,
        summary,
    )
    assert (copied.eta_seconds, copied.eta) == (4320, "1h12m")
    assert (copied.epoch, copied.tokens_per_second, copied.updated_at) == (0.4, 1234.5, T0)
    roundtrip(plan.status)


def test_progress_without_eta_has_no_eta_text() -> None:
    plan = observe(
        make(),
        running_status(),
        T0,
        batch_job=make_batch_job(0).obj(),
        pods=[make_pod(0).obj()],
        progress=report(step=5, total_steps=10),
    )
    assert plan.status.progress is not None
    assert (plan.status.progress.eta_seconds, plan.status.progress.eta) == (None, None)


@pytest.mark.parametrize(
    ("values", "known", "additional"),
    [
        pytest.param({}, {}, {}, id="empty"),
        pytest.param({"loss": 1.5}, {"train_loss": 1.5}, {}, id="loss-is-train-loss"),
        pytest.param({"train_loss": 1.25}, {"train_loss": 1.25}, {}, id="train-loss"),
        pytest.param(
            {
                "eval_loss": 0.9,
                "eval_accuracy": 0.7,
                "eval_perplexity": 2.46,
                "learning_rate": 2e-4,
                "grad_norm": 0.3,
                "reward": 0.8,
            },
            {
                "eval_loss": 0.9,
                "eval_accuracy": 0.7,
                "eval_perplexity": 2.46,
                "learning_rate": 2e-4,
                "grad_norm": 0.3,
                "reward": 0.8,
            },
            {},
            id="all-known",
        ),
        pytest.param(
            {"reward": 0.5, "rewards/format": 1.0, "test_loss": 1.1},
            {"reward": 0.5},
            {"rewards/format": 1.0, "test_loss": 1.1},
            id="unknown-into-additional",
        ),
    ],
)
def test_metrics_from(
    values: dict[str, float], known: dict[str, float], additional: dict[str, float]
) -> None:
    metrics = metrics_from(values)
    fields = metrics.model_dump(
        by_alias=False, exclude_none=True, exclude={"additional", "non_finite"}
    )
    assert fields == known
    assert metrics.additional == additional
    assert metrics.non_finite == {}


def test_metrics_keep_at_most_64_additional() -> None:
    values = {f"bench_{i:03d}": float(i) for i in range(100)} | {"eval_loss": 0.5}
    metrics = metrics_from(values)
    assert len(metrics.additional) == MAX_ADDITIONAL_METRICS == 64
    assert metrics.additional == {f"bench_{i:03d}": float(i) for i in range(64)}
    assert metrics.eval_loss == 0.5
    type(metrics).model_validate(metrics.model_dump())


def test_report_metrics_reach_the_status_and_a_report_without_metrics_keeps_them() -> None:
    job = make()
    first = observe(
        job,
        running_status(),
        T0,
        batch_job=make_batch_job(0).obj(),
        pods=[make_pod(0).obj()],
        progress=report(step=10, metrics={"loss": 2.0, "eval_loss": 1.8}),
    )
    assert first.status.metrics is not None
    assert (first.status.metrics.train_loss, first.status.metrics.eval_loss) == (2.0, 1.8)
    second = observe(
        job,
        roundtrip(first.status),
        at(15),
        batch_job=make_batch_job(0).obj(),
        pods=[make_pod(0).obj()],
        progress=report(step=11),
    )
    assert second.status.metrics == first.status.metrics
    assert second.status.progress is not None and second.status.progress.step == 11


def test_report_of_an_older_attempt_updates_the_checkpoint_only() -> None:
    job = make()
    before = observe(
        job,
        running_status(),
        T0,
        batch_job=make_batch_job(0).obj(),
        pods=[make_pod(0).obj()],
        progress=report(step=300, total_steps=1000),
    )
    restarted = roundtrip(before.status).model_copy(update={"attempt": 1, "restarts": 1})
    late = report(
        attempt=0,
        step=350,
        total_steps=1000,
        metrics={"loss": 9.9},
        model_uri="s3://stale/final",
        checkpoint=CheckpointReport(latest="s3://ckpt/step-350", step=350, count=3),
    )
    plan = observe(
        job,
        restarted,
        at(60),
        batch_job=make_batch_job(1).obj(),
        pods=[make_pod(0, attempt=1).obj()],
        progress=late,
    )
    new = plan.status
    assert new.checkpoint is not None
    assert (new.checkpoint.latest, new.checkpoint.step, new.checkpoint.count) == (
        "s3://ckpt/step-350",
        350,
        3,
    )
    assert new.progress == before.status.progress  # step counts untouched
    assert new.metrics == before.status.metrics
    assert new.model_uri is None


def test_report_without_a_checkpoint_keeps_the_known_one() -> None:
    job = make()
    first = observe(
        job,
        running_status(),
        T0,
        batch_job=make_batch_job(0).obj(),
        pods=[make_pod(0).obj()],
        progress=report(
            step=100, checkpoint=CheckpointReport(latest="s3://c/100", step=100, count=1)
        ),
    )
    second = observe(
        job,
        roundtrip(first.status),
        at(5),
        batch_job=make_batch_job(0).obj(),
        pods=[make_pod(0).obj()],
        progress=report(step=101),
    )
    assert second.status.checkpoint == first.status.checkpoint
    assert second.status.checkpoint is not None
    assert second.status.checkpoint.latest == "s3://c/100"


# === conditions =========================================================================


def test_conditions_carry_the_generation_and_keep_a_stable_order() -> None:
    job = make(scheduling__suspend=True)
    plan = observe(
        job, running_status(), T0, batch_job=make_batch_job(0).obj(), pods=[make_pod(0).obj()]
    )
    assert [c.type for c in plan.status.conditions] == [VALIDATED, SUSPENDED, RUNNING]
    first = observe(make(), status(), T0)
    assert [c.type for c in first.status.conditions] == [VALIDATED, RESOURCES_CREATED, RUNNING]
    for c in plan.status.conditions + first.status.conditions:
        assert c.observed_generation == GENERATION
    assert plan.status.observed_generation == GENERATION


def test_a_new_generation_updates_observed_generation_not_transition_times() -> None:
    first = observe(
        make(), status(), T0, batch_job=make_batch_job(0).obj(), pods=[make_pod(0).obj()]
    )
    job = make(**{"metadata__generation": GENERATION + 1})
    second = observe(
        job,
        roundtrip(first.status),
        at(300),
        batch_job=make_batch_job(0).obj(),
        pods=[make_pod(0).obj()],
    )
    assert second.status.observed_generation == GENERATION + 1
    for before, after in zip(first.status.conditions, second.status.conditions, strict=True):
        assert after.type == before.type
        assert after.observed_generation == GENERATION + 1
        assert after.last_transition_time == before.last_transition_time == T0


def test_last_transition_time_moves_only_when_status_changes() -> None:
    job = make(runPolicy__maxRestarts=0)
    world = World(job)
    world.step(at(0))
    world.jobs[job_name(0)] = make_batch_job(0).obj()
    world.pods = [make_pod(0).pending().unschedulable("no gpu").obj()]
    world.step(at(10))  # Running: False Pending -> False Unschedulable (same status)
    assert cond(world.status, RUNNING).last_transition_time == at(0)
    assert cond(world.status, RUNNING).reason == "Unschedulable"
    world.run(0)
    world.step(at(20))  # False -> True
    assert cond(world.status, RUNNING).last_transition_time == at(20)
    world.step(at(30))
    assert cond(world.status, RUNNING).last_transition_time == at(20)
    world.pods = [make_pod(0).failed(1).obj()]
    world.step(at(40))  # True -> False
    assert cond(world.status, RUNNING).last_transition_time == at(40)
    assert cond(world.status, VALIDATED).last_transition_time == at(0)
    assert cond(world.status, RESOURCES_CREATED).last_transition_time == at(0)
    assert cond(world.status, FAILED).last_transition_time == at(40)


# === idempotence: level-triggered passes ================================================


@pytest.mark.parametrize(
    ("previous", "observed"),
    [
        pytest.param(status(), {}, id="no-job"),
        pytest.param(
            status(),
            {"batch_job": make_batch_job(0).obj(), "pods": [make_pod(0).obj()]},
            id="running",
        ),
        pytest.param(
            status(phase="Running", start_time=T0),
            {
                "batch_job": make_batch_job(0).obj(),
                "pods": [make_pod(0).failed(1).obj()],
            },
            id="failed",
        ),
        pytest.param(
            status(phase="Running", start_time=T0),
            {"batch_job": make_batch_job(0).complete().obj()},
            id="complete",
        ),
    ],
)
def test_the_same_observation_gives_the_same_plan(
    previous: FineTuneJobStatus, observed: dict[str, Any]
) -> None:
    untouched = previous.model_copy(deep=True)
    one = observe(make(), previous, at(5), **observed)
    two = observe(make(), previous, at(5), **observed)
    assert one == two
    assert one.status != previous  # something was decided...
    assert previous == untouched  # ...in a copy: the observed status is not changed in place


def test_a_failed_attempt_is_restarted_once() -> None:
    """The pass after a restart sees the NEW attempt (no pods yet); the old attempt's failed
    pods are not its pods, so there is no second restart, only the same work re-issued."""
    world = World(make(runPolicy__maxRestarts=3), running_status())
    world.jobs[job_name(0)] = make_batch_job(0).obj()
    world.pods = [make_pod(0).failed(137, "OOMKilled").obj()]
    first = world.step(at(100), act=False)  # the operator stopped before acting
    assert first.actions == [DeleteJob(job_name(0)), CreateAttempt(1)]
    for later in (at(101), at(160)):
        again = world.step(later, act=False)
        assert (world.status.attempt, world.status.restarts) == (1, 1)
        assert world.status.phase == "Restarting"
        assert set(again.actions) <= {DeleteJob(job_name(0)), CreateAttempt(1)}
        # No second "Restarting"; only the creation of the same attempt is announced again.
        assert {e.reason for e in again.events} <= {"Created"}
    world.step(at(200))  # acts now
    assert list(world.jobs) == [job_name(1)]
    settled = world.step(at(201))
    assert (settled.actions, settled.events) == ([], [])
    assert (world.status.attempt, world.status.restarts) == (1, 1)


def test_a_final_failure_is_reported_once() -> None:
    world = World(make(runPolicy__maxRestarts=0), running_status())
    world.jobs[job_name(0)] = make_batch_job(0).obj()
    world.pods = [make_pod(0).failed(1).obj()]
    first = world.step(at(100))
    assert first.actions == [SuspendJob(job_name(0), True)]
    assert [e.reason for e in first.events] == ["ExitCode"]
    second = world.step(at(200))
    assert (second.actions, second.events) == ([], [])
    assert second.status == first.status


def test_success_is_reported_once() -> None:
    world = World(make(), running_status())
    world.jobs[job_name(0)] = make_batch_job(0).complete().obj()
    first = world.step(at(100))
    assert [e.reason for e in first.events] == ["Succeeded"]
    second = world.step(at(200))
    assert (second.actions, second.events) == ([], [])
    assert second.status.completion_time == at(100)


# === rejected() =========================================================================


@pytest.mark.parametrize("phase", ["Pending", "Queued", "Running", "Restarting", "Suspended"])
def test_rejected_fails_a_live_job_as_invalid_spec(phase: str) -> None:
    message = "spec.method.lora.r: Input should be greater than or equal to 1"
    plan = rejected(status(phase=phase), message, GENERATION, at(5))
    new = plan.status
    assert new.phase == "Failed"
    assert new.failure_reason == "InvalidSpec"
    assert new.message == message
    assert new.completion_time == at(5)
    validated = cond(new, VALIDATED)
    assert (validated.status, validated.reason, validated.message) == (
        "False",
        "InvalidSpec",
        message,
    )
    assert (cond(new, FAILED).status, cond(new, FAILED).reason) == ("True", "InvalidSpec")
    assert new.observed_generation == GENERATION
    assert validated.observed_generation == GENERATION
    assert plan.actions == []
    assert plan.events == [Event("Warning", "InvalidSpec", message)]
    roundtrip(new)


@pytest.mark.parametrize("phase", ["Succeeded", "Failed"])
def test_rejected_on_a_terminal_status_changes_nothing(phase: str) -> None:
    previous = rejected(status(), "bad", GENERATION, T0).status
    previous = previous.model_copy(update={"phase": phase})
    plan = rejected(previous, "other reason", GENERATION, at(50))
    assert plan.status == previous
    assert (plan.actions, plan.events) == ([], [])


@pytest.mark.parametrize(("ttl", "elapsed", "delete", "requeue"), TTL_CASES)
@pytest.mark.parametrize("reason", ["InvalidSpec", "ImageNotAllowed"])
def test_a_refused_job_is_deleted_by_its_ttl_like_any_finished_job(
    ttl: int | None, elapsed: float, delete: bool, requeue: float | None, reason: str
) -> None:
    refused = rejected(status(), "bad", GENERATION, T0, reason, ttl).status  # the first pass
    plan = rejected(refused, "bad", GENERATION, at(elapsed), reason, ttl)  # a later one
    assert plan.actions == ([DeleteSelf()] if delete else [])
    assert plan.requeue_after == (None if requeue is None else pytest.approx(requeue))
    assert plan.status.phase == "Failed" and plan.status.completion_time == T0


def test_a_refused_job_with_an_endless_ttl_is_refused_not_an_overflow() -> None:
    """The raw manifest's ttlSecondsAfterFinished reaches rejected() unchecked: 10**12 s
    would overflow a datetime and fail every pass of the job; it waits the API's maximum."""
    from ftapi.v1alpha1.scheduling import MAX_SECONDS

    plan = rejected(status(), "bad", GENERATION, T0, "InvalidSpec", 10**12)
    assert plan.status.phase == "Failed"
    assert plan.requeue_after == pytest.approx(MAX_SECONDS)


def test_valid_again_after_invalid_live_edit_is_not_resurrected() -> None:
    failed_invalid = roundtrip(rejected(running_status(), "bad", GENERATION, T0).status)
    plan = observe(make(), failed_invalid, at(10))
    assert plan.actions == []
    assert plan.status.phase == "Failed"
    assert cond(plan.status, VALIDATED).status == "False"


# === found in review: root causes, suspension, restarts in the middle, limits =========


def test_long_termination_message_still_gives_a_writable_status() -> None:
    message = "RuntimeError: " + "x" * 4000  # the kubelet keeps up to 4096 bytes
    plan = observe(
        make(),
        running_status(),
        T0,
        batch_job=make_batch_job(0).obj(),
        pods=[make_pod(0).failed(1, "Error", message).obj()],
    )
    assert plan.status.phase == "Restarting"
    roundtrip(plan.status)


def test_multi_node_failure_reports_the_root_cause() -> None:
    pods = [
        make_pod(0)
        .on("gpu-1")
        .failed(143, "Error", "torch.distributed: SIGTERM", finished=5)
        .deleting()
        .obj(),
        make_pod(1).on("gpu-2").failed(137, "OOMKilled", finished=0).obj(),
    ]
    plan = observe(
        make(resources__nodes=2, runPolicy__maxRestarts=0),
        running_status(),
        at(10),
        batch_job=make_batch_job(0, nodes=2).failed().obj(),
        pods=pods,
    )
    assert plan.status.failure_reason == "OOMKilled"


@pytest.mark.parametrize(
    ("changes", "phase"),
    [
        pytest.param({"scheduling__suspend": True}, "Suspended", id="user-suspend"),
        pytest.param({"scheduling__queueName": "team-q"}, "Queued", id="kueue-preemption"),
    ],
)
def test_pods_stopped_by_suspension_are_not_a_failure(changes: dict[str, Any], phase: str) -> None:
    suspended = make_batch_job(0, suspend=True).condition(
        "Suspended", "JobSuspended", "Job suspended"
    )
    stopping = make_pod(0).failed(143, "Error").deleting().obj()
    plan = observe(
        make(**changes), running_status(), at(60), batch_job=suspended.obj(), pods=[stopping]
    )
    assert plan.status.phase == phase
    assert (plan.status.attempt, plan.status.restarts) == (0, 0)
    assert not any(isinstance(a, CreateAttempt) for a in plan.actions)


def test_failed_status_with_a_job_still_running_stops_it() -> None:
    previous = status(
        phase="Failed", failure_reason="DeadlineExceeded", completion_time=T0, start_time=at(-3600)
    )
    plan = observe(
        make(runPolicy__activeDeadlineSeconds=3600),
        previous,
        at(30),
        batch_job=make_batch_job(0).obj(),
        pods=[make_pod(0).obj()],
    )
    assert any(a in (DeleteJob(job_name(0)), SuspendJob(job_name(0), True)) for a in plan.actions)


def test_job_completed_before_the_deadline_succeeds_when_seen_after_it() -> None:
    job = make(runPolicy__activeDeadlineSeconds=3600)
    done = make_batch_job(0).complete(3500).finished_at(3500).obj()
    plan = observe(job, running_status(started=0), at(3700), batch_job=done)
    assert plan.status.phase == "Succeeded"
    assert DeleteJob(job_name(0)) not in plan.actions


def test_succeeded_progress_stays_full_on_later_passes() -> None:
    last = report(step=990, total_steps=1000, eta_seconds=30)
    world = World(make(), running_status())
    world.jobs[job_name(0)] = make_batch_job(0).complete().obj()
    world.progress = last
    first = world.step(at(100))
    assert first.status.progress is not None and first.status.progress.percent == 100.0
    second = world.step(at(160))
    assert second.status.progress == first.status.progress


# --- a finished job shows no in-flight figures --------------------------------------------


def _mid_run() -> FineTuneJobStatus:
    """Running, after a report with every in-flight figure."""
    metrics = {"train_loss": 1.25, "learning_rate": 2e-4, "grad_norm": 0.7}
    plan = observe(make(), running_status(), at(10), batch_job=make_batch_job(0).obj(),
                   pods=[make_pod(0).obj()],
                   progress=report(step=50, total_steps=100, tokens_per_second=5321.0,
                                   eta_seconds=4320, metrics=metrics))  # fmt: skip
    assert plan.status.progress is not None and plan.status.progress.tokens_per_second
    assert plan.status.metrics is not None and plan.status.metrics.grad_norm == 0.7
    return roundtrip(plan.status)


@pytest.mark.parametrize("phase", ["Succeeded", "Failed"])
def test_a_finished_job_keeps_its_results_but_no_in_flight_figures(phase: str) -> None:
    ended = (
        {"batch_job": make_batch_job(0).complete().obj()}
        if phase == "Succeeded"
        else {"batch_job": make_batch_job(0).obj(), "pods": [make_pod(0).failed(1).obj()]}
    )
    job = make(runPolicy__maxRestarts=0)
    plan = observe(job, _mid_run(), at(20), **ended)
    assert plan.status.phase == phase
    dumped = plan.status.model_dump(mode="json", by_alias=True, exclude_none=True)
    assert "tokensPerSecond" not in dumped["progress"]
    assert dumped["progress"].get("eta") == ("0s" if phase == "Succeeded" else None)
    assert {"learningRate", "gradNorm"}.isdisjoint(dumped["metrics"])
    assert dumped["metrics"]["trainLoss"] == 1.25  # results stay


def test_input_the_trainer_refuses_fails_the_job_without_spending_restarts() -> None:
    said = f"{INVALID_INPUT_MARKER} /data/train.jsonl:2: column 'answer' is missing"
    failed_pod = make_pod(0).failed(1, "Error", said).obj()
    plan = observe(
        make(), running_status(), at(30), batch_job=make_batch_job(0).obj(), pods=[failed_pod]
    )
    assert plan.status.phase == "Failed"  # maxRestarts is 3: none is used
    assert plan.status.failure_reason == "InvalidInput" and plan.status.restarts == 0
    assert "/data/train.jsonl:2: column 'answer' is missing" in (plan.status.message or "")
    assert "a restart would fail the same way" in (plan.status.message or "")
    assert not any(isinstance(a, CreateAttempt) for a in plan.actions)
    # Any other non-zero exit is still worth a restart.
    other = make_pod(0).failed(1, "Error", "NCCL timeout").obj()
    plan = observe(
        make(), running_status(), at(30), batch_job=make_batch_job(0).obj(), pods=[other]
    )
    assert plan.status.phase == "Restarting"


@pytest.mark.parametrize("verdict", VERDICTS, ids=[v.reason for v in VERDICTS])
def test_the_trainers_verdict_ends_the_attempt_with_its_reason(verdict: TrainerVerdict) -> None:
    """ftapi.contract.VERDICTS: InvalidInput, Diverged and PublishFailed spend no restart
    (the same run would end the same way), RolledBack restarts from a checkpoint."""
    said = f"{verdict.marker} step 7: train_loss NaN (last finite loss 2.31 at step 6)"
    plan = observe(make(), running_status(), at(30), batch_job=make_batch_job(0).obj(),
                   pods=[make_pod(0).failed(1, "Error", said).obj()])  # fmt: skip
    assert "step 7: train_loss NaN (last finite loss 2.31 at step 6)" in (plan.status.message or "")
    if verdict.restart:
        assert plan.status.phase == "Restarting"
    else:
        assert (plan.status.phase, plan.status.failure_reason) == ("Failed", verdict.reason)
        assert plan.status.restarts == 0
    # A refused publish comes after the final model is in output.uri: status names it even
    # when the report that says so has not arrived yet.
    published = plan.status.model_uri == f"{make().spec.output.uri.rstrip('/')}/final"
    assert published is (verdict.reason == "PublishFailed")


def test_a_trainer_silent_past_its_deadline_is_stalled_and_restarted() -> None:
    """A stopped or frozen trainer cannot report (a running one re-sends its report at least
    every heartbeat): silence past runPolicy.stallDetection.minimumSeconds ends the attempt
    as Stalled, and the operator looks again when the deadline would pass."""
    job = make(runPolicy__stallDetection__minimumSeconds=120)

    def plan_at(seconds: float, attempt: int = 0, stage: str = "training") -> Plan:
        progress = report(attempt, step=41).model_copy(update={"stage": stage})  # at T0
        return observe(job, running_status(), at(seconds), batch_job=make_batch_job(0).obj(),
                       pods=[make_pod(0).obj()], progress=progress)  # fmt: skip

    quiet = plan_at(100)
    assert quiet.status.phase == "Running" and quiet.requeue_after == pytest.approx(21)
    stalled = plan_at(121)
    assert stalled.status.phase == "Restarting" and stalled.status.restarts == 1
    running = next(c for c in stalled.status.conditions if c.type == "Running")
    assert running.reason == "Stalled"
    assert "no progress report from the trainer for 121 s" in running.message
    assert "at step 41, stage training" in running.message
    assert any(isinstance(a, DeleteJob) for a in stalled.actions)
    # Not this attempt's report, a finished trainer, or detection off: no verdict.
    assert plan_at(500, attempt=1).status.phase == "Running"
    assert plan_at(500, stage="done").status.phase != "Restarting"
    off = make(runPolicy__stallDetection__enabled=False)
    plan = observe(off, running_status(), at(5000), batch_job=make_batch_job(0).obj(),
                   pods=[make_pod(0).obj()], progress=report(step=41))  # fmt: skip
    assert plan.status.phase == "Running"


def test_a_trainer_that_never_reports_is_stalled_past_its_startup_budget() -> None:
    """No report from this attempt: once every pod's trainer runs, startupSeconds plus a
    margin (the trainer's watchdog fires at startupSeconds and names the phase) bound the
    wait for the first report. A gang still waiting for a pod is not stalled."""
    job = make(resources__nodes=2, runPolicy__stallDetection__startupSeconds=60,
               runPolicy__stallDetection__minimumSeconds=30)  # fmt: skip

    def plan_at(seconds: float, *pods: PodBuilder, progress: ProgressReport | None = None) -> Plan:
        return observe(job, running_status(), at(seconds), batch_job=make_batch_job(0).obj(),
                       pods=[p.obj() for p in pods], progress=progress)  # fmt: skip

    both = (make_pod(0), make_pod(1).started(50))  # the last one started at T0 + 50 s
    waiting = plan_at(1000, make_pod(0), make_pod(1).pending())
    assert waiting.status.phase == "Pending"  # not Restarting: the gang waits for its pod
    early = plan_at(50 + 89, *both)
    assert early.status.phase == "Running" and early.requeue_after == pytest.approx(2)
    stalled = plan_at(50 + 91, *both)
    assert stalled.status.phase == "Restarting"
    running = next(c for c in stalled.status.conditions if c.type == "Running")
    assert running.reason == "Stalled"
    assert ("no progress report from the trainer 91 s after its pods started "
            "(runPolicy.stallDetection.startupSeconds 60 + 30 s)") in running.message  # fmt: skip
    assert "torchrun's rendezvous" in running.message
    # A report from this attempt hands over to the silence check; an older one does not.
    fresh = report(0, step=0).model_copy(update={"updated_at": at(140)})
    assert plan_at(50 + 91, *both, progress=fresh).status.phase == "Running"
    assert plan_at(50 + 91, *both, progress=report(1)).status.phase == "Restarting"
    off = make(resources__nodes=2, runPolicy__stallDetection__enabled=False)
    plan = observe(off, running_status(), at(10**5), batch_job=make_batch_job(0).obj(),
                   pods=[p.obj() for p in both])  # fmt: skip
    assert plan.status.phase == "Running"


def rank(number: int, seconds: float = 0, **fields: Any) -> RankReport:
    """Rank `number`'s own report, sent at T0 + seconds, from pod llama-0-<n> on gpu-<n>."""
    fields = {"step": 41, **fields}
    return RankReport(rank=number, pod=f"llama-0-{number}", node=f"gpu-{number}",
                      updated_at=at(seconds), **fields)  # fmt: skip


def test_a_stall_names_the_ranks_that_went_quiet() -> None:
    """Rank 0 waits in a collective and keeps reporting (its heartbeat thread runs); rank 1
    was stopped: the verdict names rank 1, its pod and node, and its last step."""
    job = make(runPolicy__stallDetection__minimumSeconds=120)

    def plan_at(seconds: float, ranks: dict[int, RankReport]) -> Plan:
        return observe(job, running_status(), at(seconds), batch_job=make_batch_job(0).obj(),
                       pods=[make_pod(0).obj(), make_pod(1).obj()],
                       progress=report(step=41).model_copy(update={"updated_at": at(seconds)}),
                       ranks=ranks)  # fmt: skip

    ranks = {0: rank(0, 200), 1: rank(1, 60, step=40)}
    waiting = plan_at(150, ranks)
    assert waiting.status.phase == "Running"
    assert waiting.requeue_after == pytest.approx(120 - 90 + 1)  # when rank 1 would be late
    stalled = plan_at(200, ranks)
    assert stalled.status.phase == "Restarting"
    message = cond(stalled.status, "Running").message
    named = "rank 1 (pod llama-0-1 on node gpu-1) silent for 140 s, its last report at step 40"
    assert named in message
    assert "rank 0 (" not in message and "rank 0 was at step 41" in message
    # A rank that ended its part (rank 0 still publishing) is not quiet; nor another
    # attempt's rank.
    done = {0: rank(0, 500), 1: rank(1, 0, done=True), 2: rank(2, 0).model_copy(
        update={"attempt": 1})}  # fmt: skip
    assert plan_at(500, done).status.phase == "Running"


def test_a_rank_slow_for_the_window_gets_one_warning_naming_its_pod_and_node() -> None:
    job = make(runPolicy__stragglerDetection__windowSeconds=300)
    world = World(job, running_status())
    world.jobs[job_name(0)] = make_batch_job(0).obj()
    world.run(0, nodes=4)

    def pass_at(seconds: float, slow: float) -> Plan:
        ranks = {r: rank(r, seconds, compute_seconds=1.0) for r in range(4)}
        ranks[2] = rank(2, seconds, compute_seconds=slow)
        world.progress = report(step=41).model_copy(update={"updated_at": at(seconds)})
        return reconcile(world.job, Observed(**{**world.observed(at(seconds)).__dict__,
                                                "ranks": ranks}))  # fmt: skip

    def step(seconds: float, slow: float) -> Plan:
        plan = pass_at(seconds, slow)
        world.status = roundtrip(plan.status)
        return plan

    first = step(10, 2.0)
    assert [(s.rank, s.node, s.ratio) for s in first.status.stragglers] == [(2, "gpu-2", 2.0)]
    assert not [e for e in first.events if e.reason == "Straggler"]
    assert first.requeue_after == pytest.approx(301)
    later = step(250, 2.1)
    assert later.status.stragglers[0].since == at(10)  # still the same episode
    due = step(310, 2.0)
    events = [e for e in due.events if e.reason == "Straggler"]
    assert len(events) == 1 and events[0].type == "Warning"
    assert "rank 2 (pod llama-0-2 on node gpu-2) computes 2x slower" in events[0].message
    assert not [e for e in step(400, 2.0).events if e.reason == "Straggler"]  # once
    # 1.4x is within the default factor 1.5: no longer a straggler.
    assert step(500, 1.4).status.stragglers == []
    # Off: nothing.
    world.job = make(runPolicy__stragglerDetection__enabled=False)
    assert step(900, 5.0).status.stragglers == []


def test_each_new_warning_of_the_trainer_is_one_event_and_kept_in_status() -> None:
    spike = RunWarning(reason="LossSpike", step=7, message="step 7: training loss 44.5 is 5x")

    def plan_with(previous: FineTuneJobStatus, warnings: list[RunWarning]) -> Plan:
        progress = report(step=8, warnings=warnings)
        return observe(make(), previous, at(60), batch_job=make_batch_job(0).obj(),
                       pods=[make_pod(0).obj()], progress=progress)  # fmt: skip

    first = plan_with(running_status(), [spike])
    assert [(e.type, e.reason, e.message) for e in first.events
            if e.reason == "LossSpike"] == [("Warning", "LossSpike", spike.message)]  # fmt: skip
    assert roundtrip(first.status).warnings == [spike]
    again = plan_with(roundtrip(first.status), [spike])
    assert not [e for e in again.events if e.reason == "LossSpike"]


@pytest.mark.parametrize(("after", "improved"), [(8.98, "False"), (5.5, "True")])
def test_success_judges_the_validation_loss_against_the_base_models(
    after: float, improved: str
) -> None:
    """The quick start with a learning rate two orders too high ended at 8.98 against 6.06
    before training and printed done: it still succeeds, but says so."""
    progress = report(
        step=20,
        total_steps=20,
        metrics={"eval_loss": after, "eval_loss/base": 6.06, "train_loss": 9.0},
    )
    plan = observe(make(), running_status(), at(60),
                   batch_job=make_batch_job(0).complete().obj(), progress=progress)  # fmt: skip
    assert plan.status.phase == "Succeeded"
    condition = next(c for c in plan.status.conditions if c.type == "Improved")
    assert condition.status == improved
    assert "6.06" in condition.message and f"{after:.4g}" in condition.message
    warnings = [e for e in plan.events if e.type == "Warning"]
    assert [e.reason for e in warnings] == (["WorseThanBase"] if improved == "False" else [])
    # Without a base evaluation there is nothing to judge.
    bare = report(step=20, total_steps=20, metrics={"eval_loss": after})
    plan = observe(make(), running_status(), at(60),
                   batch_job=make_batch_job(0).complete().obj(), progress=bare)  # fmt: skip
    assert all(c.type != "Improved" for c in plan.status.conditions)


def test_a_non_finite_loss_is_shown_as_such_never_as_the_last_finite_one() -> None:
    def shown(progress: ProgressReport) -> FineTuneJobStatus:
        plan = observe(make(), running_status(), at(60), batch_job=make_batch_job(0).obj(),
                       pods=[make_pod(0).obj()], progress=progress)  # fmt: skip
        roundtrip(plan.status)
        return plan.status

    finite = shown(report(step=6, metrics={"train_loss": 2.3104, "grad_norm": 0.5}))
    assert finite.progress is not None and finite.progress.loss == "2.31"
    diverged = shown(
        report(step=7, metrics={}, non_finite={"train_loss": "NaN", "grad_norm": "Infinity"})
    )
    assert diverged.progress is not None and diverged.progress.loss == "NaN"
    assert diverged.metrics is not None and diverged.metrics.train_loss is None
    assert diverged.metrics.non_finite == {"grad_norm": "Infinity", "train_loss": "NaN"}
    skipping = shown(report(step=9, metrics={"train_loss": 2.2}, skipped_steps=2))
    assert skipping.progress is not None and skipping.progress.skipped_steps == 2


def test_pods_the_job_controller_cannot_create_are_a_named_blocker() -> None:
    quota = (
        'pods "llama-0-0-x" is forbidden: exceeded quota: team-quota, requested: nvidia.com/gpu=8'
    )
    plan = observe(make(), status(), at(30), batch_job=make_batch_job(0).obj(), pods=[],
                   pod_create_failure=quota)  # fmt: skip
    assert plan.status.phase == "Pending"
    running = next(c for c in plan.status.conditions if c.type == "Running")
    assert running.reason == "FailedCreate" and "exceeded quota: team-quota" in running.message
    assert [e.reason for e in plan.events if e.type == "Warning"] == ["FailedCreate"]


def test_pods_the_api_server_refuses_as_invalid_fail_the_job_at_once() -> None:
    """No quota or PriorityClass will turn up to fix it: Failed with the server's words, an
    Event, the Job suspended (its controller would retry the creation forever)."""
    invalid = ('Error creating: Pod "llama-0-0-x" is invalid: spec.containers[0].resources.'
               'requests[cpu]: Invalid value: "1e1000": must be a valid quantity')  # fmt: skip
    plan = observe(make(), status(), at(30), batch_job=make_batch_job(0).obj(), pods=[],
                   pod_create_failure=invalid)  # fmt: skip
    assert plan.status.phase == "Failed" and plan.status.failure_reason == "PodRejected"
    assert "requests[cpu]: Invalid value" in (plan.status.message or "")
    assert SuspendJob("llama-0", True) in plan.actions
    assert not any(isinstance(a, CreateAttempt) for a in plan.actions)
    (event,) = [e for e in plan.events if e.type == "Warning"]
    assert event.reason == "PodRejected" and "is invalid" in event.message


# === Kueue =============================================================================


@pytest.mark.parametrize(
    ("queued", "reason", "said"),
    [
        (None, "Queued", "waiting for Kueue to admit it (queue team-q)"),
        (QueueState("Queued", "Kueue: insufficient quota"), "Queued",
         "waiting for Kueue to admit it (queue team-q): Kueue: insufficient quota"),
        (QueueState("Preempted", "preempted by Kueue: for a higher priority"), "Preempted",
         "waiting for Kueue to admit it (queue team-q): preempted by Kueue: for a higher priority"),
    ],
    ids=["no-word-yet", "over-quota", "preempted"],
)  # fmt: skip
def test_a_job_kueue_holds_is_queued_with_kueues_reason_and_no_restart(
    queued: QueueState | None, reason: str, said: str
) -> None:
    previous = running_status()  # a preemption comes after it ran
    plan = observe(make(scheduling__queueName="team-q"), previous, at(30),
                   batch_job=make_batch_job(0, suspend=True).obj(), queue_state=queued)  # fmt: skip
    new = plan.status
    assert (new.phase, new.message) == ("Queued", said)
    assert (cond(new, RUNNING).status, cond(new, RUNNING).reason) == ("False", reason)
    # Kueue suspends and unsuspends the same Job: no new attempt, no restart spent.
    assert (new.attempt, new.restarts) == (0, 0)
    assert not any(isinstance(a, CreateAttempt | DeleteJob | SuspendJob) for a in plan.actions)


def test_a_stall_verdict_names_every_rank_whose_watchdog_stopped_it() -> None:
    """Rank 0's termination message is the verdict; rank 1's watchdog fired too and said so
    in its last report (its verdict and stack): the message names both, rank 0 once."""
    job = make(runPolicy__stallDetection__minimumSeconds=120)
    said = f"{STALLED.marker} rank 0: optimizer step 41 has not ended after 16 s; in flight: gloo"
    pods = [make_pod(0).failed(STALLED.exit_code, "Error", said).obj(), make_pod(1).obj()]
    ranks = {
        0: rank(0, 10, stalled="optimizer step 41 has not ended after 16 s\nstack: ..."),
        1: rank(1, 10, stalled="optimizer step 41 has not ended after 15 s; in flight: gloo"
                               ":broadcast #80\nstack of the training thread:\n  a.py:1 f"),
        2: rank(2, 10, stalled="from another attempt").model_copy(update={"attempt": 1}),
    }  # fmt: skip
    plan = observe(job, running_status(), at(20), batch_job=make_batch_job(0).obj(), pods=pods,
                   progress=report(step=41), ranks=ranks)  # fmt: skip
    assert plan.status.phase == "Restarting"
    message = cond(plan.status, "Running").message
    assert "rank 0: optimizer step 41 has not ended after 16 s" in message, message
    also = ("also stopped by its watchdog: rank 1 (pod llama-0-1 on node gpu-1): optimizer "
            "step 41 has not ended after 15 s; in flight: gloo:broadcast #80")  # fmt: skip
    assert also in message, message
    assert "stack" not in message and "another attempt" not in message
    assert message.count("rank 0") == 1
    # A long verdict keeps its two ends: the deadline and the collective in flight.
    frames = " <- ".join(f"file{i}.py:{i} fn{i}" for i in range(60))
    long = f"optimizer step 41 has not ended after 15 s; stuck in {frames}; in flight: gloo:x #9"
    ranks[1] = rank(1, 10, stalled=long)
    plan = observe(job, running_status(), at(20), batch_job=make_batch_job(0).obj(), pods=pods,
                   progress=report(step=41), ranks=ranks)  # fmt: skip
    message = cond(plan.status, "Running").message
    assert "rank 1 (pod llama-0-1 on node gpu-1): optimizer step 41 has not ended" in message
    assert " ... " in message and "in flight: gloo:x #9" in message, message
    assert "fn30" not in message


def test_a_stall_verdict_waits_briefly_for_the_other_ranks_watchdogs() -> None:
    """Rank 0's pod failed Stalled at T0+10 while rank 1 had not said anything yet: its
    watchdog fires seconds later (the one that names the collective in flight), so the
    verdict waits for it, PEER_STALL_GRACE_SECONDS at most, then decides without it."""
    job = make(runPolicy__stallDetection__minimumSeconds=120)
    said = f"{STALLED.marker} rank 0: optimizer step 41 has not ended after 16 s"
    pods = [make_pod(0).failed(STALLED.exit_code, "Error", said, finished=10).obj(),
            make_pod(1).obj()]  # fmt: skip
    quiet = {0: rank(0, 9), 1: rank(1, 9)}
    stalled = {**quiet, 1: rank(1, 12, stalled="optimizer step 41 has not ended after 15 s; "
                                               "in flight: gloo:allreduce #80")}  # fmt: skip

    def plan_at(seconds: float, ranks: dict[int, RankReport]) -> Plan:
        return observe(job, running_status(), at(seconds), batch_job=make_batch_job(0).obj(),
                       pods=pods, progress=report(step=41), ranks=ranks)  # fmt: skip

    waiting = plan_at(13, quiet)
    assert waiting.status.phase == "Running" and waiting.status.restarts == 0
    assert waiting.requeue_after == pytest.approx(PEER_STALL_GRACE_SECONDS - 3)
    assert not waiting.actions
    told = plan_at(13, stalled)
    assert told.status.phase == "Restarting"
    assert "also stopped by its watchdog: rank 1" in (told.status.message or "")
    assert "in flight: gloo:allreduce #80" in (told.status.message or "")
    late = plan_at(10 + PEER_STALL_GRACE_SECONDS + 1, quiet)
    assert late.status.phase == "Restarting" and "also stopped" not in (late.status.message or "")
    # A node clock ahead of the operator's never makes it wait longer than the grace.
    assert plan_at(5, quiet).requeue_after == pytest.approx(PEER_STALL_GRACE_SECONDS)
    done = {**quiet, 1: rank(1, 12, done=True)}  # nothing more to hear from it
    assert plan_at(13, done).status.phase == "Restarting"
