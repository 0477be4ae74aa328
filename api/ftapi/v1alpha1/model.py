"""spec.model: which base model (and tokenizer) to fine-tune and how to load it."""

from __future__ import annotations

from typing import Literal

from ._base import ApiModel, Rule
from .common import Dtype, SecretKeyRef, ShortText, Text, Uri, server_url
from .registry import RegistryAccess, oci_reference_rule


def is_relative_path(name: str) -> bool:
    """Whether a model, tokenizer or adapter name is a relative local path. Hub ids look
    like relative paths ("org/name"), so only an explicit ./ ../ ~ (or . and ..) is one, and
    a name starting with a dot (".quickstart/tiny-llama"), which no hub id or organisation
    can: taken for a hub id, it failed every attempt with the hub's "Repo id must use
    alphanumeric chars" instead of saying that the folder is missing."""
    return name.startswith((".", "~"))


Attention = Literal[
    "auto", "eager", "sdpa", "flex_attention", "flash_attention_2", "flash_attention_3"
]


class ModelSpec(ApiModel):
    """The base model. Loaded with transformers' Auto classes; nothing is executed from the
    model repository unless `trustRemoteCode` is explicitly turned on."""

    name: Uri
    """Hub id (org/name), local directory, s3://bucket/prefix holding a saved model, or
    oci://registry/repository[:tag][@sha256:digest]: an image whose models/ folder holds it
    (what output.oci pushes)."""
    tokenizer: Uri | None = None
    """Tokenizer to use when it differs from the model (hub id, path, s3:// or oci://)."""
    revision: ShortText | None = None
    """Hub branch, tag or commit to pin the model to. Pin it for reproducible runs (an
    oci:// model is pinned by its @sha256: digest instead)."""
    dtype: Dtype = "auto"
    """Weight dtype to load in. auto: float32 for full/spectrum unless DeepSpeed or FSDP keeps
    float32 master weights (bf16 updates would be lost to rounding), else bfloat16 on GPUs
    that support it, float32 on CPU."""
    attention: Attention = "auto"
    """Attention kernel: auto uses flash_attention_2 when installed on a supported GPU,
    else sdpa."""
    trust_remote_code: bool = False
    """Run Python code shipped in the model repository. Off by default: it executes
    arbitrary code inside the trainer pod."""
    hf_token_secret_ref: SecretKeyRef | None = None
    """Secret key holding a Hugging Face token, for gated or private models (and for
    output.pushToHub unless it names its own)."""
    hub_endpoint: Text | None = None
    """The Hugging Face Hub the model, hf:// datasets and output.pushToHub use, and where
    the Hub token is sent (huggingface_hub also sends it to huggingface.co's own hosts
    when the Hub redirects there): a private Hub or a mirror, e.g.
    https://hub.internal. Unset: the operator's default (operator.defaultHubEndpoint), else
    https://huggingface.co. The operator's allowedHubEndpoints governs it; the HF_ENDPOINT
    variable is refused in resources.env."""

    registry: RegistryAccess | None = None
    """How to reach the registry of an oci:// name, tokenizer or method.adapter.uri
    (credentials, CA, plain HTTP)."""

    rules = (
        server_url("hubEndpoint", "https://hub.internal"),
        oci_reference_rule("name", optional=False),
        oci_reference_rule("tokenizer"),
        Rule(
            cel="!has(self.revision) || !self.name.startsWith('oci://')",
            message="revision pins a Hub model; pin an oci:// model by its digest "
            "(oci://registry/repository@sha256:...)",
            check=lambda m: m.revision is None or not m.name.startswith("oci://"),
            field=".revision",
        ),
    )
