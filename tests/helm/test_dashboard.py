"""The Grafana dashboard the chart ships: off by default, a sidecar-labelled ConfigMap when
on, every query valid PromQL, every metric one the operator exports, every panel documented.

tests/integration/test_operator.py checks the same metrics against a real scrape of the
operator running jobs on the local cluster.
"""

from __future__ import annotations

import json
from datetime import UTC, datetime
from typing import Any

import pytest
from prometheus_client import generate_latest
from prometheus_client.parser import text_string_to_metric_families

from ftoperator.job_metrics import JobSeries
from ftoperator.observability import Metrics
from fttestkit.builders import make_job
from fttestkit.chart import REPO, of_kind, render
from tests.dashboard import DASHBOARD, dashboard, documented_panels, metric_names, panels, parse
from tests.dashboard import queries as dashboard_queries

DASHBOARD_NAME = "finetune-operator-dashboard"


def exported_sample_names(jobs: list[dict[str, Any]]) -> set[str]:
    """The sample names of the operator's registry (its own metrics and the per-job series
    over `jobs`), as a scrape shows them (counters with _total, histograms with _bucket)."""
    metrics = Metrics()
    metrics.count_reconcile_error("TemporaryError")
    metrics.count_api_request("create")
    metrics.registry.register(JobSeries(lambda: jobs))
    text = generate_latest(metrics.registry).decode()
    return {s.name for f in text_string_to_metric_families(text) for s in f.samples}


def every_series_jobs() -> list[dict[str, Any]]:
    running = make_job("running").set("metadata.namespace", "team-a").obj()
    running["status"] = {
        "phase": "Running",
        "startTime": "2026-01-01T11:00:00Z",
        "progress": {"step": 1, "totalSteps": 2, "percent": 50.0, "etaSeconds": 9,
                     "tokensPerSecond": 10.0},
        "metrics": {"trainLoss": 1.0, "evalLoss": 1.1, "evalAccuracy": 0.5},
    }  # fmt: skip
    failed = make_job("failed").set("metadata.namespace", "team-a").obj()
    failed["status"] = {"phase": "Failed", "failureReason": "OOMKilled"}
    return [running, failed]


def test_the_dashboard_is_off_by_default() -> None:
    configmaps = of_kind(render(), "ConfigMap")
    assert DASHBOARD_NAME not in [c["metadata"]["name"] for c in configmaps]


def test_on_it_is_a_configmap_the_grafana_sidecar_picks_up() -> None:
    values = {"grafanaDashboard": {"enabled": True, "namespace": "monitoring",
                                   "annotations": {"grafana_folder": "ML"}}}  # fmt: skip
    (configmap,) = [c for c in of_kind(render(values), "ConfigMap")
                    if c["metadata"]["name"] == DASHBOARD_NAME]  # fmt: skip
    assert configmap["metadata"]["namespace"] == "monitoring"
    assert configmap["metadata"]["labels"]["grafana_dashboard"] == "1"
    assert configmap["metadata"]["annotations"] == {"grafana_folder": "ML"}
    assert json.loads(configmap["data"]["finetune-operator.json"]) == dashboard()


@pytest.mark.parametrize(("panel", "expr"), list(dashboard_queries()))
def test_every_query_is_valid_promql(panel: str, expr: str) -> None:
    parse(expr)  # raises with the parser's reason


def test_the_parser_refuses_broken_promql() -> None:
    """The check above would pass anything if the parser accepted anything."""
    with pytest.raises(ValueError, match="parenthesis"):
        parse("sum(rate(finetune_job_step[$__rate_interval])")


def test_every_metric_the_dashboard_reads_is_one_the_operator_exports() -> None:
    exported = exported_sample_names(every_series_jobs())
    read = {name for _, expr in dashboard_queries() for name in metric_names(expr)}
    assert read, "no metric found in the dashboard"
    assert read <= exported, f"not exported: {sorted(read - exported)}"


def test_panels_are_laid_out_on_grafanas_grid_with_unique_ids_and_the_chosen_datasource() -> None:
    everything = dashboard()["panels"]
    assert len({p["id"] for p in everything}) == len(everything)
    for panel in panels():
        grid = panel["gridPos"]
        assert grid["x"] + grid["w"] <= 24, panel["title"]
        assert panel["datasource"]["uid"] == "${datasource}", panel["title"]
        assert panel["targets"] and panel["description"], panel["title"]
    assert dashboard()["uid"] == "finetune-operator"


def test_docs_list_every_panel() -> None:
    documented = documented_panels((REPO / "docs/operator.md").read_text())
    assert documented == [p["title"] for p in panels()], DASHBOARD


def test_gpu_hours_are_reported_in_hours() -> None:
    """GPU-seconds over 3600: one job of 8 GPUs for an hour shows as 8 GPU-hours."""
    job = make_job("hour").set("metadata.namespace", "team-a").obj()
    job["spec"]["resources"] = {"gpusPerNode": 8}
    job["status"] = {"phase": "Succeeded", "startTime": "2026-01-01T10:00:00Z",
                     "completionTime": "2026-01-01T11:00:00Z"}  # fmt: skip
    metrics = Metrics()
    metrics.registry.register(JobSeries(lambda: [job], clock=lambda: datetime.now(UTC)))
    value = metrics.registry.get_sample_value(
        "finetune_job_gpu_seconds_total",
        {"namespace": "team-a", "name": "hour", "method": "lora", "trainer": "sft",
         "model": "org/base-model"},
    )  # fmt: skip
    (panel,) = [p for p in panels() if p["title"] == "GPU-hours by namespace"]
    assert "/ 3600" in panel["targets"][0]["expr"]
    assert value == 8 * 3600
