"""Mixture-of-experts models: how many experts, where they and the routers are.

transformers 5 stores every family's experts fused, as 3-D parameters (experts x out x in,
or transposed) in one experts module per layer, and names each family's router by the
class whose output it records as `router_logits`. Both are read from the model itself, not
from a table of families, so a family this code has not seen is read the same way.
"""

from __future__ import annotations

import inspect
from dataclasses import dataclass
from typing import Any

EXPERT_COUNT_FIELDS = ("num_local_experts", "num_experts", "n_routed_experts", "moe_num_experts")
PER_TOKEN_FIELDS = ("num_experts_per_tok", "moe_k", "moe_top_k", "top_k")


@dataclass(frozen=True)
class MoeConfig:
    """What the config says about a mixture-of-experts model."""

    model_type: str
    experts: int
    per_token: int | None
    aux_loss_coef: float | None
    """The router's load-balancing loss coefficient when the model adds that loss to its
    own (router_aux_loss_coef); None when it has none (DeepSeek-V3 and GLM-4.5 balance
    with a bias instead, Llama 4 computes none)."""


def text_config(config: Any) -> Any:
    """The language model's config (a multimodal config nests it)."""
    getter = getattr(config, "get_text_config", None)
    return getter() if callable(getter) else config


def moe_config(config: Any, model: Any = None) -> MoeConfig | None:
    """The MoE facts of `config`, None for a dense model. `model` (the meta-device or
    loaded model) tells whether its forward really adds the auxiliary loss."""
    text = text_config(config)
    ffn = getattr(text, "ffn_config", None)  # DBRX keeps its MoE settings there
    experts = _first_int(text, EXPERT_COUNT_FIELDS) or _first_int(ffn, EXPERT_COUNT_FIELDS)
    if not experts or experts < 2:
        return None
    coef = getattr(text, "router_aux_loss_coef", None)
    if coef is not None and model is not None and not adds_aux_loss(model):
        coef = None
    return MoeConfig(
        model_type=str(getattr(text, "model_type", "") or getattr(config, "model_type", "")),
        experts=experts,
        per_token=_first_int(text, PER_TOKEN_FIELDS) or _first_int(ffn, PER_TOKEN_FIELDS),
        aux_loss_coef=float(coef) if coef is not None else None,
    )


def adds_aux_loss(model: Any) -> bool:
    """Whether the model class's forward returns the router's auxiliary loss (what TRL
    weights): Llama 4 has the coefficient in its config but computes no such loss."""
    try:
        source = inspect.getsource(type(model).forward)
    except (OSError, TypeError):
        return False
    return "aux_loss" in source


def router_classes(model: Any) -> tuple[type, ...]:
    """Classes whose outputs the model records as router logits (every MoE family in
    transformers 5 declares them)."""
    found: list[type] = []
    for module in model.modules():
        recorders = getattr(type(module), "_can_record_outputs", None) or {}
        entry = recorders.get("router_logits")
        for recorder in entry if isinstance(entry, (list, tuple)) else [entry]:
            target = getattr(recorder, "target_class", recorder)
            if isinstance(target, type) and target not in found:
                found.append(target)
    return tuple(found)


def routers(model: Any, moe: MoeConfig) -> list[str]:
    """Names of the router modules: instances of the recorded classes small enough to be a
    router (an experts x hidden matrix, a bias and a score correction), which leaves out
    JetMoE's attention, also recorded as routing."""
    classes: tuple[Any, ...] = router_classes(model)
    if not classes:
        return []
    hidden = int(getattr(text_config(model.config), "hidden_size", 0) or 0)
    bound = 2 * moe.experts * (hidden + 2)
    return [
        name
        for name, module in model.named_modules()
        if isinstance(module, classes) and sum(p.numel() for p in module.parameters()) <= bound
    ]


def expert_parameters(model: Any, moe: MoeConfig) -> list[str]:
    """Names of the fused expert matrices: the 3-D parameters with one matrix per expert
    (experts x out x in, or transposed) outside convolutions (a Mamba or linear-attention
    layer's kernels are 3-D too). Expert biases (gpt-oss) are 2-D and not among them."""
    import torch

    convolutions = (torch.nn.Conv1d, torch.nn.Conv2d, torch.nn.Conv3d)
    return [
        f"{module_name}.{name}" if module_name else name
        for module_name, module in model.named_modules()
        if not isinstance(module, convolutions)
        for name, parameter in module.named_parameters(recurse=False)
        if parameter.ndim == 3 and parameter.shape[0] == moe.experts
    ]


def _first_int(config: Any, fields: tuple[str, ...]) -> int | None:
    if config is None:
        return None
    for field in fields:
        value = getattr(config, field, None)
        if isinstance(value, int) and not isinstance(value, bool) and value > 0:
            return value
    return None


def routed_token_bytes(model: Any, moe: MoeConfig, *, dtype_bytes: int = 2) -> tuple[int, int]:
    """Bytes autograd keeps in one MoE layer for each (token, expert it is routed to) pair,
    in a 16-bit forward of transformers' grouped experts, with the experts frozen and with
    them trained: what the experts' gate function saves and the expert output the routing
    weight scales, and, when the experts train (an adapter on them, or full weights), also
    the inputs of both grouped matmuls, which their weight gradients need. The gate is run
    on the meta device to count what it saves, so a family's own activation (gpt-oss's
    clamped SwiGLU keeps twice SwiGLU's) is read, not assumed. (0, 0) when the model has
    no fused experts."""
    shapes = dict(model.named_parameters())
    names = expert_parameters(model, moe)
    if not names:
        return 0, 0
    hidden = int(getattr(text_config(model.config), "hidden_size", 0) or 0)
    module_name = names[0].rpartition(".")[0]
    experts = model.get_submodule(module_name)
    in_layer = [n for n in names if n.rpartition(".")[0] == module_name]
    first, last = (tuple(int(d) for d in shapes[n].shape[1:]) for n in (in_layer[0], in_layer[-1]))
    up_width = first[1] if first[0] == hidden else first[0]
    intermediate = last[1] if last[0] == hidden else last[0]
    gate = getattr(experts, "_apply_gate", None) if getattr(experts, "has_gate", False) else None
    activation = gate or getattr(experts, "act_fn", None)
    gate_bytes = 3 * intermediate * dtype_bytes  # SwiGLU: gate, up, act(gate)
    if activation is not None:
        gate_bytes = _saved_bytes(activation, up_width if gate else intermediate, dtype_bytes)
    frozen = hidden * dtype_bytes + gate_bytes
    return frozen, frozen + (hidden + intermediate) * dtype_bytes


def _saved_bytes(function: Any, width: int, dtype_bytes: int) -> int:
    """Bytes autograd saves when `function` runs on one row of `width` 16-bit values, counted
    on the meta device (nothing allocated); a view saved counts as the tensor it views."""
    import torch

    saved: dict[int, int] = {}

    def keep(tensor: torch.Tensor) -> torch.Tensor:
        base = tensor._base if tensor._base is not None else tensor
        saved[id(base)] = base.numel() * base.element_size()
        kept.append(base)  # alive until counted, so no id is reused
        return tensor

    kept: list[torch.Tensor] = []
    row = torch.empty(1, width, device="meta", dtype=torch.bfloat16, requires_grad=True)
    try:
        with torch.autograd.graph.saved_tensors_hooks(keep, lambda tensor: tensor):
            function(row)
    except (RuntimeError, NotImplementedError, TypeError):
        return 3 * width * dtype_bytes // 2  # a gate meta tensors cannot run: SwiGLU's
    return sum(saved.values()) * dtype_bytes // 2
