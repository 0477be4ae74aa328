"""OCI registries: where output.oci pushes the tuned model and where an oci:// model.name,
tokenizer or adapter is pulled from, with the credentials and trust to reach them."""

from __future__ import annotations

import re
from typing import Annotated

from pydantic import StringConstraints
from pydantic.alias_generators import to_snake

from ._base import ApiModel, Rule
from .common import ObjectName, SecretRef

# oci://REGISTRY[:PORT]/REPOSITORY[:TAG] with the distribution spec's repository grammar
# (lowercase path components joined by ., _, __ or dashes). A pushed tag leaves room for the
# merged model's "-merged" suffix (tags are at most 128 characters).
_HOST = r"[A-Za-z0-9]([A-Za-z0-9.-]*[A-Za-z0-9])?(:[0-9]{1,5})?"
# No backslashes in these patterns: CEL string literals would read them as escapes.
_COMPONENT = r"[a-z0-9]+(([.]|_|__|-+)[a-z0-9]+)*"
_REPOSITORY = f"{_COMPONENT}(/{_COMPONENT})*"
OCI_PUSH_REFERENCE = f"^oci://{_HOST}/{_REPOSITORY}(:[A-Za-z0-9_][A-Za-z0-9._-]{{0,120}})?$"
"""Where output.oci pushes: a tag (or none: latest), never a digest (that is the result)."""
OCI_REFERENCE = (
    f"^oci://{_HOST}/{_REPOSITORY}(:[A-Za-z0-9_][A-Za-z0-9._-]{{0,127}})?(@sha256:[a-f0-9]{{64}})?$"
)
"""What may be read: a tag, a digest, or both (the digest wins)."""
MERGED_TAG_SUFFIX = "-merged"


def oci_reference_rule(field: str, *, optional: bool = True) -> Rule:
    """`field` (wire name), when it starts with oci://, is a well-formed image reference."""
    attribute = to_snake(field)
    guard = f"!has(self.{field}) || " if optional else ""
    return Rule(
        cel=f"{guard}!self.{field}.startsWith('oci://') || self.{field}.matches('{OCI_REFERENCE}')",
        message=f"{field}: an oci:// reference is oci://registry[:port]/repository[:tag]"
        "[@sha256:digest], the repository in lowercase",
        check=lambda o: (
            not (getattr(o, attribute) or "").startswith("oci://")
            or re.fullmatch(OCI_REFERENCE, getattr(o, attribute)) is not None
        ),
        field=f".{field}",
    )


class ConfigMapKeyRef(ApiModel):
    """A key in a ConfigMap in the FineTuneJob's namespace."""

    name: ObjectName
    """Name of the ConfigMap."""
    key: Annotated[str, StringConstraints(min_length=1, max_length=253)]
    """Key inside the ConfigMap whose value is used."""


class RegistryAccess(ApiModel):
    """How the trainer reaches an OCI registry. Local runs (`finetune run`) read the Docker
    config instead ($DOCKER_CONFIG/config.json or ~/.docker/config.json) and the system's
    trust store."""

    credentials_secret_ref: SecretRef | None = None
    """A Secret of type kubernetes.io/dockerconfigjson (`kubectl create secret
    docker-registry`): its .dockerconfigjson entry for the registry gives the user and
    password (Basic, or the token flow the registry asks for). Unset: anonymous."""
    ca_config_map_ref: ConfigMapKeyRef | None = None
    """A ConfigMap key holding the PEM certificate(s) to trust for the registry's TLS, for a
    registry with a private CA (kube-root-ca.crt/ca.crt when the cluster's CA signed it).
    Unset: the trainer image's trust store."""
    plain_http: bool = False
    """Speak plain HTTP to the registry (an in-cluster registry without TLS). The
    credentials, if any, then cross the network unencrypted."""


class OciOutput(RegistryAccess):
    """Push the final model as an OCI image whose layers hold its files under models/: what
    KServe (modelcars, oci:// storage URIs) and a Kubernetes `image` volume mount, and any
    OCI client pulls. Lineage (base model and digest, data hashes, the spec's hash, final
    metrics, versions) goes into the manifest's annotations; the digest into
    status.modelImage."""

    reference: Annotated[str, StringConstraints(min_length=8, max_length=1024)]
    """oci://REGISTRY/REPOSITORY[:TAG] (tag unset: latest). The merged model
    (output.mergeAdapter) goes to the same repository, tag TAG-merged."""

    rules = (
        Rule(
            cel=f"self.reference.matches('{OCI_PUSH_REFERENCE}')",
            message="reference must be oci://registry[:port]/repository[:tag] (a tag of at "
            "most 121 characters, no digest; the repository in lowercase)",
            check=lambda o: re.fullmatch(OCI_PUSH_REFERENCE, o.reference) is not None,
            field=".reference",
        ),
    )


def merged_reference(reference: str) -> str:
    """Where the merged model of a push to `reference` goes: the same repository, the tag
    with MERGED_TAG_SUFFIX (latest-merged when the reference has no tag)."""
    head, _, last = reference.rpartition("/")
    name, _, tag = last.partition(":")
    return f"{head}/{name}:{tag or 'latest'}{MERGED_TAG_SUFFIX}"
