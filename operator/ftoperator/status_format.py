"""How the trainer's reports and the operator's messages read in a FineTuneJob's status:
progress (the PROGRESS, LOSS and ETA columns), metrics, checkpoint and model URIs, and the
messages of version skew. Pure formatting; the planner decides when each is written."""

from __future__ import annotations

import logging
import math

from pydantic import ValidationError

from ftapi.loading import FieldError
from ftapi.progress import ProgressReport
from ftapi.skew import NewerFields
from ftapi.v1alpha1 import FineTuneJobStatus
from ftapi.v1alpha1.common import NonFinite
from ftapi.v1alpha1.status import CheckpointStatus, Metrics, Progress

log = logging.getLogger("ftoperator")

METRIC_FIELDS = {
    "train_loss": "train_loss",
    "loss": "train_loss",
    "eval_loss": "eval_loss",
    "eval_accuracy": "eval_accuracy",
    "eval_perplexity": "eval_perplexity",
    "learning_rate": "learning_rate",
    "grad_norm": "grad_norm",
    "reward": "reward",
}


MAX_ADDITIONAL_METRICS = 64


MAX_URI = 2048


def needs_newer_operator(newer: NewerFields, operator: str) -> str:
    return (
        f"the spec sets {spoken(newer.set)}, newer than this operator ({operator}): no attempt"
        " starts until an operator that knows them runs (finish the upgrade), or they are "
        "removed from the spec"
    )


def status_needs_newer_operator(unreadable: list[FieldError], operator: str) -> str:
    """Why a job whose stored status this operator cannot read is left alone."""
    return (
        f"the status holds {'; '.join(map(str, unreadable))}: written by an operator newer "
        f"than this one ({operator}), after a rollback? The job is left as it is (its pods "
        "run on) until an operator that reads its status runs"
    )


def spoken(paths: tuple[str, ...]) -> str:
    return ", ".join(paths[:10]) + (f" and {len(paths) - 10} more" if len(paths) > 10 else "")


def copy_progress(
    status: FineTuneJobStatus, report: ProgressReport | None, *, counts: bool = True
) -> None:
    """The trainer's report into status. A report from an older attempt still carries valid
    checkpoint facts; its step counts are kept until the new attempt reports."""
    if report is None:
        return
    if report.checkpoint is not None and report.checkpoint.latest:
        try:
            status.checkpoint = CheckpointStatus(
                latest=report.checkpoint.latest,
                step=report.checkpoint.step,
                count=report.checkpoint.count,
            )
        except ValidationError:
            log.warning("ignoring a checkpoint URI the status cannot hold")
    if report.attempt != status.attempt:
        return
    if report.model_uri and len(report.model_uri) <= MAX_URI:
        status.model_uri = report.model_uri
    if report.model_image and len(report.model_image) <= MAX_URI:
        status.model_image = report.model_image
    if report.merged_model_image and len(report.merged_model_image) <= MAX_URI:
        status.merged_model_image = report.merged_model_image
    if report.startup is not None:
        status.startup = report.startup
    if not counts:
        return
    progress = Progress(
        step=report.step,
        total_steps=report.total_steps,
        epoch=report.epoch,
        tokens_per_second=report.tokens_per_second,
        eta_seconds=report.eta_seconds,
        updated_at=report.updated_at,
    )
    summarise(progress)
    progress.loss = _loss_text(report)
    progress.skipped_steps = report.skipped_steps or None
    status.progress = progress
    if report.metrics or report.non_finite:
        status.metrics = metrics_from(report.metrics, report.non_finite)


def _loss_text(report: ProgressReport) -> str | None:
    """The LOSS column: the latest training loss, NaN or Infinity included."""
    if "train_loss" in report.non_finite:
        return report.non_finite["train_loss"]
    loss = report.metrics.get("train_loss")
    return f"{loss:.4g}" if loss is not None and math.isfinite(loss) else None


def metrics_from(
    values: dict[str, float], non_finite: dict[str, NonFinite] | None = None
) -> Metrics:
    known: dict[str, float] = {}
    additional: dict[str, float] = {}
    for name, value in sorted(values.items()):
        if not math.isfinite(value):  # NaN/inf cannot be written to status (JSON)
            continue
        if name in METRIC_FIELDS:
            known.setdefault(METRIC_FIELDS[name], value)
        elif len(additional) < MAX_ADDITIONAL_METRICS:
            additional[name] = value
    shown = dict(sorted((non_finite or {}).items())[:MAX_ADDITIONAL_METRICS])
    return Metrics(**known, additional=additional, non_finite=shown)


def summarise(progress: Progress) -> None:
    total = progress.total_steps
    if total:
        # Rounded down: 9996/10000 is 99.9%, not a premature 100%.
        progress.percent = min(100.0, math.floor(1000.0 * progress.step / total) / 10.0)
        progress.summary = f"{progress.step}/{total} ({progress.percent:g}%)"
    else:
        progress.summary = str(progress.step)
    if progress.eta_seconds is not None:
        progress.eta = human_duration(progress.eta_seconds)


def human_duration(seconds: int) -> str:
    """1h12m, 3m20s, 45s: what the ETA column shows."""
    hours, rest = divmod(max(0, int(seconds)), 3600)
    minutes, secs = divmod(rest, 60)
    if hours >= 24:
        return f"{hours // 24}d{hours % 24}h"
    if hours:
        return f"{hours}h{minutes:02d}m"
    if minutes:
        return f"{minutes}m{secs:02d}s"
    return f"{secs}s"
