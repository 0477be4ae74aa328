"""Faults the tests inject into a real run, off unless their environment variable is set.

    FINETUNE_FAULT_NAN_AT_STEP=4,5      the loss of these optimizer steps (1-based) is NaN
                                        before backward, so the gradients are NaN too, as
                                        in a real divergence; not after a rollback
    FINETUNE_FAULT_SLEEP=3:600,eval:20  sleep in the training thread: inside that step's
                                        model forward, or at the start of each evaluation;
                                        `every:0.2` in every training forward (a slow
                                        rank); `imports:600` before `finetune run` imports
                                        torch (a hang before the first report); first
                                        attempt only (FINETUNE_ATTEMPT unset or 0)
    FINETUNE_FAULT_FREEZE_AT_STEP=3     the process stops itself (SIGSTOP) at the start of
                                        that step: frozen whole, as in a hung driver call
                                        holding the GIL (its own watchdog cannot run);
                                        `imports`: before `finetune run` imports torch,
                                        before its first report; first attempt only
    FINETUNE_FAULT_NAN_WEIGHTS_AT_STEP=4
                                        after that optimizer step, one trainable weight is
                                        NaN while the step's loss was finite (a bad update
                                        the loss does not show yet): the checkpoint guard's
                                        case; first attempt only
    FINETUNE_FAULT_RANK=1               the faults strike this rank only (a rank blocked
                                        before a collective, a straggler)

They go through the same code a real NaN or hang would: divergence.py and watchdog.py see
nothing special.
"""

from __future__ import annotations

import logging
import math
import os
import signal
import time
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any

log = logging.getLogger("fttrainer")

ENV_FAULT_NAN_AT_STEP = "FINETUNE_FAULT_NAN_AT_STEP"
ENV_FAULT_SLEEP = "FINETUNE_FAULT_SLEEP"
ENV_FAULT_FREEZE_AT_STEP = "FINETUNE_FAULT_FREEZE_AT_STEP"
ENV_FAULT_RANK = "FINETUNE_FAULT_RANK"
ENV_FAULT_NAN_WEIGHTS_AT_STEP = "FINETUNE_FAULT_NAN_WEIGHTS_AT_STEP"
ENV_ATTEMPT = "FINETUNE_ATTEMPT"


@dataclass
class Faults:
    nan_steps: frozenset[int] = frozenset()
    sleeps: dict[str, float] = field(default_factory=dict)
    logged: set[str] = field(default_factory=set)
    freeze_step: int | None = None
    freeze_imports: bool = False
    nan_weights_step: int | None = None

    @classmethod
    def from_env(cls, environ: Mapping[str, str] = os.environ) -> Faults:
        rank = environ.get(ENV_FAULT_RANK, "")
        if rank and rank != environ.get("RANK", "0"):
            return cls()
        nan = environ.get(ENV_FAULT_NAN_AT_STEP, "")
        faults = cls(nan_steps=frozenset(int(v) for v in nan.split(",") if v.strip()))
        if environ.get(ENV_ATTEMPT, "0") in ("", "0"):
            freeze = environ.get(ENV_FAULT_FREEZE_AT_STEP, "").strip()
            faults.freeze_step = int(freeze) if freeze.isdigit() else None
            faults.freeze_imports = freeze == "imports"
            weights = environ.get(ENV_FAULT_NAN_WEIGHTS_AT_STEP, "").strip()
            faults.nan_weights_step = int(weights) if weights else None
            for item in environ.get(ENV_FAULT_SLEEP, "").split(","):
                where, _, seconds = item.strip().partition(":")
                if where and seconds:
                    faults.sleeps[where] = float(seconds)
        if faults.nan_steps or faults.sleeps or faults.freeze_step or faults.nan_weights_step:
            log.warning(
                "test faults on: NaN loss at steps %s, sleeps %s, freeze at step %s, "
                "NaN weights after step %s",
                sorted(faults.nan_steps),
                faults.sleeps,
                faults.freeze_step,
                faults.nan_weights_step,
            )
        return faults

    @property
    def active(self) -> bool:
        """Whether a test set any fault that strikes inside training (trainer_class wraps
        the trainer class only then)."""
        return bool(self.nan_steps or self.sleeps or self.freeze_step or self.nan_weights_step)

    def sleep(self, where: str) -> None:
        """Once per step (a step may run several forwards), at every evaluation, in every
        forward ("every")."""
        seconds = self.sleeps.get(where)
        if where not in ("eval", "every"):
            self.sleeps.pop(where, None)
        if seconds:
            if where not in self.logged:
                log.warning("test fault: sleeping %g s at %s", seconds, where)
            if where == "every":
                self.logged.add(where)
            _sleep_for_tests(seconds)

    def before_imports(self) -> None:
        """The faults that strike before `finetune run` imports torch: a sleep (its watchdog
        stops it), or a freeze (nothing in the process runs: the operator's bound on the
        first report does)."""
        if self.freeze_imports:
            log.warning("test fault: the process stops itself (SIGSTOP) before its imports")
            os.kill(os.getpid(), signal.SIGSTOP)
        self.sleep("imports")

    def freeze(self, step: int) -> None:
        if step == self.freeze_step:
            self.freeze_step = None
            log.warning("test fault: the process stops itself (SIGSTOP) at step %d", step)
            os.kill(os.getpid(), signal.SIGSTOP)


def _sleep_for_tests(seconds: float) -> None:
    """Named so that a stack dump of a test's hang says where it is."""
    time.sleep(seconds)


def _poison_weights(faults: Faults) -> Any:
    """A callback that makes one trainable weight NaN at the end of the chosen step (after
    the optimizer step, before that step's checkpoint is saved)."""
    import torch
    from transformers import TrainerCallback

    class PoisonWeights(TrainerCallback):
        def on_step_end(
            self, args: Any, state: Any, control: Any, model: Any = None, **_: Any
        ) -> None:
            if model is None or state.global_step != faults.nan_weights_step:
                return
            faults.nan_weights_step = None
            weight = next(p for p in model.parameters() if p.requires_grad)
            with torch.no_grad():
                weight.view(-1)[0] = math.nan
            log.warning("test fault: a trainable weight is NaN after step %d", state.global_step)

    return PoisonWeights()


def with_faults(trainer_class: type, faults: Faults) -> type:
    """`trainer_class` with the faults applied where a real fault would strike."""

    def __init__(self: Any, *args: Any, **kwargs: Any) -> None:
        super(faulty, self).__init__(*args, **kwargs)  # type: ignore[arg-type]
        trainer = self

        def strike(module: Any, args: Any) -> None:
            # Inside the model's forward (where a slow or hung device would be, and where
            # ranks.ComputeTimer measures), a training forward's only: the base evaluation
            # computes its losses before step 1.
            if module.training:
                step = trainer.state.global_step + 1
                faults.freeze(step)
                faults.sleep(str(step))
                faults.sleep("every")

        self.model.register_forward_pre_hook(strike)
        if faults.nan_weights_step is not None:
            self.add_callback(_poison_weights(faults))

    def compute_loss(self: Any, model: Any, inputs: Any, *args: Any, **kwargs: Any) -> Any:
        step = self.state.global_step + 1
        training = bool(getattr(model, "training", True))
        result = super(faulty, self).compute_loss(model, inputs, *args, **kwargs)  # type: ignore[arg-type]
        if not training or step not in faults.nan_steps:
            return result
        if isinstance(result, tuple):
            return (result[0] * math.nan, *result[1:])
        return result * math.nan

    def evaluate(self: Any, *args: Any, **kwargs: Any) -> Any:
        faults.sleep("eval")
        return super(faulty, self).evaluate(*args, **kwargs)  # type: ignore[arg-type]

    faulty: type = type(
        trainer_class.__name__,
        (trainer_class,),
        {"__init__": __init__, "compute_loss": compute_loss, "evaluate": evaluate},
    )
    return faulty
