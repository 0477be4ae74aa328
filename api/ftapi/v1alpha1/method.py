"""spec.method: which weights are trained (full, LoRA family, Spectrum, prefix/prompt)."""

from __future__ import annotations

from typing import Annotated, Literal

from pydantic import Field, field_validator
from pydantic.alias_generators import to_snake

from ._base import ApiModel, Rule, cel_list, compiled, is_set, only_for
from .common import ShortText, Uri
from .registry import oci_reference_rule

MethodType = Literal["full", "lora", "qlora", "dora", "adapter", "spectrum", "prefix", "prompt"]
# Methods that train LoRA matrices (adapter = continue training existing LoRA weights).
LORA_METHODS = ("lora", "qlora", "dora", "adapter")
# Methods whose LoRA shape comes from `method.lora` (an adapter brings its own config).
LORA_SETTINGS_METHODS = ("lora", "qlora", "dora")
# Methods that update base weights themselves (no adapter).
FULL_WEIGHT_METHODS = ("full", "spectrum")
# Methods whose base weights stay frozen, so the base may be loaded quantized.
FROZEN_BASE_METHODS = (*LORA_METHODS, "prefix", "prompt")
ModuleName = Annotated[str, Field(min_length=1, max_length=256)]


class LoftQ(ApiModel):
    """LoftQ initialisation: LoRA matrices start from the quantization error of the base.

    Needs a CUDA GPU. The base is then trained dequantized (full precision): LoftQ improves
    the starting point, it does not save memory like qlora does."""

    bits: Literal[4, 8] = 4
    """Bits LoftQ quantizes the base weights to while initialising."""
    iterations: Annotated[int, Field(ge=1, le=16)] = 1
    """Alternating optimisation steps."""


class LoraSpec(ApiModel):
    """LoRA hyperparameters (also used by qlora, dora and adapter)."""

    r: Annotated[int, Field(ge=1, le=4096)] = 16
    """Rank of the update matrices."""
    alpha: Annotated[int, Field(ge=1, le=65536)] = 32
    """Scaling numerator: the update is scaled by alpha/r (alpha/sqrt(r) with rslora)."""
    dropout: Annotated[float, Field(ge=0.0, lt=1.0)] = 0.0
    """Dropout on the LoRA input. Off by default (as in PEFT, torchtune and LLaMA-Factory):
    above 0, every adapted layer keeps a dropped-out copy of its input and the mask for
    backward, about half as much activation memory again without checkpointing."""
    target_modules: Annotated[list[ModuleName], Field(min_length=1, max_length=64)] = ["all-linear"]
    """Module names to adapt, matched exactly or as a dotted-name suffix (q_proj matches
    model.layers.0.self_attn.q_proj). `all-linear` on its own (the CLI's `auto`) adapts
    every linear layer of the architecture except the output head."""
    modules_to_save: Annotated[list[ModuleName], Field(max_length=64)] = []
    """Modules trained in full and saved with the adapter (e.g. lm_head, embed_tokens when
    new tokens were added)."""
    bias: Literal["none", "all", "lora_only"] = "none"
    """Which biases to train."""
    rslora: bool = False
    """Rank-stabilised LoRA: scale by alpha/sqrt(r), which keeps large ranks stable."""
    loftq: LoftQ | None = None
    """Initialise with LoftQ (use instead of, not with, a 4-bit quantized base)."""
    train_router: bool = False
    """Mixture-of-experts models: also adapt the routers (off: the routers stay frozen, as
    the MoE recipes of Unsloth and NeMo AutoModel keep them). When on, the router's
    load-balancing loss is added to the training loss, weighted by routerAuxLossCoef."""
    router_aux_loss_coef: Annotated[float, Field(ge=0.0, le=1.0)] | None = None
    """With trainRouter: the weight of the router's load-balancing loss; unset: the
    model's own (router_aux_loss_coef in its config, 0.001 for most families)."""

    rules = (
        Rule(
            cel="!has(self.routerAuxLossCoef) || self.trainRouter",
            message="routerAuxLossCoef weights the loss of a trained router: set trainRouter: "
            "true, or remove it",
            check=lambda lora: lora.router_aux_loss_coef is None or lora.train_router,
            field=".routerAuxLossCoef",
        ),
        Rule(
            cel="!('all-linear' in self.targetModules) || size(self.targetModules) == 1",
            message="all-linear already names every linear layer: list it alone",
            check=lambda lora: (
                "all-linear" not in lora.target_modules or len(lora.target_modules) == 1
            ),
            field=".targetModules",
        ),
    )


def _four_bit_only(field: str) -> Rule:
    """Rule: `field` of a quantization block is set only with bits 4 (LLM.int8 reads none
    of the 4-bit settings, so an 8-bit block with them would drop them silently)."""
    attribute = to_snake(field)
    return Rule(
        cel=f"self.bits == 4 || !has(self.{field})",
        message=f"{field} is only used by 4-bit quantization (bitsandbytes' 8-bit LLM.int8 "
        "has no such setting): remove it, or use bits 4",
        check=lambda q: q.bits == 4 or getattr(q, attribute) is None,
        field=f".{field}",
    )


class QuantizationSpec(ApiModel):
    """bitsandbytes quantization of the frozen base weights (QLoRA = 4-bit + LoRA)."""

    bits: Literal[4, 8] = 4
    """4 (NF4/FP4, QLoRA) or 8 (LLM.int8)."""
    type: Literal["nf4", "fp4"] | None = None
    """4-bit only: the data type; unset: nf4, which suits normally distributed weights (the
    QLoRA paper's choice)."""
    compute_dtype: Literal["auto", "bfloat16", "float16", "float32"] | None = None
    """4-bit only: dtype the dequantized weights are computed in; unset or auto: follows
    training.precision (LLM.int8 computes its outliers in float16 regardless)."""
    double_quant: bool | None = None
    """4-bit only: also quantize the quantization constants (~0.4 bits per parameter);
    unset: true."""
    quant_storage: Literal["auto", "uint8", "bfloat16", "float16", "float32"] | None = None
    """4-bit only: the dtype packed weights are stored in. Unset or auto: the compute dtype
    under FSDP or ZeRO-3 (so the quantized base is sharded, not replicated), else uint8."""

    rules = tuple(
        _four_bit_only(field) for field in ("type", "computeDtype", "doubleQuant", "quantStorage")
    )

    @property
    def four_bit_type(self) -> str:
        return self.type or "nf4"

    @property
    def uses_double_quant(self) -> bool:
        return self.double_quant is not False


class AdapterSpec(ApiModel):
    """Existing adapter weights to continue from."""

    uri: Uri
    """Directory (local, s3://, oci:// or hub id) with adapter_config.json and adapter
    weights (an oci:// image with them under models/, reached with model.registry)."""

    rules = (oci_reference_rule("uri", optional=False),)


class SpectrumSpec(ApiModel):
    """Spectrum: train only the weight matrices with the highest signal-to-noise ratio.

    The SNR of each matrix comes from its singular values against a Marchenko-Pastur noise
    bound; within each module type (q_proj, mlp.down_proj, ...) the top fraction is
    unfrozen, everything else stays frozen."""

    top_fraction: Annotated[float, Field(gt=0.0, le=1.0)] | None = None
    """Fraction of matrices of each module type to unfreeze, by SNR rank. The default
    (0.25) when none of topFraction, snrThreshold, targetParameters is set."""
    snr_threshold: Annotated[float, Field(ge=0.0)] | None = None
    """Unfreeze every matrix whose SNR exceeds this (instead of topFraction)."""
    target_parameters: Annotated[list[ModuleName], Field(max_length=1024)] = []
    """Explicit parameter-name regexes to unfreeze (e.g. from an earlier Spectrum scan);
    when set, no scan runs."""

    @field_validator("target_parameters")
    @classmethod
    def _patterns_compile(cls, patterns: list[str]) -> list[str]:
        for index, pattern in enumerate(patterns):
            try:
                compiled(pattern)
            except ValueError as error:
                raise ValueError(f"[{index}] {error}") from None
        return patterns

    rules = (
        Rule(
            cel="(has(self.topFraction) ? 1 : 0) + (has(self.snrThreshold) ? 1 : 0)"
            " + (size(self.targetParameters) > 0 ? 1 : 0) <= 1",
            message="choose one of topFraction, snrThreshold or targetParameters",
            check=lambda s: (
                sum(
                    [
                        s.top_fraction is not None,
                        s.snr_threshold is not None,
                        bool(s.target_parameters),
                    ]
                )
                <= 1
            ),
            field=".snrThreshold",
        ),
    )

    def effective_top_fraction(self) -> float | None:
        """The fraction to unfreeze, or None when a threshold or explicit list decides."""
        if self.snr_threshold is not None or self.target_parameters:
            return None
        return self.top_fraction if self.top_fraction is not None else 0.25


class PrefixSpec(ApiModel):
    """Prefix tuning: trained key/value prefixes in every layer."""

    num_virtual_tokens: Annotated[int, Field(ge=1, le=1024)] = 20
    """Prefix length."""
    projection: bool = False
    """Reparameterise the prefix through an MLP (more stable, more memory)."""


class PromptTuningSpec(ApiModel):
    """Prompt tuning: trained soft-prompt embeddings prepended to the input."""

    num_virtual_tokens: Annotated[int, Field(ge=1, le=1024)] = 20
    """Soft-prompt length (counts against the model's maximum sequence length)."""
    init: Literal["sample_vocab", "random", "text"] = "sample_vocab"
    """Initial soft prompt: embeddings of random vocabulary tokens (stays on the embedding
    manifold), random vectors, or the embeddings of initText."""
    init_text: ShortText | None = None
    """Text whose embeddings initialise the soft prompt (init text)."""

    rules = (
        Rule(
            cel="(self.init == 'text') == has(self.initText)",
            message="init text needs initText, and initText is only used by init text",
            check=lambda p: (p.init == "text") == (p.init_text is not None),
            field=".initText",
        ),
    )


class MethodSpec(ApiModel):
    """What to train. LoRA-family blocks are only accepted with a matching type."""

    type: MethodType = "lora"
    """full: every weight; lora; qlora (4-bit base + LoRA); dora (weight-decomposed LoRA);
    adapter (continue existing LoRA weights); spectrum (highest-SNR layers in full);
    prefix (prefix tuning); prompt (prompt tuning)."""
    lora: LoraSpec | None = None
    """LoRA hyperparameters for lora, qlora and dora (defaults when omitted). An adapter
    keeps the shape it was trained with."""
    quantization: QuantizationSpec | None = None
    """Load the frozen base quantized. Required shape for qlora is 4-bit (the default when
    omitted); 8-bit works with lora/dora/adapter/prefix/prompt."""
    adapter: AdapterSpec | None = None
    """Adapter to continue from (type adapter)."""
    spectrum: SpectrumSpec | None = None
    """Spectrum layer selection (type spectrum; defaults when omitted)."""
    prefix: PrefixSpec | None = None
    """Prefix-tuning settings (type prefix; defaults when omitted)."""
    prompt: PromptTuningSpec | None = None
    """Prompt-tuning settings (type prompt; defaults when omitted)."""

    rules = (
        Rule(
            cel="self.type != 'qlora' || !has(self.quantization) || self.quantization.bits == 4",
            message="qlora needs 4-bit quantization (use type lora for an 8-bit base)",
            check=lambda m: m.type != "qlora" or m.quantization is None or m.quantization.bits == 4,
            field=".quantization.bits",
        ),
        Rule(
            cel=f"!has(self.quantization) || self.type in {cel_list(FROZEN_BASE_METHODS)}",
            message="quantization needs a frozen base: it cannot be used with type full "
            "or spectrum",
            check=lambda m: m.quantization is None or m.type in FROZEN_BASE_METHODS,
            field=".quantization",
        ),
        only_for("lora", "type", LORA_SETTINGS_METHODS),
        Rule(
            cel="!has(self.lora) || !has(self.lora.loftq)"
            " || (self.type != 'qlora' && !has(self.quantization))",
            message="lora.loftq replaces quantizing the base: drop quantization "
            "(and use type lora, not qlora)",
            check=lambda m: (
                m.lora is None
                or m.lora.loftq is None
                or (m.type != "qlora" and m.quantization is None)
            ),
            field=".lora.loftq",
        ),
        Rule(
            cel="(self.type == 'adapter') == has(self.adapter)",
            message="type adapter needs adapter.uri, and adapter is only used by type adapter",
            check=lambda m: (m.type == "adapter") == is_set(m.adapter),
            field=".adapter",
        ),
        only_for("spectrum", "type", ("spectrum",)),
        only_for("prefix", "type", ("prefix",)),
        only_for("prompt", "type", ("prompt",)),
    )

    def effective_lora(self) -> LoraSpec:
        return self.lora or LoraSpec()

    def effective_prefix(self) -> PrefixSpec:
        return self.prefix or PrefixSpec()

    def effective_prompt(self) -> PromptTuningSpec:
        return self.prompt or PromptTuningSpec()

    def effective_quantization(self) -> QuantizationSpec | None:
        """qlora without an explicit block means the QLoRA paper's 4-bit NF4 double-quant."""
        if self.quantization is None and self.type == "qlora":
            return QuantizationSpec()
        return self.quantization
