"""Prometheus metrics and the probe endpoints, served on one port next to kopf.

    with METRICS.time_reconcile():                            # finetune_reconcile_duration_seconds
        ...
    METRICS.count_reconcile_error("TemporaryError")           # finetune_reconcile_errors_total
    METRICS.count_restart()                                   # finetune_restarts_total
    METRICS.count_job_created()                               # finetune_jobs_created_total
    METRICS.set_leader(True)                                  # finetune_operator_leader
    METRICS.count_api_request("create")                       # finetune_api_requests_total
    METRICS.observe_gc(2, 0.25)                               # finetune_operator_gc_seconds_total

    server = await serve("0.0.0.0", 8080, health=lambda: True, ready=lambda: ready.is_set())
    server.port                                               # the bound port (useful with 0)
    await server.stop()

Endpoints:
  /metrics  Prometheus text (OpenMetrics when the scraper asks for it).
  /healthz  liveness: 200 while the asyncio loop answers and `health()` is true, else 503.
            The loop answering is most of the check: a wedged loop answers nothing, and the
            kubelet restarts the pod.
  /readyz   readiness: 200 when `ready()` is true, else 503. Meaning chosen for this operator:
            the process is up, its leader election (or, for the leader, kopf) is running and
            it reaches the API server. A standby replica is ready too: no traffic is routed to
            an operator, so readiness only gates rollouts, and a rolling update must be able to
            proceed while the new pod waits for the Lease. Whether a replica leads is the
            `finetune_operator_leader` gauge, not readiness.

The metrics live on their own CollectorRegistry (no process/GC collectors from the global
one, and tests can build a fresh `Metrics()` each). `reason` labels must come from a small
fixed set (an exception class name, a condition reason), never from object names.
`finetune_jobs{phase}` and the per-job series are computed at scrape time from the cache
(job_metrics.py).
"""

from __future__ import annotations

import logging
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from typing import get_args

from aiohttp import web
from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram
from prometheus_client.exposition import choose_encoder

from ftapi.v1alpha1.status import Phase

log = logging.getLogger(__name__)

PHASES: tuple[str, ...] = get_args(Phase)
# Reconciles are API round trips: milliseconds normally, seconds when the API server struggles.
RECONCILE_BUCKETS = (0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0)


class Metrics:
    """The operator's metrics, registered on `registry` (a new one by default)."""

    def __init__(self, registry: CollectorRegistry | None = None) -> None:
        self.registry = registry or CollectorRegistry()
        r = self.registry
        self.reconcile_duration = Histogram(
            "finetune_reconcile_duration_seconds",
            "Time one reconcile of a FineTuneJob took.",
            buckets=RECONCILE_BUCKETS,
            registry=r,
        )
        self.reconcile_errors = Counter(
            "finetune_reconcile_errors",
            "Reconciles that failed, by reason.",
            ["reason"],
            registry=r,
        )
        self.restarts = Counter(
            "finetune_restarts", "Gang restarts: attempts torn down and recreated.", registry=r
        )
        self.jobs_created = Counter(
            "finetune_jobs_created", "batch/v1 Jobs created (one per attempt).", registry=r
        )
        self.leader = Gauge(
            "finetune_operator_leader", "1 while this replica holds the leader Lease.", registry=r
        )
        self.api_requests = Counter(
            "finetune_api_requests",
            "Requests the operator's client made to the API server, by verb (kopf's watch "
            "streams and the leader Lease are not counted).",
            ["verb"],
            registry=r,
        )
        self.watch_events = Counter(
            "finetune_watch_events",
            "Watch events the operator received, by the kind of object (each one is decoded, "
            "cached and makes a pass of its FineTuneJob: the bulk of the operator's CPU).",
            ["kind"],
            registry=r,
        )
        self.gc_seconds = Counter(
            "finetune_operator_gc_seconds",
            "Time the garbage collector took, by generation (2: the full collections, which "
            "visit every cached object; gc_policy.py).",
            ["generation"],
            registry=r,
        )
        for generation in ("0", "1", "2"):  # every series from the start, at 0
            self.gc_seconds.labels(generation=generation)

    @contextmanager
    def time_reconcile(self) -> Iterator[None]:
        """Observe the block's duration in `finetune_reconcile_duration_seconds` (also when it
        raises)."""
        with self.reconcile_duration.time():
            yield

    def observe_reconcile(self, seconds: float) -> None:
        self.reconcile_duration.observe(seconds)

    def count_reconcile_error(self, reason: str) -> None:
        self.reconcile_errors.labels(reason=reason).inc()

    def count_restart(self) -> None:
        self.restarts.inc()

    def count_job_created(self) -> None:
        self.jobs_created.inc()

    def set_leader(self, leading: bool) -> None:
        self.leader.set(1 if leading else 0)

    def count_api_request(self, verb: str) -> None:
        """One request to the API server; `verb` is Kubernetes' (create, get, list, patch,
        delete)."""
        self.api_requests.labels(verb=verb).inc()

    def count_watch_event(self, kind: str) -> None:
        self.watch_events.labels(kind=kind).inc()

    def observe_gc(self, generation: int, seconds: float) -> None:
        self.gc_seconds.labels(generation=str(generation)).inc(seconds)


METRICS = Metrics()


@dataclass
class ProbeServer:
    """A running /metrics, /healthz, /readyz server; `port` is the port actually bound."""

    runner: web.AppRunner
    host: str
    port: int

    async def stop(self) -> None:
        await self.runner.cleanup()


async def serve(
    host: str,
    port: int,
    *,
    health: Callable[[], bool] = lambda: True,
    ready: Callable[[], bool],
    metrics: Metrics = METRICS,
) -> ProbeServer:
    """Start serving in the running loop and return once the port is bound (port 0: any)."""

    async def metrics_page(request: web.Request) -> web.Response:
        encode, content_type = choose_encoder(request.headers.get("Accept", ""))
        # `?name[]=a&name[]=b`: only those series, as prometheus_client's own exposition
        # serves them. Only the collectors that own them run: a reader of a few counters
        # does not pay for rendering every job's series.
        names = request.query.getall("name[]", [])
        registry = metrics.registry.restricted_registry(names) if names else metrics.registry
        return web.Response(body=encode(registry), headers={"Content-Type": content_type})

    async def healthz(_: web.Request) -> web.Response:
        return _probe(health, "healthz")

    async def readyz(_: web.Request) -> web.Response:
        return _probe(ready, "readyz")

    app = web.Application()
    app.router.add_get("/metrics", metrics_page)
    app.router.add_get("/healthz", healthz)
    app.router.add_get("/readyz", readyz)
    runner = web.AppRunner(app, access_log=None, handle_signals=False, shutdown_timeout=1.0)
    await runner.setup()
    site = web.TCPSite(runner, host, port)
    try:
        await site.start()
    except BaseException:
        await runner.cleanup()
        raise
    bound = runner.addresses[0][1]
    log.info("Serving /metrics, /healthz and /readyz on %s:%d", host, bound)
    return ProbeServer(runner=runner, host=host, port=bound)


def _probe(check: Callable[[], bool], name: str) -> web.Response:
    try:
        ok = check()
    except Exception:  # a failing check means "not ok", never a 500 with a traceback
        log.exception("The %s check raised", name)
        ok = False
    return web.Response(status=200 if ok else 503, text="ok\n" if ok else f"{name} failed\n")
