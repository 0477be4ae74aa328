"""The platform's admission policy: may this job run here at all? Pure.

    refusal = policy_violation(job, settings)   # (reason, message) or None

The CRD cannot know a cluster's policy (allowed registries, the servers a job's credentials
may go to, the Secrets it may reference, code it may bring, the environment it may set,
PriorityClasses, node label keys, per-job ServiceAccounts) nor tell a hub id from a
relative path: the controller checks these before every attempt and fails the job with the
reason, never retrying it.
"""

from __future__ import annotations

from fnmatch import fnmatchcase
from urllib.parse import urlsplit

from ftapi.locations import data_locations
from ftapi.v1alpha1 import FineTuneJob
from ftapi.v1alpha1.common import SecretKeyRef, SecretRef
from ftapi.v1alpha1.model import is_relative_path
from ftapi.v1alpha1.registry import RegistryAccess

from .config import Settings, image_of
from .fault_hooks import faults_violation


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
    for where, uri in oci_references(job):
        if allowed and not any(image_allowed(uri.removeprefix("oci://"), p) for p in allowed):
            return "ImageNotAllowed", (
                f"{where} {uri} is not in an allowed registry ({', '.join(allowed)}): models "
                "are pushed to and pulled from the registries images may come from; use one, "
                "or ask your platform team"
            )
    endpoint = endpoint_violation(job, settings) or secret_violation(job, settings)
    if endpoint:
        return endpoint
    code = job_code(job) if settings.forbid_job_code else []
    if code:
        return "JobCodeNotAllowed", (
            f"{'; '.join(code)}: not allowed by this operator's settings (forbidJobCode: "
            "code that comes with a job, not with the trainer image, would run beside the "
            "job's credentials): remove it, or ask your platform team"
        )
    registry = registry_trust_violation(job, settings)
    if registry:
        return registry
    env = env_violation(job, settings)
    if env:
        return env
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
    return faults_violation(job, settings.test_faults)


def oci_references(job: FineTuneJob) -> list[tuple[str, str]]:
    """(spec field, oci:// reference) for every image the trainer pushes or pulls a model
    with, and so sends the registry credentials to."""
    spec = job.spec
    named = [("spec.model.name", spec.model.name), ("spec.model.tokenizer", spec.model.tokenizer)]
    if spec.method.adapter is not None:
        named.append(("spec.method.adapter.uri", spec.method.adapter.uri))
    if spec.output.oci is not None:
        named.append(("spec.output.oci.reference", spec.output.oci.reference))
    return [(where, uri) for where, uri in named if uri and uri.startswith("oci://")]


def job_code(job: FineTuneJob) -> list[str]:
    """The fields that make the trainer run code the job brings (from the Hub, from its
    data, or from a file or module it names), which sees every credential of the job."""
    spec = job.spec
    found = []
    if spec.model.trust_remote_code:
        found.append("spec.model.trustRemoteCode runs the model repository's code")
    for i, reward in enumerate(spec.trainer.grpo.rewards if spec.trainer.grpo else []):
        if reward.type == "python":
            found.append(
                f"spec.trainer.grpo.rewards[{i}] runs the python function {reward.function}"
            )
    harness = spec.evaluation.harness
    if harness is not None and harness.include_path:
        found.append(
            "spec.evaluation.harness.includePath loads task files, whose !function "
            "entries run python"
        )
    return found


# Where a job's credentials go when it names no server and the operator has no default:
# the services' own. An allow-list that does not hold them refuses such a job.
PUBLIC_HUB = "https://huggingface.co"
PUBLIC_WANDB = "https://api.wandb.ai"
PUBLIC_S3 = "https://s3.amazonaws.com"


def servers_used(job: FineTuneJob, settings: Settings) -> list[tuple[str, str, str, str]]:
    """(reason, what, URL, setting) for every server a credential of the job may go to.
    A field left unset means the operator's default (the platform's own choice, never
    refused), else the service's public one (PUBLIC_*), which the allow-list must hold."""
    spec = job.spec
    used = []
    s3 = spec.output.s3
    if s3 is not None and s3.endpoint:
        used.append(
            ("S3EndpointNotAllowed", "spec.output.s3.endpoint", s3.endpoint, "allowedS3Endpoints")
        )
    elif uses_s3(job) and not settings.default_s3_endpoint:
        used.append(
            (
                "S3EndpointNotAllowed",
                "spec.output.s3.endpoint is unset, so AWS S3",
                PUBLIC_S3,
                "allowedS3Endpoints",
            )
        )
    if spec.logging.mlflow is not None:
        used.append(
            (
                "TrackerNotAllowed",
                "spec.logging.mlflow.trackingUri",
                spec.logging.mlflow.tracking_uri,
                "allowedTrackerUrls",
            )
        )
    wandb = spec.logging.wandb
    if wandb is not None and wandb.base_url:
        used.append(
            (
                "TrackerNotAllowed",
                "spec.logging.wandb.baseUrl",
                wandb.base_url,
                "allowedTrackerUrls",
            )
        )
    elif wandb is not None:
        used.append(
            (
                "TrackerNotAllowed",
                "spec.logging.wandb.baseUrl is unset, so W&B's cloud",
                PUBLIC_WANDB,
                "allowedTrackerUrls",
            )
        )
    if spec.model.hub_endpoint:
        used.append(
            (
                "HubEndpointNotAllowed",
                "spec.model.hubEndpoint",
                spec.model.hub_endpoint,
                "allowedHubEndpoints",
            )
        )
    elif uses_hub(job) and not settings.default_hub_endpoint:
        used.append(
            (
                "HubEndpointNotAllowed",
                "spec.model.hubEndpoint is unset, so the Hub",
                PUBLIC_HUB,
                "allowedHubEndpoints",
            )
        )
    return used


def uses_s3(job: FineTuneJob) -> bool:
    return any(uri.startswith("s3://") for uri in _uris(job))


def uses_hub(job: FineTuneJob) -> bool:
    """Whether the job may reach the Hub: a model, tokenizer or adapter named by a hub id
    (neither s3:// nor an absolute path), hf:// data, publishing, or harness tasks (their
    data comes from the Hub)."""
    spec = job.spec
    named = [spec.model.name, spec.model.tokenizer]
    if spec.method.adapter is not None:
        named.append(spec.method.adapter.uri)
    hub_ids = any(n and not n.startswith(("s3://", "oci://", "/")) for n in named)
    hf_data = any(uri.startswith("hf://") for uri in _uris(job))
    return (
        hub_ids
        or hf_data
        or spec.output.push_to_hub is not None
        or (spec.evaluation.harness is not None)
    )


def _uris(job: FineTuneJob) -> list[str]:
    """Every location the job reads or writes."""
    spec = job.spec
    uris = [spec.output.uri, spec.model.name, spec.model.tokenizer or ""]
    uris += [uri or "" for _, uri in data_locations(job)]
    if spec.method.adapter is not None:
        uris.append(spec.method.adapter.uri)
    if spec.evaluation.harness is not None:
        uris.append(spec.evaluation.harness.include_path or "")
    return uris


def endpoint_violation(job: FineTuneJob, settings: Settings) -> tuple[str, str] | None:
    """The first server the job would send a credential to outside the operator's
    allow-list for it."""
    lists = {
        "allowedS3Endpoints": settings.allowed_s3_endpoints,
        "allowedTrackerUrls": settings.allowed_tracker_urls,
        "allowedHubEndpoints": settings.allowed_hub_endpoints,
    }
    for reason, what, url, setting in servers_used(job, settings):
        allowed = lists[setting]
        if allowed and not any(url_allowed(url, entry) for entry in allowed):
            return reason, (
                f"{what} {url} is not allowed by this operator's {setting} "
                f"({', '.join(allowed)}): name one of them, or ask your platform team"
            )
    return None


def registry_trust_violation(job: FineTuneJob, settings: Settings) -> tuple[str, str] | None:
    """A registry the job would reach over plain HTTP, or trust by a CA ConfigMap, that the
    operator's plainHttpRegistries or allowedCaConfigMaps does not admit."""
    for where, access, hosts in registry_accesses(job):
        if access.plain_http:
            refused = [h for h in hosts if not globbed(h, settings.plain_http_registries)]
            if refused:
                return "PlainHttpNotAllowed", (
                    f"{where}.plainHttp would send the registry credential to "
                    f"{', '.join(refused)} in clear; this operator's plainHttpRegistries "
                    f"admits {_listing(settings.plain_http_registries)}: use TLS, or ask "
                    "your platform team"
                )
        ca = access.ca_config_map_ref
        if ca is not None and not globbed(ca.name, settings.allowed_ca_config_maps):
            return "CaConfigMapNotAllowed", (
                f"{where}.caConfigMapRef ({ca.name}) would choose whom the trainer trusts to "
                "be the registry; this operator's allowedCaConfigMaps admits "
                f"{_listing(settings.allowed_ca_config_maps)}: leave it unset (the trainer "
                "image's trust store), or ask your platform team"
            )
    return None


def registry_accesses(job: FineTuneJob) -> list[tuple[str, RegistryAccess, list[str]]]:
    """(spec field, how it reaches a registry, the registry hosts it reaches so) for
    output.oci and model.registry (every oci:// model, tokenizer or adapter)."""
    spec = job.spec
    found: list[tuple[str, RegistryAccess, list[str]]] = []
    if spec.output.oci is not None:
        found.append(("spec.output.oci", spec.output.oci, [_host(spec.output.oci.reference)]))
    if spec.model.registry is not None:
        pulled = [uri for where, uri in oci_references(job) if where != "spec.output.oci.reference"]
        found.append(("spec.model.registry", spec.model.registry, [_host(u) for u in pulled]))
    return found


def _host(reference: str) -> str:
    return reference.removeprefix("oci://").split("/", 1)[0]


def globbed(name: str, patterns: tuple[str, ...]) -> bool:
    """`name` matches one of the shell globs (case-sensitive, as Kubernetes names are)."""
    return any(fnmatchcase(name, p) for p in patterns)


def _listing(patterns: tuple[str, ...]) -> str:
    return ", ".join(patterns) if patterns else "none"


def env_violation(job: FineTuneJob, settings: Settings) -> tuple[str, str] | None:
    """Variables of resources.env that allowedEnv does not list, when the environment is
    restricted (restrictEnv, or forbidJobCode: a loader variable runs code too)."""
    if not (settings.restrict_env or settings.forbid_job_code):
        return None
    allowed = settings.allowed_env
    refused = [e.name for e in job.spec.resources.env if not globbed(e.name, allowed)]
    if not refused:
        return None
    why = "restrictEnv" if settings.restrict_env else "forbidJobCode"
    examples = ", ".join(allowed[:4]) + (", ..." if len(allowed) > 4 else "")
    return "EnvNotAllowed", (
        f"spec.resources.env sets {', '.join(refused)}: not in this operator's allowedEnv "
        f"({why}: a job may set only the {len(allowed)} names and patterns it lists, such as "
        f"{examples or 'none'}): remove them, or ask your platform team"
    )


def secret_violation(job: FineTuneJob, settings: Settings) -> tuple[str, str] | None:
    """A Secret the spec references whose name no --allowed-secret-names pattern admits."""
    patterns = settings.allowed_secret_names
    if not patterns:
        return None
    refused = [
        f"{field} ({name})" for field, name in secret_references(job) if not globbed(name, patterns)
    ]
    if not refused:
        return None
    return "SecretNotAllowed", (
        f"{', '.join(refused)}: only Secrets named {', '.join(patterns)} may be used by jobs "
        "(allowedSecretNames): use one of those, or ask your platform team"
    )


def secret_references(job: FineTuneJob) -> list[tuple[str, str]]:
    """(spec field, Secret name) for every Secret the job names: whose values reach the
    pods, and the image pull secrets the kubelet uses for them."""
    spec = job.spec
    refs: list[tuple[str, SecretRef | SecretKeyRef | None]] = [
        ("spec.model.hfTokenSecretRef", spec.model.hf_token_secret_ref),
        (
            "spec.output.s3.credentialsSecretRef",
            spec.output.s3.credentials_secret_ref if spec.output.s3 else None,
        ),
        (
            "spec.output.pushToHub.tokenSecretRef",
            spec.output.push_to_hub.token_secret_ref if spec.output.push_to_hub else None,
        ),
        (
            "spec.output.oci.credentialsSecretRef",
            spec.output.oci.credentials_secret_ref if spec.output.oci else None,
        ),
        (
            "spec.model.registry.credentialsSecretRef",
            spec.model.registry.credentials_secret_ref if spec.model.registry else None,
        ),
        (
            "spec.logging.mlflow.tokenSecretRef",
            spec.logging.mlflow.token_secret_ref if spec.logging.mlflow else None,
        ),
        (
            "spec.logging.wandb.apiKeySecretRef",
            spec.logging.wandb.api_key_secret_ref if spec.logging.wandb else None,
        ),
    ]
    # A pull secret reaches the kubelet, not the pods, but it is a Secret the job names.
    pulls = enumerate(spec.resources.image_pull_secrets)
    named = [(f"spec.resources.imagePullSecrets[{i}]", name) for i, name in pulls]
    refs += [
        (f"spec.resources.env[{i}].secretKeyRef", e.secret_key_ref)
        for i, e in enumerate(spec.resources.env)
    ]
    return named + [(field, ref.name) for field, ref in refs if ref is not None]


def url_allowed(url: str, entry: str) -> bool:
    """`url` is the server `entry` names, or under its path: same scheme, host and port
    (the scheme's default when absent), and the entry's path a prefix at a "/" boundary. So
    https://mlflow.internal admits https://mlflow.internal/team-a but neither
    https://mlflow.internal.example.com, https://mlflow.internal:8443, nor
    http://mlflow.internal; a URL with user:password@ never matches."""
    try:
        have, want = urlsplit(url), urlsplit(entry)
        have_port, want_port = _port(have.scheme, have.port), _port(want.scheme, want.port)
    except ValueError:  # an unparsable port
        return False
    if have.username is not None or have.password is not None:
        return False
    if any(part in (".", "..") or "%" in part for part in have.path.split("/")):
        return False  # /team-a/../team-b, or encoded: compared as written, not as resolved
    if (have.scheme.lower(), (have.hostname or ""), have_port) != (
        want.scheme.lower(),
        (want.hostname or ""),
        want_port,
    ):
        return False
    prefix = want.path.rstrip("/")
    return not prefix or have.path == prefix or have.path.startswith(prefix + "/")


def _port(scheme: str, port: int | None) -> int | None:
    return port if port is not None else {"http": 80, "https": 443}.get(scheme.lower())


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
    for where, uri in data_locations(job):
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
