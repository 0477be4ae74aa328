"""Every reason a FineTuneJob fails or waits, in one typed table, and how the pods and the
Job are read for one (pod_failure, attempt_failure, pending_reason).

The names are what users read (`status.failureReason`, the reasons of the Running and Failed
conditions, Warning Events) and what automation matches on, so they are an API: they live
here once, with whether a restart can help and how telling each is when several pods of one
attempt fail at once. docs/operator.md's tables are held to this one by a test.

    attempt: ends the current attempt; a restart follows while maxRestarts allows and the
             reason is retryable.
    job:     fails the whole job at once, before or instead of an attempt.
    blocker: the attempt's pods are not running yet, for a reason the user must act on
             (the job stays Pending; runPolicy.activeDeadlineSeconds bounds the wait).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Literal

from ftapi.contract import INVALID_INPUT, VERDICTS

Scope = Literal["attempt", "job", "blocker"]


@dataclass(frozen=True)
class Reason:
    name: str
    scope: Scope
    retryable: bool
    """Whether a restart on fresh pods may succeed."""
    rank: int
    """Among one attempt's failed pods the lowest rank is the root cause: a disruption or an
    OOM kill makes the other ranks exit, not the reverse."""
    meaning: str


REASONS: tuple[Reason, ...] = (
    Reason("NodeLost", "attempt", True, 0, "the pod's node became NotReady or disappeared"),
    Reason("Preempted", "attempt", True, 0,
           "the pod's `DisruptionTarget` condition: scheduler preemption"),
    Reason("Evicted", "attempt", True, 0,
           "the pod's `DisruptionTarget` condition: eviction API or kubelet pressure"),
    Reason("OOMKilled", "attempt", True, 1,
           "a container exceeded its memory limit (the message suggests what to lower)"),
    Reason("InvalidInput", "attempt", False, 2,
           "the trainer refused its input (a bad data row, a config it cannot run): it wrote "
           "its reason to the container's termination log and exited with 65; no restart is "
           "spent, since every restart would fail the same way"),
    Reason("Diverged", "attempt", False, 2,
           "the training loss or gradient norm became NaN or infinite "
           "(`training.onNonFinite` stop, or skip/rollback past `training.nonFiniteLimit`); "
           "the message names the step and the last finite loss. No checkpoint holds the "
           "non-finite weights; lower the learning rate or fix the data, then resubmit"),
    Reason("RolledBack", "attempt", True, 2,
           "`training.onNonFinite: rollback`: the loss became non-finite and the attempt "
           "restarts from the newest checkpoint (the message says which step and the "
           "learning rate it resumes with)"),
    Reason("PublishFailed", "attempt", False, 2,
           "training finished and the results are in `output.uri` (`status.modelUri`), but "
           "a publish step refused them for good (the Hub answered 401, 403 or 404: a token "
           "without write access, a repository that cannot be created); no restart is spent "
           "and nothing is trained again"),
    Reason("Stalled", "attempt", True, 2,
           "the trainer made no progress within `runPolicy.stallDetection`'s deadlines (a "
           "deadlocked data loader, a collective a rank never joined, a read that never "
           "returned: it wrote every thread's stack to its log and exited), or it sent no "
           "progress report for `minimumSeconds` (a stopped or frozen process); the restart "
           "resumes from the newest checkpoint"),
    Reason("WorseThanBase", "attempt", False, 2,
           "`evaluation.failIfWorseThanBase`: the validation loss after training is above the "
           "base model's (the message has both); the model was published for inspection"),
    Reason("ExitCode", "attempt", True, 2,
           "a container exited non-zero; the message has the code and the last line of its "
           "termination message"),
    Reason("BackoffLimitExceeded", "attempt", True, 4,
           "the Job failed and no pod said why (e.g. its pods were deleted)"),
    Reason("DeadlineExceeded", "job", False, 9,
           "`runPolicy.activeDeadlineSeconds` passed since the job first ran (restarts "
           "included)"),
    Reason("InvalidSpec", "job", False, 9,
           "the spec passed the CRD schema but not the full validation (should not happen: "
           "the CRD carries the same rules)"),
    Reason("ImageNotAllowed", "job", False, 9,
           "the image is not under one of the operator's `--allowed-registries`"),
    Reason("ServiceAccountNotAllowed", "job", False, 9,
           "`resources.serviceAccountName` is set and the operator forbids it"),
    Reason("PriorityClassNotAllowed", "job", False, 9,
           "the PriorityClass is not in the operator's `--allowed-priority-classes`"),
    Reason("NodeSelectorNotAllowed", "job", False, 9,
           "a nodeSelector or node-affinity key is not in `--allowed-node-selector-keys`"),
    Reason("JobCodeNotAllowed", "job", False, 9,
           "the job brings code (trustRemoteCode, python rewards, a harness includePath) and "
           "the operator forbids it"),
    Reason("PlainHttpNotAllowed", "job", False, 9,
           "`plainHttp` names a registry the operator's `--plain-http-registries` does not "
           "admit (the registry credential would cross the network in clear)"),
    Reason("CaConfigMapNotAllowed", "job", False, 9,
           "a registry's `caConfigMapRef` is not in the operator's `--allowed-ca-config-maps`"),
    Reason("EnvNotAllowed", "job", False, 9,
           "`resources.env` sets a variable the operator's `--allowed-env` does not list "
           "(`--restrict-env`, or `--forbid-job-code`)"),
    Reason("InvalidTestFaults", "job", False, 9,
           "an operator started for tests (FTO_TEST_FAULTS) cannot read the job's "
           "`finetune.dev/test-faults` annotation (ftoperator/fault_hooks.py)"),
    Reason("SecretNotAllowed", "job", False, 9,
           "a Secret the spec references (imagePullSecrets too) is not in "
           "`--allowed-secret-names`"),
    Reason("S3EndpointNotAllowed", "job", False, 9,
           "`output.s3.endpoint` is not in the operator's `--allowed-s3-endpoints`"),
    Reason("TrackerNotAllowed", "job", False, 9,
           "the MLflow tracking URI or W&B server is not in `--allowed-tracker-urls`"),
    Reason("HubEndpointNotAllowed", "job", False, 9,
           "`model.hubEndpoint` is not in the operator's `--allowed-hub-endpoints`"),
    Reason("DeviceMismatch", "job", False, 9,
           "`training.device` does not match the pods: cpu beside requested GPUs, cuda with "
           "`gpusPerNode: 0`, or mps (pods run on Linux)"),
    Reason("LocalPath", "job", False, 9,
           "the output, data, model or prompts name this machine's files, which no pod has "
           "(`finetune run` takes them)"),
    Reason("ChildRejected", "job", False, 9,
           "the API server refused one of the job's objects as invalid (400/413/422: e.g. a "
           "label value or nodeSelector key it does not accept); the message is the server's "
           "own, and retrying would not change it"),
    Reason("PodRejected", "job", False, 9,
           "the API server refused the Job controller's pods as invalid (a value the CRD "
           "cannot check, e.g. a quantity Kubernetes cannot represent); the message is the "
           "server's own, the Job is stopped, and no restart is spent: every pod would be "
           "refused the same way"),
    Reason("ChildConflict", "job", False, 9,
           "an object the job needs (`<job>-config`, `<job>-trainer`, `<job>-<attempt>`, ...) "
           "already exists and is not this job's (its controller ownerReference names another "
           "UID, or none): the operator never adopts it"),
    Reason("Unschedulable", "blocker", True, 9, "no node fits a pod (the scheduler's words)"),
    Reason("ImagePullBackOff", "blocker", True, 9, "a pod cannot pull its image"),
    Reason("CreateContainerConfigError", "blocker", True, 9,
           "a container cannot start, e.g. a Secret or key a `secretKeyRef` names is missing"),
    Reason("CreateContainerError", "blocker", True, 9, "the runtime cannot create a container"),
    Reason("NeedsNewerOperator", "blocker", True, 9,
           "the spec sets fields that this operator is too old to know (the CRD is newer: an "
           "upgrade under way, or a rollback); no attempt starts until an operator that knows "
           "them runs, or the fields are removed. A running attempt is left alone"),
    Reason("FailedCreate", "blocker", True, 9,
           "the Job controller cannot create the pods (a ResourceQuota, a missing "
           "PriorityClass, Pod Security); the message is its own"),
)  # fmt: skip

BY_NAME = {reason.name: reason for reason in REASONS}
FINAL = frozenset(r.name for r in REASONS if r.scope == "attempt" and not r.retryable)
BLOCKERS = tuple(r.name for r in REASONS if r.scope == "blocker")
DISRUPTIONS = frozenset(r.name for r in REASONS if r.scope == "attempt" and r.rank == 0)


def rank(name: str) -> int:
    """How telling a pod failure is (lower: more of a root cause); unknown reasons (a pod's
    own status.reason) rank with exit codes."""
    found = BY_NAME.get(name)
    return found.rank if found is not None else BY_NAME["ExitCode"].rank


def refused_as_invalid(create_failure: str) -> bool:
    """A FailedCreate whose pods the API server's validation refused ("Pod ... is invalid:
    ..."): unlike a quota or a missing PriorityClass, waiting cannot change it."""
    return " is invalid: " in create_failure


# --- classifying what the pods and the Job say -------------------------------------


# Exit codes of a process stopped from outside (SIGTERM, SIGKILL): a consequence, rarely a cause.
STOPPED_EXIT_CODES = {143, 137}


# Pod statuses that need the user's action before the pods can start.
CONFIG_REASONS = ("CreateContainerConfigError", "CreateContainerError")


MAX_DETAIL = 1000  # of a container's termination message, its end is kept


IMAGE_PULL_REASONS = ("ImagePullBackOff", "ErrImagePull", "InvalidImageName", "ErrImageNeverPull")


# Pod DisruptionTarget reasons -> what the user reads.
DISRUPTION_REASONS = {
    "PreemptionByScheduler": "Preempted",
    "PreemptionByKubeScheduler": "Preempted",
    "EvictionByEvictionAPI": "Evicted",
    "TerminationByKubelet": "Evicted",
    "DeletionByTaintManager": "NodeLost",
    "DeletionByPodGC": "NodeLost",
}


@dataclass(frozen=True)
class Failure:
    """Why an attempt failed."""

    reason: str
    message: str


def attempt_failure(
    batch_job: dict[str, Any], pods: list[dict[str, Any]], lost_nodes: frozenset[str] = frozenset()
) -> Failure | None:
    """The most telling reason the attempt cannot succeed, or None while it still can.

    When one rank dies the others follow (torchrun's peers exit, the Job controller stops
    the rest with SIGTERM), so the root cause is the disruption or OOM if there is one,
    then a real exit code before the 143/137 of ranks that were stopped, then the earliest."""
    found = []
    for pod in pods:
        failure = pod_failure(pod, lost_nodes)
        if failure is not None:
            found.append((_rank(failure, pod), _finished_at(pod), _pod_name(pod), failure))
    if found:
        return min(found, key=lambda f: f[:3])[3]
    failed = job_condition(batch_job, "Failed") or job_condition(batch_job, "FailureTarget")
    if failed is not None:
        reason = failed.get("reason") or "BackoffLimitExceeded"
        return Failure(reason, failed.get("message") or "the Job failed")
    return None


def _rank(failure: Failure, pod: dict[str, Any]) -> int:
    """rank(), but a rank stopped from outside (143/137, or being deleted) is a
    consequence: after any real exit code."""
    if failure.reason in DISRUPTIONS or failure.reason == "OOMKilled":
        return rank(failure.reason)
    codes = {
        (c.get("state", {}).get("terminated") or {}).get("exitCode")
        for c in pod.get("status", {}).get("containerStatuses", [])
    }
    if pod.get("metadata", {}).get("deletionTimestamp") or codes & STOPPED_EXIT_CODES:
        return rank("ExitCode") + 1
    return rank(failure.reason)


def _finished_at(pod: dict[str, Any]) -> str:
    times = [
        str((c.get("state", {}).get("terminated") or {}).get("finishedAt") or "~")
        for c in pod.get("status", {}).get("containerStatuses", [])
    ]
    return min(times, default="~")


def _pod_name(pod: dict[str, Any]) -> str:
    return str(pod.get("metadata", {}).get("name", ""))


# How a verdict's message is introduced in the job's status.
VERDICT_WORDS = {INVALID_INPUT.reason: "the trainer refused its input: "}


def pod_failure(pod: dict[str, Any], lost_nodes: frozenset[str] = frozenset()) -> Failure | None:
    name = pod.get("metadata", {}).get("name", "?")
    pod_status = pod.get("status", {})
    phase = pod_status.get("phase")
    node = pod.get("spec", {}).get("nodeName")
    if phase not in ("Succeeded", "Failed") and node and node in lost_nodes:
        return Failure("NodeLost", f"pod {name}: node {node} is not ready")
    if phase != "Failed":
        return None
    for condition in pod_status.get("conditions", []):
        if condition.get("type") == "DisruptionTarget" and condition.get("status") == "True":
            reason = DISRUPTION_REASONS.get(condition.get("reason", ""), "Preempted")
            detail = condition.get("message") or condition.get("reason", "")
            where = f" on {node}" if node else ""
            return Failure(reason, f"pod {name}{where}: {detail}".rstrip(": "))
    for container in pod_status.get("containerStatuses", []):
        terminated = container.get("state", {}).get("terminated")
        if not terminated or terminated.get("exitCode", 0) == 0:
            continue
        code = terminated.get("exitCode")
        said = terminated.get("message") or ""
        verdict = next((v for v in VERDICTS if said.startswith(v.marker)), None)
        if verdict is not None:  # the trainer's own verdict (fttrainer/termination.py)
            words = said.removeprefix(verdict.marker).strip()[:MAX_DETAIL]
            what = VERDICT_WORDS.get(verdict.reason, "")
            return Failure(verdict.reason, f"pod {name}: {what}{words}")
        detail = said.strip().splitlines()
        tail = f": {detail[-1][-MAX_DETAIL:]}" if detail else ""
        if terminated.get("reason") == "OOMKilled":
            return Failure(
                "OOMKilled",
                f"pod {name}: container {container.get('name')} ran out of memory "
                f"(exit code {code}); lower the batch size or sequence length, or ask for "
                f"more memory{tail}",
            )
        return Failure(
            "ExitCode",
            f"pod {name}: container {container.get('name')} exited with code {code}{tail}",
        )
    reason = pod_status.get("reason") or "PodFailed"
    return Failure(reason, f"pod {name} failed: {pod_status.get('message') or reason}")


def pending_reason(pods: list[dict[str, Any]]) -> Failure | None:
    """Why pods are not running yet, when it is something the user must act on."""
    for pod in sorted(pods, key=lambda p: p.get("metadata", {}).get("name", "")):
        name = pod.get("metadata", {}).get("name", "?")
        pod_status = pod.get("status", {})
        for container in pod_status.get("containerStatuses", []):
            waiting = container.get("state", {}).get("waiting") or {}
            reason = waiting.get("reason")
            detail = waiting.get("message") or reason
            if reason in IMAGE_PULL_REASONS:
                return Failure("ImagePullBackOff", f"pod {name} cannot pull its image: {detail}")
            if reason in CONFIG_REASONS:  # e.g. a Secret or key that a secretKeyRef names
                return Failure(reason, f"pod {name} cannot start its container: {detail}")
        for condition in pod_status.get("conditions", []):
            if (
                condition.get("type") == "PodScheduled"
                and condition.get("status") == "False"
                and condition.get("reason") == "Unschedulable"
            ):
                detail = condition.get("message") or "no node fits"
                return Failure("Unschedulable", f"pod {name} cannot be scheduled: {detail}")
    return None


def job_condition(batch_job: dict[str, Any], type_: str) -> dict[str, Any] | None:
    for condition in batch_job.get("status", {}).get("conditions", []) or []:
        if condition.get("type") == type_ and condition.get("status") == "True":
            return dict(condition)
    return None
