"""spec.resources: the pods' shape, and where they may run."""

from __future__ import annotations

import re
from typing import Annotated, Any, Literal

from pydantic import Field, StringConstraints, field_validator
from pydantic.alias_generators import to_snake

from ._base import ApiModel, Rule
from .common import (
    QUALIFIED_KEY_HELP,
    EnvVar,
    ImageRef,
    LabelValue,
    ObjectName,
    Quantity,
    Toleration,
    qualified_key,
    qualified_key_cel,
    unique_by,
)
from .redirects import (
    REDIRECT_GROUPS,
    REFERENCE_MESSAGE,
    VARIABLE_REFERENCE,
    RedirectGroup,
    references_variable,
)

# Set by the operator for torchrun; a user value would silently break the rendezvous.
RESERVED_ENV = (
    "MASTER_ADDR",
    "MASTER_PORT",
    "RANK",
    "LOCAL_RANK",
    "WORLD_SIZE",
    "LOCAL_WORLD_SIZE",
    "NODE_RANK",
    "GROUP_RANK",
    "TORCHELASTIC_RUN_ID",
)
RESERVED_ENV_PREFIXES = ("PET_", "TORCHELASTIC_", "FINETUNE_")
# An extended resource (GPUs are one): a DNS subdomain, "/", a name, e.g. nvidia.com/gpu.
RESOURCE_NAME_PATTERN = (
    r"^[a-z0-9]([-a-z0-9]*[a-z0-9])?(\.[a-z0-9]([-a-z0-9]*[a-z0-9])?)*"
    r"/[a-z0-9]([-a-z0-9_.]*[a-z0-9])?$"
)
ResourceName = Annotated[str, StringConstraints(max_length=253, pattern=RESOURCE_NAME_PATTERN)]
# What else the API server's pod validation asks of an extended resource name
# (IsExtendedResourceName): not in the kubernetes.io domain (cpu, memory, ... live there),
# no "requests." prefix (quota's convention), and "requests.<name>" a qualified name: a
# domain of at most 244 characters, a name of at most 63.
_EXTENDED_CEL = (
    "!has(self.gpuResourceName) || (!self.gpuResourceName.contains('kubernetes.io/')"
    " && !self.gpuResourceName.startsWith('requests.')"
    " && self.gpuResourceName.matches('^[^/]{1,244}/[^/]{1,63}$'))"
)


def _extended_resource(name: str | None) -> bool:
    """The rule above in Python (the ResourceName pattern is checked on its own)."""
    if name is None:
        return True
    domain, _, resource = name.partition("/")
    return (
        "kubernetes.io/" not in name
        and not name.startswith("requests.")
        and 1 <= len(domain) <= 244
        and 1 <= len(resource) <= 63
    )


# Annotations of an object may total at most 256 KiB (keys and values): 64 keys of at most
# 317 characters and 64 values of at most 3584 stay below it, with room for the operator's.
MAX_ANNOTATIONS = 64
AnnotationValue = Annotated[str, StringConstraints(max_length=3584)]


def _keys_rule(field: str, what: str) -> Rule:
    """Every key of the map `field` is one the API server admits as a label key."""
    attribute = to_snake(field)
    return Rule(
        cel=f"self.{field}.all(k, {qualified_key_cel('k')})",
        message=f"{what} keys must be {QUALIFIED_KEY_HELP}",
        check=lambda r: all(qualified_key(k) for k in getattr(r, attribute)),
        field=f".{field}",
    )


def _env_allowed(name: str) -> bool:
    return name not in RESERVED_ENV and not name.startswith(RESERVED_ENV_PREFIXES)


_RESERVED_CEL = (
    "self.env.all(e, !(e.name in ["
    + ", ".join(f"'{n}'" for n in RESERVED_ENV)
    + "])"
    + "".join(f" && !e.name.startsWith('{p}')" for p in RESERVED_ENV_PREFIXES)
    + ")"
)


def _redirect_rule(group: RedirectGroup) -> Rule:
    """resources.env sets no variable of `group` (redirects.py)."""
    refused = [f"e.name in [{', '.join(repr(n) for n in group.names)}]"] if group.names else []
    refused += [f"e.name.matches('^(?:{p})$')" for p in group.patterns]
    return Rule(
        cel=f"self.env.all(e, !({' || '.join(refused)}))",
        message=group.message(),
        check=lambda r: not any(group.refuses(e.name) for e in r.env),
        field=".env",
    )


def is_extended_resource_name(name: str) -> bool:
    """Pattern and rule together: what the operator's --gpu-resource-name must be."""
    return (
        len(name) <= 253
        and re.fullmatch(RESOURCE_NAME_PATTERN, name) is not None
        and _extended_resource(name)
    )


class ResourcesSpec(ApiModel):
    """Pods: how many, how big, which nodes. One pod per node runs torchrun with
    gpusPerNode processes."""

    nodes: Annotated[int, Field(ge=1, le=1024)] = 1
    """Pods (one per node) in the job."""
    gpus_per_node: Annotated[int, Field(ge=0, le=64)] = 1
    """GPUs each pod requests (and torchrun processes it starts). 0: one CPU process."""
    gpu_resource_name: ResourceName | None = None
    """Extended resource name of the GPUs (e.g. amd.com/gpu, or a MIG profile such as
    nvidia.com/mig-3g.40gb); unset: the operator's default (nvidia.com/gpu unless the
    platform team set another)."""
    cpu: Quantity | None = None
    """CPU request per pod, e.g. 8 or 7500m; unset: the operator's default, if any. No CPU
    limit is set (it would throttle data loading and tokenization) unless the operator is
    configured to set one for quota-enforcing namespaces."""
    memory: Quantity | None = None
    """Memory request and limit per pod, e.g. 64Gi; unset: the operator's default, if any."""
    shared_memory: Quantity = "16Gi"
    """Size of the memory-backed /dev/shm (data loader workers and NCCL need it), capped at
    the memory limit. Pages written there count towards the pod's memory: keep it well
    below `memory`."""
    node_selector: Annotated[dict[str, LabelValue], Field(max_length=64)] = {}
    """Node labels the pods require, e.g. a GPU pool or accelerator type."""
    tolerations: Annotated[list[Toleration], Field(max_length=64)] = []
    """Taints the pods tolerate (GPU, spot pools)."""
    affinity: dict[str, Any] | None = Field(
        default=None, json_schema_extra={"x-kubernetes-preserve-unknown-fields": True}
    )
    """A core/v1 Affinity, passed to the pods as is (its node affinity's shape is checked:
    the operator reads the label keys it names)."""

    @field_validator("affinity")
    @classmethod
    def _affinity_shape(cls, affinity: dict[str, Any] | None) -> dict[str, Any] | None:
        """Unknown keys would be pruned by the API server when the Job is created (the
        pods would land anywhere); a wrong shape would fail the Job's creation."""
        if affinity is not None:
            problem = affinity_problem(affinity)
            if problem:
                raise ValueError(problem)
        return affinity

    priority_class_name: ObjectName | None = None
    """PriorityClass of the pods (preemption order)."""
    image: ImageRef | None = None
    """Trainer image; unset: the operator's default."""
    image_pull_policy: Literal["Always", "IfNotPresent", "Never"] | None = None
    """Image pull policy; unset: the Kubernetes default."""
    image_pull_secrets: Annotated[list[ObjectName], Field(max_length=16)] = []
    """Secrets (type dockerconfigjson) for pulling a private trainer image."""
    service_account_name: ObjectName | None = None
    """Run the pods as this existing ServiceAccount (e.g. one bound to an IAM role for S3)
    instead of the trainer account the operator provides (the namespace's finetune-trainer,
    or one per job)."""
    env: Annotated[
        list[EnvVar],
        Field(
            max_length=64,
            json_schema_extra={
                "x-kubernetes-list-type": "map",
                "x-kubernetes-list-map-keys": ["name"],
            },
        ),
        unique_by("name"),
    ] = []
    """Extra environment for the trainer. Refused: torchrun's variables and FINETUNE_* (the
    operator sets them), variables that move a credential elsewhere (endpoints, proxies, TLS
    trust, credential files: use the spec field the message names) and $(NAME) references."""
    labels: Annotated[dict[str, LabelValue], Field(max_length=64)] = {}
    """Extra labels on the pods (cost allocation, policies): label keys and values (at most
    63 characters)."""
    annotations: Annotated[dict[str, AnnotationValue], Field(max_length=MAX_ANNOTATIONS)] = {}
    """Extra annotations on the pods: at most 64, values of at most 3584 characters (the
    API server admits 256 KiB of annotations in all)."""

    rules = (
        Rule(
            cel=_RESERVED_CEL,
            message="env may not set torchrun's variables (PET_*, TORCHELASTIC_*, RANK, "
            "WORLD_SIZE, MASTER_ADDR, ...) or FINETUNE_*: the operator sets them",
            check=lambda r: all(_env_allowed(e.name) for e in r.env),
            field=".env",
        ),
        Rule(
            cel=_EXTENDED_CEL,
            message="must be an extended resource name such as nvidia.com/gpu: not in the "
            "kubernetes.io domain (cpu and memory are set by their own fields), not starting "
            "with requests., a domain of at most 244 and a name of at most 63 characters",
            check=lambda r: _extended_resource(r.gpu_resource_name),
            field=".gpuResourceName",
        ),
        *(_redirect_rule(group) for group in REDIRECT_GROUPS),
        Rule(
            cel=f"self.env.all(e, !has(e.value) || !e.value.matches('{VARIABLE_REFERENCE}'))",
            message=REFERENCE_MESSAGE,
            check=lambda r: not any(references_variable(e.value) for e in r.env),
            field=".env",
        ),
        _keys_rule("nodeSelector", "nodeSelector"),
        _keys_rule("labels", "label"),
        _keys_rule("annotations", "annotation"),
    )


_AFFINITY_KINDS = ("nodeAffinity", "podAffinity", "podAntiAffinity")
_REQUIRED = "requiredDuringSchedulingIgnoredDuringExecution"
_PREFERRED = "preferredDuringSchedulingIgnoredDuringExecution"


def affinity_problem(affinity: dict[str, Any]) -> str | None:
    """What is wrong with a core/v1 Affinity's shape (its kinds, and the node affinity the
    operator's node-selector policy reads), or None."""
    unknown = sorted(set(affinity) - set(_AFFINITY_KINDS))
    if unknown:
        return f"unknown field(s) {', '.join(unknown)} (expected {', '.join(_AFFINITY_KINDS)})"
    for kind in _AFFINITY_KINDS:
        if kind in affinity and not isinstance(affinity[kind], dict):
            return f"{kind}: expected an object"
    node = affinity.get("nodeAffinity") or {}
    unknown = sorted(set(node) - {_REQUIRED, _PREFERRED})
    if unknown:
        return f"nodeAffinity: unknown field(s) {', '.join(unknown)}"
    terms: list[tuple[str, Any]] = []
    required = node.get(_REQUIRED)
    if required is not None:
        if not isinstance(required, dict) or not isinstance(
            required.get("nodeSelectorTerms"), list
        ):
            return f"nodeAffinity.{_REQUIRED}: expected an object with a nodeSelectorTerms list"
        terms += [
            (f"{_REQUIRED}.nodeSelectorTerms[{i}]", term)
            for i, term in enumerate(required["nodeSelectorTerms"])
        ]
    preferred = node.get(_PREFERRED)
    if preferred is not None:
        if not isinstance(preferred, list):
            return f"nodeAffinity.{_PREFERRED}: expected a list"
        for i, item in enumerate(preferred):
            if not isinstance(item, dict) or not isinstance(item.get("preference"), dict):
                return f"nodeAffinity.{_PREFERRED}[{i}]: expected an object with a preference"
            terms.append((f"{_PREFERRED}[{i}].preference", item["preference"]))
    for where, term in terms:
        if not isinstance(term, dict):
            return f"nodeAffinity.{where}: expected an object"
        for part in ("matchExpressions", "matchFields"):
            expressions = term.get(part)
            if expressions is None:
                continue
            if not isinstance(expressions, list) or not all(
                isinstance(e, dict) and isinstance(e.get("key"), str) for e in expressions
            ):
                return f"nodeAffinity.{where}.{part}: expected a list of objects with a key"
    return None
