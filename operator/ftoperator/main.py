"""`python -m ftoperator` / `finetune-operator`: settings, logging, leader election, kopf.

    finetune-operator --namespace team-a --namespace team-b   # or 'team-*', or none: all
    finetune-operator --default-image registry/trainer:0.1.0 --log-format json

Every flag has an environment variable (FTO_*), which is how the Helm chart sets them.
Only the replica holding the Lease reconciles; the others wait, ready to take over. SIGTERM
stops the watches, lets running passes finish and releases the Lease at once.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import logging
import os
import re
import signal
import socket
import sys
import uuid
from collections.abc import Awaitable, Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from typing import Any

import kopf
from kubernetes import client, config

from ftapi.v1alpha1.common import IMAGE_PATTERN, check_quantity
from ftapi.v1alpha1.resources import is_extended_resource_name

from .controller import FIRST_STATUS_GRACE_SECONDS, Controller
from .desired import Settings
from .handlers import register
from .job_metrics import JobSeries
from .kube import Kube
from .leader import LeaderElector
from .observability import METRICS, serve

log = logging.getLogger("ftoperator")


@dataclass(frozen=True)
class Options:
    namespaces: tuple[str, ...]
    settings: Settings
    workers: int
    resync_seconds: float
    child_check_seconds: float
    first_status_grace_seconds: float
    log_format: str
    log_level: str
    metrics_bind: str
    metrics_port: int
    leader_election: bool
    lease_name: str
    lease_namespace: str
    identity: str


def parse_options(argv: Sequence[str] | None = None, env: dict[str, str] | None = None) -> Options:
    env = dict(os.environ if env is None else env)
    defaults = Settings()

    def get(name: str, default: str) -> str:
        return env.get(f"FTO_{name}", default)

    parser = argparse.ArgumentParser(
        prog="finetune-operator", description="Runs FineTuneJobs as torchrun batch Jobs."
    )
    parser.add_argument(
        "--namespace", action="append", dest="namespaces", default=None,
        help="namespace (or glob like 'team-*') to watch; repeat for several; none: all "
             "[FTO_NAMESPACES, comma-separated]",
    )  # fmt: skip
    flags: list[tuple[str, str, type, str]] = [
        ("--default-image", "DEFAULT_IMAGE", str, "trainer image for jobs that name none"),
        ("--scratch-size", "SCRATCH_SIZE", str, "size limit of each pod's /workspace"),
        ("--workers", "WORKERS", int, "FineTuneJobs reconciled concurrently"),
        ("--resync-seconds", "RESYNC_SECONDS", float, "look at every job at least this often"),
        ("--child-check-seconds", "CHILD_CHECK_SECONDS", float,
         "verify a running attempt's children (re-create, repair) this often"),
        ("--first-status-grace-seconds", "FIRST_STATUS_GRACE_SECONDS", float,
         "a new job's first status waits this long for its pods: Running is then written "
         "at once, without a Pending before it; 0: write Pending at once"),
        ("--log-level", "LOG_LEVEL", str, "DEBUG, INFO, WARNING"),
        ("--metrics-bind", "METRICS_BIND", str, "address of /metrics, /healthz, /readyz"),
        ("--metrics-port", "METRICS_PORT", int, "port of /metrics, /healthz, /readyz; 0: none"),
    ]  # fmt: skip
    defaults_by_flag = {
        "DEFAULT_IMAGE": defaults.default_image, "SCRATCH_SIZE": defaults.scratch_size,
        "WORKERS": "64", "RESYNC_SECONDS": "60", "CHILD_CHECK_SECONDS": "300",
        "FIRST_STATUS_GRACE_SECONDS": str(FIRST_STATUS_GRACE_SECONDS),
        "LOG_LEVEL": "INFO", "METRICS_BIND": "0.0.0.0", "METRICS_PORT": "8080",
    }  # fmt: skip
    for flag, name, kind, text in flags:
        parser.add_argument(
            flag, type=kind, default=kind(get(name, defaults_by_flag[name])),
            help=f"{text} [FTO_{name}]",
        )  # fmt: skip
    parser.add_argument(
        "--allowed-registries", default=get("ALLOWED_REGISTRIES", ""),
        help="comma-separated image prefixes jobs may use; empty: any [FTO_ALLOWED_REGISTRIES]",
    )  # fmt: skip
    parser.add_argument(
        "--default-s3-endpoint", default=get("DEFAULT_S3_ENDPOINT", ""),
        help="S3 endpoint for jobs that name none [FTO_DEFAULT_S3_ENDPOINT]",
    )  # fmt: skip
    parser.add_argument(
        "--gpu-resource-name", default=get("GPU_RESOURCE_NAME", defaults.gpu_resource_name),
        help="GPU resource for jobs that name none, e.g. amd.com/gpu [FTO_GPU_RESOURCE_NAME]",
    )  # fmt: skip
    parser.add_argument(
        "--gpu-tolerations",
        default=get("GPU_TOLERATIONS", "[]"),
        help="JSON list of tolerations added to GPU pods, e.g. a spot pool's taint "
        "[FTO_GPU_TOLERATIONS]",
    )
    parser.add_argument(
        "--default-cpu", default=get("DEFAULT_CPU", ""),
        help="CPU request of pods whose spec names none, e.g. 8 [FTO_DEFAULT_CPU]",
    )  # fmt: skip
    parser.add_argument(
        "--default-memory", default=get("DEFAULT_MEMORY", ""),
        help="memory request and limit of pods whose spec names none, e.g. 64Gi "
             "[FTO_DEFAULT_MEMORY]",
    )  # fmt: skip
    policy_switches = [
        ("--cpu-limits", "CPU_LIMITS",
         "also set a CPU limit equal to the request (for quotas on limits.cpu)"),
        ("--forbid-service-account-name", "FORBID_SERVICE_ACCOUNT_NAME",
         "refuse jobs that set resources.serviceAccountName"),
        ("--network-policy", "NETWORK_POLICY",
         "give each job a NetworkPolicy: its pods accept traffic only from each other"),
    ]  # fmt: skip
    for flag, name, text in policy_switches:
        parser.add_argument(
            flag, action=argparse.BooleanOptionalAction,
            default=get(name, "false").lower() == "true", help=f"{text} [FTO_{name}]",
        )  # fmt: skip
    parser.add_argument(
        "--allowed-priority-classes", default=get("ALLOWED_PRIORITY_CLASSES", ""),
        help="comma-separated PriorityClasses jobs may name; empty: any "
             "[FTO_ALLOWED_PRIORITY_CLASSES]",
    )  # fmt: skip
    parser.add_argument(
        "--allowed-node-selector-keys", default=get("ALLOWED_NODE_SELECTOR_KEYS", ""),
        help="comma-separated node label keys jobs may select on (nodeSelector, node "
             "affinity); empty: any [FTO_ALLOWED_NODE_SELECTOR_KEYS]",
    )  # fmt: skip
    parser.add_argument(
        "--log-format", choices=("json", "text"), default=get("LOG_FORMAT", "text"),
        help="[FTO_LOG_FORMAT]",
    )  # fmt: skip
    parser.add_argument(
        "--leader-election", action=argparse.BooleanOptionalAction,
        default=get("LEADER_ELECTION", "true").lower() == "true",
        help="hold a Lease so that only one replica reconciles [FTO_LEADER_ELECTION]",
    )  # fmt: skip
    parser.add_argument("--lease-name", default=get("LEASE_NAME", "finetune-operator-leader"))
    parser.add_argument(
        "--lease-namespace", default=get("LEASE_NAMESPACE", env.get("POD_NAMESPACE", "default")),
        help="[FTO_LEASE_NAMESPACE, else POD_NAMESPACE]",
    )  # fmt: skip
    args = parser.parse_args(argv)
    try:
        tolerations = json.loads(args.gpu_tolerations)
        if not isinstance(tolerations, list) or not all(isinstance(t, dict) for t in tolerations):
            raise ValueError("not a list of objects")
    except ValueError as error:
        parser.error(f"--gpu-tolerations must be a JSON list of tolerations: {error}")
    if not 0 <= args.first_status_grace_seconds <= 60:
        parser.error("--first-status-grace-seconds must be between 0 and 60")
    # Settings that end up in every pod: refused here, not by the API server at each job.
    for flag, value in (("--default-cpu", args.default_cpu),
                        ("--default-memory", args.default_memory),
                        ("--scratch-size", args.scratch_size)):  # fmt: skip
        if value:
            try:
                check_quantity(value)
            except ValueError as error:
                parser.error(f"{flag}: {error}")
    if not re.fullmatch(IMAGE_PATTERN, args.default_image):
        parser.error(f"--default-image: {args.default_image!r} is empty or has whitespace "
                     "around it (the API server refuses such a pod)")  # fmt: skip
    if not is_extended_resource_name(args.gpu_resource_name):
        parser.error(f"--gpu-resource-name: {args.gpu_resource_name!r} is not an extended "
                     "resource name such as nvidia.com/gpu or amd.com/gpu")  # fmt: skip
    namespaces = args.namespaces
    if namespaces is None:
        namespaces = [n.strip() for n in get("NAMESPACES", "").split(",") if n.strip()]
    pod = env.get("POD_NAME") or socket.gethostname()
    settings = Settings(
        default_image=args.default_image,
        scratch_size=args.scratch_size,
        default_s3_endpoint=args.default_s3_endpoint or None,
        allowed_registries=_listed(args.allowed_registries),
        gpu_resource_name=args.gpu_resource_name,
        gpu_tolerations=tuple(tolerations),
        default_cpu=args.default_cpu or None,
        cpu_limits=args.cpu_limits,
        default_memory=args.default_memory or None,
        forbid_service_account_name=args.forbid_service_account_name,
        allowed_priority_classes=_listed(args.allowed_priority_classes),
        allowed_node_selector_keys=_listed(args.allowed_node_selector_keys),
        network_policy=args.network_policy,
    )
    return Options(
        namespaces=tuple(namespaces),
        settings=settings,
        workers=args.workers,
        resync_seconds=args.resync_seconds,
        child_check_seconds=args.child_check_seconds,
        first_status_grace_seconds=args.first_status_grace_seconds,
        log_format=args.log_format,
        log_level=args.log_level.upper(),
        metrics_bind=args.metrics_bind,
        metrics_port=args.metrics_port,
        leader_election=args.leader_election,
        lease_name=args.lease_name,
        lease_namespace=args.lease_namespace,
        identity=f"{pod}_{uuid.uuid4().hex[:8]}",
    )


def _listed(value: str) -> tuple[str, ...]:
    return tuple(item.strip() for item in value.split(",") if item.strip())


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


async def run(options: Options) -> int:
    loop = asyncio.get_running_loop()
    loop.set_exception_handler(quiet_watch_close)
    threads = max(8, options.workers * 2)
    loop.set_default_executor(ThreadPoolExecutor(max_workers=threads))
    stop = asyncio.Event()
    for signum in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(signum, stop.set)
    api = api_client(threads)
    controller = Controller(Kube(api, options.identity), options.settings, workers=options.workers)
    controller.resync_seconds = options.resync_seconds
    controller.child_check_seconds = options.child_check_seconds
    controller.first_status_grace_seconds = options.first_status_grace_seconds
    registry = kopf.OperatorRegistry()
    register(registry, controller)
    job_series = JobSeries(controller.jobs_now)
    METRICS.registry.register(job_series)
    server = None
    if options.metrics_port:
        # Ready once started: a standby replica is ready too (readiness gates rollouts only).
        server = await serve(options.metrics_bind, options.metrics_port, ready=lambda: True)
    elector = None
    tasks: list[asyncio.Task[Any]] = []
    log.info(
        "finetune-operator starting: namespaces %s, default image %s",
        ", ".join(options.namespaces) or "all", options.settings.default_image,
    )  # fmt: skip
    try:
        if options.leader_election:
            elector = LeaderElector(
                api, options.lease_namespace, options.lease_name, options.identity,
                on_change=METRICS.set_leader,
            )  # fmt: skip
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
    sys.exit(asyncio.run(run(options)))
