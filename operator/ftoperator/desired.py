"""desired(job, attempt) -> the Kubernetes objects one FineTuneJob attempt needs. Pure.

    children = desired(job, attempt=0, settings=Settings(default_image="..."))
    children.job          # the Indexed batch/v1 Job running torchrun, one pod per node
    children.all()        # config ConfigMap, FineTuneJobProgress, headless Service,
                          # ServiceAccount, Role, RoleBinding, Job
    children.stages()     # the same, in the order the API server needs them created

Everything a pod needs is decided here, so a unit test can read it without a cluster:
torchrun's arguments, the GPU request, where the pods may run, which Secrets become which
environment variables (values never: only `secretKeyRef`s), and the security context.
The kopf handlers apply what this returns and never edit it.
"""

from __future__ import annotations

import json
from dataclasses import dataclass, field, replace
from typing import Any

import yaml

from ftapi import contract
from ftapi.constants import (
    API_VERSION,
    ENV_HF_TOKEN,
    ENV_HUB_PUSH_TOKEN,
    GROUP,
    KIND,
    PROGRESS_KIND,
    PROGRESS_PLURAL,
    S3_OPTIONAL_SECRET_KEYS,
    S3_SECRET_KEYS,
)

# Environment the operator sets for the trainer (FINETUNE_* is refused in spec.resources.env).
from ftapi.progress import ENV_ATTEMPT, ENV_NAMESPACE, ENV_PROGRESS_NAME
from ftapi.v1alpha1 import FineTuneJob, SecretKeyRef
from ftapi.v1alpha1.model import is_relative_path
from ftapi.v1alpha1.status import OperatorSettingsUsed

MANAGED_BY = "finetune-operator"
LABEL_JOB = "finetune.dev/job-name"
LABEL_ATTEMPT = "finetune.dev/attempt"
LABEL_COMPONENT = "app.kubernetes.io/component"
KUEUE_QUEUE_LABEL = "kueue.x-k8s.io/queue-name"
CONFIG_KEY = "job.yaml"
_SAFE_DUMPER = getattr(yaml, "CSafeDumper", yaml.SafeDumper)
RUN_AS_USER = 1000  # the trainer image's user (trainer-image/Dockerfile)
ENV_S3_ENDPOINT = "AWS_ENDPOINT_URL_S3"  # boto3's: the operator's default S3 endpoint


@dataclass(frozen=True)
class Settings:
    """Operator-wide choices (flags / Helm values), not per job."""

    default_image: str = "ghcr.io/finetune-operator/trainer:0.1.0"
    scratch_size: str = "100Gi"  # the pod's writable /workspace (local checkpoints, caches)
    default_s3_endpoint: str | None = None
    """S3 endpoint for jobs whose spec names none (a MinIO or Ceph service in the cluster):
    given to the pods as AWS_ENDPOINT_URL_S3, which boto3 reads."""
    allowed_registries: tuple[str, ...] = ()
    """Registries or repository paths jobs' images must come from (e.g.
    "registry.internal/ml"), matched at a path boundary; empty: any image."""
    gpu_resource_name: str = "nvidia.com/gpu"
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


def settings_used(job: FineTuneJob, settings: Settings) -> OperatorSettingsUsed:
    """What a job's first attempt takes from the operator's settings (recorded in status)."""
    return OperatorSettingsUsed(
        image=image_of(job, settings), s3_endpoint=settings.default_s3_endpoint
    )


def settings_of(batch_job: dict[str, Any]) -> OperatorSettingsUsed | None:
    """The settings a Job was made with, read back from its trainer container (the image,
    and the default S3 endpoint when it was given one): settings_used's inverse, for a job
    whose first status was never written. None when the Job has no trainer container."""
    spec = batch_job.get("spec", {}).get("template", {}).get("spec", {})
    for container in spec.get("containers") or []:
        if container.get("name") != "trainer" or not container.get("image"):
            continue
        endpoint = next(
            (e.get("value") for e in container.get("env") or []
             if e.get("name") == ENV_S3_ENDPOINT and e.get("value")),
            None,
        )  # fmt: skip
        return OperatorSettingsUsed(image=container["image"], s3_endpoint=endpoint)
    return None


def with_recorded(settings: Settings, used: OperatorSettingsUsed | None) -> Settings:
    """The settings for a later attempt: the recorded image and endpoint win over today's."""
    if used is None:
        return settings
    return replace(settings, default_image=used.image, default_s3_endpoint=used.s3_endpoint)


def image_of(job: FineTuneJob, settings: Settings) -> str:
    return job.spec.resources.image or settings.default_image


def gpu_resource_of(job: FineTuneJob, settings: Settings) -> str:
    return job.spec.resources.gpu_resource_name or settings.gpu_resource_name


def policy_violation(job: FineTuneJob, settings: Settings) -> tuple[str, str] | None:
    """(reason, message) when the operator refuses to run this job, else None: its policy
    settings, and what cannot work in any cluster (local paths, a device the pods lack).
    The CRD cannot know a cluster's policy nor tell a hub id from a path: this is checked
    before every attempt is created and reported in the job's status."""
    resources = job.spec.resources
    image = image_of(job, settings)
    allowed = settings.allowed_registries
    if allowed and not any(image_allowed(image, prefix) for prefix in allowed):
        return "ImageNotAllowed", (
            f"image {image} is not from an allowed registry ({', '.join(allowed)}): "
            "set spec.resources.image to one, or ask your platform team"
        )
    if settings.forbid_service_account_name and resources.service_account_name:
        return "ServiceAccountNotAllowed", (
            "spec.resources.serviceAccountName is not allowed by this operator's settings "
            "(pods run under a per-job ServiceAccount): remove it, or ask your platform team"
        )
    classes = settings.allowed_priority_classes
    if classes and resources.priority_class_name and resources.priority_class_name not in classes:
        return "PriorityClassNotAllowed", (
            f"priority class {resources.priority_class_name} is not allowed "
            f"(allowed: {', '.join(classes)})"
        )
    mismatch = device_mismatch(job)
    if mismatch:
        return "DeviceMismatch", mismatch
    local = local_paths(job)
    if local:
        return "LocalPath", (
            f"{'; '.join(local)}: a pod cannot see this machine's files, and what it writes "
            "locally is lost with it. Use s3:// (or hf:// for data, a hub id for models), or "
            "an absolute path that exists in the trainer image; `finetune run` takes local "
            "paths"
        )
    keys = settings.allowed_node_selector_keys
    refused = sorted(set(node_selection_keys(job)) - set(keys)) if keys else []
    if refused:
        return "NodeSelectorNotAllowed", (
            f"selecting nodes by {', '.join(refused)} is not allowed (allowed keys: "
            f"{', '.join(keys)}): spec.resources.nodeSelector and node affinity may use only those"
        )
    return None


def device_mismatch(job: FineTuneJob) -> str | None:
    """training.device against the pods' GPUs: a pod trains where the device says, so `cpu`
    beside requested GPUs leaves them idle (and billed), and `cuda` without any fails over
    to the CPU. Pods run on Linux, which has no MPS."""
    device, gpus = job.spec.training.device, job.spec.resources.gpus_per_node
    if device == "mps":
        return (
            "spec.training.device mps: pods run on Linux nodes, which have no MPS; use auto "
            "(the GPUs spec.resources.gpusPerNode requests, else the CPU)"
        )
    if device == "cpu" and gpus > 0:
        return (
            f"spec.training.device cpu would leave the {gpus} GPU(s) each pod requests idle: "
            "set spec.resources.gpusPerNode 0 for a CPU run, or training.device auto"
        )
    if device == "cuda" and gpus == 0:
        return (
            "spec.training.device cuda, but spec.resources.gpusPerNode is 0: the pods get no "
            "GPU; request GPUs, or set training.device auto or cpu"
        )
    return None


def local_paths(job: FineTuneJob) -> list[str]:
    """Fields naming this machine's files, which no pod has: any local output (the model
    would be written to the pod's scratch volume and lost), and relative paths for data,
    prompts, benchmarks, the model or an adapter (an absolute one may be in the image)."""
    spec = job.spec
    found = []
    if "://" not in spec.output.uri:
        found.append(f"spec.output.uri {spec.output.uri!r} is a local directory")
    data = [("train", spec.dataset.train), ("validation", spec.dataset.validation),
            ("test", spec.dataset.test)]  # fmt: skip
    named: list[tuple[str, str | None]] = [
        (f"spec.dataset.{split}.uri", s.uri) for split, s in data if s is not None
    ]
    named += [("spec.evaluation.promptsUri", spec.evaluation.prompts_uri)]
    named += [(f"spec.evaluation.benchmarks[{i}].uri", b.uri)
              for i, b in enumerate(spec.evaluation.benchmarks)]  # fmt: skip
    for where, uri in named:
        if uri and "://" not in uri and not uri.startswith("/"):
            found.append(f"{where} {uri!r} is a relative path")
    hub_named = [("spec.model.name", spec.model.name)]
    if spec.method.adapter is not None:
        hub_named.append(("spec.method.adapter.uri", spec.method.adapter.uri))
    for where, uri in hub_named:
        if is_relative_path(uri):
            found.append(f"{where} {uri!r} is a relative path")
    return found


def node_selection_keys(job: FineTuneJob) -> list[str]:
    """Every node label key the pods' placement names: nodeSelector and node affinity."""
    resources = job.spec.resources
    keys = list(resources.node_selector)
    node_affinity = (resources.affinity or {}).get("nodeAffinity") or {}
    required = node_affinity.get("requiredDuringSchedulingIgnoredDuringExecution") or {}
    terms = list(required.get("nodeSelectorTerms") or [])
    terms += [
        p.get("preference") or {}
        for p in node_affinity.get("preferredDuringSchedulingIgnoredDuringExecution") or []
    ]
    for term in terms:
        for part in ("matchExpressions", "matchFields"):
            keys += [str(e.get("key")) for e in term.get(part) or [] if isinstance(e, dict)]
    return keys


def image_allowed(image: str, prefix: str) -> bool:
    """`image` comes from the registry or repository path `prefix`: the prefix ends at a
    boundary of the image reference (/, : or @, or the end), so "registry.internal/ml"
    admits registry.internal/ml/trainer:1 but not registry.internal/ml-sandbox/trainer."""
    if not prefix:
        return False
    if prefix[-1] in "/:@":
        return image.startswith(prefix)
    return image == prefix or (image.startswith(prefix) and image[len(prefix)] in "/:@")


@dataclass(frozen=True)
class Names:
    """Every child's name, derived from the FineTuneJob's (<= 42 characters by the CRD)."""

    job: str
    attempt: int

    @property
    def config(self) -> str:
        return f"{self.job}-config"

    @property
    def progress(self) -> str:
        return f"{self.job}-progress"

    @property
    def service(self) -> str:
        return self.job

    @property
    def trainer(self) -> str:
        """ServiceAccount, Role and RoleBinding of the trainer pods."""
        return f"{self.job}-trainer"

    @property
    def batch_job(self) -> str:
        return f"{self.job}-{self.attempt}"

    @property
    def master_addr(self) -> str:
        """Pod 0 of the attempt: Indexed Job hostnames are <job>-<index>, under the
        headless Service's subdomain."""
        return f"{self.batch_job}-0.{self.service}"


@dataclass
class Children:
    config: dict[str, Any]
    progress: dict[str, Any]
    service: dict[str, Any]
    service_account: dict[str, Any] | None
    role: dict[str, Any]
    role_binding: dict[str, Any]
    job: dict[str, Any]
    extra: list[dict[str, Any]] = field(default_factory=list)
    """Optional children (the NetworkPolicy), created with the RoleBinding."""

    def stages(self) -> list[list[dict[str, Any]]]:
        """Creation order, objects of one stage being independent of each other. The
        RoleBinding waits for its Role: an operator without the `bind` verb may bind a Role
        only by holding its rules, which the API server checks by reading the Role (a 404
        while it does not exist yet). The Job comes last: what its pods reference exists."""
        first = [self.config, self.progress, self.service]
        if self.service_account is not None:
            first.append(self.service_account)
        return [[*first, self.role], [self.role_binding, *self.extra], [self.job]]

    def all(self) -> list[dict[str, Any]]:
        return [obj for stage in self.stages() for obj in stage]


def desired(job: FineTuneJob, *, attempt: int, settings: Settings) -> Children:
    names = Names(job.name, attempt)
    namespace = job.metadata.namespace
    labels = {LABEL_JOB: job.name, "app.kubernetes.io/managed-by": MANAGED_BY}
    owner = _owner_reference(job)

    def meta(name: str, component: str, **extra: Any) -> dict[str, Any]:
        metadata: dict[str, Any] = {
            "name": name,
            "labels": {**labels, LABEL_COMPONENT: component, **extra.pop("labels", {})},
            **extra,
        }
        if namespace:
            metadata["namespace"] = namespace
        if owner:
            metadata["ownerReferences"] = [owner]
        return metadata

    spec = job.spec
    account = spec.resources.service_account_name or names.trainer
    extra = [_network_policy(job, meta(names.trainer, "trainer"))] if (
        settings.network_policy) else []  # fmt: skip
    return Children(
        extra=extra,
        config={
            "apiVersion": "v1",
            "kind": "ConfigMap",
            "metadata": meta(names.config, "config"),
            # What an attempt trains cannot be edited under it (deleting it and creating
            # a look-alike is caught by the owner check when the next attempt starts).
            "immutable": True,
            "data": {CONFIG_KEY: resolved_config(job)},
        },
        progress={
            "apiVersion": API_VERSION,
            "kind": PROGRESS_KIND,
            "metadata": meta(names.progress, "progress"),
        },
        service={
            "apiVersion": "v1",
            "kind": "Service",
            "metadata": meta(names.service, "rendezvous"),
            "spec": {
                "clusterIP": "None",
                "selector": {LABEL_JOB: job.name},
                # torchrun's rendezvous resolves pod 0 before any pod is ready.
                "publishNotReadyAddresses": True,
                "ports": [{"name": "torchrun", "port": contract.MASTER_PORT}],
            },
        },
        service_account=None
        if spec.resources.service_account_name
        else {
            "apiVersion": "v1",
            "kind": "ServiceAccount",
            "metadata": meta(names.trainer, "trainer"),
            "automountServiceAccountToken": True,
        },
        role={
            "apiVersion": "rbac.authorization.k8s.io/v1",
            "kind": "Role",
            "metadata": meta(names.trainer, "trainer"),
            # The trainer's only right: update its own progress object.
            "rules": [
                {
                    "apiGroups": [GROUP],
                    "resources": [PROGRESS_PLURAL],
                    "resourceNames": [names.progress],
                    "verbs": ["get", "patch", "update"],
                }
            ],
        },
        role_binding={
            "apiVersion": "rbac.authorization.k8s.io/v1",
            "kind": "RoleBinding",
            "metadata": meta(names.trainer, "trainer"),
            "roleRef": {
                "apiGroup": "rbac.authorization.k8s.io",
                "kind": "Role",
                "name": names.trainer,
            },
            "subjects": [
                {"kind": "ServiceAccount", "name": account, **_ns(namespace)},
            ],
        },
        job=_batch_job(job, names, settings, meta, account),
    )


def resolved_config(job: FineTuneJob) -> str:
    """The manifest the trainer runs: every default filled in, nothing secret (the spec
    holds only Secret references), the uid kept so checkpoints are tied to this job."""
    metadata = {
        key: value
        for key, value in {
            "name": job.metadata.name,
            "namespace": job.metadata.namespace,
            "uid": job.metadata.uid,
            "generation": job.metadata.generation,
        }.items()
        if value is not None
    }
    manifest = {
        "apiVersion": API_VERSION,
        "kind": KIND,
        "metadata": metadata,
        "spec": job.spec.model_dump(mode="json", by_alias=True, exclude_none=True),
    }
    # libyaml's emitter when PyYAML has it (its wheels do): the same YAML, 10x less CPU,
    # which a burst of new jobs pays once each.
    return yaml.dump(manifest, Dumper=_SAFE_DUMPER, sort_keys=False)


def _batch_job(
    job: FineTuneJob, names: Names, settings: Settings, meta: Any, account: str
) -> dict[str, Any]:
    spec = job.spec
    resources = spec.resources
    nodes = resources.nodes
    scheduling = spec.scheduling
    kueue = {KUEUE_QUEUE_LABEL: scheduling.queue_name} if scheduling.queue_name else {}
    pod_labels = {
        **resources.labels,
        LABEL_JOB: job.name,
        LABEL_ATTEMPT: str(names.attempt),
        LABEL_COMPONENT: "trainer",
        "app.kubernetes.io/managed-by": MANAGED_BY,
    }
    return {
        "apiVersion": "batch/v1",
        "kind": "Job",
        "metadata": meta(
            names.batch_job, "trainer", labels={LABEL_ATTEMPT: str(names.attempt), **kueue}
        ),
        "spec": {
            "completionMode": "Indexed",
            "completions": nodes,
            "parallelism": nodes,
            # One failed pod fails the attempt: the operator restarts the whole gang.
            "backoffLimit": 0,
            # Kueue admits a queued Job by unsuspending it; suspend stops the pods.
            "suspend": bool(scheduling.suspend or scheduling.queue_name),
            "template": {
                "metadata": {"labels": pod_labels, "annotations": dict(resources.annotations)},
                "spec": _pod_spec(job, names, settings, account),
            },
        },
    }


def _pod_spec(job: FineTuneJob, names: Names, settings: Settings, account: str) -> dict[str, Any]:
    resources = job.spec.resources
    gpus = resources.gpus_per_node
    gpu_resource = gpu_resource_of(job, settings)
    requests: dict[str, Any] = {}
    limits: dict[str, Any] = {}
    if gpus:
        requests[gpu_resource] = limits[gpu_resource] = str(gpus)  # a quantity
    # Quantities are strings in the Kubernetes API. The memory limit equals the request
    # (a trainer's memory is not burstable); a CPU limit only where the operator asks.
    cpu = str(resources.cpu) if resources.cpu is not None else settings.default_cpu
    memory = str(resources.memory) if resources.memory is not None else settings.default_memory
    if cpu:
        requests["cpu"] = cpu
        if settings.cpu_limits:
            limits["cpu"] = cpu
    if memory:
        requests["memory"] = limits["memory"] = memory
    container = {
        "name": "trainer",
        "image": image_of(job, settings),
        "args": contract.torchrun_command(
            nnodes=resources.nodes,
            nproc_per_node=max(gpus, 1),
            node_rank="$(JOB_COMPLETION_INDEX)",
            master_addr=names.master_addr,
        ),
        "env": _env(job, names, settings),
        "resources": {"requests": requests, "limits": limits},
        "ports": [{"name": "torchrun", "containerPort": contract.MASTER_PORT}],
        # A crash's last log lines become the termination message, so the status and the
        # Event say why (a Python traceback, an NCCL error) without anyone reading logs.
        "terminationMessagePolicy": "FallbackToLogsOnError",
        "volumeMounts": [
            {"name": "config", "mountPath": contract.JOB_CONFIG_DIR, "readOnly": True},
            {"name": "dshm", "mountPath": "/dev/shm"},
            {"name": "workspace", "mountPath": contract.WORKSPACE},
        ],
        "securityContext": {
            "allowPrivilegeEscalation": False,
            "readOnlyRootFilesystem": True,
            "capabilities": {"drop": ["ALL"]},
        },
    }
    if resources.image_pull_policy:
        container["imagePullPolicy"] = resources.image_pull_policy
    pod: dict[str, Any] = {
        "restartPolicy": "Never",
        # SIGTERM, then this long to save a checkpoint at the next step boundary (the trainer's
        # graceful stop); torchrun waits for its workers almost as long (_env).
        "terminationGracePeriodSeconds": job.spec.run_policy.termination_grace_period_seconds,
        "subdomain": names.service,
        "serviceAccountName": account,
        "securityContext": {
            "runAsNonRoot": True,
            "runAsUser": RUN_AS_USER,
            "runAsGroup": RUN_AS_USER,
            "fsGroup": RUN_AS_USER,
            "seccompProfile": {"type": "RuntimeDefault"},
        },
        "containers": [container],
        "volumes": [
            {"name": "config", "configMap": {"name": names.config}},
            {
                "name": "dshm",
                "emptyDir": {"medium": "Memory", "sizeLimit": shared_memory(job, memory)},
            },
            {"name": "workspace", "emptyDir": {"sizeLimit": settings.scratch_size}},
        ],
    }
    if resources.node_selector:
        pod["nodeSelector"] = dict(resources.node_selector)
    tolerations = [
        t.model_dump(mode="json", by_alias=True, exclude_none=True) for t in resources.tolerations
    ]
    if gpus:
        own = {"key": gpu_resource, "operator": "Exists", "effect": "NoSchedule"}
        tolerations += [dict(t) for t in (own, *settings.gpu_tolerations) if t not in tolerations]
    if tolerations:
        pod["tolerations"] = tolerations
    if resources.affinity:
        pod["affinity"] = resources.affinity
    if resources.priority_class_name:
        pod["priorityClassName"] = resources.priority_class_name
    if resources.image_pull_secrets:
        pod["imagePullSecrets"] = [{"name": n} for n in resources.image_pull_secrets]
    return pod


def shared_memory(job: FineTuneJob, memory_limit: str | None) -> str:
    """/dev/shm's size, at most the memory limit: pages there count against it, so a larger
    tmpfs only moves the failure from a clear ENOSPC to an OOM kill."""
    wanted = str(job.spec.resources.shared_memory)
    if memory_limit and quantity_bytes(memory_limit) < quantity_bytes(wanted):
        return memory_limit
    return wanted


_SUFFIXES = {
    "Ki": 2**10, "Mi": 2**20, "Gi": 2**30, "Ti": 2**40, "Pi": 2**50, "Ei": 2**60,
    "m": 10**-3, "k": 10**3, "M": 10**6, "G": 10**9, "T": 10**12, "P": 10**15, "E": 10**18,
}  # fmt: skip


def quantity_bytes(quantity: str) -> float:
    """A Kubernetes memory quantity in bytes ("64Gi", "500M", "1e9", "1048576")."""
    for suffix in sorted(_SUFFIXES, key=len, reverse=True):
        if quantity.endswith(suffix):
            return float(quantity[: -len(suffix)]) * _SUFFIXES[suffix]
    return float(quantity)


def _network_policy(job: FineTuneJob, metadata: dict[str, Any]) -> dict[str, Any]:
    """Ingress to the job's pods only from its own pods (rendezvous, NCCL, any port)."""
    own = {"matchLabels": {LABEL_JOB: job.name}}
    return {
        "apiVersion": "networking.k8s.io/v1",
        "kind": "NetworkPolicy",
        "metadata": metadata,
        "spec": {
            "podSelector": own,
            "policyTypes": ["Ingress"],
            "ingress": [{"from": [{"podSelector": own}]}],
        },
    }


def _env(job: FineTuneJob, names: Names, settings: Settings) -> list[dict[str, Any]]:
    """Operator-set variables first, then Secret references, then the user's own."""
    spec = job.spec
    env: list[dict[str, Any]] = [
        {"name": ENV_PROGRESS_NAME, "value": names.progress},
        {"name": ENV_ATTEMPT, "value": str(names.attempt)},
        {"name": ENV_NAMESPACE, "valueFrom": {"fieldRef": {"fieldPath": "metadata.namespace"}}},
        # torchrun forwards SIGTERM to its workers and kills them after this many seconds (its
        # default, 30): the grace period less a margin for torchrun's own exit.
        {
            "name": contract.ENV_TORCHRUN_SHUTDOWN_TIMEOUT,
            "value": str(shutdown_timeout(spec.run_policy.termination_grace_period_seconds)),
        },
    ]
    s3 = spec.output.s3
    if settings.default_s3_endpoint and (s3 is None or not s3.endpoint):
        env.append({"name": ENV_S3_ENDPOINT, "value": settings.default_s3_endpoint})
    if s3 is not None and s3.credentials_secret_ref is not None:
        secret = s3.credentials_secret_ref.name
        env += [_secret_env(key, secret, key) for key in S3_SECRET_KEYS]
        env += [_secret_env(key, secret, key, optional=True) for key in S3_OPTIONAL_SECRET_KEYS]
    if spec.model.hf_token_secret_ref is not None:
        env.append(_secret_ref_env(ENV_HF_TOKEN, spec.model.hf_token_secret_ref))
    push = spec.output.push_to_hub
    if push is not None and push.token_secret_ref is not None:
        env.append(_secret_ref_env(ENV_HUB_PUSH_TOKEN, push.token_secret_ref))
    for name, ref in spec.logging.secret_env().items():
        env.append(_secret_ref_env(name, ref))
    for variable in spec.resources.env:
        if variable.secret_key_ref is not None:  # core/v1 nests it under valueFrom
            env.append(_secret_ref_env(variable.name, variable.secret_key_ref))
        else:
            env.append({"name": variable.name, "value": variable.value or ""})
    return env


def shutdown_timeout(grace_seconds: int) -> int:
    """How long torchrun lets its workers finish after forwarding SIGTERM: the pod's grace
    period less 5 s, so that torchrun exits (and says so) before the kubelet kills it."""
    return max(1, grace_seconds - 5)


def _secret_ref_env(name: str, ref: SecretKeyRef) -> dict[str, Any]:
    return _secret_env(name, ref.name, ref.key)


def _secret_env(name: str, secret: str, key: str, *, optional: bool = False) -> dict[str, Any]:
    selector: dict[str, Any] = {"name": secret, "key": key}
    if optional:
        selector["optional"] = True
    return {"name": name, "valueFrom": {"secretKeyRef": selector}}


def _owner_reference(job: FineTuneJob) -> dict[str, Any] | None:
    if not job.metadata.uid:
        return None
    return {
        "apiVersion": API_VERSION,
        "kind": KIND,
        "name": job.name,
        "uid": job.metadata.uid,
        "controller": True,
        "blockOwnerDeletion": True,
    }


def _ns(namespace: str | None) -> dict[str, str]:
    return {"namespace": namespace} if namespace else {}


def dumps(children: Children) -> str:
    """Stable text of the children (for diffs in tests and `--dry-run` output)."""
    return json.dumps(children.all(), indent=2, sort_keys=True)
