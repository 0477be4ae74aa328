"""The trainer class a run trains with: TRL's (SFTTrainer, DPOTrainer, ...) under one named
subclass, FineTuneTrainer, whose hooks are what this project adds to TRL's training loop,
each delegated to the room that owns it:

    __init__          ranks.ComputeTimer times the training forward passes
    training_step     divergence.LossWatch sees each micro-batch's loss
    log               the evaluation's log hooks (perplexity, MCQ scores), then the losses
                      of skipped steps taken out of the logged loss (LossWatch.corrected)
    evaluate          an evaluation is a watchdog phase of its own ("evaluating")
    _save_checkpoint  so is a checkpoint save ("saving")

A test's injected faults (supervision/faults.py) wrap TRL's class beneath it, and only when
a test sets them: the product path has none.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

from .evaluation.metrics import LogHook
from .supervision.divergence import LossWatch
from .supervision.faults import Faults, with_faults
from .supervision.ranks import ComputeTimer
from .supervision.watchdog import Watchdog


@dataclass(frozen=True)
class TrainerHooks:
    """What FineTuneTrainer's hooks report to."""

    watchdog: Watchdog
    loss_watch: LossWatch
    compute_timer: ComputeTimer
    log_hooks: Sequence[LogHook] = ()


class FineTuneTrainer:
    """Mixed in before TRL's trainer class (trainer_class() builds the pair); `hooks` is
    set on the built class."""

    hooks: TrainerHooks

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        # Once the trainer has wrapped the model (PEFT), before it is prepared for
        # distribution (DDP wraps it later).
        self.hooks.compute_timer.attach(self.model)  # type: ignore[attr-defined]

    def training_step(self, *args: Any, **kwargs: Any) -> Any:
        # Its return is the loss that was backpropagated, and what the Trainer's running
        # sum adds: the watch substitutes the last finite one for a non-finite loss.
        loss = super().training_step(*args, **kwargs)  # type: ignore[misc]
        return self.hooks.loss_watch.saw(loss)

    def log(self, logs: dict[str, Any], start_time: float | None = None) -> None:
        # The one hook every evaluation goes through before the history, the trackers, the
        # callbacks (the progress report) and the caller see it (its docstring invites
        # overriding it); it runs on every process, so a hook that runs the model works
        # under ZeRO-3 and FSDP too.
        for hook in self.hooks.log_hooks:
            hook(self, logs)
        logs = self.hooks.loss_watch.corrected(logs, self.state.global_step)  # type: ignore[attr-defined]
        super().log(logs, start_time)  # type: ignore[misc]

    def evaluate(self, *args: Any, **kwargs: Any) -> Any:
        with self.hooks.watchdog.phase_of("evaluating"):
            return super().evaluate(*args, **kwargs)  # type: ignore[misc]

    def _save_checkpoint(self, *args: Any, **kwargs: Any) -> Any:
        with self.hooks.watchdog.phase_of("saving"):
            return super()._save_checkpoint(*args, **kwargs)  # type: ignore[misc]


def trainer_class(base: type, hooks: TrainerHooks, faults: Faults | None = None) -> type:
    """FineTune<base>: FineTuneTrainer over TRL's `base` (over the test faults' wrapper of it
    when a test set faults)."""
    if faults is not None and faults.active:
        base = with_faults(base, faults)
    return type(f"FineTune{base.__name__}", (FineTuneTrainer, base), {"hooks": hooks})
