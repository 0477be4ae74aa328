"""Fixture builders: the smallest valid object, changed one fact at a time.

make_job().set("spec.method.type", "qlora").set("spec.method.quantization.bits", 8).obj()
make_pod(1).pending().unschedulable("0/3 nodes are available").obj()
make_batch_job(0, nodes=2).failed("DeadlineExceeded", "Job was active longer than ...").obj()

Pods and batch/v1 Jobs come out as the Kubernetes API returns them (camelCase dicts), named
and labelled as the operator's children are, so the code under test reads them as it reads
the cluster's.
"""

from __future__ import annotations

import copy
from datetime import UTC, datetime, timedelta
from typing import Any, Self

from ftoperator.children import LABEL_ATTEMPT, LABEL_JOB, Names

# A fixed clock: every timestamp a builder writes is T0 plus some seconds, so tests can say
# what "now" is relative to them.
T0 = datetime(2025, 3, 1, 12, 0, 0, tzinfo=UTC)
IMAGE = "registry.example/trainer:1"


def stamp(seconds: float = 0) -> str:
    """T0 + seconds as the API server writes times (RFC 3339, whole seconds)."""
    return (T0 + timedelta(seconds=seconds)).strftime("%Y-%m-%dT%H:%M:%SZ")


def minimal_manifest(name: str = "tiny") -> dict[str, Any]:
    return {
        "apiVersion": "finetune.dev/v1alpha1",
        "kind": "FineTuneJob",
        "metadata": {"name": name},
        "spec": {
            "model": {"name": "org/base-model"},
            "dataset": {"train": {"uri": "s3://data/train.jsonl"}},
            "output": {"uri": "s3://models/tiny"},
        },
    }


class JobBuilder:
    def __init__(self, name: str = "tiny") -> None:
        self._manifest = minimal_manifest(name)

    def set(self, path: str, value: Any) -> Self:
        """Set a dotted path (creating mappings on the way); `spec.` may be omitted."""
        *parents, leaf = self._parts(path)
        node = self._manifest
        for part in parents:
            node = node.setdefault(part, {})
        node[leaf] = copy.deepcopy(value)
        return self

    def without(self, path: str) -> Self:
        *parents, leaf = self._parts(path)
        node = self._manifest
        for part in parents:
            node = node[part]
        del node[leaf]
        return self

    def obj(self) -> dict[str, Any]:
        return copy.deepcopy(self._manifest)

    @staticmethod
    def _parts(path: str) -> list[str]:
        parts = path.split(".")
        if parts[0] not in ("spec", "metadata", "status", "apiVersion", "kind"):
            parts.insert(0, "spec")
        return parts


def make_job(name: str = "tiny") -> JobBuilder:
    return JobBuilder(name)


# --- batch/v1 Jobs and their pods ------------------------------------------------------------

COMPLETIONS_REACHED = "Reached expected number of succeeded pods"


class BatchJobBuilder:
    """One attempt's Indexed batch/v1 Job; started and active until told otherwise."""

    def __init__(
        self,
        attempt: int = 0,
        *,
        nodes: int = 1,
        suspend: bool = False,
        owner: str = "llama",
        namespace: str = "team-a",
    ) -> None:
        self._attempt = attempt
        self._nodes = nodes
        self._suspend = suspend
        self._owner = owner
        self._namespace = namespace
        self._conditions: list[dict[str, Any]] = []
        self._completion_time: str | None = None

    def condition(
        self, type_: str, reason: str | None = None, message: str = "", seconds: float = 0
    ) -> Self:
        """A True condition as the Job controller writes it. Without a reason, only type and
        status: the operator must also read a condition that lacks the rest."""
        value: dict[str, Any] = {"type": type_, "status": "True"}
        if reason is not None:
            value |= {
                "reason": reason,
                "message": message,
                "lastProbeTime": stamp(seconds),
                "lastTransitionTime": stamp(seconds),
            }
        self._conditions.append(value)
        return self

    def complete(self, seconds: float = 0) -> Self:
        """Both conditions the Job controller sets on success, in its order."""
        self.condition("SuccessCriteriaMet", "CompletionsReached", COMPLETIONS_REACHED, seconds)
        return self.condition("Complete", "CompletionsReached", COMPLETIONS_REACHED, seconds)

    def failed(
        self,
        reason: str = "BackoffLimitExceeded",
        message: str = "Job has reached the specified backoff limit",
    ) -> Self:
        """Both conditions the Job controller sets on failure, in its order."""
        self.condition("FailureTarget", reason, message)
        return self.condition("Failed", reason, message)

    def finished_at(self, seconds: float) -> Self:
        """status.completionTime: the controller sets it apart from the conditions."""
        self._completion_time = stamp(seconds)
        return self

    def obj(self) -> dict[str, Any]:
        status: dict[str, Any] = {}
        if not self._suspend:
            status["startTime"] = stamp()
            if not self._conditions:  # once the Job has a verdict, no pod counts as active
                status["active"] = self._nodes
        if self._conditions:
            status["conditions"] = copy.deepcopy(self._conditions)
        if self._completion_time:
            status["completionTime"] = self._completion_time
        return {
            "apiVersion": "batch/v1",
            "kind": "Job",
            "metadata": {
                "name": Names(self._owner, self._attempt).batch_job,
                "namespace": self._namespace,
                "uid": f"job-uid-{self._attempt}",
                "labels": {LABEL_JOB: self._owner, LABEL_ATTEMPT: str(self._attempt)},
            },
            "spec": {
                "completionMode": "Indexed",
                "completions": self._nodes,
                "parallelism": self._nodes,
                "backoffLimit": 0,
                "suspend": self._suspend,
            },
            "status": status,
        }


class PodBuilder:
    """The trainer pod of one index of an attempt's Job; Running and Ready on gpu-1 until
    told otherwise. Named and labelled as the Job controller names Indexed pods, so the
    operator's selectors and messages see it as theirs."""

    def __init__(
        self, index: int = 0, *, attempt: int = 0, owner: str = "llama", namespace: str = "team-a"
    ) -> None:
        self._index = index
        self._attempt = attempt
        self._owner = owner
        self._namespace = namespace
        self._phase = "Running"
        self._node: str | None = "gpu-1"
        self._container: dict[str, Any] | None = None
        self._conditions: list[dict[str, Any]] = []
        self._reason: str | None = None
        self._message: str | None = None
        self._deleting = False
        self._started = 0.0

    def started(self, seconds: float) -> Self:
        """The trainer container started running `seconds` after T0 (default T0)."""
        self._started = seconds
        return self

    def on(self, node: str) -> Self:
        self._node = node
        return self

    def unscheduled(self) -> Self:
        """No spec.nodeName: the scheduler has not placed it (yet)."""
        self._node = None
        return self

    def pending(self) -> Self:
        """Phase Pending, still on its node unless told otherwise: image pulls and container
        creation happen there."""
        self._phase = "Pending"
        return self

    def succeeded(self) -> Self:
        self._phase = "Succeeded"
        return self._terminated(0, "Completed", None, 0)

    def failed(
        self,
        code: int | None = None,
        reason: str = "Error",
        message: str | None = None,
        *,
        finished: float = 0,
    ) -> Self:
        """Phase Failed; with a code, the trainer container terminated with it (reason and
        termination message as the kubelet reports them; `finished` seconds after T0)."""
        self._phase = "Failed"
        if code is not None:
            self._terminated(code, reason, message, finished)
        return self

    def waiting(self, reason: str, message: str = "") -> Self:
        """The trainer container has not started (image pulls, container creation): what
        the operator reports as a blocker, or not."""
        self._container = {
            "name": "trainer",
            "ready": False,
            "restartCount": 0,
            "image": IMAGE,
            "state": {"waiting": {"reason": reason, "message": message}},
        }
        return self

    def unschedulable(self, message: str) -> Self:
        """The scheduler's verdict; such a pod has no node."""
        self._node = None
        return self.condition(
            {
                "type": "PodScheduled",
                "status": "False",
                "reason": "Unschedulable",
                "message": message,
                "lastProbeTime": None,
                "lastTransitionTime": stamp(),
            }
        )

    def disrupted(self, reason: str, message: str, *, status: str = "True") -> Self:
        """Phase Failed with the DisruptionTarget condition that preemption, eviction, the
        taint manager and pod GC leave: how the operator tells them from a crash."""
        self._phase = "Failed"
        return self.condition(
            {
                "type": "DisruptionTarget",
                "status": status,
                "reason": reason,
                "message": message,
                "lastProbeTime": None,
                "lastTransitionTime": stamp(),
            }
        )

    def condition(self, value: dict[str, Any]) -> Self:
        """Any other pod condition, as given (Ready is added for a Running pod)."""
        self._conditions.append(copy.deepcopy(value))
        return self

    def because(self, reason: str, message: str) -> Self:
        """status.reason and status.message of the pod itself (the kubelet's Evicted,
        UnexpectedAdmissionError), not of its container."""
        self._reason = reason
        self._message = message
        return self

    def deleting(self) -> Self:
        """A deletionTimestamp: the Job controller or a user is stopping it."""
        self._deleting = True
        return self

    def obj(self) -> dict[str, Any]:
        owner = Names(self._owner, self._attempt).batch_job
        metadata: dict[str, Any] = {
            "name": f"{owner}-{self._index}-x{self._index}k9z",
            "namespace": self._namespace,
            "labels": {
                LABEL_JOB: self._owner,
                LABEL_ATTEMPT: str(self._attempt),
                "batch.kubernetes.io/job-name": owner,
                "job-name": owner,
                "batch.kubernetes.io/job-completion-index": str(self._index),
            },
        }
        if self._deleting:
            metadata["deletionTimestamp"] = stamp()
        running = self._phase == "Running"
        container = self._container
        if container is None and running:
            container = {
                "name": "trainer",
                "ready": True,
                "restartCount": 0,
                "image": IMAGE,
                "state": {"running": {"startedAt": stamp(self._started)}},
            }
        conditions = copy.deepcopy(self._conditions)
        if running:
            conditions.append({"type": "Ready", "status": "True"})
        spec: dict[str, Any] = {"restartPolicy": "Never", "containers": [{"name": "trainer"}]}
        if self._node:
            spec["nodeName"] = self._node
        status: dict[str, Any] = {"phase": self._phase, "conditions": conditions}
        if container is not None:
            status["containerStatuses"] = [copy.deepcopy(container)]
        if self._reason:
            status["reason"] = self._reason
        if self._message:
            status["message"] = self._message
        return {
            "apiVersion": "v1",
            "kind": "Pod",
            "metadata": metadata,
            "spec": spec,
            "status": status,
        }

    def _terminated(self, code: int, reason: str, message: str | None, finished: float) -> Self:
        state: dict[str, Any] = {
            "exitCode": code,
            "reason": reason,
            "startedAt": stamp(),
            "finishedAt": stamp(finished),
            "containerID": "containerd://abc",
        }
        if message is not None:
            state["message"] = message
        self._container = {
            "name": "trainer",
            "ready": False,
            "restartCount": 0,
            "state": {"terminated": state},
        }
        return self


def make_batch_job(
    attempt: int = 0,
    *,
    nodes: int = 1,
    suspend: bool = False,
    owner: str = "llama",
    namespace: str = "team-a",
) -> BatchJobBuilder:
    return BatchJobBuilder(attempt, nodes=nodes, suspend=suspend, owner=owner, namespace=namespace)


def make_pod(
    index: int = 0, *, attempt: int = 0, owner: str = "llama", namespace: str = "team-a"
) -> PodBuilder:
    return PodBuilder(index, attempt=attempt, owner=owner, namespace=namespace)
