"""The platform's admission policy: may this job run here at all? Pure.

    refusal = policy_violation(job, settings)   # (reason, message) or None

The CRD cannot know a cluster's policy (allowed registries, the servers a job's credentials
may go to, trustRemoteCode, PriorityClasses, node label keys, per-job ServiceAccounts) nor
tell a hub id from a relative path: the controller checks these before every attempt and
fails the job with the reason, never retrying it.
"""

from __future__ import annotations

from urllib.parse import urlsplit

from ftapi.v1alpha1 import FineTuneJob
from ftapi.v1alpha1.model import is_relative_path

from .config import Settings, image_of


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
    endpoint = endpoint_violation(job, settings)
    if endpoint:
        return endpoint
    if settings.forbid_trust_remote_code and job.spec.model.trust_remote_code:
        return "TrustRemoteCodeNotAllowed", (
            "spec.model.trustRemoteCode is not allowed by this operator's settings "
            "(forbidTrustRemoteCode: the model repository's code would run beside the job's "
            "credentials): remove it, or ask your platform team"
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


def named_servers(job: FineTuneJob) -> list[tuple[str, str, str, str]]:
    """(reason, spec field, URL, setting) for every server the spec names that a credential
    of the job goes to. Unset fields name none: the platform's default (the operator's
    default endpoint or Hub) or the service's own (AWS, huggingface.co, W&B's cloud)."""
    spec = job.spec
    named = []
    if spec.output.s3 is not None and spec.output.s3.endpoint:
        named.append(("S3EndpointNotAllowed", "spec.output.s3.endpoint",
                      spec.output.s3.endpoint, "allowedS3Endpoints"))  # fmt: skip
    if spec.logging.mlflow is not None:
        named.append(("TrackerNotAllowed", "spec.logging.mlflow.trackingUri",
                      spec.logging.mlflow.tracking_uri, "allowedTrackerUrls"))  # fmt: skip
    if spec.logging.wandb is not None and spec.logging.wandb.base_url:
        named.append(("TrackerNotAllowed", "spec.logging.wandb.baseUrl",
                      spec.logging.wandb.base_url, "allowedTrackerUrls"))  # fmt: skip
    if spec.model.hub_endpoint:
        named.append(("HubEndpointNotAllowed", "spec.model.hubEndpoint",
                      spec.model.hub_endpoint, "allowedHubEndpoints"))  # fmt: skip
    return named


def endpoint_violation(job: FineTuneJob, settings: Settings) -> tuple[str, str] | None:
    """The first server the spec names outside the operator's allow-list for it."""
    lists = {
        "allowedS3Endpoints": settings.allowed_s3_endpoints,
        "allowedTrackerUrls": settings.allowed_tracker_urls,
        "allowedHubEndpoints": settings.allowed_hub_endpoints,
    }
    for reason, field, url, setting in named_servers(job):
        allowed = lists[setting]
        if allowed and not any(url_allowed(url, entry) for entry in allowed):
            return reason, (
                f"{field} {url} is not allowed by this operator's {setting} "
                f"({', '.join(allowed)}): name one of them, leave the field unset for the "
                "platform's default, or ask your platform team"
            )
    return None


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
