"""What the images of a sample cost in tokens, as the model's processor expands them.

A prepared sample holds one `<image>` placeholder per image, and the token check measures
the sample with an image part there, as the template renders it; the processor then puts
the family's image tokens in its place (Qwen-VL: one per 28 x 28 pixels, so thousands for a
page scan; Gemma 3: 256 and its markers; Mllama: one, its pixels enter by cross-attention).
Without these a sample could pass maxSeqLength as text and be cut inside an image when it
is trained.

The cost is measured, not modelled: the processor renders a one-line conversation with a
blank picture of each distinct size (after vision.maxImagePixels), and the difference from
the same conversation with the placeholder as text is that size's cost. A family's rule
needs no table here, and what is counted is what the collator will produce.
"""

from __future__ import annotations

import hashlib
import json
from collections.abc import Iterable
from dataclasses import dataclass, field
from typing import Any

from .images import PLACEHOLDER, fit
from .vision_rows import parts

PROBE = "x"


@dataclass(frozen=True)
class ImageCosts:
    """Tokens each kept image adds to its sample beyond its placeholder's, by digest, and
    what a sample with images adds once (a processor's own special tokens)."""

    per_image: dict[str, int] = field(default_factory=dict)
    once: int = 0

    def of(self, digests: list[str]) -> int:
        """Tokens a sample's images add to its text-only length."""
        if not digests:
            return 0
        return self.once + sum(self.per_image[d] for d in digests)

    def fingerprint(self) -> str:
        text = json.dumps([self.once, sorted(self.per_image.items())])
        return hashlib.sha256(text.encode()).hexdigest()


class _Probe:
    """Measures one processor: tokens of the probe conversation by image size."""

    def __init__(self, processor: Any) -> None:
        self.processor = processor
        self.by_size: dict[tuple[int, int], int] = {}

    def text_length(self, images: int) -> int:
        """The probe with `images` placeholders, as the token check encodes it."""
        turn = {"role": "user", "content": parts(PLACEHOLDER * images + PROBE)}
        encoded = self.processor.tokenizer.apply_chat_template(
            [turn], chat_template=self.processor.chat_template, tokenize=True, return_dict=True
        )
        return len(encoded["input_ids"])

    def image_length(self, size: tuple[int, int], images: int) -> int:
        """The probe with `images` blank pictures of `size`, as TRL's collator renders it."""
        from PIL import Image

        parts: list[dict[str, Any]] = [
            {"type": "image", "image": Image.new("RGB", size)} for _ in range(images)
        ]
        turn = {"role": "user", "content": [*parts, {"type": "text", "text": PROBE}]}
        encoded = self.processor.apply_chat_template(
            [turn],
            tokenize=True,
            return_dict=True,
            processor_kwargs={"add_special_tokens": False},
        )
        return len(encoded["input_ids"][0])

    def cost(self, size: tuple[int, int]) -> int:
        """One image of `size`: what it adds beyond its placeholder."""
        if size not in self.by_size:
            self.by_size[size] = self.image_length(size, 1) - self.text_length(1)
        return self.by_size[size]


def image_costs(
    processor: Any, sizes: Iterable[tuple[str, tuple[int, int]]], max_pixels: int | None
) -> ImageCosts:
    """The cost of each image, given as (digest, its stored width and height), read at
    `max_pixels`. Measured once per distinct size; what a sample pays once whatever its
    images (e.g. a BOS the processor's path adds) is found by probing one and two images."""
    probe = _Probe(processor)
    reference = (64, 64)
    one = probe.cost(reference)
    two = probe.image_length(reference, 2) - probe.text_length(2)
    once = 2 * one - two  # two images cost `once` + 2 x each
    per_image = {
        digest: probe.cost(fit(width, height, max_pixels)) - once
        for digest, (width, height) in sizes
    }
    return ImageCosts(per_image, once)


# EXIF orientations that turn a picture a quarter (its width and height swap when read).
QUARTER_TURNS = (5, 6, 7, 8)


def stored_sizes(digests: Iterable[str], path_of: Any) -> Iterable[tuple[str, tuple[int, int]]]:
    """(digest, (width, height)) of kept images as they are read (EXIF orientation
    applied), from their headers only."""
    from PIL import Image

    for digest in digests:
        with Image.open(path_of(digest)) as image:
            width, height = image.size
            turned = image.getexif().get(0x0112) in QUARTER_TURNS
        yield digest, (height, width) if turned else (width, height)


def last_image_end(sample: dict[str, Any], tokenizer: Any, costs: ImageCosts) -> int:
    """How many tokens a sample (its turns as parts) holds up to the end of the turn with
    its last image, images expanded: a cut before that splits an image. Counts the rest of
    that turn too (its text and closing markers), so it errs toward refusing."""
    digests = sample.get("images") or []
    for key in ("messages", "prompt"):
        turns = sample.get(key)
        if not isinstance(turns, list):
            continue
        holding = [
            i
            for i, turn in enumerate(turns)
            if isinstance(turn.get("content"), list)
            and any(part.get("type") == "image" for part in turn["content"])
        ]
        if holding:
            head = turns[: holding[-1] + 1]
            encoded = tokenizer.apply_chat_template(head, tokenize=True, return_dict=True)
            return len(encoded["input_ids"]) + costs.of(digests)
    return 0
