"""The operator's configuration: every flag, its FTO_* variable and its default in one table.

    options = parse_options(["--namespace", "team-a"], env={"FTO_DEFAULT_IMAGE": "..."})
    options.settings      # Settings: what shapes every job's children (image, limits, policy)
    options.workers       # the rest: how the process runs (workers, probes, leader election)

FLAGS is the only place a default is written: argparse, the Settings dataclass and the
Controller's timings read it, and the Helm chart's values.yaml is tested against it
(tests/helm/test_chart.py). A flag always wins over its variable, the variable over the
default. Settings that end up in every pod are checked here, at start, not by the API server
at each job. What a job's first attempt took from the settings is recorded in its status
(settings_used) and wins over today's on later attempts (with_recorded).
"""

from __future__ import annotations

import argparse
import json
import os
import re
import socket
import uuid
from collections.abc import Sequence
from dataclasses import dataclass, replace
from typing import Any

from ftapi.constants import ENV_HUB_ENDPOINT
from ftapi.contract import TRAINER_CONTAINER, release
from ftapi.v1alpha1 import FineTuneJob
from ftapi.v1alpha1.common import IMAGE_PATTERN, SERVER_URL, check_quantity
from ftapi.v1alpha1.resources import is_extended_resource_name
from ftapi.v1alpha1.status import OperatorSettingsUsed

from . import fault_hooks
from .allowed_env import DEFAULT_ALLOWED_ENV

# This operator's release, as its status messages and Events name it (version skew).
OPERATOR = release("finetune-operator")
ENV_S3_ENDPOINT = "AWS_ENDPOINT_URL_S3"  # boto3's: how pods get the default S3 endpoint
# The proxy variables, in both spellings: Python's clients read either, curl and Go only
# some (curl ignores an upper-case HTTP_PROXY, Go reads upper-case first).
PROXY_ENV = {
    "http": ("HTTP_PROXY", "http_proxy"),
    "https": ("HTTPS_PROXY", "https_proxy"),
    "no": ("NO_PROXY", "no_proxy"),
}


@dataclass(frozen=True)
class Flag:
    """One setting: `--<name>` and FTO_<NAME>. `kind` is str, int or float (argparse's type),
    "switch" (--x / --no-x, "true"/"false" in the environment) or "list" (comma-separated)."""

    name: str
    default: str  # as the environment writes it
    help: str
    kind: Any = str

    @property
    def env(self) -> str:
        return "FTO_" + self.name.upper().replace("-", "_")


FLAGS: tuple[Flag, ...] = (
    # What shapes every job's pods (Settings).
    Flag("default-image", "ghcr.io/finetune-operator/trainer:0.1.0",
         "trainer image for jobs that name none"),
    Flag("scratch-size", "100Gi", "size limit of each pod's /workspace"),
    Flag("default-s3-endpoint", "", "S3 endpoint for jobs that name none"),
    Flag("default-hub-endpoint", "",
         "Hugging Face Hub (a private Hub or mirror) for jobs that name none; empty: "
         "huggingface.co"),
    Flag("http-proxy", "", "HTTP proxy given to every training pod (HTTP_PROXY)"),
    Flag("https-proxy", "", "HTTPS proxy given to every training pod (HTTPS_PROXY)"),
    Flag("no-proxy", "", "hosts every training pod reaches without the proxy (NO_PROXY)"),
    Flag("gpu-resource-name", "nvidia.com/gpu",
         "GPU resource for jobs that name none, e.g. amd.com/gpu"),
    Flag("gpu-tolerations", "[]",
         "JSON list of tolerations added to GPU pods, e.g. a spot pool's taint"),
    Flag("default-cpu", "", "CPU request of pods whose spec names none, e.g. 8"),
    Flag("default-memory", "",
         "memory request and limit of pods whose spec names none, e.g. 64Gi"),
    Flag("cpu-limits", "false",
         "also set a CPU limit equal to the request (for quotas on limits.cpu)", "switch"),
    Flag("network-policy", "false",
         "give each job a NetworkPolicy: its pods accept traffic only from each other",
         "switch"),
    Flag("trainer-policy", "",
         "name of the ValidatingAdmissionPolicy (and its binding) that confines each trainer "
         "pod to its own job's progress object; when it is bound, a namespace's jobs share "
         "one trainer ServiceAccount, Role and RoleBinding (finetune-trainer) instead of "
         "three of each per job; empty, or not bound: per job"),
    # The platform's admission policy (policy.py).
    Flag("allowed-registries", "",
         "comma-separated image prefixes jobs may use; empty: any", "list"),
    Flag("allowed-s3-endpoints", "",
         "comma-separated S3 endpoint URLs jobs may name in output.s3.endpoint; empty: any",
         "list"),
    Flag("allowed-tracker-urls", "",
         "comma-separated MLflow tracking URIs and W&B server URLs jobs may name; empty: any",
         "list"),
    Flag("allowed-hub-endpoints", "",
         "comma-separated Hugging Face Hub URLs jobs may name in model.hubEndpoint; empty: "
         "any", "list"),
    Flag("allowed-secret-names", "",
         "comma-separated Secret name patterns (globs, e.g. finetune-*) jobs may reference; "
         "empty: any", "list"),
    Flag("forbid-job-code", "false",
         "refuse jobs that bring code: model.trustRemoteCode, python rewards, a harness "
         "includePath (it would run beside the job's credentials)", "switch"),
    Flag("restrict-env", "false",
         "admit in resources.env only the names --allowed-env lists (forbid-job-code implies "
         "it); off: the API server's deny-list alone", "switch"),
    Flag("allowed-env", ",".join(DEFAULT_ALLOWED_ENV),
         "comma-separated variable names and globs jobs may set in resources.env when "
         "restricted (default: knobs that name no path, library, plugin, host or credential)",
         "list"),
    Flag("plain-http-registries", "*",
         "comma-separated registry hosts (host[:port], globs) jobs may reach over plain HTTP "
         "(output.oci.plainHttp, model.registry.plainHttp: the registry credential crosses "
         "the network in clear); empty: none", "list"),
    Flag("allowed-ca-config-maps", "*",
         "comma-separated ConfigMap names (globs) jobs may name as a registry's CA "
         "(caConfigMapRef: whom the trainer trusts to be the registry); empty: none, the "
         "trainer image's trust store only", "list"),
    Flag("forbid-service-account-name", "false",
         "refuse jobs that set resources.serviceAccountName", "switch"),
    Flag("allowed-priority-classes", "",
         "comma-separated PriorityClasses jobs may name; empty: any", "list"),
    Flag("allowed-node-selector-keys", "",
         "comma-separated node label keys jobs may select on (nodeSelector, node affinity); "
         "empty: any", "list"),
    # How the process runs (Options).
    Flag("workers", "64", "FineTuneJobs reconciled concurrently", int),
    Flag("resync-seconds", "60", "look at every job at least this often", float),
    Flag("child-check-seconds", "0",
         "also verify a running attempt's children (re-create, repair) this often; 0: only "
         "when their watch shows one edited or deleted", float),
    Flag("node-lost-seconds", "60",
         "a node NotReady this long is lost: the attempts with pods there restart (NodeLost); "
         "a deleted node at once; none while most nodes are NotReady at once", float),
    Flag("first-status-grace-seconds", "5",
         "a new job's first status waits this long for its pods: Running is then written "
         "at once, without a Pending before it; 0: write Pending at once", float),
    Flag("log-format", "text", "json (one object per line) or text"),
    Flag("log-level", "INFO", "DEBUG, INFO, WARNING"),
    Flag("metrics-bind", "0.0.0.0", "address of /metrics, /healthz, /readyz"),
    Flag("metrics-port", "8080", "port of /metrics, /healthz, /readyz; 0: none", int),
    Flag("leader-election", "true", "hold a Lease so that only one replica reconciles",
         "switch"),
    Flag("lease-name", "finetune-operator-leader", "the Lease's name"),
)  # fmt: skip
DEFAULTS: dict[str, str] = {flag.name: flag.default for flag in FLAGS}


def _listed(value: str) -> tuple[str, ...]:
    return tuple(item.strip() for item in value.split(",") if item.strip())


@dataclass(frozen=True)
class Settings:
    """Operator-wide choices (flags / Helm values), not per job."""

    default_image: str = DEFAULTS["default-image"]
    scratch_size: str = DEFAULTS["scratch-size"]  # the pod's writable /workspace
    default_s3_endpoint: str | None = None
    """S3 endpoint for jobs whose spec names none (a MinIO or Ceph service in the cluster):
    given to the pods as AWS_ENDPOINT_URL_S3, which boto3 reads."""
    default_hub_endpoint: str | None = None
    """Hugging Face Hub for jobs whose spec names none (a private Hub or a mirror): given to
    the pods as HF_ENDPOINT."""
    proxies: tuple[tuple[str, str], ...] = ()
    """("http" | "https" | "no", value): the proxies every training pod gets (the only way
    a pod gets one: resources.env may not set them)."""
    allowed_registries: tuple[str, ...] = ()
    """Registries or repository paths jobs' images must come from (e.g.
    "registry.internal/ml"), matched at a path boundary; empty: any image."""
    allowed_s3_endpoints: tuple[str, ...] = ()
    """S3 endpoints jobs may name (output.s3.endpoint), matched as URL prefixes
    (policy.url_allowed); empty: any. An unset endpoint (the default) is always allowed."""
    allowed_tracker_urls: tuple[str, ...] = ()
    """MLflow tracking URIs and W&B servers jobs may name; empty: any."""
    allowed_hub_endpoints: tuple[str, ...] = ()
    """Hugging Face Hubs jobs may name (model.hubEndpoint); empty: any."""
    allowed_secret_names: tuple[str, ...] = ()
    """Secret names (shell globs) jobs may reference, in the credential fields and
    resources.env; empty: any Secret of the namespace. Name the Secrets meant for jobs
    alike, and a job cannot load the others into its pods."""
    forbid_job_code: bool = False
    """Refuse jobs that bring code (policy.job_code): model.trustRemoteCode, python GRPO
    rewards, an lm-eval includePath. It runs in the pod, beside every credential the job
    references, and could send them anywhere."""
    restrict_env: bool = False
    """Admit in resources.env only the names allowed_env lists (allowed_env.py); implied by
    forbid_job_code. Off, the API server's deny-list alone governs it."""
    allowed_env: tuple[str, ...] = DEFAULT_ALLOWED_ENV
    """Variable names and shell globs jobs may set when the environment is restricted."""
    plain_http_registries: tuple[str, ...] = ("*",)
    """Registry hosts (host[:port], shell globs) jobs may reach over plain HTTP; empty:
    none. Over plain HTTP the registry credential crosses the network in clear."""
    allowed_ca_config_maps: tuple[str, ...] = ("*",)
    """ConfigMaps (name globs) jobs may name as a registry's CA; empty: none (the trainer
    image's trust store). The CA decides whom the trainer trusts to be the registry, and
    so where the registry credential goes."""
    gpu_resource_name: str = DEFAULTS["gpu-resource-name"]
    """For jobs whose spec names none (an AMD cluster: amd.com/gpu)."""
    gpu_tolerations: tuple[dict[str, Any], ...] = ()
    """Added to pods that request GPUs (e.g. a spot pool's taint), besides the toleration
    of the GPU resource's own taint, which is always added: GPU pools are usually tainted
    with it so that only GPU workloads land there (GKE, the NVIDIA GPU operator)."""
    default_cpu: str | None = None
    """CPU request of pods whose spec names none."""
    cpu_limits: bool = False
    """Also set a CPU limit equal to the request (namespaces whose ResourceQuota counts
    limits.cpu admit only pods with one); off by default: it throttles data loading."""
    default_memory: str | None = None
    """Memory request and limit of pods whose spec names none (a namespace whose
    ResourceQuota counts memory admits only pods with both)."""
    forbid_service_account_name: bool = False
    """Refuse jobs that set resources.serviceAccountName (pods would run with that
    account's rights instead of the per-job one's)."""
    allowed_priority_classes: tuple[str, ...] = ()
    """PriorityClasses jobs may name; empty: any."""
    allowed_node_selector_keys: tuple[str, ...] = ()
    """Node label keys jobs may select on (nodeSelector and node affinity); empty: any."""
    network_policy: bool = False
    """Give each job a NetworkPolicy admitting traffic to its pods only from its own pods
    (the torchrun rendezvous and NCCL ports are closed to the rest of the cluster)."""
    trainer_policy: str | None = None
    """The ValidatingAdmissionPolicy confining the shared trainer identity (children.access);
    set only once main.py found it bound, None: a per-job identity."""
    test_faults: bool = False
    """Copy a job's finetune.dev/test-faults annotation into its pods (fault_hooks.py): for
    test clusters only, so FTO_TEST_FAULTS alone turns it on (no flag, not in the chart)."""


@dataclass(frozen=True)
class Options:
    """The whole process's configuration: the Settings plus how it runs."""

    namespaces: tuple[str, ...]
    settings: Settings
    workers: int
    resync_seconds: float
    child_check_seconds: float
    node_lost_seconds: float
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
    parser = argparse.ArgumentParser(
        prog="finetune-operator", description="Runs FineTuneJobs as torchrun batch Jobs."
    )
    parser.add_argument(
        "--namespace",
        action="append",
        dest="namespaces",
        default=None,
        help="namespace (or glob like 'team-*') to watch; repeat for several; none: all "
        "[FTO_NAMESPACES, comma-separated]",
    )
    for flag in FLAGS:
        raw = env.get(flag.env, flag.default)
        text = f"{flag.help} [{flag.env}]"
        if flag.kind == "switch":
            parser.add_argument(
                f"--{flag.name}",
                action=argparse.BooleanOptionalAction,
                default=raw.lower() == "true",
                help=text,
            )
        elif flag.kind == "list":
            parser.add_argument(f"--{flag.name}", default=raw, help=text)
        else:
            parser.add_argument(f"--{flag.name}", type=flag.kind, default=flag.kind(raw), help=text)
    lease_namespace = env.get("FTO_LEASE_NAMESPACE", env.get("POD_NAMESPACE", "default"))
    parser.add_argument(
        "--lease-namespace",
        default=lease_namespace,
        help="the Lease's namespace [FTO_LEASE_NAMESPACE, else POD_NAMESPACE]",
    )
    args = parser.parse_args(argv)
    tolerations = _check(parser, args)
    namespaces = args.namespaces
    if namespaces is None:
        namespaces = list(_listed(env.get("FTO_NAMESPACES", "")))
    pod = env.get("POD_NAME") or socket.gethostname()
    settings = Settings(
        default_image=args.default_image,
        scratch_size=args.scratch_size,
        default_s3_endpoint=args.default_s3_endpoint or None,
        default_hub_endpoint=args.default_hub_endpoint or None,
        proxies=tuple(
            (kind, value)
            for kind, value in (
                ("http", args.http_proxy),
                ("https", args.https_proxy),
                ("no", args.no_proxy),
            )
            if value
        ),
        allowed_registries=_listed(args.allowed_registries),
        allowed_s3_endpoints=_listed(args.allowed_s3_endpoints),
        allowed_tracker_urls=_listed(args.allowed_tracker_urls),
        allowed_hub_endpoints=_listed(args.allowed_hub_endpoints),
        allowed_secret_names=_listed(args.allowed_secret_names),
        forbid_job_code=args.forbid_job_code,
        restrict_env=args.restrict_env,
        plain_http_registries=_listed(args.plain_http_registries),
        allowed_ca_config_maps=_listed(args.allowed_ca_config_maps),
        allowed_env=_listed(args.allowed_env),
        gpu_resource_name=args.gpu_resource_name,
        gpu_tolerations=tuple(tolerations),
        default_cpu=args.default_cpu or None,
        cpu_limits=args.cpu_limits,
        default_memory=args.default_memory or None,
        forbid_service_account_name=args.forbid_service_account_name,
        allowed_priority_classes=_listed(args.allowed_priority_classes),
        allowed_node_selector_keys=_listed(args.allowed_node_selector_keys),
        network_policy=args.network_policy,
        trainer_policy=args.trainer_policy or None,
        test_faults=fault_hooks.enabled(env),
    )
    return Options(
        namespaces=tuple(namespaces),
        settings=settings,
        workers=args.workers,
        resync_seconds=args.resync_seconds,
        child_check_seconds=args.child_check_seconds,
        node_lost_seconds=args.node_lost_seconds,
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


def _check(parser: argparse.ArgumentParser, args: argparse.Namespace) -> list[dict[str, Any]]:
    """Refuses, with the flag's name, what would fail later at every job; returns the GPU
    tolerations parsed."""
    try:
        tolerations = json.loads(args.gpu_tolerations)
        if not isinstance(tolerations, list) or not all(isinstance(t, dict) for t in tolerations):
            raise ValueError("not a list of objects")
    except ValueError as error:
        parser.error(f"--gpu-tolerations must be a JSON list of tolerations: {error}")
    if args.log_format not in ("json", "text"):
        parser.error(f"--log-format: {args.log_format!r} is neither json nor text")
    if not 0 <= args.first_status_grace_seconds <= 60:
        parser.error("--first-status-grace-seconds must be between 0 and 60")
    for flag, value in (
        ("--default-cpu", args.default_cpu),
        ("--default-memory", args.default_memory),
        ("--scratch-size", args.scratch_size),
    ):
        if value:
            try:
                check_quantity(value)
            except ValueError as error:
                parser.error(f"{flag}: {error}")
    if not re.fullmatch(IMAGE_PATTERN, args.default_image):
        parser.error(
            f"--default-image: {args.default_image!r} is empty or has whitespace "
            "around it (the API server refuses such a pod)"
        )
    for flag, value in (
        ("--default-hub-endpoint", args.default_hub_endpoint),
        ("--default-s3-endpoint", args.default_s3_endpoint),
    ):
        if value and not re.fullmatch(SERVER_URL, value):
            parser.error(f"{flag}: {value!r} is not an http(s) URL such as https://host:port")
    for flag, listed in (
        ("--allowed-s3-endpoints", args.allowed_s3_endpoints),
        ("--allowed-tracker-urls", args.allowed_tracker_urls),
        ("--allowed-hub-endpoints", args.allowed_hub_endpoints),
    ):
        for entry in _listed(listed):
            if "://" not in entry:
                parser.error(f"{flag}: {entry!r} is not a URL (scheme://host[:port][/path])")
    if not is_extended_resource_name(args.gpu_resource_name):
        parser.error(
            f"--gpu-resource-name: {args.gpu_resource_name!r} is not an extended "
            "resource name such as nvidia.com/gpu or amd.com/gpu"
        )
    return list(tolerations)


# --- what a job takes from the settings ---------------------------------------------------


def image_of(job: FineTuneJob, settings: Settings) -> str:
    return job.spec.resources.image or settings.default_image


def gpu_resource_of(job: FineTuneJob, settings: Settings) -> str:
    return job.spec.resources.gpu_resource_name or settings.gpu_resource_name


def settings_used(job: FineTuneJob, settings: Settings) -> OperatorSettingsUsed:
    """What a job's first attempt takes from the operator's settings (recorded in status)."""
    return OperatorSettingsUsed(
        image=image_of(job, settings),
        s3_endpoint=settings.default_s3_endpoint,
        hub_endpoint=None if job.spec.model.hub_endpoint else settings.default_hub_endpoint,
    )


def settings_of(
    batch_job: dict[str, Any], named_hub: str | None = None
) -> OperatorSettingsUsed | None:
    """The settings a Job was made with, read back from its trainer container (the image,
    and the default S3 endpoint and Hub when it was given them): settings_used's inverse, for a job
    whose first status was never written. None when the Job has no trainer container."""
    spec = batch_job.get("spec", {}).get("template", {}).get("spec", {})
    for container in spec.get("containers") or []:
        if container.get("name") != TRAINER_CONTAINER or not container.get("image"):
            continue
        values = {e.get("name"): e.get("value") for e in container.get("env") or []}
        return OperatorSettingsUsed(
            image=container["image"],
            s3_endpoint=values.get(ENV_S3_ENDPOINT) or None,
            # HF_ENDPOINT is the operator's default only when the spec names no Hub.
            hub_endpoint=None if named_hub else values.get(ENV_HUB_ENDPOINT) or None,
        )
    return None


def with_recorded(settings: Settings, used: OperatorSettingsUsed | None) -> Settings:
    """The settings for a later attempt: the recorded image and endpoint win over today's."""
    if used is None:
        return settings
    return replace(
        settings,
        default_image=used.image,
        default_s3_endpoint=used.s3_endpoint,
        default_hub_endpoint=used.hub_endpoint,
    )
