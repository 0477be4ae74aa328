"""desired(job, attempt) -> the Kubernetes objects one FineTuneJob attempt needs. Pure.

    children = desired(job, attempt=0, settings=Settings(default_image="..."))
    children.job          # the Indexed batch/v1 Job running torchrun, one pod per node
    children.all()        # ConfigMaps, headless Service, ServiceAccount, Role, RoleBinding, Job

Everything a pod needs is decided here, so a unit test can read it without a cluster:
torchrun's arguments, the GPU request, where the pods may run, which Secrets become which
environment variables (values never: only `secretKeyRef`s), and the security context.
The kopf handlers apply what this returns and never edit it.
"""

from __future__ import annotations

import json
from dataclasses import dataclass, field
from typing import Any

import yaml

from ftapi import contract
from ftapi.constants import API_VERSION, ENV_HF_TOKEN, ENV_HUB_PUSH_TOKEN, KIND

# Environment the operator sets for the trainer (FINETUNE_* is refused in spec.resources.env).
from ftapi.progress import ENV_ATTEMPT, ENV_NAMESPACE, ENV_PROGRESS_CONFIGMAP
from ftapi.v1alpha1 import FineTuneJob, SecretKeyRef

MANAGED_BY = "finetune-operator"
LABEL_JOB = "finetune.dev/job-name"
LABEL_ATTEMPT = "finetune.dev/attempt"
LABEL_COMPONENT = "app.kubernetes.io/component"
KUEUE_QUEUE_LABEL = "kueue.x-k8s.io/queue-name"
CONFIG_KEY = "job.yaml"
S3_SECRET_KEYS = ("AWS_ACCESS_KEY_ID", "AWS_SECRET_ACCESS_KEY")
S3_OPTIONAL_SECRET_KEYS = ("AWS_SESSION_TOKEN",)
RUN_AS_USER = 1000  # the trainer image's user (trainer-image/Dockerfile)


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


def image_of(job: FineTuneJob, settings: Settings) -> str:
    return job.spec.resources.image or settings.default_image


def gpu_resource_of(job: FineTuneJob, settings: Settings) -> str:
    return job.spec.resources.gpu_resource_name or settings.gpu_resource_name


def policy_violation(job: FineTuneJob, settings: Settings) -> str | None:
    """Why the operator's policy refuses this job, or None. (The CRD cannot know a cluster's
    policy: this is checked when the job is reconciled and reported in its status.)"""
    image = image_of(job, settings)
    allowed = settings.allowed_registries
    if allowed and not any(image_allowed(image, prefix) for prefix in allowed):
        return (
            f"image {image} is not from an allowed registry ({', '.join(allowed)}): "
            "set spec.resources.image to one, or ask your platform team"
        )
    return None


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

    def all(self) -> list[dict[str, Any]]:
        """In creation order: what the pods reference exists before the Job does."""
        objects = [self.config, self.progress, self.service]
        if self.service_account is not None:
            objects.append(self.service_account)
        return [*objects, self.role, self.role_binding, *self.extra, self.job]


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
    return Children(
        config={
            "apiVersion": "v1",
            "kind": "ConfigMap",
            "metadata": meta(names.config, "config"),
            "data": {CONFIG_KEY: resolved_config(job)},
        },
        progress={
            "apiVersion": "v1",
            "kind": "ConfigMap",
            "metadata": meta(names.progress, "progress"),
            "data": {},
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
            # The trainer's only right: update its own progress ConfigMap.
            "rules": [
                {
                    "apiGroups": [""],
                    "resources": ["configmaps"],
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
    return yaml.safe_dump(manifest, sort_keys=False)


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
    if resources.cpu is not None:
        requests["cpu"] = str(resources.cpu)  # quantities are strings in the Kubernetes API
    if resources.memory is not None:
        requests["memory"] = limits["memory"] = str(resources.memory)
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
                "emptyDir": {"medium": "Memory", "sizeLimit": str(resources.shared_memory)},
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


def _env(job: FineTuneJob, names: Names, settings: Settings) -> list[dict[str, Any]]:
    """Operator-set variables first, then Secret references, then the user's own."""
    spec = job.spec
    env: list[dict[str, Any]] = [
        {"name": ENV_PROGRESS_CONFIGMAP, "value": names.progress},
        {"name": ENV_ATTEMPT, "value": str(names.attempt)},
        {"name": ENV_NAMESPACE, "valueFrom": {"fieldRef": {"fieldPath": "metadata.namespace"}}},
    ]
    s3 = spec.output.s3
    if settings.default_s3_endpoint and (s3 is None or not s3.endpoint):
        env.append({"name": "AWS_ENDPOINT_URL_S3", "value": settings.default_s3_endpoint})
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
        env.append(variable.model_dump(mode="json", by_alias=True, exclude_none=True))
    return env


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
