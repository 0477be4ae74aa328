"""The progress channel between a trainer pod and the operator.

Rank 0 of the trainer writes one JSON document, `ProgressReport`, into the `report` field
of the job's FineTuneJobProgress object (`<job>-progress`, a resource of this API group). Its
per-job Role lets it get/patch that one object by resourceName and nothing else; the operator
reads it from its watch and copies it into `FineTuneJob.status`. Neither side needs the
other's credentials: the operator never sees S3 keys, the trainer never writes the
FineTuneJob.

Why a resource of our own rather than a ConfigMap: the operator must hold every right it
grants in the trainer's Role, so a ConfigMap channel cost it write access to every ConfigMap
of the cluster; and a namespace's `edit` users may write ConfigMaps but get no rights on
this kind unless a cluster admin grants them. The operator takes a report only from the
object named `<job>-progress` whose controller ownerReference carries the job's UID, so
neither a labelled look-alike nor the orphan of a deleted job with the same name is read.

The environment the operator gives the pod says where to write:
FINETUNE_PROGRESS_NAME (the object's name), FINETUNE_NAMESPACE, FINETUNE_ATTEMPT, and who
writes: FINETUNE_POD_NAME, FINETUNE_NODE_NAME (the downward API).
A report carries its attempt, so a late write from a torn-down attempt is recognisable.

Every rank (rank 0 too) also writes a small `RankReport` under `ranks.<rank>` of the same
object (a JSON merge patch touches that key only) at least every `heartbeat_seconds`: its
step, the median wall time and compute time of its recent steps, and when its last step
ended. From them the operator names the ranks that went quiet when a job stalls, and the
ranks that compute slower than the others (stragglers: ftoperator.stragglers).
"""

from __future__ import annotations

import json
import math
from datetime import datetime
from typing import Annotated, Literal

from pydantic import Field, ValidationError

from .contract import CONTRACT
from .loading import field_errors
from .skew import parse_lenient
from .v1alpha1._base import ApiModel
from .v1alpha1.common import NonFinite
from .v1alpha1.status import MAX_WARNINGS, RunWarning, Startup

REPORT_FIELD = "report"
"""The FineTuneJobProgress field holding the JSON of a ProgressReport."""
MAX_REPORT_LENGTH = 65536
"""Bound of that field (the CRD enforces it): a report is a few hundred bytes."""
RANKS_FIELD = "ranks"
"""The FineTuneJobProgress field mapping each rank (a decimal string) to its RankReport."""
MAX_RANK_REPORT_LENGTH = 4096
MAX_RANKS = 16384
ENV_PROGRESS_NAME = "FINETUNE_PROGRESS_NAME"
ENV_NAMESPACE = "FINETUNE_NAMESPACE"
ENV_ATTEMPT = "FINETUNE_ATTEMPT"
ENV_POD_NAME = "FINETUNE_POD_NAME"
ENV_NODE_NAME = "FINETUNE_NODE_NAME"
# How often the trainer reports at most (plus at each checkpoint and at the end): the
# status lags the trainer by about this much.
REPORT_INTERVAL_SECONDS = 15.0


def heartbeat_seconds(minimum_seconds: int) -> float:
    """How often a running trainer re-sends its report when nothing new happened (a long
    evaluation, an upload): at least five times within runPolicy.stallDetection's
    minimumSeconds, after which the operator calls a silent trainer stalled."""
    return min(60.0, max(1.0, minimum_seconds / 5))


Stage = Literal["starting", "training", "evaluating", "saving", "publishing", "done"]


def spelled(value: float) -> NonFinite:
    """A non-finite value as the report and the status spell it."""
    if math.isnan(value):
        return "NaN"
    return "Infinity" if value > 0 else "-Infinity"


class CheckpointReport(ApiModel):
    latest: str | None = None
    """URI of the newest complete checkpoint."""
    step: Annotated[int, Field(ge=0)] | None = None
    count: Annotated[int, Field(ge=0)] = 0
    """Complete checkpoints kept after retention."""


class ProgressReport(ApiModel):
    """What the trainer knows and the operator shows. Unknown values are left out."""

    contract: Annotated[int, Field(ge=1)] = CONTRACT
    """The contract version its writer speaks (ftapi.contract.CONTRACT)."""
    attempt: Annotated[int, Field(ge=0)] = 0
    stage: Stage = "starting"
    step: Annotated[int, Field(ge=0)] = 0
    total_steps: Annotated[int, Field(ge=0)] | None = None
    epoch: Annotated[float, Field(ge=0.0)] | None = None
    tokens_per_second: Annotated[float, Field(ge=0.0)] | None = None
    eta_seconds: Annotated[int, Field(ge=0)] | None = None
    """From this attempt's pace: (total - step) x seconds per step so far."""
    metrics: dict[str, float] = {}
    """Latest scalars by the trainer's names: train_loss, eval_loss, eval_accuracy,
    learning_rate, grad_norm, reward, ..."""
    non_finite: dict[str, NonFinite] = {}
    """Metrics whose latest value was NaN or infinite, by the same names: shown as such,
    never replaced by an older finite value (`metrics` then leaves the name out)."""
    skipped_steps: Annotated[int, Field(ge=0)] = 0
    """Steps whose batch updated nothing for a non-finite loss (training.onNonFinite skip)."""
    warnings: Annotated[list[RunWarning], Field(max_length=MAX_WARNINGS)] = []
    """The newest warnings of this attempt, oldest first."""
    checkpoint: CheckpointReport | None = None
    startup: Startup | None = None
    """Set at the end of the attempt's first step."""
    model_uri: str | None = None
    """Set once the final model is published."""
    model_image: str | None = None
    """Set once output.oci pushed the final model: oci://...:tag@sha256:digest."""
    merged_model_image: str | None = None
    """Set once output.oci pushed the merged model."""
    updated_at: datetime


# The longest stall text a rank report carries (a report is a few hundred bytes otherwise).
STALL_REPORT_CHARS = 4000


class RankReport(ApiModel):
    """One rank's liveness and pace, written by that rank's own process."""

    attempt: Annotated[int, Field(ge=0)] = 0
    rank: Annotated[int, Field(ge=0)]
    pod: Annotated[str, Field(max_length=253)] | None = None
    node: Annotated[str, Field(max_length=253)] | None = None
    step: Annotated[int, Field(ge=0)] = 0
    """Optimizer steps this rank has ended."""
    stepped_at: datetime | None = None
    """When its last optimizer step ended."""
    step_seconds: Annotated[float, Field(ge=0.0)] | None = None
    """Median wall time of its recent steps (about the same on every rank: the collectives
    make the fast ranks wait for the slow one)."""
    compute_seconds: Annotated[float, Field(ge=0.0)] | None = None
    """Median time of its recent steps' forward passes, with no collective inside them under
    data parallelism (ddp): what tells a slow rank from the ranks waiting for it."""
    done: bool = False
    """The process ended its part of the run (no more reports will come)."""
    stalled: Annotated[str, Field(max_length=STALL_REPORT_CHARS)] | None = None
    """This rank's watchdog stopped it (its last report): the deadline it missed, the
    collective in flight, then its training thread's stack, innermost frame first. Every
    thread's stack is in the pod's log; this one outlives the pod."""
    updated_at: datetime


class UnreadableReport(ValueError):
    """A report the operator cannot use (not JSON, a wrong value, another contract)."""


def read_report(text: str) -> ProgressReport:
    """A trainer's report as the operator reads it: fields a newer trainer added are left
    out; anything else wrong raises UnreadableReport saying what."""
    try:
        data = json.loads(text)
    except ValueError as error:
        raise UnreadableReport(f"not JSON: {error}") from None
    contract = data.get("contract", CONTRACT) if isinstance(data, dict) else CONTRACT
    if contract != CONTRACT:
        raise UnreadableReport(
            f"the trainer writes contract {contract!r}, this operator reads {CONTRACT}: run "
            "a trainer image and an operator of releases that share a contract"
        )
    try:
        return parse_lenient(ProgressReport, data)[0]
    except ValidationError as error:
        raise UnreadableReport("; ".join(str(e) for e in field_errors(error))) from None


def read_rank_report(text: str) -> RankReport:
    """One rank's report, read as leniently as read_report."""
    try:
        return parse_lenient(RankReport, json.loads(text))[0]
    except (ValueError, ValidationError) as error:
        raise UnreadableReport(str(error)) from None
