"""spec.output: where checkpoints and the final model go."""

from __future__ import annotations

from typing import Annotated, Literal

from pydantic import Field

from ._base import ApiModel, Rule
from .common import SecretKeyRef, SecretRef, ShortText, Text, Uri, no_credentials_in_url
from .registry import OciOutput


class S3Spec(ApiModel):
    """How to reach the S3 (or S3-compatible) store. Credentials come from a Secret or the
    pod's identity (IRSA / workload identity), never from the spec."""

    endpoint: Text | None = None
    """Endpoint URL for S3-compatible stores (MinIO, Ceph, R2...); unset: AWS."""
    region: ShortText | None = None
    """Region; unset: the SDK's default chain."""
    force_path_style: bool = False
    """Path-style addressing (bucket in the path), needed by most self-hosted stores."""
    credentials_secret_ref: SecretRef | None = None
    """Secret with AWS_ACCESS_KEY_ID and AWS_SECRET_ACCESS_KEY (optional AWS_SESSION_TOKEN)
    keys; unset: the pod's identity or the standard AWS environment."""

    rules = (no_credentials_in_url("endpoint"),)


class PushToHub(ApiModel):
    """Publish the final model (and the merged one) to the Hugging Face Hub, in one commit."""

    repo_id: Annotated[str, Field(min_length=1, max_length=256, pattern=r"^([\w.-]+/)?[\w.-]+$")]
    """Target repository, org/name; a bare name is created in the token owner's namespace.
    The final model goes to its root, the merged one (output.mergeAdapter) under merged/."""
    private: bool = True
    """Create the repository private."""
    token_secret_ref: SecretKeyRef | None = None
    """Token with write access; unset: model.hfTokenSecretRef."""


class OutputSpec(ApiModel):
    """Checkpoints (for resume) and final artefacts: adapter or model, metrics, result.json."""

    uri: Uri
    """s3://bucket/prefix (required in a cluster) or a local directory (local runs)."""
    s3: S3Spec | None = None
    """S3 connection settings (s3:// URIs only)."""
    save_steps: Annotated[int, Field(ge=1)] = 500
    """Write a checkpoint every N optimizer steps. A restart loses at most this much work."""
    save_total_limit: Annotated[int, Field(ge=1, le=1000)] = 2
    """Complete checkpoints kept; older ones are deleted (never the newest)."""
    final_model: Literal["last", "best"] = "last"
    """Which weights become the final model: after the last step, or the checkpoint with
    the best evaluation loss (needs evaluation)."""
    merge_adapter: bool = False
    """Also save the base model with the LoRA adapter merged in (LoRA methods only)."""
    push_to_hub: PushToHub | None = None
    """Also publish the final model to the Hugging Face Hub."""
    oci: OciOutput | None = None
    """Also push the final model (and the merged one) to an OCI registry as an image that
    serving mounts (KServe, a Kubernetes image volume); the digest goes into
    status.modelImage."""

    rules = (
        Rule(
            cel="!has(self.s3) || self.uri.startsWith('s3://')",
            message="s3 settings need an s3:// uri",
            check=lambda o: o.s3 is None or o.uri.startswith("s3://"),
            field=".s3",
        ),
    )
