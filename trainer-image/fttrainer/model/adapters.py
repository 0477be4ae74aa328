"""What a LoRA adapter adapts, resolved against the model's own modules and parameters.

`all-linear` means every linear layer but the output head and, in a mixture-of-experts
model, every expert matrix; the routers stay frozen unless `lora.trainRouter`. The same
resolution runs on the meta-device model before any weight is read (so a method the model
cannot serve is refused then, and `finetune validate` shows what will be adapted); its names
are the loaded model's, and go to PEFT as they are.

PEFT gets explicit names, never the `all-linear` shorthand: on the MoE families whose
layout changed in transformers 5 PEFT rewrites its targets (it adds the router and drops
every dense and shared-expert MLP named gate_proj/up_proj/down_proj). Linear layers with
those names in an MoE model are therefore adapted through their weight parameter, which
PEFT leaves alone, and an adapter saved this way loads back the same. A linear layer whose
weight the model's code reads as a tensor (Jamba's `dt_proj`) is never adapted: no LoRA
form would run there.

`plan_model` also holds what the architecture, or TRL and PEFT on it, cannot serve whatever
the targets (prefix tuning without plain keys and values, layouts TRL 1.16 does not read):
every refusal is decided here, before the weights load.
"""

from __future__ import annotations

import inspect
import re
from dataclasses import dataclass, field
from typing import Any

from ftapi.v1alpha1 import FineTuneJobSpec

from .moe import MoeConfig, expert_parameters, moe_config, routers, text_config
from .vision import TEXT_ONLY, Parts, vision_parts

# Linear layers PEFT renames in an MoE model (the v4 names of fused experts and routers).
PEFT_REWRITTEN = frozenset({"gate", "gate_proj", "up_proj", "down_proj", "w1", "w2", "w3"})
# v4 names users list for the expert projections, now fused into these 3-D parameters.
EXPERT_ALIASES = {
    "gate_proj": "gate_up_proj",
    "up_proj": "gate_up_proj",
    "w1": "gate_up_proj",
    "w3": "gate_up_proj",
    "w2": "down_proj",
}
FUSED_GATE_UP = "gate_up_proj"
"""Gate and up projections in one matrix: its rank and alpha are doubled, so each keeps
the rank a dense model's separate gate_proj and up_proj adapters have (as PEFT does when it
converts a v4 adapter)."""
LAYER_PREFIX = re.compile(r"^.*?\.\d+\.")
ALL_LINEAR_MINIMUM_SHARE = 0.5
"""`all-linear` must reach at least this share of the decoder blocks' weights: below it, a
layout this code does not know (a new kind of fused expert) would go untrained silently."""


@dataclass(frozen=True)
class Targets:
    """What the adapter adapts, by kind, and how much of the model that is."""

    modules: tuple[str, ...]
    """Linear layers adapted as LoRA layers (full names)."""
    parameters: tuple[str, ...]
    """Parameters adapted in place (fused experts, routers, MoE MLPs PEFT would rename)."""
    experts: tuple[str, ...]
    """The expert matrices among `parameters`."""
    routers: tuple[str, ...]
    """Router modules of an MoE model, whether adapted or not."""
    router_parameters: tuple[str, ...]
    """The router weights among `parameters` (lora.trainRouter)."""
    adapted_weights: int
    """Base-model parameters the adapter updates."""
    block_weights: int
    """All parameters of the decoder blocks (embeddings and head excluded)."""
    total_weights: int
    lora_parameters: int
    """Trainable adapter parameters (A and B matrices)."""
    missed: tuple[str, ...] = field(default=())
    """The largest block parameters left out, for the message when too few are reached."""
    unmatched: tuple[str, ...] = field(default=())
    """Names in lora.targetModules that matched nothing."""
    bypassed: tuple[str, ...] = field(default=())
    """Linear layers left out because the model uses their weight directly (never adapted,
    refused when named)."""
    peft_modules: tuple[str, ...] = field(default=())
    peft_parameters: tuple[str, ...] = field(default=())
    """`modules` and `parameters` as PEFT is given them: the shortest names that match
    exactly those in this model (layer-independent suffixes where they do)."""
    saved: tuple[str, ...] = field(default=())
    """Modules trained whole beside the adapter (a trained projector: spec.vision)."""

    @property
    def block_share(self) -> float:
        return self.adapted_weights / self.block_weights if self.block_weights else 0.0

    def summary(self) -> dict[str, Any]:
        """For the log, result.json and `finetune validate`."""
        return {
            "linearModules": len(self.modules),
            "parameters": len(self.parameters),
            "expertMatrices": len(self.experts),
            "routers": len(self.routers),
            "routersTrained": len(self.router_parameters),
            "adaptedWeights": self.adapted_weights,
            "blockShare": round(self.block_share, 4),
            "modelShare": round(self.adapted_weights / max(self.total_weights, 1), 4),
            "loraParameters": self.lora_parameters,
        }

    def render(self) -> str:
        kinds = [f"{len(self.modules)} linear layers"]
        if self.experts:
            kinds.append(f"{len(self.experts)} expert matrices")
        others = len(self.parameters) - len(self.experts) - len(self.router_parameters)
        if others:
            kinds.append(f"{others} other matrices adapted in place")
        if self.routers:
            trained = "trained" if self.router_parameters else "frozen"
            kinds.append(f"{len(self.routers)} routers {trained}")
        model_share = self.adapted_weights / max(self.total_weights, 1)
        return (
            f"adapter: {', '.join(kinds)}; {self.adapted_weights:,} weights adapted, "
            f"{self.block_share:.0%} of the decoder blocks ({model_share:.0%} of the model); "
            f"{self.lora_parameters:,} trainable adapter parameters"
        )


def resolve_targets(
    model: Any, spec: FineTuneJobSpec, moe: MoeConfig | None, parts: Parts = TEXT_ONLY
) -> Targets:
    """The adapter's targets on `model` (meta-device or loaded) for the spec's LoRA; what
    `parts` leaves unadapted (a vision-language model's projector, and its vision tower
    unless trained: model/vision.py) is neither adapted nor counted in the decoder blocks'
    share."""
    import torch
    from transformers.pytorch_utils import Conv1D

    lora = spec.method.effective_lora()
    names = list(lora.target_modules)
    all_linear = names == ["all-linear"]
    router_names = routers(model, moe) if moe else []
    inside_router = tuple(f"{r}." for r in router_names)
    head = model.get_output_embeddings()
    # all-linear: linear layers but the head; a list may also name the head, embeddings
    # and convolutions, as PEFT allows.
    kinds: tuple[type, ...] = (torch.nn.Linear, Conv1D)
    if not all_linear:
        kinds += (torch.nn.Embedding, torch.nn.Conv1d, torch.nn.Conv2d, torch.nn.Conv3d)
    linear: list[str] = []
    linear_shapes: dict[str, tuple[int, int]] = {}
    for name, module in model.named_modules():
        if not isinstance(module, kinds) or (all_linear and module is head):
            continue
        if parts.unadapted(name):
            continue
        if name in router_names or name.startswith(inside_router):
            continue  # a router (some are nn.Linear subclasses): only by lora.trainRouter
        linear.append(name)
        linear_shapes[name] = _fan(module, Conv1D)  # (in, out)
    experts = expert_parameters(model, moe) if moe else []
    matched: set[str] = set()
    if all_linear:
        chosen_linear, chosen_experts = linear, experts
    else:
        chosen_linear = [n for n in linear if _named(n, names, matched)]
        chosen_experts = [p for p in experts if names_expert(p, names, matched)]
    modules: list[str] = []
    parameters: list[str] = []
    bypassed = [name for name in chosen_linear if _weight_read_directly(model, name)]
    for name in chosen_linear:
        if name in bypassed:
            continue
        if moe is not None and name.rsplit(".", 1)[-1] in PEFT_REWRITTEN:
            parameters.append(f"{name}.weight")
        else:
            modules.append(name)
    parameters += chosen_experts
    router_parameters: list[str] = []
    if moe and lora.train_router:
        for router in router_names:
            for pname, parameter in model.get_submodule(router).named_parameters():
                if parameter.ndim == 2 and moe.experts in parameter.shape:
                    router_parameters.append(f"{router}.{pname}")
        parameters += router_parameters
    shapes = dict(model.named_parameters())
    adapted = sum(int(shapes[f"{m}.weight"].numel()) for m in modules) + sum(
        int(shapes[p].numel()) for p in parameters
    )
    lora_parameters = sum(lora.r * (i + o) for i, o in (linear_shapes[m] for m in modules))
    for p in parameters:
        lora_parameters += parameter_lora_size(shapes[p].shape, lora.r, p)
    block = {n: p for n, p in shapes.items() if LAYER_PREFIX.match(n) and not parts.unadapted(n)}
    reached = {f"{m}.weight" for m in modules} | set(parameters)
    missed = sorted(
        (n for n in block if n not in reached and block[n].ndim >= 2),
        key=lambda n: -int(block[n].numel()),
    )
    return Targets(
        peft_modules=tuple(shortest_names(modules, [n for n, _ in model.named_modules()])),
        peft_parameters=tuple(shortest_names(parameters, list(shapes))),
        modules=tuple(modules),
        parameters=tuple(parameters),
        experts=tuple(chosen_experts),
        routers=tuple(router_names),
        router_parameters=tuple(router_parameters),
        adapted_weights=adapted,
        block_weights=sum(int(p.numel()) for p in block.values()),
        total_weights=sum(int(p.numel()) for p in shapes.values()),
        lora_parameters=lora_parameters,
        missed=tuple(missed[:5]),
        bypassed=tuple(bypassed),
        unmatched=tuple(n for n in names if n not in matched and not all_linear),
        saved=tuple(_whole_modules(model, parts.saved)),
    )


def _whole_modules(model: Any, names: tuple[str, ...]) -> list[str]:
    """`names` as PEFT's modules_to_save can wrap them: a module list (Qwen3-VL's deepstack
    mergers) by its members, since the wrapper is called, never indexed."""
    import torch

    out: list[str] = []
    for name in names:
        module = model.get_submodule(name)
        if isinstance(module, torch.nn.ModuleList):
            out += [f"{name}.{i}" for i in range(len(module))]
        else:
            out.append(name)
    return out


def peft_targets(targets: Targets, *, r: int, alpha: int) -> dict[str, Any]:
    """LoraConfig kwargs for `targets`: target_modules, target_parameters, and the fused
    gate/up matrices' doubled rank and alpha."""
    kwargs: dict[str, Any] = {"target_modules": list(targets.peft_modules) or None}
    if targets.saved:
        kwargs["modules_to_save"] = list(targets.saved)
    if targets.peft_parameters:
        kwargs["target_parameters"] = list(targets.peft_parameters)
        fused = [p for p in targets.peft_parameters if _leaf(p) == FUSED_GATE_UP]
        if fused:
            kwargs["rank_pattern"] = {re.escape(s): 2 * r for s in fused}
            kwargs["alpha_pattern"] = {re.escape(s): 2 * alpha for s in fused}
    return kwargs


def refusals(targets: Targets, spec: FineTuneJobSpec, moe: MoeConfig | None) -> list[str]:
    """Why this adapter cannot be trained on this model (empty when it can): decided from
    the meta-device model, before weights load."""
    method = spec.method
    lora = method.effective_lora()
    found: list[str] = []
    if not targets.modules and not targets.parameters:
        found.append(
            f"lora.targetModules {list(lora.target_modules)} match no linear layer "
            "or expert matrix of this model"
        )
    elif lora.target_modules == ["all-linear"] and targets.block_share < ALL_LINEAR_MINIMUM_SHARE:
        found.append(
            f"all-linear reaches only {targets.block_share:.0%} of this model's decoder weights "
            f"(not reached, largest first: {', '.join(targets.missed)}): its layout is not one "
            "the trainer knows; list lora.targetModules explicitly"
        )
    if targets.bypassed and lora.target_modules != ["all-linear"]:
        found.append(
            f"lora.targetModules names {', '.join(targets.bypassed[:3])}: the model's code uses "
            "that weight directly instead of calling the layer, so no adapter on it would run; "
            "leave it out"
        )
    if targets.parameters:
        what = "expert matrices" if targets.experts else "matrices adapted in place"
        if method.type == "dora":
            found.append(
                f"method dora on a mixture-of-experts model: PEFT adapts its {what} in place "
                "(lora.ParamWrapper), which has no DoRA form; use method lora, or list only "
                "attention modules in lora.targetModules (e.g. [q_proj, k_proj, v_proj, o_proj])"
            )
        if lora.dropout:
            found.append(
                f"lora.dropout {lora.dropout} on a mixture-of-experts model: PEFT adapts its "
                f"{what} in place, where dropout cannot apply (the input is not separate from "
                "the weight); set lora.dropout: 0"
            )
    if moe is not None and method.type == "qlora" and targets.experts:
        found.append(
            "method qlora on a mixture-of-experts model: bitsandbytes quantizes linear layers "
            f"only, and this model's {moe.experts} experts per layer are fused parameters "
            "that would stay in 16 bits (most of the model); use method lora"
        )
    if lora.train_router:
        if moe is None:
            found.append("lora.trainRouter: this model has no router (not a mixture of experts)")
        elif moe.aux_loss_coef is None:
            found.append(
                f"lora.trainRouter: {moe.model_type} adds no router load-balancing loss in "
                "transformers, and a router trained without one drifts from balanced routing; "
                "leave the router frozen"
            )
        elif spec.trainer.type == "grpo":
            found.append(
                "lora.trainRouter with trainer grpo: GRPO's loss has no router "
                "load-balancing term; leave the router frozen"
            )
    return found


def _named(name: str, targets: list[str], matched: set[str]) -> bool:
    hit = [t for t in targets if name == t or name.endswith(f".{t}")]
    matched.update(hit)
    return bool(hit)


def names_expert(parameter: str, targets: list[str], matched: set[str]) -> bool:
    """An expert matrix by its own name (down_proj, experts.gate_up_proj), its module's
    (experts) or the v4 name of a projection fused into it (gate_proj, w1...)."""
    module, _, leaf = parameter.rpartition(".")
    hit = [
        t
        for t in targets
        if _named(parameter, [t], set())
        or _named(module, [t], set())
        or EXPERT_ALIASES.get(t.rsplit(".", 1)[-1]) == leaf
    ]
    matched.update(hit)
    return bool(hit)


def _weight_read_directly(model: Any, name: str) -> bool:
    """Whether the code of the module holding layer `name` uses its weight as a tensor
    (Jamba's `self.dt_proj.weight @ x`) rather than calling the layer: no LoRA form would
    ever run there (PEFT's in-place one too applies only inside the layer's own call)."""
    parent, _, leaf = name.rpartition(".")
    source = _class_source(type(model.get_submodule(parent)))
    return (
        re.search(rf"self\.{re.escape(leaf)}\.weight\s*(@|\)|,|\.T\b|\.t\(|\[)", source) is not None
    )


_SOURCES: dict[type, str] = {}


def _class_source(cls: type) -> str:
    """The class's source, once per class (inspect parses the whole module each time)."""
    if cls not in _SOURCES:
        try:
            _SOURCES[cls] = inspect.getsource(cls)
        except (OSError, TypeError):
            _SOURCES[cls] = ""
    return _SOURCES[cls]


def _fan(module: Any, conv1d: type) -> tuple[int, int]:
    """(in, out) of a LoRA layer's A and B for `module`: features, an embedding's rows and
    width, a convolution's input channels times its kernel and its output channels."""
    weight = module.weight
    if isinstance(module, conv1d):  # GPT-2's: (in, out)
        return int(weight.shape[0]), int(weight.shape[1])
    if weight.ndim > 2:  # convolutions: (out, in, *kernel)
        return int(weight[0].numel()), int(weight.shape[0])
    if hasattr(module, "num_embeddings"):  # an embedding: (rows, width)
        return int(weight.shape[0]), int(weight.shape[1])
    return int(weight.shape[1]), int(weight.shape[0])


def parameter_lora_size(shape: Any, r: int, name: str) -> int:
    """PEFT's parameter LoRA: A (in x r·E) and B (r·E x out) for E experts."""
    rank = 2 * r if _leaf(name) == FUSED_GATE_UP else r
    if len(shape) == 3:
        return int(rank * shape[0] * (shape[1] + shape[2]))
    return int(rank * (shape[0] + shape[1]))


def _leaf(name: str) -> str:
    return name.rsplit(".", 1)[-1]


def _suffix(name: str) -> str:
    """`model.layers.3.mlp.experts.down_proj` -> `mlp.experts.down_proj`."""
    return LAYER_PREFIX.sub("", name, count=1)


def shortest_names(names: list[str], universe: list[str]) -> list[str]:
    """Layer-independent suffixes (`self_attn.q_proj`) when, matched as PEFT matches them
    (equal, or a dotted suffix), they pick out exactly `names` among `universe`; else the
    full names."""
    if not names:
        return []
    suffixes = sorted({_suffix(n) for n in names})
    picked = {n for n in universe if any(n == s or n.endswith(f".{s}") for s in suffixes)}
    if picked == set(names) and all(LAYER_PREFIX.match(n) for n in names):
        return suffixes
    return sorted(names)


def describe(moe: MoeConfig | None, model: Any) -> str:
    """One line on the model's kind for the log: dense, or experts and active share."""
    if moe is None:
        return "dense model"
    total = sum(int(p.numel()) for p in model.parameters())
    shapes = dict(model.named_parameters())
    expert = sum(int(shapes[name].numel()) for name in expert_parameters(model, moe))
    active = total - expert + (expert * (moe.per_token or moe.experts)) // moe.experts
    hidden = getattr(text_config(model.config), "hidden_size", "?")
    return (
        f"mixture of experts ({moe.model_type}): {moe.experts} experts, "
        f"{moe.per_token or '?'} per token, {total:,} parameters, ~{active:,} active per "
        f"token (hidden {hidden})"
    )


@dataclass(frozen=True)
class ModelPlan:
    """What the trainer reads from the model before its weights: its kind, what the
    adapter will adapt, and what the spec asks that the model cannot serve."""

    moe: MoeConfig | None
    targets: Targets | None
    refused: list[str]
    kind: str


def plan_model(model: Any, spec: FineTuneJobSpec) -> ModelPlan:
    """The plan for `model` (the meta-device one, or the loaded one)."""
    from ftapi.v1alpha1.method import LORA_SETTINGS_METHODS

    moe = moe_config(model.config, model)
    targets = None
    refused = architecture_refusals(model, spec, moe)
    try:
        parts = vision_parts(model.config, spec.vision)
    except ValueError as error:
        refused.append(str(error))
        parts = TEXT_ONLY
    if spec.method.type in LORA_SETTINGS_METHODS:
        targets = resolve_targets(model, spec, moe, parts)
        refused += refusals(targets, spec, moe)
    return ModelPlan(moe=moe, targets=targets, refused=refused, kind=describe(moe, model))


# What PEFT's prompt learning reads from the config's keys (not its aliases), by what.
PEFT_PROMPT_KEYS = {
    "layer count": {"num_hidden_layers", "num_layers", "n_layer"},
    "hidden size": {"hidden_size", "n_embd", "d_model"},
    "head count": {"num_attention_heads", "n_head", "num_heads", "encoder_attention_heads"},
}


def name_backbone(model: Any) -> bool:
    """Make `model.base_model` the decoder backbone where the class's base_model_prefix
    names no module (Llama4ForCausalLM says language_model, keeps it at `.model`): TRL's
    SFT loss and PEFT's prompt learning find the backbone through it. Set on the instance
    only (nothing saved changes). False when no backbone is found."""
    if model.base_model is not model:
        return True
    inner = getattr(model, "model", None)
    if inner is None or inner is model or not hasattr(inner, "forward"):
        return False
    model.base_model_prefix = "model"
    return model.base_model is inner


def architecture_refusals(model: Any, spec: FineTuneJobSpec, moe: MoeConfig | None) -> list[str]:
    """What the model's architecture, or TRL and PEFT on it, cannot serve whatever the
    adapter targets: each found where the run would otherwise fail after loading."""
    text = text_config(model.config)
    kind = getattr(text, "model_type", "this model")
    method = spec.method.type
    sft = spec.trainer.type == "sft"
    found: list[str] = []
    if sft and not name_backbone(model):
        found.append(
            f"{type(model).__name__} cannot be trained by TRL's SFT trainer: TRL computes the "
            f"loss from the model's backbone, which its base_model_prefix "
            f"{model.base_model_prefix!r} does not name (a transformers layout TRL does not read)"
        )
    if method in ("prefix", "prompt"):
        keys = text.to_dict().keys()
        missing = [what for what, names in PEFT_PROMPT_KEYS.items() if not names & keys]
        if missing:
            found.append(
                f"method {method}: PEFT reads the model's {', '.join(missing)} from config "
                f"keys {kind}'s config does not have; use another method"
            )
    if method == "prefix":
        recurrent = sorted({t for t in getattr(text, "layer_types", None) or [] if "linear" in t})
        if recurrent:
            found.append(
                f"method prefix: prefix tuning prepends keys and values to every layer's "
                f"attention, and {kind} has {', '.join(recurrent)} layers, which keep none; use "
                "lora or prompt"
            )
        if getattr(text, "kv_lora_rank", None):
            found.append(
                f"method prefix: prefix tuning prepends per-head keys and values, which {kind} "
                "compresses (multi-head latent attention); use lora or prompt"
            )
    balancing = method == "full" or (
        method in ("lora", "qlora", "dora") and spec.method.effective_lora().train_router
    )
    aux_loss = moe is not None and moe.aux_loss_coef is not None
    if sft and balancing and aux_loss and not hasattr(text, "num_experts"):
        found.append(
            f"{'method full' if method == 'full' else 'lora.trainRouter'}: TRL's SFT "
            "trainer computes the router's load-balancing loss from config.num_experts, "
            f"which {kind}'s config does not have; use lora (the router frozen)"
        )
    return found
