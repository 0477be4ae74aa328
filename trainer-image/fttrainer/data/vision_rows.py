"""Prepared samples with images, as TRL's vision collators read them: each turn's text split
at its `<image>` placeholders into text and `{"type": "image"}` parts, and `images` the
pictures themselves, opened from the prepared folder when a batch is built (memory holds
one batch of images, whatever the dataset's size).

Parts carry only `type` and `text`: a part with any other key is read as an image by some
processors' templates (Qwen's) and by transformers' loader.
"""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path
from typing import Any

from .images import PLACEHOLDER, fit

TURN_FIELDS = ("messages", "prompt", "chosen", "rejected")


def parts(text: str) -> list[dict[str, str]]:
    """A turn's text as content parts, an image part at each placeholder."""
    out: list[dict[str, str]] = []
    for i, piece in enumerate(text.split(PLACEHOLDER)):
        if i:
            out.append({"type": "image"})
        if piece:
            out.append({"type": "text", "text": piece})
    return out


def with_parts(sample: dict[str, Any]) -> dict[str, Any]:
    """A sample whose turns' text is split into parts at its placeholders: as the
    processor's template renders it (some templates render only a list of parts)."""
    row = dict(sample)
    for key in TURN_FIELDS:
        turns = row.get(key)
        if isinstance(turns, list):
            row[key] = [
                {**turn, "content": parts(turn["content"])}
                if isinstance(turn.get("content"), str)
                else turn
                for turn in turns
            ]
    return row


def as_vision_row(
    sample: dict[str, Any], image_path: Callable[[str], Path], max_pixels: int | None = None
) -> dict[str, Any]:
    """One sample as TRL's vision collators read it (turns as parts, `images` opened as
    RGB pictures in order, scaled down to `max_pixels` where they have more)."""
    row = with_parts(sample)
    row["images"] = [open_picture(image_path(d), max_pixels) for d in sample.get("images") or []]
    return row


def open_picture(path: Path, max_pixels: int | None = None) -> Any:
    """A kept image as the processor reads it: EXIF orientation applied, RGB, scaled down
    to `max_pixels` where it has more."""
    from PIL import Image, ImageOps

    with Image.open(path) as image:
        picture = ImageOps.exif_transpose(image).convert("RGB")
    size = fit(*picture.size, max_pixels)
    if size != picture.size:
        picture = picture.resize(size, Image.Resampling.BICUBIC)
    return picture


def vision_transform(
    image_path: Callable[[str], Path], max_pixels: int | None = None
) -> Callable[[dict[str, list[Any]]], dict[str, list[Any]]]:
    """A `datasets` batch transform applying as_vision_row to every sample of a batch."""

    def transform(batch: dict[str, list[Any]]) -> dict[str, list[Any]]:
        keys = list(batch)
        size = len(batch[keys[0]]) if keys else 0
        rows = [
            as_vision_row({k: batch[k][i] for k in keys}, image_path, max_pixels)
            for i in range(size)
        ]
        return {k: [r.get(k) for r in rows] for k in {*keys, "images"}}

    return transform
