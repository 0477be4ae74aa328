"""Base-vs-tuned answers to the evaluation prompts (model_comparison.json).

Both sides come from the one model in memory (answered before training, then after), so no
second copy of the base is loaded. A prompt may carry images (rows of promptsUri with an
`images` list, referenced as dataset rows reference theirs): they are checked when the
prompts are read, before any training, and a vision-language model's processor renders
them with the prompt.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from fttrainer.data.images import PLACEHOLDER, ImageKeeper
from fttrainer.data.prepare import DataError
from fttrainer.data.sources import Problem, read_source
from fttrainer.data.vision_rows import open_picture, parts

from .generation import decode_answer, encode_image_prompt, generate_answer, inference


@dataclass(frozen=True)
class Prompt:
    """An evaluation prompt: its text and, for a vision-language model, its images (as
    written, and where the checked copies are kept)."""

    text: str
    images: tuple[str, ...] = ()
    paths: tuple[Path, ...] = ()


def answer_prompts(
    model: Any,
    tokenizer: Any,
    prompts: list[Prompt],
    *,
    max_new_tokens: int,
    processor: Any = None,
    max_pixels: int | None = None,
) -> list[str]:
    """Greedy answers to each prompt, asked as a user turn (with its pictures, through
    `processor`, for a vision-language model)."""
    with inference(model):
        if processor is None:
            return [
                generate_answer(model, tokenizer, _as_user(p.text), max_new_tokens=max_new_tokens)
                for p in prompts
            ]
        answers = []
        for prompt in prompts:
            pictures = [open_picture(path, max_pixels) for path in prompt.paths]
            inputs = encode_image_prompt(processor, _with_pictures(prompt.text, pictures))
            inputs = inputs.to(model.device, dtype=model.dtype)
            answers.append(decode_answer(model, tokenizer, inputs, max_new_tokens=max_new_tokens))
        return answers


def _as_user(prompt: str) -> list[dict[str, str]]:
    return [{"role": "user", "content": prompt}]


def _with_pictures(text: str, pictures: list[Any]) -> list[dict[str, Any]]:
    """A user turn of parts: the pictures at the text's `<image>` placeholders, or before
    the text when it has none (as TRL places a row's images)."""
    if PLACEHOLDER not in text:
        text = PLACEHOLDER * len(pictures) + text
    remaining = iter(pictures)
    content = [
        {"type": "image", "image": next(remaining)} if part["type"] == "image" else part
        for part in parts(text)
    ]
    return [{"role": "user", "content": content}]


def read_prompts(
    uri: str, s3_client: Any = None, images: Callable[[], ImageKeeper] | None = None
) -> list[Prompt]:
    """Prompts from a file: .txt one per line, or rows with a `prompt` (or `text`) field
    and optionally `images`; local or s3:// (with `s3_client`), read like the datasets
    (bad lines and bad images reported with file:line). `images` makes the keeper that
    checks and keeps the images."""
    raw = read_source(uri, s3_client=s3_client)
    if raw.problems:
        raise DataError(raw.problems)
    prompts: list[Prompt] = []
    problems: list[Problem] = []
    keeper: ImageKeeper | None = None
    for row in raw.rows:
        text = str(row.data.get("prompt", row.data.get("text", "")))
        refs = row.data.get("images") or []
        if not isinstance(refs, list) or not all(isinstance(r, str) for r in refs):
            problems.append(Problem(row.origin, "images: expected a list of image references"))
            continue
        if not refs:
            prompts.append(Prompt(text))
            continue
        marks = text.count(PLACEHOLDER)
        if marks not in (0, len(refs)):
            problems.append(
                Problem(
                    row.origin,
                    f"images: {len(refs)} image(s), but the prompt holds "
                    f"{marks} {PLACEHOLDER} placeholder(s)",
                )
            )
            continue
        keeper = keeper or (images() if images else None)
        if keeper is None:
            problems.append(Problem(row.origin, "images: not read here"))
            continue
        digests, bad = keeper.digests(refs, uri)
        problems += [Problem(row.origin, message) for message in bad]
        paths = tuple(keeper.folder / d for d in digests)
        prompts.append(Prompt(text, tuple(refs), paths))
    if problems:
        raise DataError(problems)
    return prompts
