"""Per-FineTuneJob Prometheus series, computed at scrape time from the informer cache.

    registry.register(JobSeries(controller.jobs_now))

    finetune_jobs{phase}                 FineTuneJobs by phase (the one family without the
                                         per-job labels; every phase, 0 when empty)

Every series carries the labels namespace, name, method, trainer and model, so a dashboard
can select one job, or sum by namespace, without a join:

    finetune_job_phase{phase}            1 for the job's phase, 0 for the others (one-hot)
    finetune_job_failed{reason}          1 while the job is Failed, with status.failureReason
    finetune_job_progress_ratio          0..1 (status.progress.percent / 100)
    finetune_job_step / _total_steps     optimizer steps done / planned
    finetune_job_eta_seconds             while running
    finetune_job_tokens_per_second       while running
    finetune_job_startup_seconds         the latest attempt's start to its first step's end,
    finetune_job_startup_data_seconds    and of it the data's and the model's share
    finetune_job_startup_model_seconds   (status.startup)
    finetune_job_train_loss / _eval_loss the last values the trainer reported
    finetune_job_metric{metric}          every other reported metric (eval_accuracy, reward,
                                         learning_rate, the MCQ scores, ...: at most 64 a job)
    finetune_job_restarts                whole-job restarts so far
    finetune_job_gpus                    GPUs requested (nodes x gpusPerNode)
    finetune_job_gpu_seconds_total       GPUs x wall time since the first attempt started
                                         running, until the job finished
    finetune_job_stragglers              ranks computing slower than the others now
                                         (status.stragglers)

While a job runs, from its ranks' own reports (ftapi.progress.RankReport):

    finetune_job_seconds_since_last_step since any rank of the attempt last ended a step:
                                         a hang shows as a line climbing until the stall
                                         deadline
    finetune_job_rank_step_seconds{rank} median wall time of the rank's recent steps
    finetune_job_rank_compute_seconds{rank}  median forward time of its recent steps (a
                                         straggler stands out here, not in step time)

Why at scrape time from the cache rather than gauges set by reconciles: a series then exists
exactly while its FineTuneJob exists (deleting the job removes every series of it, nothing
stale is left behind after an operator restart) and costs nothing between scrapes (counting
the phases at every phase change was O(jobs) per reconcile, paid by every pass of a burst;
docs/results/history.md). Only the leader has a cache, so a standby replica exports no job
series and a dashboard summing over replicas counts each job once.

Cardinality: about 25 series per job plus one per reported extra metric (at most 64), for
every FineTuneJob that exists, finished ones included, until it is deleted
(`runPolicy.ttlSecondsAfterFinished` bounds that); two more per rank while a job runs.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable, Iterator, Mapping
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Any

from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily, Metric
from prometheus_client.registry import Collector

from ftapi.progress import RankReport
from ftapi.redaction import redact
from ftapi.v1alpha1.method import MethodSpec
from ftapi.v1alpha1.resources import ResourcesSpec
from ftapi.v1alpha1.status import FineTuneJobStatus
from ftapi.v1alpha1.trainer import TrainerSpec

from .observability import PHASES
from .timestamps import api_time

LABELS = ("namespace", "name", "method", "trainer", "model")
MODEL_LABEL_MAX = 128
"""A model is a hub id or a URI; a long one is cut (the label is for telling jobs apart)."""

_DEFAULT_METHOD = str(MethodSpec.model_fields["type"].default)
_DEFAULT_TRAINER = str(TrainerSpec.model_fields["type"].default)
_DEFAULT_NODES = int(ResourcesSpec.model_fields["nodes"].default)
_DEFAULT_GPUS_PER_NODE = int(ResourcesSpec.model_fields["gpus_per_node"].default)
_DEFAULT_PHASE = str(FineTuneJobStatus.model_fields["phase"].default)

# status.metrics keys with a series of their own; the rest go to finetune_job_metric.
_OWN_SERIES = {"trainLoss": "train_loss", "evalLoss": "eval_loss"}
_NAMED_METRICS = {
    "evalAccuracy": "eval_accuracy",
    "evalPerplexity": "eval_perplexity",
    "learningRate": "learning_rate",
    "gradNorm": "grad_norm",
    "reward": "reward",
}


@dataclass(frozen=True)
class _Gauge:
    name: str
    help: str
    path: tuple[str, ...]
    scale: float = 1.0
    default: float | None = None
    """The value when the status has none (status.restarts is 0 until a restart)."""


_STATUS_GAUGES = (
    _Gauge("finetune_job_progress_ratio", "Share of the planned steps done (0..1).",
           ("progress", "percent"), 0.01),
    _Gauge("finetune_job_step", "Optimizer steps done.", ("progress", "step")),
    _Gauge("finetune_job_total_steps", "Optimizer steps planned.", ("progress", "totalSteps")),
    _Gauge("finetune_job_eta_seconds", "Estimated seconds until training ends (while running).",
           ("progress", "etaSeconds")),
    _Gauge("finetune_job_tokens_per_second", "Training throughput (while running).",
           ("progress", "tokensPerSecond")),
    _Gauge("finetune_job_train_loss", "Last training loss the trainer reported.",
           ("metrics", "trainLoss")),
    _Gauge("finetune_job_eval_loss", "Last evaluation loss the trainer reported.",
           ("metrics", "evalLoss")),
    _Gauge("finetune_job_startup_data_seconds", "Seconds the latest attempt spent preparing "
           "its data before the first step (status.startup).", ("startup", "dataSeconds")),
    _Gauge("finetune_job_startup_model_seconds", "Seconds the latest attempt spent on the "
           "model and trainer before the first step.", ("startup", "modelSeconds")),
    _Gauge("finetune_job_startup_seconds", "Seconds from the latest attempt's trainer start "
           "to the end of its first step.", ("startup", "totalSeconds")),
    _Gauge("finetune_job_restarts", "Whole-job restarts so far.", ("restarts",),
           default=float(FineTuneJobStatus.model_fields["restarts"].default)),
)  # fmt: skip


def job_labels(body: dict[str, Any]) -> list[str]:
    """The five identifying label values, read from the raw object (defaults from the API
    models, so a job that omits spec.method reads as the lora it runs as)."""
    metadata = body.get("metadata") or {}
    spec = body.get("spec") or {}
    model = str((spec.get("model") or {}).get("name", ""))
    return [
        str(metadata.get("namespace", "")),
        str(metadata.get("name", "")),
        str((spec.get("method") or {}).get("type", _DEFAULT_METHOD)),
        str((spec.get("trainer") or {}).get("type", _DEFAULT_TRAINER)),
        redact(model, MODEL_LABEL_MAX),  # a URI's user:password@ never reaches a label
    ]


def gpus_requested(body: dict[str, Any]) -> int:
    resources = (body.get("spec") or {}).get("resources") or {}
    nodes = _number(resources.get("nodes")) or _DEFAULT_NODES
    per_node = _number(resources.get("gpusPerNode"))
    return int(nodes * (_DEFAULT_GPUS_PER_NODE if per_node is None else per_node))


def gpu_seconds(body: dict[str, Any], now: datetime) -> float:
    """GPUs x the wall time since the first attempt started running, until completion. An
    allocation figure (restarts and the pending time between attempts count), which is what
    a GPU-hours budget is charged for."""
    status = body.get("status") or {}
    started = api_time(status.get("startTime"))
    if started is None:
        return 0.0
    ended = api_time(status.get("completionTime")) or now
    return gpus_requested(body) * max((ended - started).total_seconds(), 0.0)


Ranks = Callable[[tuple[str, str]], Mapping[int, RankReport]]
"""(namespace, name) -> that job's rank reports."""


def _no_ranks(key: tuple[str, str]) -> Mapping[int, RankReport]:
    return {}


def job_families(
    bodies: Iterable[dict[str, Any]], now: datetime, ranks: Ranks = _no_ranks
) -> list[Metric]:
    """Every per-job family, for the FineTuneJobs given (raw objects as the API returns),
    and `finetune_jobs{phase}`, the count by phase (every phase, 0 when none is in it)."""
    counts = dict.fromkeys(PHASES, 0)
    phase = GaugeMetricFamily(
        "finetune_job_phase",
        "1 for the FineTuneJob's phase, 0 for the others.",
        labels=[*LABELS, "phase"],
    )
    failed = GaugeMetricFamily(
        "finetune_job_failed",
        "1 while the FineTuneJob is Failed, labelled with its reason.",
        labels=[*LABELS, "reason"],
    )
    gauges = [GaugeMetricFamily(g.name, g.help, labels=list(LABELS)) for g in _STATUS_GAUGES]
    metric = GaugeMetricFamily(
        "finetune_job_metric",
        "Other metrics the trainer reported (evaluation, reward, ...).",
        labels=[*LABELS, "metric"],
    )
    gpus = GaugeMetricFamily("finetune_job_gpus", "GPUs requested.", labels=list(LABELS))
    used = CounterMetricFamily(
        "finetune_job_gpu_seconds",
        "GPUs x seconds since the first attempt started running.",
        labels=list(LABELS),
    )
    stragglers = GaugeMetricFamily(
        "finetune_job_stragglers",
        "Ranks computing slower than the others now.",
        labels=list(LABELS),
    )
    since_step = GaugeMetricFamily(
        "finetune_job_seconds_since_last_step",
        "Seconds since any rank of the running attempt last ended an optimizer step.",
        labels=list(LABELS),
    )
    rank_step = GaugeMetricFamily(
        "finetune_job_rank_step_seconds",
        "Median wall time of a rank's recent steps.",
        labels=[*LABELS, "rank"],
    )
    rank_compute = GaugeMetricFamily(
        "finetune_job_rank_compute_seconds",
        "Median forward-pass time of a rank's recent steps.",
        labels=[*LABELS, "rank"],
    )
    for body in bodies:
        labels = job_labels(body)
        status = body.get("status") or {}
        current = status.get("phase") or _DEFAULT_PHASE
        counts[current] = counts.get(current, 0) + 1
        for name in PHASES:
            phase.add_metric([*labels, name], 1.0 if name == current else 0.0)
        if current == "Failed":
            failed.add_metric([*labels, str(status.get("failureReason") or "Unknown")], 1.0)
        metrics = status.get("metrics") or {}
        non_finite = _non_finite(metrics)
        for family, spec in zip(gauges, _STATUS_GAUGES, strict=True):
            value = _number(_dig(status, spec.path))
            value = spec.default if value is None else value
            if spec.path[0] == "metrics":  # NaN as NaN: Prometheus carries it
                value = non_finite.get(_OWN_SERIES[spec.path[1]], value)
            if value is not None:
                family.add_metric(labels, value * spec.scale)
        for key, value in _other_metrics(metrics):
            metric.add_metric([*labels, key], value)
        gpus.add_metric(labels, float(gpus_requested(body)))
        used.add_metric(labels, gpu_seconds(body, now))
        found = status.get("stragglers")
        stragglers.add_metric(labels, float(len(found) if isinstance(found, list) else 0))
        if current == "Running":
            attempt = _number(status.get("attempt")) or 0
            running = [r for r in ranks((labels[0], labels[1])).values() if r.attempt == attempt]
            stepped = [r.stepped_at for r in running if r.stepped_at is not None]
            if stepped:
                since_step.add_metric(labels, max((now - max(stepped)).total_seconds(), 0.0))
            for report in running:
                rank = [*labels, str(report.rank)]
                if report.step_seconds is not None:
                    rank_step.add_metric(rank, report.step_seconds)
                if report.compute_seconds is not None:
                    rank_compute.add_metric(rank, report.compute_seconds)
    by_phase = GaugeMetricFamily("finetune_jobs", "FineTuneJobs by phase.", labels=["phase"])
    for name, count in counts.items():
        by_phase.add_metric([name], float(count))
    return [
        by_phase,
        phase,
        failed,
        *gauges,
        metric,
        gpus,
        used,
        stragglers,
        since_step,
        rank_step,
        rank_compute,
    ]


class JobSeries(Collector):
    """A prometheus_client collector over the FineTuneJobs `jobs()` returns at each scrape."""

    def __init__(
        self,
        jobs: Callable[[], Iterable[dict[str, Any]]],
        clock: Callable[[], datetime] = lambda: datetime.now(UTC),
        ranks: Ranks = _no_ranks,
    ) -> None:
        self._jobs = jobs
        self._clock = clock
        self._ranks = ranks

    def collect(self) -> Iterator[Metric]:
        yield from job_families(list(self._jobs()), self._clock(), self._ranks)

    def describe(self) -> Iterator[Metric]:
        """The families' names, with no samples: registering must not read the cache (it
        may be empty yet). Declared, so that a scrape asking for other names only
        (`/metrics?name[]=...`) does not render every job's series."""
        return iter(job_families([], self._clock()))


def _non_finite(metrics: dict[str, Any]) -> dict[str, float]:
    """status.metrics.nonFinite as numbers (NaN, inf), by the trainer's names."""
    found = metrics.get("nonFinite") or {}
    if not isinstance(found, dict):
        return {}
    return {str(k): float(v) for k, v in found.items() if v in ("NaN", "Infinity", "-Infinity")}


def _other_metrics(metrics: dict[str, Any]) -> Iterator[tuple[str, float]]:
    non_finite = _non_finite(metrics)
    for key, name in _NAMED_METRICS.items():
        value = non_finite.get(name, _number(metrics.get(key)))
        if value is not None:
            yield name, value
    additional = metrics.get("additional") or {}
    if isinstance(additional, dict):
        for key, raw in sorted(additional.items()):
            value = _number(raw)
            if value is not None and key not in _OWN_SERIES.values():
                yield str(key), value


def _dig(status: dict[str, Any], path: tuple[str, ...]) -> Any:
    node: Any = status
    for part in path:
        if not isinstance(node, dict):
            return None
        node = node.get(part)
    return node


def _number(value: Any) -> float | None:
    if isinstance(value, bool) or not isinstance(value, int | float):
        return None
    return float(value)
