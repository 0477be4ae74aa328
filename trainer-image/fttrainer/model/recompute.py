"""Activation recompute (activation checkpointing) of only as many decoder layers as memory
needs. Not to be confused with training checkpoints (checkpointing/).

transformers recomputes every decoder layer or none (its `every_n_layers` steps through 1,
1/2, 1/3... of them, nothing between half and all). For LoRA, where the frozen base gets no
weight gradients, backward costs about one forward, so recomputing a layer's forward adds a
third to that layer's step. A GPU run with training.gradientCheckpointing unset asks the
memory plan for the fewest layers to recompute that fit the device
(fttrainer.model.memory_plan.recomputed_layers_to_fit, decided in fttrainer.arguments); when
that is some but not all, `callbacks.RecomputeFirstLayers` leaves only the first that many
recomputing once the Trainer has switched recompute on everywhere. Megatron-LM's block
recompute (`--recompute-num-layers`) makes the same trade.

The first layers, not spread ones: backward reaches the last layers (not recomputed) first
and frees their activations before any recompute, so the peak is what the plan counts.
"""

from __future__ import annotations

from typing import Any


def decoder_layers(model: Any) -> list[Any]:
    """The model's repeated blocks that transformers can recompute, in forward order
    (through PEFT, FSDP2 and DeepSpeed wrappers alike: those subclass or contain them)."""
    from transformers.modeling_layers import GradientCheckpointingLayer

    return [m for m in model.modules() if isinstance(m, GradientCheckpointingLayer)]


def recomputed_layers(model: Any) -> tuple[int, int]:
    """(layers that recompute their forward in backward, decoder layers)."""
    layers = decoder_layers(model)
    return sum(bool(layer.gradient_checkpointing) for layer in layers), len(layers)
