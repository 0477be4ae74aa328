"""FineTuneJob spec → keyword arguments for TRL's configs and PEFT's. Pure: no torch.

Kept apart from the recipe so the mapping (the part users argue about) is unit-tested
without training anything.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

from ftapi.v1alpha1 import DpoSpec, FineTuneJobSpec
from ftapi.v1alpha1.method import FULL_WEIGHT_METHODS, LORA_SETTINGS_METHODS

from .distributed import check_deepspeed_config, strategy_kwargs
from .model.adapters import Targets, peft_targets
from .model.attention import MODEL_ATTENTION
from .model.moe import MoeConfig


def resolve_device(spec: FineTuneJobSpec, *, cuda_available: bool, mps_available: bool) -> str:
    """training.device → where the run computes: cuda, mps or cpu. auto takes CUDA when
    there is a GPU and never MPS (several training ops still fall back to the CPU there);
    a device asked for that is not there leaves the CPU (the caller warns)."""
    device = spec.training.device
    if device == "auto":
        return "cuda" if cuda_available else "cpu"
    available = {"cuda": cuda_available, "mps": mps_available, "cpu": True}
    return device if available[device] else "cpu"


def resolve_precision(spec: FineTuneJobSpec, *, cuda: bool, bf16_supported: bool) -> str:
    """auto → bf16 where the GPU supports it, fp16 on older GPUs, fp32 on CPU."""
    precision = spec.training.precision
    if precision != "auto":
        return precision
    if not cuda:
        return "fp32"
    return "bf16" if bf16_supported else "fp16"


def bitsandbytes_kwargs(spec: FineTuneJobSpec, *, precision: str) -> dict[str, Any] | None:
    """BitsAndBytesConfig arguments for the spec's quantization (dtypes by name), or None.

    `precision` is the resolved training precision: the 4-bit compute dtype follows it
    unless set. Under FSDP or ZeRO-3 packed weights are stored in the compute dtype, so
    the quantized base is sharded like any other parameter instead of replicated."""
    quantization = spec.method.effective_quantization()
    if quantization is None:
        return None
    if quantization.bits == 8:
        return {"load_in_8bit": True}
    chosen = quantization.compute_dtype
    compute: str = precision if chosen in (None, "auto") else chosen
    deepspeed = spec.distributed.deepspeed
    sharded = spec.distributed.strategy == "fsdp" or (
        deepspeed is not None and deepspeed.zero_stage == 3
    )
    stored = quantization.quant_storage
    storage: str = stored if stored not in (None, "auto") else compute if sharded else "uint8"
    return {
        "load_in_4bit": True,
        "bnb_4bit_quant_type": quantization.four_bit_type,
        "bnb_4bit_use_double_quant": quantization.uses_double_quant,
        "bnb_4bit_compute_dtype": compute,
        "bnb_4bit_quant_storage": storage,
    }


def resolve_optimizer(spec: FineTuneJobSpec, *, cuda: bool) -> str:
    """auto → adamw_torch_fused on a GPU (one kernel for all parameters instead of a few per
    tensor), adamw_torch on CPU, where the fused kernel gains nothing measurable."""
    optimizer = spec.training.optimizer
    if optimizer != "auto":
        return optimizer
    return "adamw_torch_fused" if cuda else "adamw_torch"


def resolve_attention(
    spec: FineTuneJobSpec, *, cuda: bool, flash_attn: bool, varlen: bool = False
) -> str | None:
    """auto → flash_attention_2 on a GPU where the flash-attn package is installed; else,
    for padding-free batches on a GPU, torch's own varlen FlashAttention kernel
    (attention.MODEL_ATTENTION: 3.6x faster than padded SDPA on an H100, docs/benchmarks.md);
    else None (transformers' own choice: SDPA where the architecture supports it). An
    explicit FlashAttention where it cannot load is invalid input, not an ImportError."""
    attention = spec.model.attention
    if attention.startswith("flash_attention") and not cuda:
        raise ValueError(
            f"spec.model.attention {attention} needs a CUDA GPU (auto picks the "
            "fastest kernel this machine has)"
        )
    if attention == "flash_attention_2" and not flash_attn:
        raise ValueError(
            "spec.model.attention flash_attention_2 needs the flash-attn package, which this "
            "image lacks (auto picks the fastest kernel it has)"
        )
    if attention != "auto":
        return attention
    if cuda and flash_attn:
        return "flash_attention_2"
    if cuda and varlen and resolve_padding_free(spec, cuda=cuda):
        return MODEL_ATTENTION
    return None


def resolve_padding_free(spec: FineTuneJobSpec, *, cuda: bool) -> bool:
    """Unset: on for SFT on a GPU without packing (packing has no padding to remove)."""
    dataset = spec.dataset
    if dataset.padding_free is not None:
        return dataset.padding_free
    return cuda and spec.trainer.type == "sft" and not dataset.packing


def resolve_liger(spec: FineTuneJobSpec, *, cuda: bool, installed: bool) -> bool:
    """Unset: on for GPU runs where liger-kernel is installed (its kernels are Triton)."""
    liger = spec.training.liger_kernels
    return liger if liger is not None else cuda and installed


def resolve_recompute(
    spec: FineTuneJobSpec, *, cuda: bool, planned_layers: int | None = None
) -> bool:
    """Activation recompute (training.gradientCheckpointing). Unset: off on CPU and for
    prefix tuning (which it breaks); on a GPU, on when the memory plan recomputes any layer to
    fit the device (`planned_layers`, see fttrainer.model.memory_plan.recomputed_layers_to_fit),
    and on without a plan. Recomputing activations costs a third more compute per step."""
    if spec.training.gradient_checkpointing is not None:
        return spec.training.gradient_checkpointing
    if not cuda or spec.method.type == "prefix":
        return False
    return planned_layers != 0 if planned_layers is not None else True


def resolve_partial_recompute(
    spec: FineTuneJobSpec, *, cuda: bool, planned_layers: int | None, layers: int
) -> int | None:
    """How many leading decoder layers keep recomputing when the memory plan needs only
    some of the model's `layers` (fttrainer.model.recompute); None: all or none, as
    resolve_recompute says. An explicit training.gradientCheckpointing means every layer.
    SFT only: TRL's DPO and GRPO trainers switch recompute off and on again around their
    reference and generation forwards
    (trl.models.utils.disable_gradient_checkpointing), which recomputes every layer again.
    Not for full-weight FSDP, where FSDP's own wrapper recomputes (fttrainer.distributed)."""
    if not resolve_recompute(spec, cuda=cuda, planned_layers=planned_layers):
        return None
    if spec.training.gradient_checkpointing is not None or planned_layers is None:
        return None
    if spec.trainer.type != "sft" or not 0 < planned_layers < layers:
        return None
    if spec.distributed.strategy == "fsdp" and spec.method.type in FULL_WEIGHT_METHODS:
        return None
    return planned_layers


def trainer_config_kwargs(
    spec: FineTuneJobSpec,
    *,
    output_dir: str,
    cuda: bool,
    bf16_supported: bool,
    mps: bool = False,
    progress_bar: bool = False,
    layer_classes: Sequence[str] = (),
    liger_installed: bool = False,
    planned_recomputed_layers: int | None = None,
) -> dict[str, Any]:
    """Keyword arguments for the TRL config of spec.trainer.type (SFT/DPO/GRPOConfig).

    `layer_classes`: the model's decoder layer classes (`_no_split_modules`), the units
    FSDP shards and recomputes. `mps`: train on Apple's GPU (training.device mps, where
    there is one); every GPU-only default stays off there."""
    kwargs = _common_kwargs(
        spec,
        output_dir=output_dir,
        cuda=cuda,
        bf16_supported=bf16_supported,
        mps=mps,
        layer_classes=layer_classes,
        liger_installed=liger_installed,
        planned_recomputed_layers=planned_recomputed_layers,
    )
    kwargs["disable_tqdm"] = not progress_bar
    trainer = spec.trainer
    if trainer.type == "sft":
        kwargs["packing"] = spec.dataset.packing
        kwargs["assistant_only_loss"] = responses_only(spec)
        if resolve_padding_free(spec, cuda=cuda):
            # Rows arrive tokenized and truncated to maxSeqLength (data/tokens.py); TRL
            # refuses a max_length it would not enforce without packing.
            kwargs["padding_free"] = True
            kwargs["max_length"] = None
    elif trainer.type == "dpo":
        dpo = trainer.dpo or DpoSpec()
        kwargs.update(
            beta=dpo.beta,
            loss_type=list(dpo.loss_type),
            label_smoothing=dpo.label_smoothing,
            precompute_ref_log_probs=dpo.precompute_ref_log_probs,
        )
        if dpo.loss_weights:
            kwargs["loss_weights"] = list(dpo.loss_weights)
    elif trainer.type == "grpo":
        grpo = trainer.grpo
        assert grpo is not None  # the API requires it for type grpo
        kwargs.pop("max_length")  # prompts are truncated by the trainer, not the config
        kwargs.update(
            num_generations=grpo.num_generations,
            max_completion_length=grpo.max_completion_length,
            temperature=grpo.temperature,
            top_p=grpo.top_p,
            top_k=grpo.top_k,
            beta=grpo.beta,
            loss_type=grpo.loss_type,
            scale_rewards=grpo.scale_rewards,
            epsilon=grpo.epsilon,
            num_iterations=grpo.num_iterations,
            mask_truncated_completions=grpo.mask_truncated_completions,
            reward_weights=[reward.weight for reward in grpo.rewards],
        )
    return kwargs


def check_strategy(spec: FineTuneJobSpec, *, cuda: bool, bf16_supported: bool) -> None:
    """The distributed settings as `trainer_config_kwargs` will pass them, checked before the
    data and the model load: FSDP on CPU, or a DeepSpeed config DeepSpeed refuses, would
    otherwise fail only when training starts, minutes later. Raises ValueError."""
    kwargs = strategy_kwargs(
        spec.distributed,
        precision=resolve_precision(spec, cuda=cuda, bf16_supported=bf16_supported),
        recompute=False,
        optimizer=resolve_optimizer(spec, cuda=cuda),
        cuda=cuda,
    )
    if "deepspeed" in kwargs:
        check_deepspeed_config(kwargs["deepspeed"])


def _common_kwargs(
    spec: FineTuneJobSpec,
    *,
    output_dir: str,
    cuda: bool,
    bf16_supported: bool,
    mps: bool = False,
    layer_classes: Sequence[str] = (),
    liger_installed: bool = False,
    planned_recomputed_layers: int | None = None,
) -> dict[str, Any]:
    """The TrainingArguments every TRL config shares."""
    training = spec.training
    precision = resolve_precision(spec, cuda=cuda, bf16_supported=bf16_supported)
    recompute = resolve_recompute(spec, cuda=cuda, planned_layers=planned_recomputed_layers)
    optimizer = resolve_optimizer(spec, cuda=cuda)
    evaluation = spec.evaluation
    kwargs: dict[str, Any] = {
        "output_dir": output_dir,
        "num_train_epochs": training.epochs,
        "max_steps": training.max_steps or -1,
        "per_device_train_batch_size": training.batch_size,
        "per_device_eval_batch_size": evaluation.batch_size or training.batch_size,
        "gradient_accumulation_steps": training.gradient_accumulation_steps,
        "learning_rate": spec.effective_learning_rate(),
        "lr_scheduler_type": training.scheduler,
        "weight_decay": training.weight_decay,
        "max_grad_norm": training.max_grad_norm,
        "optim": optimizer,
        "seed": training.seed,
        "data_seed": training.seed,
        "bf16": precision == "bf16",
        "fp16": precision == "fp16",
        "use_cpu": not (cuda or mps),
        "activation_checkpointing": recompute,
        "logging_steps": spec.logging.steps,
        "logging_first_step": spec.logging.first_step,
        # A NaN loss is logged as NaN, never as the running mean (supervision/divergence.py
        # acts on it; a skipped batch is left out of the logged mean there), and a NaN
        # validation loss is not averaged away.
        "logging_nan_inf_filter": False,
        "report_to": list(spec.logging.report_to),
        "eval_strategy": evaluation.strategy,
        # The Trainer writes checkpoint-<step>/ locally (weights, optimizer, scheduler, RNG,
        # trainer state); callbacks.CheckpointUpload then publishes it with a manifest. One
        # local copy is enough: the output location keeps saveTotalLimit of them.
        "save_strategy": "steps",
        "save_steps": spec.output.save_steps,
        "save_total_limit": 1,
        "max_length": spec.dataset.max_seq_length,
        "use_liger_kernel": resolve_liger(spec, cuda=cuda, installed=liger_installed),
        "torch_compile": training.torch_compile,
        # One process per GPU under torchrun (DDP): the collective timeout.
        "ddp_timeout": collective_timeout(spec),
        # No buffer broadcast before every forward (DDP's default without recompute):
        # the buffers of the models trained here (rotary frequencies, masks) are the same
        # on every rank by construction, and the broadcast is a collective inside each
        # forward, which costs a round trip per step and puts the wait for a slow rank
        # inside the fast ranks' forward time, where supervision/ranks.py looks for stragglers.
        "ddp_broadcast_buffers": False,
    }
    if spec.method.type not in ("prefix", "prompt"):
        # Every trainable parameter takes part in each step: skip DDP's unused-parameter scan.
        kwargs["ddp_find_unused_parameters"] = False
    if evaluation.strategy == "steps":
        kwargs["eval_steps"] = evaluation.steps
    warmup = training.warmup_steps if training.warmup_steps is not None else training.warmup_ratio
    if warmup:
        # transformers 5 has one knob: an int counts steps, a float < 1 is a ratio.
        kwargs["warmup_steps"] = warmup
    # FSDP/DeepSpeed: their config, and the flags they take over (recompute, use_cpu).
    kwargs.update(
        strategy_kwargs(
            spec.distributed,
            precision=precision,
            recompute=recompute,
            optimizer=optimizer,
            cuda=cuda,
            layer_classes=layer_classes,
            adapter=spec.method.type not in FULL_WEIGHT_METHODS,
        )
    )
    return kwargs


def responses_only(spec: FineTuneJobSpec) -> bool:
    """SFT loss on assistant tokens only: explicit, else on for every format with replies."""
    dataset = spec.dataset
    if dataset.train_on_responses_only is not None:
        return dataset.train_on_responses_only
    return dataset.format != "plain_text"


def peft_config_kwargs(
    spec: FineTuneJobSpec, targets: Targets | None = None
) -> tuple[str, dict[str, Any]] | None:
    """(PEFT config class name, its kwargs), or None when no adapter is trained. `targets`:
    what the LoRA adapts, resolved against the loaded model (fttrainer.model.adapters);
    without them, the spec's names as they are."""
    method = spec.method
    if method.type in ("lora", "qlora", "dora"):
        lora = method.effective_lora()
        named: dict[str, Any] = {
            "target_modules": "all-linear"
            if lora.target_modules == ["all-linear"]
            else list(lora.target_modules)
        }
        if targets is not None:
            named = peft_targets(targets, r=lora.r, alpha=lora.alpha)
        kwargs: dict[str, Any] = {
            "r": lora.r,
            "lora_alpha": lora.alpha,
            "lora_dropout": lora.dropout,
            **named,
            "bias": lora.bias,
            "use_rslora": lora.rslora,
            "use_dora": method.type == "dora",
            "task_type": "CAUSAL_LM",
        }
        saved = [*lora.modules_to_save, *kwargs.get("modules_to_save", [])]
        if saved:
            kwargs["modules_to_save"] = list(dict.fromkeys(saved))
        return "LoraConfig", kwargs
    if method.type == "prefix":
        prefix = method.effective_prefix()
        return "PrefixTuningConfig", {
            "num_virtual_tokens": prefix.num_virtual_tokens,
            "prefix_projection": prefix.projection,
            "task_type": "CAUSAL_LM",
        }
    if method.type == "prompt":
        prompt = method.effective_prompt()
        kwargs = {
            "num_virtual_tokens": prompt.num_virtual_tokens,
            "prompt_tuning_init": prompt.init.upper(),
            "task_type": "CAUSAL_LM",
        }
        if prompt.init == "text":
            kwargs["prompt_tuning_init_text"] = prompt.init_text
        return "PromptTuningConfig", kwargs
    return None


def router_loss_kwargs(spec: FineTuneJobSpec, moe: MoeConfig | None) -> dict[str, Any]:
    """TRL's router_aux_loss_coef (SFT and DPO). A frozen router's load-balancing loss
    would only push the adapters to reroute tokens, so it is off (0) for every method but
    full fine-tuning (TRL's default there: the model's own coefficient, off where the
    model computes no such loss, as Llama 4's config carries one it never uses) and a LoRA
    with lora.trainRouter (the spec's coefficient, else the model's)."""
    method = spec.method
    if moe is None or spec.trainer.type == "grpo":
        return {}
    if method.type == "full":
        return {} if moe.aux_loss_coef is not None else {"router_aux_loss_coef": 0.0}
    lora = method.effective_lora()
    if method.type in LORA_SETTINGS_METHODS and lora.train_router:
        coef = lora.router_aux_loss_coef
        return {"router_aux_loss_coef": moe.aux_loss_coef if coef is None else coef}
    return {"router_aux_loss_coef": 0.0}


# PyTorch's default collective timeout, kept when stall detection is off.
TORCH_COLLECTIVE_TIMEOUT = 1800


def collective_timeout(spec: FineTuneJobSpec) -> int:
    """distributed.ncclTimeoutSeconds, else, when the process group is created, above every
    stall deadline: a rank waiting in a collective for a rank that is still within its
    phase's deadline (rank 0 tokenizing or uploading alone) must not be aborted; a rank
    waiting for a stuck one is stopped by its own watchdog first, with its stacks, which a
    collective timeout does not give. From the start of training it follows the phase
    (watchdog.CollectiveTimeout)."""
    if spec.distributed.nccl_timeout_seconds is not None:
        return spec.distributed.nccl_timeout_seconds
    stall = spec.run_policy.stall_detection
    return stall.longest_seconds() + 60 if stall.enabled else TORCH_COLLECTIVE_TIMEOUT
