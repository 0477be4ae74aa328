"""spec.distributed: how the work is split across the job's processes."""

from __future__ import annotations

from difflib import get_close_matches
from typing import Annotated, Any, Literal

from pydantic import Field, field_validator

from ._base import ApiModel, Rule, only_for

# Every top-level key DeepSpeed reads from its config (traced from DeepSpeedConfig;
# tests/unit/trainer/test_distributed_config.py fails when the installed DeepSpeed reads one more).
# DeepSpeed ignores any other key, so `zero_optimisation` would train without ZeRO unnoticed.
DEEPSPEED_CONFIG_KEYS = frozenset(
    (
        "activation_checkpointing",
        "aio",
        "amp",
        "autotuning",
        "bf16",
        "bfloat16",
        "checkpoint",
        "comet",
        "comms_logger",
        "communication_data_type",
        "compile",
        "compression_training",
        "csv_monitor",
        "curriculum_learning",
        "data_efficiency",
        "data_types",
        "dataloader_drop_last",
        "datastates_ckpt",
        "disable_allgather",
        "disable_python_gc",
        "dump_state",
        "eigenvalue",
        "elasticity",
        "expert_parallel",
        "flops_profiler",
        "fp16",
        "gradient_accumulation_steps",
        "gradient_allreduce_op",
        "gradient_clipping",
        "gradient_predivide_factor",
        "graph_harvesting",
        "hybrid_engine",
        "log_level",
        "managed_gradient_accumulation",
        "memory_breakdown",
        "nebula",
        "optimizer",
        "pipeline",
        "prescale_gradients",
        "progressive_layer_drop",
        "quantize_training",
        "scheduler",
        "seq_parallel_communication_data_type",
        "sparse_attention",
        "sparse_gradients",
        "steps_per_print",
        "tensor_parallel",
        "tensorboard",
        "timers",
        "torch_autocast",
        "train_batch_size",
        "train_micro_batch_size_per_gpu",
        "use_data_before_expert_parallelism",
        "vocabulary_size",
        "wall_clock_breakdown",
        "wandb",
        "weight_quantization",
        "zero_allow_untested_optimizer",
        "zero_force_ds_cpu_optimizer",
        "zero_optimization",
    )
)


# DeepSpeed sections that send what they record, and the credentials the pods hold for it
# (WANDB_API_KEY, COMET_API_KEY), to a service that no operator setting governs: the spec's
# own fields do it where the allow-lists apply (operator allowedTrackerUrls).
DEEPSPEED_SENDING_KEYS = {
    "wandb": "use spec.logging.wandb (its baseUrl is governed by allowedTrackerUrls)",
    "comet": "use spec.logging.mlflow or spec.logging.wandb (governed by allowedTrackerUrls)",
    "nebula": "checkpoints go to spec.output (governed by allowedS3Endpoints)",
}


def deepspeed_config_problems(config: dict[str, Any]) -> list[str]:
    """One message per top-level key DeepSpeed would ignore, with the nearest known key, and
    per key that would send data (and credentials) where the platform's settings do not
    reach."""
    problems = [
        f"{key!r} sends to a service no operator setting governs: {instead}"
        for key, instead in DEEPSPEED_SENDING_KEYS.items()
        if key in config
    ]
    for key in sorted(set(config) - DEEPSPEED_CONFIG_KEYS, key=str):
        near = get_close_matches(str(key), DEEPSPEED_CONFIG_KEYS, n=1)
        hint = f" (did you mean {near[0]!r}?)" if near else ""
        problems.append(f"{key!r} is not a DeepSpeed config key{hint}")
    return problems


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
    not modelled here. "auto" values are filled in from the spec. A top-level key DeepSpeed
    does not read is an error (DeepSpeed itself would ignore it); the trainer runs
    DeepSpeed's own parser over the nested sections before it loads anything."""

    @field_validator("config")
    @classmethod
    def _only_known_keys(cls, config: dict[str, Any] | None) -> dict[str, Any] | None:
        """The API server cannot see inside a free-form object, so this check runs in the
        operator (InvalidSpec status) and in `finetune validate`/`run`."""
        problems = deepspeed_config_problems(config or {})
        if problems:
            raise ValueError("; ".join(problems))
        return config

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
    nccl_timeout_seconds: Annotated[int, Field(ge=60, le=86400)] | None = None
    """Collective timeout, fixed. Unset: it follows runPolicy.stallDetection, the current
    phase's deadline plus a minute (a training step's: stepTimeFactor x the median step, at
    least minimumSeconds, + 60 s), so that the stall watchdog, which dumps every thread's
    stack, stops a rank waiting for a stuck one first, and the timeout ends a collective
    stuck in a step within that step's deadline where the watchdog cannot run; 1800
    (PyTorch's default) when stall detection is off."""

    rules = (
        only_for("fsdp", "strategy", ("fsdp",)),
        only_for("deepspeed", "strategy", ("deepspeed",)),
    )
