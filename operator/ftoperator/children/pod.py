"""The trainer pod: torchrun's command, the GPU and memory requests, where it may run, which
Secrets become which environment variables (values never: only `secretKeyRef`s) and the
security context (non-root, no privilege escalation, read-only root, no capabilities)."""

from __future__ import annotations

from typing import Any

from ftapi import contract
from ftapi.constants import (
    DOCKER_CONFIG_KEY,
    ENV_HF_TOKEN,
    ENV_HUB_ENDPOINT,
    ENV_HUB_PUSH_TOKEN,
    ENV_HUB_TOKEN_PATH,
    ENV_OCI_PULL_CA,
    ENV_OCI_PULL_SECRET,
    ENV_OCI_PUSH_CA,
    ENV_OCI_PUSH_SECRET,
    NO_TOKEN_FILE,
    S3_OPTIONAL_SECRET_KEYS,
    S3_SECRET_KEYS,
)

# Environment the operator sets for the trainer (FINETUNE_* is refused in spec.resources.env).
from ftapi.progress import (
    ENV_ATTEMPT,
    ENV_NAMESPACE,
    ENV_NODE_NAME,
    ENV_POD_NAME,
    ENV_PROGRESS_NAME,
)
from ftapi.v1alpha1 import FineTuneJob, SecretKeyRef
from ftapi.v1alpha1.registry import RegistryAccess
from ftoperator.config import (
    ENV_S3_ENDPOINT,
    PROXY_ENV,
    Settings,
    gpu_resource_of,
    image_of,
)
from ftoperator.fault_hooks import fault_env

from .naming import Names
from .rendezvous import across_nodes, master_addr

RUN_AS_USER = 1000  # the trainer image's user (trainer-image/Dockerfile)


def build_pod_spec(
    job: FineTuneJob, names: Names, settings: Settings, account: str
) -> dict[str, Any]:
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
        "name": contract.TRAINER_CONTAINER,
        "image": image_of(job, settings),
        "args": contract.torchrun_command(
            nnodes=resources.nodes,
            nproc_per_node=max(gpus, 1),
            node_rank="$(JOB_COMPLETION_INDEX)",
            master_addr=master_addr(job, names),
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
        "serviceAccountName": account,
        # No <SERVICE>_HOST/_PORT variables from the namespace's Services: whoever may create
        # a Service there would otherwise add to the trainer's environment (redirects.py).
        "enableServiceLinks": False,
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
    if across_nodes(job):  # pod 0 is <job>-<attempt>-0.<service> to the other pods
        pod["subdomain"] = names.service
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


# NCCL's flight recorder: the last collectives of each rank, kept in memory and dumped to
# the pod's workspace when a collective times out (and by the stall watchdog, watchdog.py), so a
# hang names the collective and the rank that never joined it. A few MB of host memory.
NCCL_FLIGHT_RECORDER = {
    "TORCH_NCCL_TRACE_BUFFER_SIZE": "2000",
    "TORCH_NCCL_DUMP_ON_TIMEOUT": "1",
    "TORCH_NCCL_DEBUG_INFO_TEMP_FILE": f"{contract.WORKSPACE}/nccl_trace_rank_",
}


def _env(job: FineTuneJob, names: Names, settings: Settings) -> list[dict[str, Any]]:
    """Operator-set variables first, then Secret references, then the user's own."""
    spec = job.spec
    env: list[dict[str, Any]] = [
        {"name": ENV_PROGRESS_NAME, "value": names.progress},
        {"name": ENV_ATTEMPT, "value": str(names.attempt)},
        {"name": ENV_NAMESPACE, "valueFrom": {"fieldRef": {"fieldPath": "metadata.namespace"}}},
        # Who reports (each rank's report names its pod and node: stragglers, quiet ranks).
        {"name": ENV_POD_NAME, "valueFrom": {"fieldRef": {"fieldPath": "metadata.name"}}},
        {"name": ENV_NODE_NAME, "valueFrom": {"fieldRef": {"fieldPath": "spec.nodeName"}}},
        # torchrun forwards SIGTERM to its workers and kills them after this many seconds (its
        # default, 30): the grace period less a margin for torchrun's own exit.
        {
            "name": contract.ENV_TORCHRUN_SHUTDOWN_TIMEOUT,
            "value": str(shutdown_timeout(spec.run_policy.termination_grace_period_seconds)),
        },
    ]
    if spec.resources.gpus_per_node:
        env += [{"name": k, "value": v} for k, v in NCCL_FLIGHT_RECORDER.items()]
    env += fault_env(job, settings.test_faults)  # a test cluster's only (fault_hooks.py)
    s3 = spec.output.s3
    if settings.default_s3_endpoint and (s3 is None or not s3.endpoint):
        env.append({"name": ENV_S3_ENDPOINT, "value": settings.default_s3_endpoint})
    env.append({"name": ENV_HUB_TOKEN_PATH, "value": NO_TOKEN_FILE})
    hub = spec.model.hub_endpoint or settings.default_hub_endpoint
    if hub:
        env.append({"name": ENV_HUB_ENDPOINT, "value": hub})
    for kind, value in settings.proxies:
        env += [{"name": name, "value": value} for name in PROXY_ENV[kind]]
    if s3 is not None and s3.credentials_secret_ref is not None:
        secret = s3.credentials_secret_ref.name
        env += [_secret_env(key, secret, key) for key in S3_SECRET_KEYS]
        env += [_secret_env(key, secret, key, optional=True) for key in S3_OPTIONAL_SECRET_KEYS]
    if spec.model.hf_token_secret_ref is not None:
        env.append(_secret_ref_env(ENV_HF_TOKEN, spec.model.hf_token_secret_ref))
    push = spec.output.push_to_hub
    if push is not None and push.token_secret_ref is not None:
        env.append(_secret_ref_env(ENV_HUB_PUSH_TOKEN, push.token_secret_ref))
    if spec.output.oci is not None:
        env += _registry_env(spec.output.oci, ENV_OCI_PUSH_SECRET, ENV_OCI_PUSH_CA)
    if spec.model.registry is not None:
        env += _registry_env(spec.model.registry, ENV_OCI_PULL_SECRET, ENV_OCI_PULL_CA)
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


def _registry_env(access: RegistryAccess, secret_env: str, ca_env: str) -> list[dict[str, Any]]:
    """An OCI registry's dockerconfigjson Secret and CA ConfigMap key, as the trainer reads
    them (fttrainer.publishing.oci.connect)."""
    env = []
    if access.credentials_secret_ref is not None:
        env.append(_secret_env(secret_env, access.credentials_secret_ref.name, DOCKER_CONFIG_KEY))
    ca = access.ca_config_map_ref
    if ca is not None:
        selector = {"name": ca.name, "key": ca.key}
        env.append({"name": ca_env, "valueFrom": {"configMapKeyRef": selector}})
    return env


def _secret_ref_env(name: str, ref: SecretKeyRef) -> dict[str, Any]:
    return _secret_env(name, ref.name, ref.key)


def _secret_env(name: str, secret: str, key: str, *, optional: bool = False) -> dict[str, Any]:
    selector: dict[str, Any] = {"name": secret, "key": key}
    if optional:
        selector["optional"] = True
    return {"name": name, "valueFrom": {"secretKeyRef": selector}}
