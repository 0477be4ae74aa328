"""status: what the operator reports back. Written by the operator only."""

from __future__ import annotations

from datetime import datetime
from typing import Annotated, Literal

from pydantic import Field

from ._base import ApiModel
from .common import NonFinite, ShortText, Text, Uri

Phase = Literal["Pending", "Queued", "Running", "Restarting", "Succeeded", "Failed", "Suspended"]
TERMINAL_PHASES: tuple[Phase, ...] = ("Succeeded", "Failed")
ConditionStatus = Literal["True", "False", "Unknown"]

# The condition types the operator writes, each kept once in status.conditions, in this
# order (what `kubectl describe` lists).
VALIDATED = "Validated"
RESOURCES_CREATED = "ResourcesCreated"
SUSPENDED = "Suspended"
RUNNING = "Running"
PROGRESS_READABLE = "ProgressReadable"
SUCCEEDED = "Succeeded"
FAILED = "Failed"
IMPROVED = "Improved"
CONDITION_TYPES = (
    VALIDATED,
    RESOURCES_CREATED,
    SUSPENDED,
    RUNNING,
    PROGRESS_READABLE,
    SUCCEEDED,
    FAILED,
    IMPROVED,
)


class Condition(ApiModel):
    """A metav1.Condition: one aspect of the job's state, with why it is so."""

    type: Annotated[str, Field(min_length=1, max_length=316)]
    """Validated, ResourcesCreated, Suspended, Running, ProgressReadable, Succeeded, Failed,
    Improved."""
    status: ConditionStatus
    """True, False or Unknown."""
    reason: Annotated[
        str,
        Field(min_length=1, max_length=1024, pattern=r"^[A-Za-z]([A-Za-z0-9_,:]*[A-Za-z0-9_])?$"),
    ]
    """CamelCase machine-readable cause, e.g. OOMKilled, Unschedulable, InvalidSpec."""
    message: Annotated[str, Field(max_length=32768)] = ""
    """Human-readable details."""
    last_transition_time: datetime
    """When status last changed."""
    observed_generation: Annotated[int, Field(ge=0)] | None = None
    """The spec generation this condition was computed from."""


class Progress(ApiModel):
    """Training progress as last reported by the trainer."""

    step: Annotated[int, Field(ge=0)] = 0
    """Optimizer steps done."""
    total_steps: Annotated[int, Field(ge=0)] | None = None
    """Optimizer steps planned."""
    epoch: Annotated[float, Field(ge=0.0)] | None = None
    """Fractional epoch reached."""
    percent: Annotated[float, Field(ge=0.0, le=100.0)] | None = None
    """step / totalSteps in percent."""
    eta_seconds: Annotated[int, Field(ge=0)] | None = None
    """Estimated seconds until training ends."""
    tokens_per_second: Annotated[float, Field(ge=0.0)] | None = None
    """Training throughput across all processes, in this attempt, counted from its first
    logged step once a later one exists (the first steps' warm-up, torch.compile's included,
    is left out)."""
    summary: ShortText | None = None
    """Printable progress, e.g. "120/1000 (12%)" (the PROGRESS column)."""
    loss: ShortText | None = None
    """Printable latest training loss, e.g. "1.234" (the LOSS column): NaN or Infinity when
    it was not finite, which metrics.trainLoss, a number, cannot hold."""
    skipped_steps: Annotated[int, Field(ge=0)] | None = None
    """Steps whose batch updated nothing for a non-finite loss (training.onNonFinite skip)."""
    eta: ShortText | None = None
    """Printable ETA, e.g. "1h12m" (the ETA column)."""
    updated_at: datetime | None = None
    """When the trainer last reported."""


class Startup(ApiModel):
    """Where the time before the first training step went, in this attempt, in seconds: so
    a slow start shows whether the data, the model or the first step took it."""

    data_seconds: Annotated[float, Field(ge=0.0)] | None = None
    """Reading, converting, checking and tokenizing the data, or finding it already
    prepared on the node (dataReused)."""
    data_reused: bool | None = None
    """The prepared data of an earlier attempt (or of another rank) was read: no row was."""
    model_seconds: Annotated[float, Field(ge=0.0)] | None = None
    """The rest of the setup: the tokenizer, fetching and loading the model, the method,
    the evaluation inputs and the base model's answers, the trainer."""
    first_step_seconds: Annotated[float, Field(ge=0.0)] | None = None
    """From the start of training (checkpoint restore included) to the end of the first
    optimizer step."""
    total_seconds: Annotated[float, Field(ge=0.0)] | None = None
    """From the trainer process's start (imports included) to the end of the first step."""


class Metrics(ApiModel):
    """Latest metrics."""

    train_loss: float | None = None
    """Training loss at the last logged step."""
    eval_loss: float | None = None
    """Validation loss at the last evaluation."""
    eval_accuracy: float | None = None
    """Validation accuracy (mcq/qa data) at the last evaluation."""
    eval_perplexity: float | None = None
    """exp(eval_loss)."""
    learning_rate: float | None = None
    """Learning rate at the last logged step."""
    grad_norm: float | None = None
    """Gradient norm at the last logged step."""
    reward: float | None = None
    """Mean total reward (GRPO)."""
    additional: Annotated[dict[str, float], Field(max_length=64)] = {}
    """Other scalar metrics (test set, benchmarks, per-reward means)."""
    non_finite: Annotated[dict[str, NonFinite], Field(max_length=64)] = {}
    """Metrics whose latest value was NaN or infinite, by the trainer's names (train_loss,
    grad_norm, eval_loss, ...): their number fields above are then left empty rather than
    showing an older finite value."""


class RunWarning(ApiModel):
    """Something to look at that did not stop the run (a loss spike): also an Event."""

    reason: Annotated[str, Field(min_length=1, max_length=64, pattern=r"^[A-Z][A-Za-z]*$")]
    """CamelCase, the Event's reason: LossSpike."""
    step: Annotated[int, Field(ge=0)]
    """The optimizer step it happened at."""
    message: Annotated[str, Field(max_length=1024)]


MAX_WARNINGS = 10
"""Warnings kept (the newest), in the trainer's report and in the status."""


class Straggler(ApiModel):
    """A rank computing slower than the others (runPolicy.stragglerDetection)."""

    rank: Annotated[int, Field(ge=0)]
    pod: ShortText | None = None
    node: ShortText | None = None
    """Where it runs: the node to look at (cordon it if it lasts)."""
    ratio: Annotated[float, Field(ge=0.0)]
    """Its recent forward pass time over the median of the other ranks'."""
    since: datetime
    """When it was first seen that slow (the Warning Event comes windowSeconds later)."""
    warned: bool = False
    """Whether its Warning Event was sent."""


class OperatorSettingsUsed(ApiModel):
    """Operator-wide defaults resolved for this job (its spec may name its own)."""

    image: Text
    """The trainer image of every attempt (spec.resources.image, else the operator's
    default image at the first attempt)."""
    s3_endpoint: Text | None = None
    """The S3 endpoint given to the pods when the spec names none (the operator's default
    endpoint at the first attempt); absent when there is none."""
    hub_endpoint: Text | None = None
    """The Hugging Face Hub given to the pods when the spec names none (the operator's
    default at the first attempt); absent when there is none."""


class CheckpointStatus(ApiModel):
    """Checkpoints written so far (complete ones only)."""

    latest: Uri | None = None
    """URI of the newest complete checkpoint (the one a restart resumes from)."""
    step: Annotated[int, Field(ge=0)] | None = None
    """Optimizer step of that checkpoint."""
    count: Annotated[int, Field(ge=0)] = 0
    """Complete checkpoints currently kept."""


class FineTuneJobStatus(ApiModel):
    """Observed state. `phase` is the one-word answer; conditions say why."""

    phase: Phase = "Pending"
    """Pending, Queued, Running, Restarting, Succeeded, Failed or Suspended."""
    conditions: Annotated[list[Condition], Field(max_length=32)] = Field(
        default=[],
        json_schema_extra={"x-kubernetes-list-type": "map", "x-kubernetes-list-map-keys": ["type"]},
    )
    """Latest observations, one per type."""
    message: Text | None = None
    """The most useful sentence about the current state."""
    progress: Progress | None = None
    """Training progress."""
    startup: Startup | None = None
    """Where the time before the first step went, in the latest attempt that took one."""
    metrics: Metrics | None = None
    """Latest metrics."""
    checkpoint: CheckpointStatus | None = None
    """Checkpoints written."""
    warnings: Annotated[list[RunWarning], Field(max_length=MAX_WARNINGS)] = []
    """The newest warnings the trainer reported in the current attempt (loss spikes)."""
    stragglers: Annotated[list[Straggler], Field(max_length=64)] = []
    """Ranks that compute slower than the others now (runPolicy.stragglerDetection)."""
    model_uri: Uri | None = None
    """Where the final model/adapter is (set when training succeeded)."""
    model_image: Uri | None = None
    """The final model as pushed by output.oci: oci://registry/repository:tag@sha256:digest
    (the digest pins exactly what was pushed)."""
    merged_model_image: Uri | None = None
    """The merged model (output.mergeAdapter) as pushed by output.oci, the same way."""
    restarts: Annotated[int, Field(ge=0)] = 0
    """Whole-job restarts so far."""
    attempt: Annotated[int, Field(ge=0)] = 0
    """Index of the current attempt (its Job is named after it)."""
    start_time: datetime | None = None
    """When the first attempt started running."""
    completion_time: datetime | None = None
    """When the job reached Succeeded or Failed."""
    observed_generation: Annotated[int, Field(ge=0)] | None = None
    """The spec generation the status reflects."""
    settings: OperatorSettingsUsed | None = None
    """The operator settings the job runs with, recorded when its first attempt is created
    and kept for every restart: an operator upgrade or a changed default never changes
    the code or the storage endpoint of a job that already started."""
    failure_reason: ShortText | None = None
    """Why the job failed: OOMKilled, ExitCode, ImagePullBackOff, Unschedulable,
    DeadlineExceeded, InvalidSpec, BackoffLimitExceeded, ..."""
