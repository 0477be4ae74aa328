"""What a run leaves behind besides the weights: a loss curve and base-vs-tuned answers.

`model_comparison.json` holds each evaluation prompt answered by the model before training
and after it: both come from the one model in memory, so no second copy of the base is
loaded.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any


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
    """Greedy answers to each prompt (eval mode, so dropout does not change them)."""
    import torch

    was_training = model.training
    model.eval()
    answers = []
    for prompt in prompts:
        inputs = tokenizer(_render(tokenizer, prompt), return_tensors="pt",
                           add_special_tokens=False).to(model.device)  # fmt: skip
        with torch.no_grad():
            output = model.generate(**inputs, max_new_tokens=max_new_tokens, do_sample=False,
                                    pad_token_id=tokenizer.pad_token_id)  # fmt: skip
        new_tokens = output[0][inputs["input_ids"].shape[1] :]
        answers.append(str(tokenizer.decode(new_tokens, skip_special_tokens=True)))
    model.train(was_training)
    return answers


def read_prompts(uri: str) -> list[str]:
    """A .txt file (one prompt per line) or .jsonl with a `prompt` field."""
    path = Path(uri)
    if path.suffix == ".jsonl":
        return [
            json.loads(line)["prompt"] for line in path.read_text().splitlines() if line.strip()
        ]
    return [line for line in path.read_text().splitlines() if line.strip()]


def _render(tokenizer: Any, prompt: str) -> str:
    if getattr(tokenizer, "chat_template", None):
        return str(
            tokenizer.apply_chat_template(
                [{"role": "user", "content": prompt}], tokenize=False, add_generation_prompt=True
            )
        )
    return prompt
