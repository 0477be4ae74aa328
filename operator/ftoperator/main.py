"""`python -m ftoperator` / `finetune-operator`: starts logging, leader election and kopf.

    finetune-operator --namespace team-a --namespace team-b   # or 'team-*', or none: all
    finetune-operator --default-image registry/trainer:0.1.0 --log-format json

Every flag has an environment variable (FTO_*), which is how the Helm chart sets them
(config.py: the flags, their defaults, and what they are parsed into).
Only the replica holding the Lease reconciles; the others wait, ready to take over. SIGTERM
stops the watches, lets running passes finish and releases the Lease at once.
"""

from __future__ import annotations

import asyncio
import json
import logging
import os
import signal
import sys
from collections.abc import Awaitable, Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import replace
from typing import Any

import kopf
from kubernetes import client, config

from . import gc_policy
from .config import Options, Settings, parse_options
from .controller import Controller
from .handlers import register
from .job_metrics import JobSeries
from .kube import Kube
from .leader import LeaderElector
from .observability import METRICS, serve

log = logging.getLogger("ftoperator")


class JsonFormatter(logging.Formatter):
    """One JSON object per line: what log collectors parse without rules."""

    def format(self, record: logging.LogRecord) -> str:
        entry: dict[str, Any] = {
            "time": self.formatTime(record, "%Y-%m-%dT%H:%M:%S"),
            "level": record.levelname,
            "logger": record.name,
            "message": record.getMessage(),
        }
        if record.exc_info:
            entry["exception"] = self.formatException(record.exc_info)
        return json.dumps(entry)


def configure_logging(options: Options) -> None:
    handler = logging.StreamHandler(sys.stderr)
    if options.log_format == "json":
        handler.setFormatter(JsonFormatter())
    else:
        handler.setFormatter(logging.Formatter("%(asctime)s %(levelname)s %(name)s: %(message)s"))
    root = logging.getLogger()
    root.handlers[:] = [handler]
    root.setLevel(options.log_level)
    logging.getLogger("kubernetes").setLevel(logging.WARNING)
    logging.getLogger("urllib3").setLevel(logging.WARNING)
    if root.level > logging.DEBUG:  # kopf logs every handled watch event at INFO
        logging.getLogger("kopf.objects").setLevel(logging.WARNING)


def api_client(connections: int) -> client.ApiClient:
    configuration = client.Configuration()
    if os.environ.get("KUBERNETES_SERVICE_HOST") and not os.environ.get("KUBECONFIG"):
        config.load_incluster_config(client_configuration=configuration)  # type: ignore[no-untyped-call]
    else:
        config.load_kube_config(client_configuration=configuration)  # type: ignore[no-untyped-call]
    # One connection per worker thread: fewer makes urllib3 drop and reopen connections.
    configuration.connection_pool_maxsize = connections
    return client.ApiClient(configuration)


def quiet_watch_close(loop: asyncio.AbstractEventLoop, context: dict[str, Any]) -> None:
    """The loop's exception handler: everything goes to asyncio's default handler except one
    error of kopf 1.45's at exit. When a watch stream is still open as the loop closes,
    asyncio closes kopf's `infinite_watch` generator and sometimes gets "generator didn't stop
    after athrow()" from it (its pause-waiter `finally` awaits while being closed): nothing is
    lost (the cleanup has run, the Lease is released), but it printed an ERROR traceback on a
    normal stop. That one is logged at DEBUG; any other error keeps its traceback."""
    asyncgen = context.get("asyncgen")
    code = getattr(asyncgen, "ag_code", None)
    if (
        code is not None
        and code.co_name == "infinite_watch"
        and "kopf" in code.co_filename
        and isinstance(context.get("exception"), RuntimeError)
    ):
        log.debug("kopf's watch stream closed at exit: %s", context.get("exception"))
        return
    loop.default_exception_handler(context)


def confirmed_trainer_policy(kube: Kube, settings: Settings) -> Settings:
    """The settings with `trainer_policy` kept only when that ValidatingAdmissionPolicy is
    bound: without it the shared trainer identity's Role would let any trainer pod of a
    namespace write every job's progress there, so the jobs get a per-job identity instead."""
    name = settings.trainer_policy
    if not name:
        return settings
    if kube.admission_policy_bound(name):
        log.info(
            "trainer pods share their namespace's identity, confined by the "
            "ValidatingAdmissionPolicy %s",
            name,
        )
        return settings
    log.warning(
        "--trainer-policy %s: no such ValidatingAdmissionPolicy bound with Deny (or "
        "no right to read it): each job gets its own trainer identity",
        name,
    )
    return replace(settings, trainer_policy=None)


async def run(options: Options) -> int:
    loop = asyncio.get_running_loop()
    loop.set_exception_handler(quiet_watch_close)
    threads = max(8, options.workers * 2)
    loop.set_default_executor(ThreadPoolExecutor(max_workers=threads))
    stop = asyncio.Event()
    for signum in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(signum, stop.set)
    api = api_client(threads)
    kube = Kube(api, options.identity)
    settings = await asyncio.to_thread(confirmed_trainer_policy, kube, options.settings)
    controller = Controller(kube, settings, workers=options.workers)
    controller.resync_seconds = options.resync_seconds
    controller.child_check_seconds = options.child_check_seconds
    controller.cache.nodes.lost_after = options.node_lost_seconds
    controller.first_status_grace_seconds = options.first_status_grace_seconds
    registry = kopf.OperatorRegistry()
    register(registry, controller, api.configuration, options.namespaces)
    job_series = JobSeries(controller.jobs_now, ranks=controller.cache.ranks_of)
    METRICS.registry.register(job_series)
    server = None
    if options.metrics_port:
        # Ready once started: a standby replica is ready too (readiness gates rollouts only).
        server = await serve(options.metrics_bind, options.metrics_port, ready=lambda: True)
    elector = None
    tasks: list[asyncio.Task[Any]] = []
    log.info(
        "finetune-operator starting: namespaces %s, default image %s",
        ", ".join(options.namespaces) or "all",
        options.settings.default_image,
    )
    try:
        if options.leader_election:
            elector = LeaderElector(
                api,
                options.lease_namespace,
                options.lease_name,
                options.identity,
                on_change=METRICS.set_leader,
            )
            if not await _first(elector.acquire(), stop.wait()):
                return 0  # stopped while standing by
            tasks.append(asyncio.create_task(elector.renew_until_lost()))
            tasks.append(asyncio.create_task(_set_when(elector.lost, stop)))
        else:
            METRICS.set_leader(True)
        await kopf.operator(
            registry=registry,
            standalone=True,  # leader election is ours (a Lease), not kopf's peering CRDs
            clusterwide=not options.namespaces,
            namespaces=options.namespaces,
            stop_flag=stop,
        )
        return 1 if elector is not None and elector.lost.is_set() else 0
    finally:
        for task in tasks:
            task.cancel()
        await asyncio.gather(*tasks, return_exceptions=True)
        if elector is not None and elector.is_leader:
            await elector.release()
        if server is not None:
            await server.stop()
        METRICS.registry.unregister(job_series)
        api.close()  # type: ignore[no-untyped-call]


async def _first(wanted: Awaitable[None], stopped: Awaitable[Any]) -> bool:
    """True when `wanted` finished first, False when `stopped` did (wanted is cancelled)."""
    goal, halt = asyncio.ensure_future(wanted), asyncio.ensure_future(stopped)
    done, pending = await asyncio.wait({goal, halt}, return_when=asyncio.FIRST_COMPLETED)
    for task in pending:
        task.cancel()
    await asyncio.gather(*pending, return_exceptions=True)
    return goal in done


async def _set_when(source: asyncio.Event, target: asyncio.Event) -> None:
    await source.wait()
    log.error("leadership lost: stopping (the pod restarts and stands by)")
    target.set()


def main(argv: Sequence[str] | None = None) -> None:
    options = parse_options(argv)
    configure_logging(options)
    gc_policy.observe(METRICS.observe_gc)  # first: tune's own full collection counts too
    gc_policy.tune()
    sys.exit(asyncio.run(run(options)))
