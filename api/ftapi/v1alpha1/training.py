"""spec.training: the optimisation loop's hyperparameters."""

from __future__ import annotations

from typing import Annotated, Literal

from pydantic import Field

from ._base import ApiModel, Rule, is_set

Scheduler = Literal[
    "linear",
    "cosine",
    "cosine_with_restarts",
    "polynomial",
    "constant",
    "constant_with_warmup",
    "inverse_sqrt",
]
# auto (resolved by the trainer), or one of transformers' OptimizerNames; the 8-bit and paged
# ones come from bitsandbytes.
Optimizer = Literal[
    "auto",
    "adamw_torch",
    "adamw_torch_fused",
    "adamw_8bit",
    "paged_adamw_8bit",
    "paged_adamw_32bit",
    "adafactor",
    "sgd",
    "lion_8bit",
    "paged_lion_8bit",
    "rmsprop",
]
Precision = Literal["auto", "bf16", "fp16", "fp32"]
NonFiniteAction = Literal["stop", "skip", "rollback"]
Device = Literal["auto", "cpu", "cuda", "mps"]


class EarlyStopping(ApiModel):
    """Stop when the evaluation metric stops improving (needs evaluation)."""

    patience: Annotated[int, Field(ge=1, le=1000)] = 3
    """Evaluations without improvement before stopping."""
    threshold: Annotated[float, Field(ge=0.0)] = 0.0
    """Minimum improvement that counts."""
    metric: Literal["eval_loss", "eval_accuracy"] = "eval_loss"
    """Metric watched (loss: lower is better; accuracy: higher is better)."""


class TrainingSpec(ApiModel):
    """Hyperparameters. Batch sizes are per device: the global batch is
    batchSize x gradientAccumulationSteps x nodes x gpusPerNode."""

    epochs: Annotated[float, Field(gt=0.0, le=1000.0)] = 1.0
    """Passes over the training data (fractions allowed)."""
    max_steps: Annotated[int, Field(ge=1)] | None = None
    """Stop after this many optimizer steps; overrides epochs."""
    batch_size: Annotated[int, Field(ge=1, le=65536)] = 4
    """Samples per device per forward pass (micro batch)."""
    gradient_accumulation_steps: Annotated[int, Field(ge=1, le=65536)] = 1
    """Micro batches accumulated per optimizer step."""
    learning_rate: Annotated[float, Field(gt=0.0, le=1.0)] | None = None
    """Peak learning rate. Unset: chosen by method and objective: sft 2e-4 with LoRA-family
    methods, 2e-5 for full/spectrum, 1e-2 prefix, 3e-2 prompt tuning; dpo 5e-6 (LoRA) or
    5e-7 (full); grpo 1e-5 (LoRA) or 1e-6 (full). The value used is logged and recorded."""
    scheduler: Scheduler = "linear"
    """Learning-rate schedule after warmup."""
    warmup_ratio: Annotated[float, Field(ge=0.0, lt=1.0)] | None = None
    """Fraction of total steps spent warming up (or use warmupSteps)."""
    warmup_steps: Annotated[int, Field(ge=0)] | None = None
    """Steps spent warming up (or use warmupRatio)."""
    weight_decay: Annotated[float, Field(ge=0.0)] = 0.0
    """AdamW weight decay."""
    max_grad_norm: Annotated[float, Field(ge=0.0)] = 1.0
    """Gradient clipping norm (0 disables clipping)."""
    optimizer: Optimizer = "auto"
    """Optimizer. auto: adamw_torch_fused on GPUs (one kernel updates every parameter; the
    Trainer's and TRL's default too), adamw_torch on CPU. The 8-bit/paged ones save memory."""
    seed: Annotated[int, Field(ge=0, le=2**32 - 1)] = 42  # numpy's range
    """Seed for initialisation, dropout and data order."""
    gradient_checkpointing: bool | None = None
    """Recompute activations in backward to save memory (a third more compute per step).
    Unset: on GPUs the memory plan checkpoints only as many decoder layers as the run needs
    to fit the device (none when it fits; SFT only, other trainers all or none); off on CPU
    and for prefix tuning, which it breaks. true: every layer."""
    precision: Precision = "auto"
    """Mixed precision: auto picks bf16 where supported, else fp16 on GPUs, fp32 on CPU."""
    device: Device = "auto"
    """Where local runs compute. auto: CUDA when there is a GPU, else the CPU; mps (Apple's
    GPU) only when asked for. A device that is not there falls back to the CPU with a
    warning. In a cluster the operator's pod has the GPUs it asked for."""
    liger_kernels: bool | None = None
    """Liger's fused Triton kernels (RMSNorm, RoPE, SwiGLU, fused linear cross-entropy, which
    never materialises the logits). Unset: on for GPU runs where liger-kernel is installed
    (the trainer image has it)."""
    torch_compile: bool = False
    """Compile the model with torch.compile (inductor). Opt-in: steps get faster after a
    warm-up that takes minutes on large models, and padding-free batches, whose lengths
    change every step, may recompile; the benchmark (bench/trainer.py) times steps after
    its warm-up only."""
    early_stopping: EarlyStopping | None = None
    """Stop early on a plateauing evaluation metric."""
    on_non_finite: NonFiniteAction = "stop"
    """What a NaN or infinite training loss or gradient norm does. Every rank sees it at the
    step it happens, before the optimizer applies it, and it is logged and reported as NaN
    or inf, never averaged away. stop: the job fails with reason Diverged, naming the step
    and the last finite loss. skip: that step's batch updates nothing and is counted; its
    log has no loss (skipped_steps counts it), never a neighbour's; more than
    nonFiniteLimit skipped in a row fail the job as Diverged (not with DeepSpeed, which
    steps its optimizer inside backward). rollback: the run restarts from its newest
    checkpoint (checkpoints are only written from finite weights) with the learning rate
    times rollbackLearningRateFactor, at most nonFiniteLimit times, then fails as Diverged."""
    non_finite_limit: Annotated[int, Field(ge=1, le=1000)] = 3
    """skip: batches skipped in a row before the job fails; rollback: rollbacks allowed."""
    rollback_learning_rate_factor: Annotated[float, Field(gt=0.0, le=1.0)] = 1.0
    """rollback: the learning rate is multiplied by this at each rollback (0.5 halves it);
    1 keeps it."""

    loss_spike_factor: Annotated[float, Field(ge=0.0, le=1000.0)] = 3.0
    """A training step whose loss is above this many times the moving average of the steps
    before it, and at least 1 above it, is a loss spike: a Warning Event (reason LossSpike)
    and a line in the log; training goes on. Often the first sign of a learning rate set too
    high. 0 turns it off; ignored for GRPO, whose loss is not a measure of fit."""

    rules = (
        Rule(
            cel="self.lossSpikeFactor == 0.0 || self.lossSpikeFactor >= 1.5",
            message="lossSpikeFactor is 0 (off) or at least 1.5",
            check=lambda t: t.loss_spike_factor == 0.0 or t.loss_spike_factor >= 1.5,
            field=".lossSpikeFactor",
        ),
        Rule(
            cel="!(has(self.warmupRatio) && has(self.warmupSteps))",
            message="set warmupRatio or warmupSteps, not both",
            check=lambda t: not (is_set(t.warmup_ratio) and is_set(t.warmup_steps)),
            field=".warmupSteps",
        ),
        Rule(
            cel="self.onNonFinite == 'rollback' || self.rollbackLearningRateFactor == 1.0",
            message="rollbackLearningRateFactor applies to onNonFinite rollback only",
            check=lambda t: t.on_non_finite == "rollback" or t.rollback_learning_rate_factor == 1.0,
            field=".rollbackLearningRateFactor",
        ),
    )
