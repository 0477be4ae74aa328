"""Trainer callbacks of our own."""

from __future__ import annotations

from typing import Any

from transformers import TrainerCallback


class EarlyStopping(TrainerCallback):
    """Stop when the watched evaluation metric has not improved `patience` times in a row.

    transformers' EarlyStoppingCallback insists on load_best_model_at_end (and so on its own
    checkpointing); this one only watches the metric."""

    def __init__(self, metric: str, patience: int, threshold: float) -> None:
        self.metric = metric
        self.patience = patience
        self.threshold = threshold
        self.higher_is_better = "accuracy" in metric
        self.best: float | None = None
        self.misses = 0
        self.stopped_at: int | None = None

    def on_evaluate(self, args: Any, state: Any, control: Any, metrics: Any = None,
                    **_: Any) -> None:  # fmt: skip
        value = (metrics or {}).get(self.metric)
        if value is None:
            return
        improved = self.best is None or (
            value > self.best + self.threshold
            if self.higher_is_better
            else value < self.best - self.threshold
        )
        if improved:
            self.best, self.misses = value, 0
            return
        self.misses += 1
        if self.misses >= self.patience:
            control.should_training_stop = True
            self.stopped_at = state.global_step
