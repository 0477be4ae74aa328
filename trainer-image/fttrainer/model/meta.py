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
    """The causal LM `name` (a folder or hub id) built from its config on the meta device;
    `local_only`: from a folder or the hub cache, never the network."""
    import torch
    from transformers import AutoConfig, AutoModelForCausalLM

    config = AutoConfig.from_pretrained(
        name, revision=revision, trust_remote_code=trust_remote_code, local_files_only=local_only
    )
    with torch.device("meta"):
        return AutoModelForCausalLM.from_config(config, trust_remote_code=trust_remote_code)  # type: ignore[no-untyped-call]
