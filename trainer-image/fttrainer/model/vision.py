"""Vision-language models: which families the trainer serves, and where each keeps its vision
tower and its projector (the modules that turn an image into the language model's inputs).

The language model is what a fine-tune adapts: the vision tower and the projector stay
frozen (LLaMA-Factory's `freeze_vision_tower` and `freeze_multi_modal_projector`, on by
default there too), so LoRA targets and full fine-tuning's trainable weights are the
language model's and its head's.
"""

from __future__ import annotations

from typing import Any

# model type -> (vision tower, projector) module prefixes, as the loaded model names them.
PARTS: dict[str, tuple[tuple[str, ...], tuple[str, ...]]] = {
    "gemma3": (("model.vision_tower",), ("model.multi_modal_projector",)),
    "idefics3": (("model.vision_model",), ("model.connector",)),
    "mllama": (("model.vision_model",), ("model.multi_modal_projector",)),
    # Qwen keeps its projector (the merger) inside the vision tower's module.
    "qwen2_5_vl": (("model.visual",), ("model.visual.merger",)),
    "qwen3_vl": (
        ("model.visual",),
        ("model.visual.merger", "model.visual.deepstack_merger_list"),
    ),
    "smolvlm": (("model.vision_model",), ("model.connector",)),
}


def is_vision_language(config: Any) -> bool:
    """Whether a model config describes a model that reads images."""
    return getattr(config, "vision_config", None) is not None


def reads_images(model: Any) -> bool | None:
    """Whether the spec's model (`spec.model`) reads images, from its config in a local
    folder or the hub cache; None when its config cannot be read here (no network)."""
    from transformers import AutoConfig

    try:
        config = AutoConfig.from_pretrained(
            model.name,
            revision=model.revision,
            trust_remote_code=model.trust_remote_code,
            local_files_only=True,
        )
    except (OSError, ValueError):
        return None
    return is_vision_language(config)


def frozen_prefixes(config: Any) -> tuple[str, ...]:
    """The module prefixes a fine-tune of this model leaves alone: its vision tower and its
    projector; none for a text-only model. Raises ValueError for a vision-language family
    this trainer does not know (its parts would be trained or adapted unseen)."""
    if not is_vision_language(config):
        return ()
    kind = getattr(config, "model_type", "?")
    if kind not in PARTS:
        raise ValueError(
            f"model type {kind!r} reads images, and this trainer does not serve that "
            f"vision-language family yet (it serves {', '.join(sorted(PARTS))})"
        )
    vision, projector = PARTS[kind]
    return vision + projector


def under(name: str, prefixes: tuple[str, ...]) -> bool:
    """Whether a module or parameter name lies under one of `prefixes`."""
    return any(name == p or name.startswith(f"{p}.") for p in prefixes)


def freeze(model: Any, prefixes: tuple[str, ...]) -> int:
    """Stop gradients into the parameters under `prefixes`; how many were frozen."""
    frozen = 0
    for name, parameter in model.named_parameters():
        if under(name, prefixes):
            parameter.requires_grad_(False)
            frozen += 1
    return frozen
