"""The platform's admission policy: may this job run here at all? Pure.

    refusal = policy_violation(job, settings)   # (reason, message) or None

The CRD cannot know a cluster's policy (allowed registries, PriorityClasses, node label
keys, per-job ServiceAccounts) nor tell a hub id from a relative path: the controller checks
these before every attempt and fails the job with the reason, never retrying it.
"""

from __future__ import annotations

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
