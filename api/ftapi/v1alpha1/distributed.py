"""spec.distributed: how the work is split across the job's processes."""

from __future__ import annotations

from typing import Annotated, Any, Literal

from pydantic import Field

from ._base import ApiModel, Rule, only_for


class FsdpSpec(ApiModel):
    """PyTorch Fully Sharded Data Parallel."""

    reshard_after_forward: bool = True
    """FSDP2: free gathered parameters after forward (ZeRO-3-like, least memory); false
    keeps them until backward (ZeRO-2-like, less communication)."""
    cpu_offload: bool = False
    """Offload parameters and gradients to CPU memory."""
    activation_checkpointing: bool = False
    """FSDP's own activation checkpointing (use instead of training.gradientCheckpointing)."""


class DeepSpeedSpec(ApiModel):
    """DeepSpeed ZeRO."""

    zero_stage: Literal[0, 1, 2, 3] = 2
    """0: plain DDP; 1: shard optimizer states; 2: + gradients; 3: + parameters."""
    offload_optimizer: Literal["none", "cpu"] = "none"
    """Keep optimizer states in CPU memory (ZeRO-Offload; needs zeroStage 1 or more)."""
    offload_parameters: Literal["none", "cpu"] = "none"
    """Keep parameters in CPU memory (ZeRO-3 only)."""
    config: dict[str, Any] | None = Field(
        default=None, json_schema_extra={"x-kubernetes-preserve-unknown-fields": True}
    )
    """A full DeepSpeed JSON config (as YAML) merged over the generated one, for settings
    not modelled here. "auto" values are filled in from the spec."""

    rules = (
        Rule(
            cel="self.offloadOptimizer == 'none' || self.zeroStage >= 1",
            message="offloadOptimizer needs zeroStage 1, 2 or 3",
            check=lambda d: d.offload_optimizer == "none" or d.zero_stage >= 1,
            field=".offloadOptimizer",
        ),
        Rule(
            cel="self.offloadParameters == 'none' || self.zeroStage == 3",
            message="offloadParameters needs zeroStage 3",
            check=lambda d: d.offload_parameters == "none" or d.zero_stage == 3,
            field=".offloadParameters",
        ),
    )


class DistributedSpec(ApiModel):
    """Parallelism across processes (nodes x gpusPerNode)."""

    strategy: Literal["auto", "ddp", "fsdp", "deepspeed"] = "auto"
    """auto: DDP when there is more than one process, nothing otherwise."""
    fsdp: FsdpSpec | None = None
    """FSDP settings (strategy fsdp; defaults when omitted)."""
    deepspeed: DeepSpeedSpec | None = None
    """DeepSpeed settings (strategy deepspeed; defaults when omitted)."""
    nccl_timeout_seconds: Annotated[int, Field(ge=60, le=86400)] = 1800
    """Collective timeout; raise it when a rank does long work (e.g. tokenizing) alone."""

    rules = (
        only_for("fsdp", "strategy", ("fsdp",)),
        only_for("deepspeed", "strategy", ("deepspeed",)),
    )
