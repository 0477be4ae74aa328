"""spec.logging: how often metrics are logged and to which trackers."""

from __future__ import annotations

from typing import Annotated, Literal

from pydantic import Field

from ._base import ApiModel, Rule
from .common import (
    SET_LIST,
    SecretKeyRef,
    ShortText,
    Text,
    UniqueItems,
    no_credentials_in_url,
    server_url,
)

Tracker = Literal["tensorboard", "mlflow", "wandb"]
# Environment variables the trackers' clients read their credentials from: the operator
# fills them from the referenced Secret keys, so no credential enters a file or the spec.
MLFLOW_TOKEN_ENV = "MLFLOW_TRACKING_TOKEN"
WANDB_KEY_ENV = "WANDB_API_KEY"


class MlflowSpec(ApiModel):
    """MLflow tracking."""

    tracking_uri: Text
    """Tracking server URL (or file:/ path), the only host the token is sent to (and the
    Model Registry's too). The operator's allowedTrackerUrls governs it; MLFLOW_TRACKING_URI
    and MLFLOW_REGISTRY_URI are refused in resources.env."""
    experiment: ShortText = "finetune"
    """Experiment name (created when missing)."""
    run_name: ShortText | None = None
    """Run name; unset: the FineTuneJob name."""
    run_name_prefix: ShortText = ""
    """Prepended to the run name."""
    run_name_suffix: ShortText = ""
    """Appended to the run name."""
    tags: Annotated[dict[ShortText, Text], Field(max_length=64)] = {}
    """Tags set on the run."""
    token_secret_ref: SecretKeyRef | None = None
    """Secret key with MLFLOW_TRACKING_TOKEN, for servers that need one."""
    register_model: bool = True
    """Register the final model (the merged one when output.mergeAdapter is on, else the
    adapter or the full weights) in the Model Registry as a new version, linked to the run
    and tagged with the job, its output URI and its final metrics. An S3 output is
    registered where it is (no copy); a local output is logged to the run's artifacts first
    (the registry refuses local paths)."""
    registered_model: Annotated[ShortText, Field(min_length=1, pattern=r"^[^/:]+$")] | None = None
    """Registered model name (MLflow refuses `/` and `:` in it); unset: the FineTuneJob
    name."""

    rules = (no_credentials_in_url("trackingUri"),)


class WandbSpec(ApiModel):
    """Weights & Biases tracking."""

    project: ShortText
    """Project name."""
    entity: ShortText | None = None
    """Team or user."""
    run_name: ShortText | None = None
    """Run name; unset: the FineTuneJob name."""
    group: ShortText | None = None
    """Run group (compare several jobs of one experiment)."""
    tags: Annotated[list[ShortText], Field(max_length=64)] = []
    """Tags set on the run."""
    mode: Literal["online", "offline"] | None = None
    """offline: write the run under the output (wandb/offline-run-*) for a later
    `wandb sync`, for clusters without access to W&B; unset: W&B's default (online)."""
    api_key_secret_ref: SecretKeyRef | None = None
    """Secret key with the W&B API key."""
    base_url: Text | None = None
    """A self-hosted or dedicated W&B server, e.g. https://wandb.internal, and the only host
    the API key is sent to; unset: W&B's cloud (https://api.wandb.ai). The operator's
    allowedTrackerUrls governs it; WANDB_BASE_URL is refused in resources.env."""

    rules = (server_url("baseUrl", "https://wandb.internal"),)


class LoggingSpec(ApiModel):
    """Metric logging. Metrics always reach the FineTuneJob status and the output files;
    trackers are extra."""

    steps: Annotated[int, Field(ge=1)] = 10
    """Log every N optimizer steps."""
    first_step: bool = True
    """Also log the very first step (catches a broken setup early)."""
    status_interval_seconds: Annotated[int, Field(ge=1, le=3600)] = 15
    """How often, at most, the trainer reports its progress (step, loss, ETA) to the
    FineTuneJob's status; it also reports at each checkpoint and at the end. Lower for
    fresher status on short jobs, higher for fewer API writes from many."""
    report_to: Annotated[
        list[Tracker], Field(max_length=3, json_schema_extra=SET_LIST), UniqueItems
    ] = []
    """Experiment trackers to send metrics to (training and evaluation metrics as they are
    logged, then the final metrics). tensorboard writes under the output (tensorboard/)."""
    mlflow: MlflowSpec | None = None
    """MLflow settings (needed when reportTo has mlflow)."""
    wandb: WandbSpec | None = None
    """W&B settings (needed when reportTo has wandb)."""

    rules = (
        Rule(
            cel="('mlflow' in self.reportTo) == has(self.mlflow)",
            message="reportTo mlflow and the mlflow settings (trackingUri) go together",
            check=lambda lg: ("mlflow" in lg.report_to) == (lg.mlflow is not None),
            field=".mlflow",
        ),
        Rule(
            cel="('wandb' in self.reportTo) == has(self.wandb)",
            message="reportTo wandb and the wandb settings (project) go together",
            check=lambda lg: ("wandb" in lg.report_to) == (lg.wandb is not None),
            field=".wandb",
        ),
    )

    def secret_env(self) -> dict[str, SecretKeyRef]:
        """Environment variable -> Secret key, for the trackers' credentials: the trainer
        container gets these as `valueFrom.secretKeyRef`, and the tracker clients read them
        from the environment."""
        refs: dict[str, SecretKeyRef] = {}
        if self.mlflow is not None and self.mlflow.token_secret_ref is not None:
            refs[MLFLOW_TOKEN_ENV] = self.mlflow.token_secret_ref
        if self.wandb is not None and self.wandb.api_key_secret_ref is not None:
            refs[WANDB_KEY_ENV] = self.wandb.api_key_secret_ref
        return refs
