"""What a run leaves behind besides the weights: a loss curve and base-vs-tuned answers.

`model_comparison.json` holds each evaluation prompt answered by the model before training
and after it: both come from the one model in memory, so no second copy of the base is
loaded.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

from .data.prepare import DataError
from .data.sources import read_source
from .generation import generate_answer, inference


def plot_loss_curve(step_metrics: list[dict[str, Any]], eval_metrics: list[dict[str, Any]],
                    path: Path) -> Path | None:  # fmt: skip
    """A PNG of training (and validation) loss by step; None when nothing was logged."""
    train = [(m["step"], m["loss"]) for m in step_metrics if "loss" in m and "step" in m]
    if not train:
        return None
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    figure, axes = plt.subplots(figsize=(7, 4))
    axes.plot(*zip(*train, strict=True), label="train loss")
    evaluation = [(m["step"], m["eval_loss"]) for m in eval_metrics if "eval_loss" in m]
    if evaluation:
        axes.plot(*zip(*evaluation, strict=True), marker="o", label="validation loss")
    axes.set_xlabel("optimizer step")
    axes.set_ylabel("loss")
    axes.grid(alpha=0.3)
    axes.legend()
    figure.tight_layout()
    figure.savefig(path, dpi=100)
    plt.close(figure)
    return path


def answer_prompts(model: Any, tokenizer: Any, prompts: list[str], *,
                   max_new_tokens: int) -> list[str]:  # fmt: skip
    """Greedy answers to each prompt, asked as a user turn."""
    with inference(model):
        return [
            generate_answer(model, tokenizer, _as_user(prompt), max_new_tokens=max_new_tokens)
            for prompt in prompts
        ]


def _as_user(prompt: str) -> list[dict[str, str]]:
    return [{"role": "user", "content": prompt}]


def read_prompts(uri: str) -> list[str]:
    """Prompts from a file: .txt one per line, or rows with a `prompt` (or `text`) field;
    local or s3://, read like the datasets (bad lines reported with file:line)."""
    raw = read_source(uri)
    if raw.problems:
        raise DataError(raw.problems)
    return [str(row.data.get("prompt", row.data.get("text", ""))) for row in raw.rows]
