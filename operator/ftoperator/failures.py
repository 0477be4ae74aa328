"""Every reason a FineTuneJob fails or waits, in one typed table.

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
from typing import Literal

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
