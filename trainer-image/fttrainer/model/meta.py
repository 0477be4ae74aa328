"""The model as its config describes it, on the meta device: every module and parameter
with its exact shape, no memory and no weights read (seconds, even for a 100B model)."""

from __future__ import annotations

from typing import Any


def meta_model(
    name: str,
    *,
    revision: str | None = None,
    trust_remote_code: bool = False,
    local_only: bool = False,
) -> Any:
    """The model `name` (a folder or hub id) built from its config on the meta device, as
    the trainer loads it (a causal LM, or an image-text-to-text model when it reads images);
    `local_only`: from a folder or the hub cache, never the network."""
    import torch
    from transformers import AutoConfig

    config = AutoConfig.from_pretrained(
        name, revision=revision, trust_remote_code=trust_remote_code, local_files_only=local_only
    )
    with torch.device("meta"):
        return model_class(config).from_config(config, trust_remote_code=trust_remote_code)


def model_class(config: Any) -> Any:
    """The Auto class the trainer loads a model of this config with."""
    from transformers import AutoModelForCausalLM, AutoModelForImageTextToText

    from .vision import is_vision_language

    return AutoModelForImageTextToText if is_vision_language(config) else AutoModelForCausalLM
