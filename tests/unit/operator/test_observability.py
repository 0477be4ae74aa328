"""The metrics and probe server, scraped over HTTP the way Prometheus and the kubelet do."""

from __future__ import annotations

import asyncio
from collections.abc import Callable, Coroutine
from typing import Any, TypeVar

import aiohttp
import pytest
from prometheus_client import REGISTRY
from prometheus_client.parser import text_string_to_metric_families

from ftoperator.job_metrics import JobSeries
from ftoperator.observability import Metrics, ProbeServer, serve
from fttestkit.builders import make_job

T = TypeVar("T")
Samples = dict[tuple[str, frozenset[tuple[str, str]]], float]


def run(scenario: Coroutine[Any, Any, T]) -> T:
    async def bounded() -> T:
        return await asyncio.wait_for(scenario, timeout=30)

    return asyncio.run(bounded())


async def get(server: ProbeServer, path: str, accept: str = "") -> tuple[int, str, str]:
    headers = {"Accept": accept} if accept else {}
    async with (
        aiohttp.ClientSession() as session,
        session.get(f"http://127.0.0.1:{server.port}{path}", headers=headers) as response,
    ):
        return response.status, response.headers["Content-Type"], await response.text()


def parse(text: str) -> Samples:
    return {
        (sample.name, frozenset(sample.labels.items())): sample.value
        for family in text_string_to_metric_families(text)
        for sample in family.samples
    }


def value(samples: Samples, name: str, **labels: str) -> float:
    return samples[(name, frozenset(labels.items()))]


async def scrape(server: ProbeServer) -> Samples:
    status, content_type, text = await get(server, "/metrics")
    assert status == 200
    assert content_type.startswith("text/plain; version=0.0.4")
    return parse(text)


def with_server(
    scenario: Callable[[ProbeServer], Coroutine[Any, Any, T]],
    metrics: Metrics | None = None,
    health: Callable[[], bool] = lambda: True,
    ready: Callable[[], bool] = lambda: True,
) -> T:
    async def main() -> T:
        server = await serve(
            "127.0.0.1", 0, health=health, ready=ready, metrics=metrics or Metrics()
        )
        try:
            return await scenario(server)
        finally:
            await server.stop()

    return run(main())


def test_ephemeral_port_is_reported_and_freed_on_stop() -> None:
    async def scenario() -> None:
        server = await serve("127.0.0.1", 0, ready=lambda: True, metrics=Metrics())
        assert server.port > 0
        assert (await get(server, "/healthz"))[0] == 200
        await server.stop()
        with pytest.raises(aiohttp.ClientConnectionError):
            await get(server, "/healthz")

    run(scenario())


def test_metrics_show_what_the_operator_reported() -> None:
    metrics = Metrics()

    async def scenario(server: ProbeServer) -> None:
        before = await scrape(server)
        # Nothing has been counted yet.
        assert value(before, "finetune_operator_leader") == 0
        assert value(before, "finetune_restarts_total") == 0
        assert value(before, "finetune_jobs_created_total") == 0
        assert value(before, "finetune_reconcile_duration_seconds_count") == 0

        metrics.observe_reconcile(0.2)
        metrics.observe_reconcile(3.0)
        metrics.count_reconcile_error("TemporaryError")
        metrics.count_reconcile_error("TemporaryError")
        metrics.count_reconcile_error("ApiException")
        metrics.count_restart()
        for _ in range(3):
            metrics.count_job_created()
        metrics.set_leader(True)
        after = await scrape(server)

        histogram = "finetune_reconcile_duration_seconds"
        assert value(after, f"{histogram}_count") == 2
        assert value(after, f"{histogram}_sum") == pytest.approx(3.2)
        assert value(after, f"{histogram}_bucket", le="0.25") == 1
        assert value(after, f"{histogram}_bucket", le="5.0") == 2
        errors = "finetune_reconcile_errors_total"
        assert value(after, errors, reason="TemporaryError") == 2
        assert value(after, errors, reason="ApiException") == 1
        assert value(after, "finetune_restarts_total") == 1
        assert value(after, "finetune_jobs_created_total") == 3
        assert value(after, "finetune_operator_leader") == 1

        metrics.set_leader(False)
        later = await scrape(server)
        assert value(later, "finetune_operator_leader") == 0

    with_server(scenario, metrics)


def test_reconcile_timer_records_failed_reconciles_too() -> None:
    metrics = Metrics()

    async def scenario(server: ProbeServer) -> Samples:
        with metrics.time_reconcile():
            await asyncio.sleep(0.05)
        with pytest.raises(RuntimeError), metrics.time_reconcile():
            raise RuntimeError("boom")
        return await scrape(server)

    samples = with_server(scenario, metrics)
    assert value(samples, "finetune_reconcile_duration_seconds_count") == 2
    assert value(samples, "finetune_reconcile_duration_seconds_sum") >= 0.05


def test_openmetrics_when_the_scraper_asks_for_it() -> None:
    async def scenario(server: ProbeServer) -> tuple[str, str]:
        _, content_type, text = await get(server, "/metrics", accept="application/openmetrics-text")
        return content_type, text

    content_type, text = with_server(scenario)
    assert content_type.startswith("application/openmetrics-text")
    assert text.rstrip().endswith("# EOF")


def test_metrics_have_their_own_registry() -> None:
    Metrics().count_restart()
    # Nothing leaks into the process-global registry (and two instances do not clash).
    assert REGISTRY.get_sample_value("finetune_restarts_total") is None


def test_readyz_follows_the_flag() -> None:
    ready = asyncio.Event()

    async def scenario(server: ProbeServer) -> list[int]:
        statuses = [(await get(server, "/readyz"))[0]]
        ready.set()
        statuses.append((await get(server, "/readyz"))[0])
        ready.clear()
        statuses.append((await get(server, "/readyz"))[0])
        return statuses

    assert with_server(scenario, ready=ready.is_set) == [503, 200, 503]


def test_healthz_follows_the_health_check() -> None:
    healthy = [True]

    async def scenario(server: ProbeServer) -> list[int]:
        statuses = [(await get(server, "/healthz"))[0]]
        healthy[0] = False
        statuses.append((await get(server, "/healthz"))[0])
        return statuses

    assert with_server(scenario, health=lambda: healthy[0], ready=lambda: False) == [200, 503]


def test_a_check_that_raises_means_not_ready() -> None:
    def broken() -> bool:
        raise RuntimeError("kopf task gone")

    async def scenario(server: ProbeServer) -> tuple[int, int]:
        return (await get(server, "/readyz"))[0], (await get(server, "/healthz"))[0]

    assert with_server(scenario, health=broken, ready=broken) == (503, 503)


def test_a_scrape_naming_its_series_gets_only_those_and_renders_no_job() -> None:
    """`?name[]=`, as prometheus_client's own exposition serves it: a reader of a few
    counters (a benchmark polling each second) does not pay for every job's series."""
    metrics = Metrics()
    job = make_job("llama").set("metadata.namespace", "team-a").obj()
    job["status"] = {"phase": "Running"}
    rendered: list[int] = []

    def jobs() -> list[dict[str, Any]]:
        rendered.append(1)
        return [job]

    metrics.registry.register(JobSeries(jobs))
    metrics.count_job_created()

    async def scenario(server: ProbeServer) -> tuple[Samples, int, Samples, Samples]:
        status, _, text = await get(
            server, "/metrics?name[]=finetune_jobs_created_total&name[]=finetune_restarts_total"
        )
        assert status == 200
        named, calls = parse(text), len(rendered)
        per_job = parse((await get(server, "/metrics?name[]=finetune_job_phase"))[2])
        return named, calls, per_job, await scrape(server)

    named, calls, per_job, everything = with_server(scenario, metrics)
    assert named == {("finetune_jobs_created_total", frozenset()): 1.0,
                     ("finetune_restarts_total", frozenset()): 0.0}  # fmt: skip
    assert calls == 0  # the job series' collector never ran
    assert {name for name, _ in per_job} == {"finetune_job_phase"}
    running = [labels for (_, labels), v in per_job.items() if v == 1.0]
    assert [dict(labels)["phase"] for labels in running] == ["Running"]
    assert len(rendered) == 2  # the named one and the whole page
    assert set(named) | set(per_job) <= set(everything)
