"""What a run leaves behind besides the weights and metrics: the loss curve."""

from __future__ import annotations

from pathlib import Path
from typing import Any


def plot_loss_curve(
    step_metrics: list[dict[str, Any]], eval_metrics: list[dict[str, Any]], path: Path
) -> Path | None:
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
