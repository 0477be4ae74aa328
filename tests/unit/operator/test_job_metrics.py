"""Per-job Prometheus series: what a scrape shows for the FineTuneJobs in the cache.

The collector is registered on a real prometheus_client registry and the exposition text is
parsed back, so these tests see what Prometheus would.
"""

from __future__ import annotations

import math
from datetime import UTC, datetime, timedelta
from typing import Any

import pytest
from prometheus_client import CollectorRegistry, generate_latest
from prometheus_client.parser import text_string_to_metric_families

from ftapi.progress import RankReport
from ftoperator.job_metrics import MODEL_LABEL_MAX, JobSeries
from ftoperator.observability import PHASES
from fttestkit.builders import make_job

NOW = datetime(2026, 1, 1, 12, 0, 0, tzinfo=UTC)


def body(name: str, namespace: str = "team-a", **status: Any) -> dict[str, Any]:
    job = make_job(name).set("metadata.namespace", namespace).obj()
    if status:
        job["status"] = status
    return job


def scrape(
    jobs: list[dict[str, Any]], ranks: dict[tuple[str, str], dict[int, RankReport]] | None = None
) -> dict[tuple[str, frozenset[tuple[str, str]]], float]:
    """Every sample of the exposition, keyed by (sample name, labels)."""
    registry = CollectorRegistry()
    found = ranks or {}
    registry.register(JobSeries(lambda: jobs, clock=lambda: NOW,
                                ranks=lambda key: found.get(key, {})))  # fmt: skip
    text = generate_latest(registry).decode()
    samples = {}
    for family in text_string_to_metric_families(text):
        for sample in family.samples:
            samples[(sample.name, frozenset(sample.labels.items()))] = sample.value
    return samples


def labels(name: str, namespace: str = "team-a", **extra: str) -> frozenset[tuple[str, str]]:
    base = {"namespace": namespace, "name": name, "method": "lora", "trainer": "sft",
            "model": "org/base-model", **extra}  # fmt: skip
    return frozenset(base.items())


def test_a_running_job_reports_its_progress_loss_and_throughput() -> None:
    running = body(
        "llama",
        phase="Running",
        restarts=2,
        startTime="2026-01-01T11:00:00Z",
        progress={"step": 40, "totalSteps": 160, "percent": 25.0, "etaSeconds": 900,
                  "tokensPerSecond": 1234.5},
        metrics={"trainLoss": 1.75, "evalLoss": 1.9, "learningRate": 2e-4,
                 "additional": {"mcq_accuracy": 0.62}},
        startup={"dataSeconds": 41.5, "dataReused": False, "modelSeconds": 12.0,
                 "firstStepSeconds": 3.0, "totalSeconds": 70.0},
    )  # fmt: skip
    running["spec"]["resources"] = {"nodes": 2, "gpusPerNode": 4}
    samples = scrape([running])
    one = labels("llama")
    assert samples[("finetune_job_progress_ratio", one)] == pytest.approx(0.25)
    assert samples[("finetune_job_step", one)] == 40
    assert samples[("finetune_job_total_steps", one)] == 160
    assert samples[("finetune_job_eta_seconds", one)] == 900
    assert samples[("finetune_job_tokens_per_second", one)] == 1234.5
    assert samples[("finetune_job_train_loss", one)] == 1.75
    assert samples[("finetune_job_eval_loss", one)] == 1.9
    assert samples[("finetune_job_restarts", one)] == 2
    assert samples[("finetune_job_startup_data_seconds", one)] == 41.5
    assert samples[("finetune_job_startup_model_seconds", one)] == 12.0
    assert samples[("finetune_job_startup_seconds", one)] == 70.0
    assert samples[("finetune_job_gpus", one)] == 8
    # 8 GPUs for the hour since the first attempt started.
    assert samples[("finetune_job_gpu_seconds_total", one)] == 8 * 3600
    assert samples[("finetune_job_metric", labels("llama", metric="learning_rate"))] == 2e-4
    assert samples[("finetune_job_metric", labels("llama", metric="mcq_accuracy"))] == 0.62
    for phase in PHASES:
        expected = 1.0 if phase == "Running" else 0.0
        assert samples[("finetune_job_phase", labels("llama", phase=phase))] == expected
    assert not [key for key in samples if key[0] == "finetune_job_failed"]


def test_a_failed_job_carries_its_reason_and_stops_accruing_gpu_time() -> None:
    failed = body(
        "broken",
        phase="Failed",
        failureReason="OOMKilled",
        startTime="2026-01-01T10:00:00Z",
        completionTime="2026-01-01T10:30:00Z",
    )
    samples = scrape([failed])
    assert samples[("finetune_job_failed", labels("broken", reason="OOMKilled"))] == 1
    assert samples[("finetune_job_gpu_seconds_total", labels("broken"))] == 1800
    assert samples[("finetune_job_phase", labels("broken", phase="Failed"))] == 1


def test_a_non_finite_loss_is_exported_as_nan_not_as_the_last_finite_one() -> None:
    diverged = body(
        "nan", phase="Failed", failureReason="Diverged",
        metrics={"evalLoss": 1.9, "nonFinite": {"train_loss": "NaN", "grad_norm": "Infinity"}},
    )  # fmt: skip
    samples = scrape([diverged])
    assert math.isnan(samples[("finetune_job_train_loss", labels("nan"))])
    assert samples[("finetune_job_eval_loss", labels("nan"))] == 1.9
    assert samples[("finetune_job_metric", labels("nan", metric="grad_norm"))] == math.inf
    assert samples[("finetune_job_failed", labels("nan", reason="Diverged"))] == 1


def test_a_new_job_is_pending_with_no_progress_series() -> None:
    samples = scrape([body("fresh")])
    assert samples[("finetune_job_phase", labels("fresh", phase="Pending"))] == 1
    assert samples[("finetune_job_gpu_seconds_total", labels("fresh"))] == 0
    assert samples[("finetune_job_restarts", labels("fresh"))] == 0
    assert ("finetune_job_step", labels("fresh")) not in samples
    assert ("finetune_job_train_loss", labels("fresh")) not in samples


def test_series_exist_exactly_while_their_job_exists() -> None:
    jobs = [body("a"), body("b", namespace="team-b")]
    registry = CollectorRegistry()
    registry.register(JobSeries(lambda: jobs, clock=lambda: NOW))
    assert 'name="b"' in generate_latest(registry).decode()
    jobs.pop()
    text = generate_latest(registry).decode()
    assert 'name="a"' in text and 'name="b"' not in text


def test_jobs_are_counted_by_phase_and_an_emptied_phase_reads_zero() -> None:
    def counts(jobs: list[dict[str, Any]]) -> dict[str, float]:
        samples = scrape(jobs)
        return {p: samples[("finetune_jobs", frozenset({("phase", p)}))] for p in PHASES}

    assert counts([]) == dict.fromkeys(PHASES, 0)  # every phase exported from the start
    jobs = [body("a", phase="Running"), body("b", phase="Running"), body("c"),
            body("d", phase="Succeeded")]  # fmt: skip
    assert counts(jobs) == {**dict.fromkeys(PHASES, 0), "Running": 2, "Pending": 1,
                            "Succeeded": 1}  # fmt: skip
    assert counts(jobs[2:]) == {**dict.fromkeys(PHASES, 0), "Pending": 1, "Succeeded": 1}


def test_labels_come_from_the_spec_with_the_api_defaults() -> None:
    job = body("dpo", phase="Running")
    job["spec"]["method"] = {"type": "qlora"}
    job["spec"]["trainer"] = {"type": "dpo"}
    job["spec"]["model"] = {"name": "https://user:s3cret@models.internal/" + "x" * 300}
    (key,) = [k for k in scrape([job]) if k[0] == "finetune_job_gpus"]
    found = dict(key[1])
    assert (found["method"], found["trainer"]) == ("qlora", "dpo")
    assert "s3cret" not in found["model"] and "user" not in found["model"]
    assert len(found["model"]) <= MODEL_LABEL_MAX


def test_junk_in_a_status_is_skipped_not_raised() -> None:
    """The cache holds what the API server stored; a hand-edited status must not break every
    scrape (the whole page would fail, not only one job)."""
    junk = {"progress": {"step": "ten"}, "metrics": {"trainLoss": True, "additional": [1]}}
    odd = body("odd", phase="Running", startTime="yesterday", **junk)
    samples = scrape([odd])
    assert ("finetune_job_step", labels("odd")) not in samples
    assert ("finetune_job_train_loss", labels("odd")) not in samples
    assert samples[("finetune_job_gpu_seconds_total", labels("odd"))] == 0


def test_a_running_job_shows_each_ranks_pace_and_the_time_since_its_last_step() -> None:
    """From the ranks' own reports: a hang shows as seconds-since-last-step climbing, a
    straggler as one rank's compute time above the others'."""

    def rank(number: int, compute: float, attempt: int = 1) -> RankReport:
        return RankReport(rank=number, attempt=attempt, step=40, step_seconds=2.0,
                          compute_seconds=compute, stepped_at=NOW - timedelta(seconds=30 + number),
                          updated_at=NOW)  # fmt: skip

    straggler = {"rank": 1, "ratio": 2.0, "since": "2026-01-01T11:00:00Z"}
    running = body("llama", phase="Running", attempt=1, stragglers=[straggler])
    finished = body("done", phase="Succeeded", attempt=1)
    ranks = {("team-a", "llama"): {0: rank(0, 0.5), 1: rank(1, 1.0), 2: rank(2, 9.0, attempt=0)},
             ("team-a", "done"): {0: rank(0, 0.5)}}  # fmt: skip
    samples = scrape([running, finished], ranks)
    assert samples[("finetune_job_seconds_since_last_step", labels("llama"))] == 30.0
    assert samples[("finetune_job_rank_compute_seconds", labels("llama", rank="1"))] == 1.0
    assert samples[("finetune_job_rank_step_seconds", labels("llama", rank="0"))] == 2.0
    assert samples[("finetune_job_stragglers", labels("llama"))] == 1.0
    assert samples[("finetune_job_stragglers", labels("done"))] == 0.0
    # An earlier attempt's rank, and a finished job, have no per-rank series.
    assert ("finetune_job_rank_compute_seconds", labels("llama", rank="2")) not in samples
    assert not [k for k in samples if k[0].startswith("finetune_job_rank") and
                ("name", "done") in k[1]]  # fmt: skip
    assert ("finetune_job_seconds_since_last_step", labels("done")) not in samples
