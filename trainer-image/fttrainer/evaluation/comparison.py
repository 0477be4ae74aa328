"""Base-vs-tuned answers to the evaluation prompts (model_comparison.json).

Both sides come from the one model in memory (answered before training, then after), so no
second copy of the base is loaded.
"""

from __future__ import annotations

from typing import Any

from fttrainer.data.prepare import DataError
from fttrainer.data.sources import read_source

from .generation import generate_answer, inference


def answer_prompts(
    model: Any, tokenizer: Any, prompts: list[str], *, max_new_tokens: int
) -> list[str]:
    """Greedy answers to each prompt, asked as a user turn."""
    with inference(model):
        return [
            generate_answer(model, tokenizer, _as_user(prompt), max_new_tokens=max_new_tokens)
            for prompt in prompts
        ]


def _as_user(prompt: str) -> list[dict[str, str]]:
    return [{"role": "user", "content": prompt}]


def read_prompts(uri: str, s3_client: Any = None) -> list[str]:
    """Prompts from a file: .txt one per line, or rows with a `prompt` (or `text`) field;
    local or s3:// (with `s3_client`), read like the datasets (bad lines reported with
    file:line)."""
    raw = read_source(uri, s3_client=s3_client)
    if raw.problems:
        raise DataError(raw.problems)
    return [str(row.data.get("prompt", row.data.get("text", ""))) for row in raw.rows]
