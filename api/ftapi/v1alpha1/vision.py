"""spec.vision: how a vision-language model's image side takes part in the fine-tune."""

from __future__ import annotations

from typing import Annotated

from pydantic import Field

from ._base import ApiModel

# Pillow's decompression-bomb bound: no image with more pixels is read at all.
MAX_IMAGE_PIXELS = 89_478_485
# Below this an image is a few patches of any vision tower (28 x 28 is one Qwen token).
MIN_IMAGE_PIXELS = 28 * 28


class VisionSpec(ApiModel):
    """The vision tower and the projector (the modules that turn an image into the language
    model's inputs) and the size images are read at. Only for a model that reads images:
    a text-only model refuses these settings before its weights load."""

    train_vision_tower: bool = False
    """Train the vision tower too: LoRA on its linear layers (lora, qlora, dora), or all
    its weights (full). Off by default, as in LLaMA-Factory (freeze_vision_tower): the
    tower is pretrained on far more images than a fine-tune brings, and adapting it costs
    memory for its activations."""
    train_projector: bool = False
    """Train the projector (the connector from the tower to the language model): all its
    weights, saved with the adapter (PEFT's modules_to_save) under a LoRA method. Off by
    default."""
    max_image_pixels: Annotated[int, Field(ge=MIN_IMAGE_PIXELS, le=MAX_IMAGE_PIXELS)] | None = None
    """Images with more pixels are scaled down (aspect ratio kept) to at most this many
    before the processor reads them, in training and in the token check alike. Bounds
    the image tokens of families whose count grows with the picture (Qwen-VL: one token
    per 28 x 28 pixels; Idefics3 and SmolVLM: tiles), hence memory and time per sample.
    Unset: the processor's own bounds."""
