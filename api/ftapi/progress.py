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
FINETUNE_PROGRESS_NAME (the object's name), FINETUNE_NAMESPACE, FINETUNE_ATTEMPT.
A report carries its attempt, so a late write from a torn-down attempt is recognisable.
"""

from __future__ import annotations

import math
from datetime import datetime
from typing import Annotated, Literal

from pydantic import Field

from .v1alpha1._base import ApiModel
from .v1alpha1.common import NonFinite

REPORT_FIELD = "report"
"""The FineTuneJobProgress field holding the JSON of a ProgressReport."""
MAX_REPORT_LENGTH = 65536
"""Bound of that field (the CRD enforces it): a report is a few hundred bytes."""
ENV_PROGRESS_NAME = "FINETUNE_PROGRESS_NAME"
ENV_NAMESPACE = "FINETUNE_NAMESPACE"
ENV_ATTEMPT = "FINETUNE_ATTEMPT"
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
    checkpoint: CheckpointReport | None = None
    model_uri: str | None = None
    """Set once the final model is published."""
    updated_at: datetime
