"""Faults the tests inject into a real run, off unless their environment variable is set.

    FINETUNE_FAULT_NAN_AT_STEP=4,5      the loss of these optimizer steps (1-based) is NaN
                                        before backward, so the gradients are NaN too, as
                                        in a real divergence; not after a rollback
    FINETUNE_FAULT_SLEEP=3:600,eval:20  sleep in the training thread: inside that step's
                                        forward, or at the start of each evaluation; first
                                        attempt only (FINETUNE_ATTEMPT unset or 0)

They go through the same code a real NaN or hang would: divergence.py and watchdog.py see
nothing special.
"""

from __future__ import annotations

import logging
import math
import os
import time
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any

log = logging.getLogger("fttrainer")

ENV_FAULT_NAN_AT_STEP = "FINETUNE_FAULT_NAN_AT_STEP"
ENV_FAULT_SLEEP = "FINETUNE_FAULT_SLEEP"
ENV_ATTEMPT = "FINETUNE_ATTEMPT"


@dataclass
class Faults:
    nan_steps: frozenset[int] = frozenset()
    sleeps: dict[str, float] = field(default_factory=dict)

    @classmethod
    def from_env(cls, environ: Mapping[str, str] = os.environ) -> Faults:
        nan = environ.get(ENV_FAULT_NAN_AT_STEP, "")
        faults = cls(nan_steps=frozenset(int(v) for v in nan.split(",") if v.strip()))
        if environ.get(ENV_ATTEMPT, "0") in ("", "0"):
            for item in environ.get(ENV_FAULT_SLEEP, "").split(","):
                where, _, seconds = item.strip().partition(":")
                if where and seconds:
                    faults.sleeps[where] = float(seconds)
        if faults.nan_steps or faults.sleeps:
            log.warning("test faults on: NaN loss at steps %s, sleeps %s",
                        sorted(faults.nan_steps), faults.sleeps)  # fmt: skip
        return faults

    def sleep(self, where: str) -> None:
        """Once per step (a step may run several forwards), at every evaluation."""
        seconds = self.sleeps.get(where)
        if where != "eval":
            self.sleeps.pop(where, None)
        if seconds:
            log.warning("test fault: sleeping %g s at %s", seconds, where)
            _sleep_for_tests(seconds)


def _sleep_for_tests(seconds: float) -> None:
    """Named so that a stack dump of a test's hang says where it is."""
    time.sleep(seconds)


def with_faults(trainer_class: type, faults: Faults) -> type:
    """`trainer_class` with the faults applied where a real fault would strike."""

    def compute_loss(self: Any, model: Any, inputs: Any, *args: Any, **kwargs: Any) -> Any:
        step = self.state.global_step + 1
        faults.sleep(str(step))
        result = super(faulty, self).compute_loss(model, inputs, *args, **kwargs)  # type: ignore[arg-type]
        if step not in faults.nan_steps:
            return result
        if isinstance(result, tuple):
            return (result[0] * math.nan, *result[1:])
        return result * math.nan

    def evaluate(self: Any, *args: Any, **kwargs: Any) -> Any:
        faults.sleep("eval")
        return super(faulty, self).evaluate(*args, **kwargs)  # type: ignore[arg-type]

    faulty: type = type(
        trainer_class.__name__, (trainer_class,),
        {"compute_loss": compute_loss, "evaluate": evaluate},
    )  # fmt: skip
    return faulty
