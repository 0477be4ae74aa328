"""spec.logging: how often metrics are logged and to which trackers."""

from __future__ import annotations

from typing import Annotated, Literal

from pydantic import Field

from ._base import ApiModel, Rule
from .common import SecretKeyRef, ShortText, Text

Tracker = Literal["tensorboard", "mlflow", "wandb"]


class MlflowSpec(ApiModel):
    """MLflow tracking."""

    tracking_uri: Text
    """Tracking server URL (or file:/ path)."""
    experiment: ShortText = "finetune"
    """Experiment name."""
    run_name: ShortText | None = None
    """Run name; unset: the FineTuneJob name."""
    run_name_prefix: ShortText = ""
    """Prepended to the run name."""
    run_name_suffix: ShortText = ""
    """Appended to the run name."""
    token_secret_ref: SecretKeyRef | None = None
    """Secret key with MLFLOW_TRACKING_TOKEN, for servers that need one."""


class WandbSpec(ApiModel):
    """Weights & Biases tracking."""

    project: ShortText
    """Project name."""
    entity: ShortText | None = None
    """Team or user."""
    api_key_secret_ref: SecretKeyRef | None = None
    """Secret key with the W&B API key."""


class LoggingSpec(ApiModel):
    """Metric logging. Metrics always reach the FineTuneJob status and the output files;
    trackers are extra."""

    steps: Annotated[int, Field(ge=1)] = 10
    """Log every N optimizer steps."""
    first_step: bool = True
    """Also log the very first step (catches a broken setup early)."""
    report_to: Annotated[
        list[Tracker], Field(max_length=3, json_schema_extra={"x-kubernetes-list-type": "set"})
    ] = []
    """Experiment trackers to send metrics to."""
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
