"""Vision-language models: which families the trainer serves, and where each keeps its vision
tower and its projector (the modules that turn an image into the language model's inputs).

The language model is what a fine-tune adapts: the vision tower and the projector stay
frozen unless spec.vision says to train them (LLaMA-Factory's `freeze_vision_tower` and
`freeze_multi_modal_projector`, on by default there too), so LoRA targets and full
fine-tuning's trainable weights are the language model's and its head's. A trained tower
gets LoRA adapters like the language model; a trained projector is trained whole (it is
small, and Gemma 3's has no linear layer to adapt).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from ftapi.v1alpha1 import VisionSpec

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


@dataclass(frozen=True)
class Parts:
    """Where a model keeps its image side (module prefixes as the loaded model names them),
    and which of it the spec trains. A text-only model has none."""

    tower: tuple[str, ...] = ()
    projector: tuple[str, ...] = ()
    train_tower: bool = False
    train_projector: bool = False

    def frozen(self, name: str) -> bool:
        """Whether a parameter stays as loaded. The projector is asked first: Qwen keeps
        its projector inside its tower's module."""
        if under(name, self.projector):
            return not self.train_projector
        return under(name, self.tower) and not self.train_tower

    def in_tower(self, name: str) -> bool:
        """Whether a module or parameter is the vision tower's (its projector aside)."""
        return under(name, self.tower) and not under(name, self.projector)

    def unadapted(self, name: str) -> bool:
        """Whether a module gets no LoRA adapter: a frozen tower, and the projector always
        (trained, it is trained whole: see `saved`)."""
        return under(name, self.projector) or (under(name, self.tower) and not self.train_tower)

    @property
    def saved(self) -> tuple[str, ...]:
        """What is trained whole beside a LoRA adapter (PEFT's modules_to_save)."""
        return self.projector if self.train_projector else ()


TEXT_ONLY = Parts()


def vision_parts(config: Any, vision: VisionSpec | None = None) -> Parts:
    """The image side of a model with this config, and what of it `vision` (spec.vision)
    trains. Raises ValueError for a vision-language family this trainer does not know (its
    parts would be trained or adapted unseen) and for vision settings on a model that reads
    no images (they would be ignored)."""
    vision = vision or VisionSpec()
    if not is_vision_language(config):
        given = [f"vision.{name}" for name in _set_fields(vision)]
        if given:
            raise ValueError(
                f"{', '.join(given)} set, but model type "
                f"{getattr(config, 'model_type', '?')!r} reads no images (no vision_config)"
            )
        return TEXT_ONLY
    kind = getattr(config, "model_type", "?")
    if kind not in PARTS:
        raise ValueError(
            f"model type {kind!r} reads images, and this trainer does not serve that "
            f"vision-language family yet (it serves {', '.join(sorted(PARTS))})"
        )
    tower, projector = PARTS[kind]
    return Parts(tower, projector, vision.train_vision_tower, vision.train_projector)


def _set_fields(vision: VisionSpec) -> list[str]:
    """The settings that differ from their defaults, by their API names."""
    default = VisionSpec()
    return [
        field.alias or name
        for name, field in VisionSpec.model_fields.items()
        if getattr(vision, name) != getattr(default, name)
    ]


def under(name: str, prefixes: tuple[str, ...]) -> bool:
    """Whether a module or parameter name lies under one of `prefixes`."""
    return any(name == p or name.startswith(f"{p}.") for p in prefixes)


def freeze(model: Any, parts: Parts) -> int:
    """Stop gradients into the parameters `parts` leaves as loaded; how many were frozen."""
    frozen = 0
    for name, parameter in model.named_parameters():
        if parts.frozen(name):
            parameter.requires_grad_(False)
            frozen += 1
    return frozen
