"""GPU memory per device for a spec, and what to change when it does not fit.

The estimate is a sum of parts, each shown so users can see what dominates:
weights + trainable-parameter gradients + optimizer states (+ fp32 master copies) +
activations + logits + a fixed CUDA/framework overhead, with ZeRO/FSDP dividing the shardable
parts by the number of processes. Activations follow Korthikanti et al. (2022) for a
transformer layer with flash/SDPA attention (no s^2 term): ~34·s·b·h bytes per layer in
16-bit without recompute, ~2·s·b·h per recomputed layer plus one layer's worth for the
recompute. A GPU run recomputes only as many layers as it needs to fit
(`recomputed_layers_to_fit`).

A mixture of experts holds every expert's weights, and its LoRA has r per expert in each
fused expert matrix. An MoE layer keeps a dense layer's activations plus, per token and
expert it is routed to, what transformers' grouped experts save (`moe.routed_token_bytes`),
and, when LoRA adapts the experts, the merged expert weights PEFT builds for the forward.

A vision-language model's weights count whole; its language model is the decoder above
(image tokens are within maxSeqLength: the token check counts them). Its vision tower's and
projector's parameters train only as spec.vision says; a trained tower's activations are
not estimated (a note says so).

It is an estimate (within ~20% on the architectures we tried), meant for planning, not a
guarantee: allocator fragmentation and framework buffers vary.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field
from typing import Any

from ftapi.v1alpha1 import DeepSpeedSpec, FineTuneJobSpec
from ftapi.v1alpha1.method import FULL_WEIGHT_METHODS, LORA_METHODS

from .adapters import PEFT_REWRITTEN, names_expert, parameter_lora_size
from .meta import meta_model
from .moe import expert_parameters, moe_config, routed_token_bytes, routers
from .vision import TEXT_ONLY, is_vision_language, under, vision_parts

GIB = 1024**3
OVERHEAD_BYTES = 1.5 * GIB  # CUDA context, cuBLAS workspaces, NCCL buffers
LORA_DROPOUT_BYTES = 4  # per adapted input feature and token: bf16 copy + mask, rounded up
RECOMPUTE_MARGIN = 0.85
"""Share of the device's memory a GPU run's estimate may fill when it leaves layers out of
recompute: the estimate is ±20%, and an out-of-memory error hours in costs more than the
recompute."""


@dataclass(frozen=True)
class ModelShape:
    """What the estimate needs to know about a model, read from its config."""

    parameters: int
    layers: int
    hidden: int
    vocab: int
    linears: tuple[tuple[str, int, int], ...]  # (name, in, out) of every Linear in the blocks
    experts: tuple[tuple[str, int, int, int], ...] = ()
    """(name, experts, dim 1, dim 2) of every fused expert matrix of an MoE model."""
    per_token: int = 0
    """Experts each token is routed to (0: a dense model)."""
    routed_bytes: tuple[int, int] = (0, 0)
    """Bytes an MoE layer keeps for backward per token and expert it is routed to, with
    the experts frozen and with them trained (`moe.routed_token_bytes`)."""
    tower_linears: tuple[tuple[str, int, int], ...] = ()
    """A vision-language model's vision tower's Linears (not in `linears`)."""
    tower_parameters: int = 0
    projector_parameters: int = 0

    @property
    def moe_layers(self) -> int:
        """Layers with fused experts (DeepSeek's first layers are dense)."""
        return len({name.rpartition(".")[0] for name, *_ in self.experts})

    @property
    def expert_weights(self) -> int:
        """Parameters in the fused expert matrices."""
        return sum(e * a * b for _, e, a, b in self.experts)

    @classmethod
    def from_pretrained(cls, name: str, *, trust_remote_code: bool = False) -> ModelShape:
        """Instantiate on the meta device: exact shapes, no memory, no weights read."""
        return cls.of(meta_model(name, trust_remote_code=trust_remote_code))

    @classmethod
    def of(cls, model: Any) -> ModelShape:
        """The shape of `model` (meta-device or loaded)."""
        import torch

        config = model.config
        moe = moe_config(config, model)
        parts = vision_parts(config) if is_vision_language(config) else TEXT_ONLY
        skipped = tuple(f"{r}." for r in routers(model, moe)) if moe else ()
        every = [
            (n, m.in_features, m.out_features)
            for n, m in model.named_modules()
            if isinstance(m, torch.nn.Linear)
            and "lm_head" not in n
            and not f"{n}.".startswith(skipped)
        ]
        linears = tuple(x for x in every if not parts.unadapted(x[0]))
        shapes = dict(model.named_parameters())
        experts = (
            tuple((n, *(int(d) for d in shapes[n].shape)) for n in expert_parameters(model, moe))
            if moe
            else ()
        )
        text = config.get_text_config()  # a vision-language model's language model
        hidden = int(getattr(text, "hidden_size", 0) or getattr(text, "n_embd", 0))
        layers = int(getattr(text, "num_hidden_layers", 0) or getattr(text, "n_layer", 0))
        return cls(
            parameters=sum(p.numel() for p in model.parameters()),
            layers=layers,
            hidden=hidden,
            vocab=int(text.vocab_size),
            linears=linears,
            experts=experts,  # type: ignore[arg-type]
            per_token=(moe.per_token or moe.experts) if moe else 0,
            routed_bytes=routed_token_bytes(model, moe) if moe else (0, 0),
            tower_linears=tuple(x for x in every if parts.in_tower(x[0])),
            tower_parameters=sum(int(p.numel()) for n, p in shapes.items() if parts.in_tower(n)),
            projector_parameters=sum(
                int(p.numel()) for n, p in shapes.items() if under(n, parts.projector)
            ),
        )

    @property
    def active_parameters(self) -> int:
        """Parameters a token passes through: all but the experts it is not routed to."""
        if not self.experts:
            return self.parameters
        expert = self.expert_weights
        count = self.experts[0][1]
        return self.parameters - expert + expert * min(self.per_token, count) // count


@dataclass
class MemoryEstimate:
    parts: dict[str, float]  # bytes per device, by part
    processes: int
    trainable: int
    notes: list[str] = field(default_factory=list)

    @property
    def total(self) -> float:
        return sum(self.parts.values())

    def render(self) -> str:
        lines = [f"GPU memory per device (estimate, {self.processes} process(es)):"]
        for name, size in self.parts.items():
            lines.append(f"  {name:<28} {size / GIB:8.2f} GiB")
        lines.append(f"  {'total':<28} {self.total / GIB:8.2f} GiB")
        lines.append(f"  trainable parameters: {self.trainable:,}")
        lines += [f"  note: {note}" for note in self.notes]
        return "\n".join(lines)


def estimate_memory(
    shape: ModelShape, spec: FineTuneJobSpec, *, recomputed_layers: int | None = None
) -> MemoryEstimate:
    """`recomputed_layers`: how many decoder layers recompute their activations; None
    reads training.gradientCheckpointing (unset counts as on, except for prefix tuning)."""
    method = spec.method
    training = spec.training
    processes = spec.processes()
    quantization = method.effective_quantization()
    weight_bytes = 2.0 if spec.model.dtype in ("auto", "bfloat16", "float16") else 4.0
    if quantization is not None:
        weight_bytes = 0.55 if quantization.bits == 4 else 1.05  # + quantization constants
    full_weights = method.type in FULL_WEIGHT_METHODS
    zero = _zero_stage(spec)
    if full_weights and spec.model.dtype == "auto" and zero == 0:
        weight_bytes = 4.0  # the recipe keeps fp32 weights when nothing holds master copies
    trainable = _trainable_parameters(shape, spec)
    optimizer_bytes = 2.0 if "8bit" in training.optimizer else 8.0  # Adam: two states
    if training.optimizer == "sgd":
        optimizer_bytes = 4.0
    shard = {stage: (processes if zero >= stage else 1) for stage in (1, 2, 3)}
    # bitsandbytes quantizes linear layers only: fused experts stay in the compute dtype.
    unquantized = shape.expert_weights * 2.0 if quantization is not None else 0.0
    quantized = shape.parameters - (shape.expert_weights if quantization is not None else 0)
    parts = {
        "weights": (quantized * weight_bytes + unquantized) / shard[3],
        "gradients": trainable * (4.0 if full_weights else 2.0) / shard[2],
        "optimizer states": trainable * optimizer_bytes / shard[1],
    }
    if full_weights and weight_bytes == 2.0 and zero > 0:
        parts["fp32 master weights"] = trainable * 4.0 / shard[1]
    tokens = training.batch_size * spec.dataset.max_seq_length
    if recomputed_layers is None:
        recompute = (
            training.gradient_checkpointing
            if training.gradient_checkpointing is not None
            else method.type != "prefix"
        )
        recomputed_layers = shape.layers if recompute else 0
    recomputed = min(max(recomputed_layers, 0), shape.layers)
    kept = shape.layers - recomputed  # layers that keep their activations for backward
    per_layer = 34 * tokens * shape.hidden
    dropout_per_layer = 0
    if method.type in LORA_METHODS and method.effective_lora().dropout > 0:
        # PEFT keeps a dropped-out bf16 copy of each adapted layer's input and its mask
        # for backward: 4 bytes per input feature (measured, tests/trainer/test_memory_plan.py).
        adapted_inputs = sum(i for _, i, _ in _adapted_linears(shape, spec))
        dropout_per_layer = LORA_DROPOUT_BYTES * tokens * adapted_inputs
        dropout_per_layer //= shape.layers
        per_layer += dropout_per_layer
    per_layer += _merged_linear_bytes(shape, spec) // shape.layers
    # A recomputed layer keeps its input. The layers left out of recompute are the last
    # ones (fttrainer.model.recompute): backward frees their activations before it
    # recomputes any layer, so the peak holds one layer's worth either way.
    held = max(kept, 1) if recomputed else shape.layers
    parts["activations"] = (
        recomputed * 2 * tokens * shape.hidden
        + per_layer * held
        + _moe_layer_bytes(shape, spec, tokens) * min(held, shape.moe_layers)
    )
    parts["logits"] = tokens * shape.vocab * 4.0 * 2  # fp32 logits and their gradient
    parts["CUDA and framework"] = OVERHEAD_BYTES
    notes = []
    if recomputed < shape.layers and recomputed:
        notes.append(f"activation recompute on {recomputed} of {shape.layers} layers")
    elif recomputed and training.gradient_checkpointing is None:
        notes.append(
            "activation recompute on; unset, a GPU run recomputes only as many layers "
            f"as it needs to fit {RECOMPUTE_MARGIN:.0%} of the device (none when it fits)"
        )
    elif recomputed:
        notes.append("activation recompute on")
    if shape.experts:
        notes.append(
            f"mixture of experts: {shape.experts[0][1]} experts, {shape.per_token} per token; "
            f"~{shape.active_parameters:,} of {shape.parameters:,} parameters active per "
            f"token, every expert's weights held; an MoE layer keeps "
            f"{shape.routed_bytes[_experts_train(shape, spec)]:,} bytes per token and routed expert"
            + (
                ", and a merged copy of its LoRA-adapted experts while its activations are held"
                if _adapted_experts(shape, spec)
                else ""
            )
        )
    if shape.tower_parameters:
        trained = [
            name
            for name, on in (
                ("tower", spec.vision.train_vision_tower),
                ("projector", spec.vision.train_projector),
            )
            if on
        ]
        notes.append(
            f"vision-language: vision tower {shape.tower_parameters:,} and projector "
            f"{shape.projector_parameters:,} parameters ({' and '.join(trained) or 'both'} "
            f"{'trained' if trained else 'frozen'}); images' tokens are within maxSeqLength"
            + ("; the tower's activations are not estimated" if "tower" in trained else "")
        )
    if dropout_per_layer and kept:
        saved = dropout_per_layer * kept / GIB
        notes.append(f"LoRA dropout keeps {saved:.1f} GiB of activations; dropout 0 would not")
    return MemoryEstimate(parts, processes, trainable, notes)


def suggest(shape: ModelShape, spec: FineTuneJobSpec, budget_bytes: float) -> list[str]:
    """Changes, cheapest first and cumulative, until the estimate fits the budget."""
    suggestions: list[str] = []
    current = spec

    def fits() -> bool:
        return estimate_memory(shape, current).total <= budget_bytes

    if not fits() and current.training.gradient_checkpointing is False:
        current = with_changes(current, "training", gradient_checkpointing=True)
        suggestions.append("training.gradientCheckpointing=true")
    if not fits() and current.resources.gpus_per_node > 0 and current.processes() > 1:
        current = with_changes(
            current, "distributed", strategy="deepspeed", deepspeed=DeepSpeedSpec(zero_stage=3)
        )
        suggestions.append("distributed.strategy=deepspeed distributed.deepspeed.zeroStage=3")
    while not fits() and current.training.batch_size > 1:
        batch = current.training.batch_size // 2
        accumulation = current.training.gradient_accumulation_steps * 2
        current = with_changes(
            current, "training", batch_size=batch, gradient_accumulation_steps=accumulation
        )
        suggestions.append(
            f"training.batchSize={batch} training.gradientAccumulationSteps={accumulation} "
            "(same global batch)"
        )
    if not fits() and "8bit" not in current.training.optimizer:
        current = with_changes(current, "training", optimizer="paged_adamw_8bit")
        suggestions.append("training.optimizer=paged_adamw_8bit")
    if not fits() and current.method.type in ("lora", "dora"):
        current = with_changes(current, "method", type="qlora", quantization=None)
        suggestions.append("method.type=qlora (4-bit base)")
    if not fits():
        needed = math.ceil(estimate_memory(shape, current).total / GIB)
        suggestions.append(f"still about {needed} GiB per device: use larger GPUs or more of them")
    return suggestions


def _trainable_parameters(shape: ModelShape, spec: FineTuneJobSpec) -> int:
    method = spec.method
    vision = spec.vision
    projector = shape.projector_parameters if vision.train_projector else 0
    if method.type == "full":
        frozen = 0 if vision.train_vision_tower else shape.tower_parameters
        return shape.parameters - frozen - (shape.projector_parameters - projector)
    if method.type == "spectrum":
        fraction = (method.spectrum.effective_top_fraction() if method.spectrum else 0.25) or 0.25
        matrices = sum(i * o for _, i, o in shape.linears)
        matrices += sum(e * a * b for _, e, a, b in shape.experts)
        return int(matrices * fraction)
    if method.type in ("prefix", "prompt"):
        tokens = (
            method.effective_prefix().num_virtual_tokens
            if method.type == "prefix"
            else method.effective_prompt().num_virtual_tokens
        )
        per_token = 2 * shape.layers * shape.hidden if method.type == "prefix" else shape.hidden
        return tokens * per_token
    lora = method.effective_lora()
    return (
        sum(lora.r * (i + o) for _, i, o in _adapted_linears(shape, spec))
        + sum(
            parameter_lora_size((e, a, b), lora.r, name)
            for name, e, a, b in _adapted_experts(shape, spec)
        )
        + projector  # trained whole beside the adapter
    )


def _adapted_experts(shape: ModelShape, spec: FineTuneJobSpec) -> list[tuple[str, int, int, int]]:
    """The fused expert matrices the LoRA-family adapter of the spec adapts."""
    if spec.method.type not in LORA_METHODS:
        return []
    names = list(spec.method.effective_lora().target_modules)
    return [
        (name, e, a, b)
        for name, e, a, b in shape.experts
        if names == ["all-linear"] or names_expert(name, names, set())
    ]


def _experts_train(shape: ModelShape, spec: FineTuneJobSpec) -> bool:
    return spec.method.type in FULL_WEIGHT_METHODS or bool(_adapted_experts(shape, spec))


def _moe_layer_bytes(shape: ModelShape, spec: FineTuneJobSpec, tokens: int) -> float:
    """What an MoE layer keeps beyond a dense layer's activations: the routed experts'
    tensors (fewer when the experts are frozen), and with LoRA on the experts the merged
    weights (W + BA, 16-bit) PEFT's parameter wrapper builds for the forward, with the
    16-bit copies of their adapters, which the grouped matmul saves for backward."""
    if not shape.moe_layers:
        return 0.0
    routed = tokens * shape.per_token * shape.routed_bytes[_experts_train(shape, spec)]
    adapted = _adapted_experts(shape, spec)
    if not adapted:
        return float(routed)
    r = spec.method.effective_lora().r
    merged = sum(e * a * b + parameter_lora_size((e, a, b), r, n) for n, e, a, b in adapted)
    return routed + 2.0 * merged / shape.moe_layers


def _adapted_linears(shape: ModelShape, spec: FineTuneJobSpec) -> list[tuple[str, int, int]]:
    """(name, in, out) of every linear layer the LoRA-family adapter of the spec adapts."""
    names = spec.method.effective_lora().target_modules
    tower = shape.tower_linears if spec.vision.train_vision_tower else ()
    return [
        (name, i, o)
        for name, i, o in (*shape.linears, *tower)
        if names == ["all-linear"] or any(name == t or name.endswith(f".{t}") for t in names)
    ]


def _merged_linear_bytes(shape: ModelShape, spec: FineTuneJobSpec) -> int:
    """The merged 16-bit weights and adapter copies of the linear layers an MoE model's
    adapter adapts through their weight (fttrainer.model.adapters, PEFT_REWRITTEN: shared
    experts, dense MLPs), which autograd keeps like the experts'."""
    if not shape.experts or spec.method.type not in LORA_METHODS:
        return 0
    r = spec.method.effective_lora().r
    return sum(
        2 * (i * o + r * (i + o))
        for name, i, o in _adapted_linears(shape, spec)
        if name.rsplit(".", 1)[-1] in PEFT_REWRITTEN
    )


def _zero_stage(spec: FineTuneJobSpec) -> int:
    distributed = spec.distributed
    if distributed.strategy == "deepspeed":
        return distributed.deepspeed.zero_stage if distributed.deepspeed else 2
    if distributed.strategy == "fsdp":
        return 3
    return 0


def with_changes(spec: FineTuneJobSpec, section: str, **changes: Any) -> FineTuneJobSpec:
    """A copy of the spec with some fields of one section changed (for what-if estimates)."""
    return spec.model_copy(update={section: getattr(spec, section).model_copy(update=changes)})


def recomputed_layers_to_fit(
    shape: ModelShape, spec: FineTuneJobSpec, budget: float
) -> tuple[int, float]:
    """The fewest decoder layers to recompute for the run to fit RECOMPUTE_MARGIN of
    `budget` bytes per device (the worst case: every batch maxSeqLength long), and the
    estimate it rests on; all of them when nothing fits. Each layer left out of recompute
    spares recomputing its forward, a third of its step for LoRA (fttrainer.model.recompute)."""
    needed = 0.0
    for layers in range(shape.layers + 1):
        needed = estimate_memory(shape, spec, recomputed_layers=layers).total
        if needed <= RECOMPUTE_MARGIN * budget:
            return layers, needed
    return shape.layers, needed
