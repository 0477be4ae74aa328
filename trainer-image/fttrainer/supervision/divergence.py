"""NaN and infinite losses: caught on every rank at the step they happen, before the
optimizer applies them, and acted on as `training.onNonFinite` says.

transformers, left to itself, replaces a NaN step loss by the running mean in the log
(`logging_nan_inf_filter`), steps the optimizer with NaN gradients, saves the NaN weights
as the next checkpoint and ends the run successfully. Here:

- `LossWatch.saw`, from FineTuneTrainer.training_step, notes each micro-batch's loss (a tensor: no
  device sync per micro-batch);
- callbacks.NonFiniteGuard, just before each optimizer step, asks every rank whether its
  losses or its gradients held a non-finite value (one small all-reduce) and `decide`s:
  skip the step (its gradients dropped, so the optimizer updates nothing), stop (Diverged),
  or roll back (RolledBack: the restart resumes from the newest checkpoint). Checkpoints
  are checked too: weights or optimizer state that are not finite are never saved.

Rollbacks are counted across attempts in the checkpoint store (checkpointing/store.py's
rollback record), which is also where the lowered learning rate comes from.

A finite loss far above its recent average (SpikeWatch, training.lossSpikeFactor) does not
stop anything: it is logged and reported as a warning, which the operator makes an Event.
"""

from __future__ import annotations

import logging
import math
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field
from typing import Any, Literal

from ftapi.progress import spelled

log = logging.getLogger("fttrainer")

Action = Literal["skip", "stop", "rollback"]


class Diverged(RuntimeError):
    """The run cannot go on: the loss or gradients are not finite and the spec says stop
    (or its skips or rollbacks ran out)."""


class RollBack(RuntimeError):
    """The run restarts from its newest checkpoint (training.onNonFinite rollback)."""


def decide(action: str, *, skipped_in_a_row: int, rollbacks: int, limit: int) -> Action:
    """What a non-finite step does, given what came before it. `skipped_in_a_row` and
    `rollbacks` count the earlier ones: skip allows `limit` in a row, rollback `limit` in all."""
    if action == "skip":
        return "skip" if skipped_in_a_row < limit else "stop"
    if action == "rollback":
        return "rollback" if rollbacks < limit else "stop"
    return "stop"


@dataclass
class LossWatch:
    """What the micro-batches since the last optimizer step said about their losses, and
    what the steps skipped since the last log added to the logged loss."""

    losses: list[Any] = field(default_factory=list)
    """This window's loss tensors (detached), read once per optimizer step."""
    returned: list[Any] = field(default_factory=list)
    """What training_step returned for them (what the Trainer's running sum added)."""
    last_finite: Any = None
    """The newest finite micro-batch loss (a device tensor), what the running sum adds
    instead of a non-finite one (a NaN added there would stay: see saw)."""
    step_returned: list[Any] = field(default_factory=list)
    """`returned` of the step `take` last read: what a skipped step added to the sum."""
    skipped_steps: int = 0
    """Steps skipped since the last logged loss."""
    skipped_sum: float = 0.0
    """What they added to the Trainer's running loss sum (all ranks' mean)."""
    logged_step: int = 0
    """The step of the last logged loss: the window the next one averages starts there."""
    skipped_total: int = 0
    skipped_total_sum: float = 0.0
    """The same for the whole attempt (its mean train_loss)."""

    def saw(self, loss: Any) -> Any:
        """A micro-batch's loss, as training_step returns it (the one backpropagated);
        what the Trainer's running sum is to add for it: the last finite loss, on the device
        (no sync), in place of a non-finite one. transformers resets its running sum by
        subtracting it from itself, so a NaN added there would stay; what a skipped step
        added is taken out of the log again (corrected). Before any finite loss there is
        nothing to add, and NonFiniteGuard stops the run."""
        import torch

        loss = loss.detach()
        self.losses.append(loss)
        previous = loss if self.last_finite is None else self.last_finite
        self.last_finite = torch.where(torch.isfinite(loss), loss, previous)
        self.returned.append(self.last_finite)
        return self.last_finite

    def take(self) -> list[float]:
        """The window's losses as numbers (one device sync per optimizer step), emptied."""
        values = [float(loss.float().mean().item()) for loss in self.losses]
        self.losses.clear()
        self.step_returned, self.returned = self.returned, []
        return values

    def skipped(self, added: float) -> None:
        """The step `take` last read was skipped; it added `added` to the running sum."""
        self.skipped_steps += 1
        self.skipped_sum += added
        self.skipped_total += 1
        self.skipped_total_sum += added

    def mean_loss(self, mean: float, steps: int) -> float:
        """The Trainer's mean loss over `steps` steps of this attempt without the skipped
        ones' (NaN when every step was skipped)."""
        trained = steps - self.skipped_total
        if not self.skipped_total:
            return mean
        return (mean * steps - self.skipped_total_sum) / trained if trained > 0 else math.nan

    def corrected(self, logs: dict[str, Any], step: int) -> dict[str, Any]:
        """The Trainer's log for the steps up to `step`, with the skipped ones taken out of
        its loss: the mean of the steps that trained, or no loss when none did, and
        `skipped_steps` counting them. A skipped step never reads as its neighbours' loss."""
        if "loss" not in logs:
            return logs
        steps = step - self.logged_step
        self.logged_step = step
        if not self.skipped_steps:
            return logs
        logs = dict(logs)
        trained = steps - self.skipped_steps
        if trained > 0:
            logs["loss"] = (logs["loss"] * steps - self.skipped_sum) / trained
        else:
            del logs["loss"]
        logs["skipped_steps"] = self.skipped_steps
        self.skipped_steps, self.skipped_sum = 0, 0.0
        return logs


@dataclass
class SpikeWatch:
    """Loss spikes: a step's loss above `factor` x the exponential moving average of the
    steps before it, and at least `min_rise` above it (a late loss of 0.2 that reads 0.7 is
    the noise of one small batch, not a spike). A run of spiking steps is one spike.

    No warm-up beyond one step: a learning rate set far too high shows at the second step
    (the quick start at 1.0: 6.07, then 44.5), and a healthy run's loss does not triple."""

    factor: float
    """0: off."""
    min_rise: float = 1.0
    smoothing: float = 0.1
    """Weight of each new step in the average: about the last 10 steps count."""
    average: float | None = None
    spiking: bool = False

    def observe(self, loss: float) -> float | None:
        """The average the loss spiked above, or None (no spike, or one already named)."""
        if not self.factor or not math.isfinite(loss):
            return None
        average = self.average
        self.average = loss if average is None else average + self.smoothing * (loss - average)
        spike = (
            average is not None
            and average > 0
            and loss > self.factor * average
            and loss - average >= self.min_rise
        )
        first = spike and not self.spiking
        self.spiking = spike
        return average if first else None


def gradients_finite(parameters: Iterable[Any]) -> bool:
    """Whether this rank's gradients are all finite (its shards' under FSDP; DeepSpeed keeps
    them out of reach, and the loss check covers it). One fused norm per device and dtype."""
    import torch

    grads = [_local(p.grad) for p in parameters if getattr(p, "grad", None) is not None]
    return _all_finite(grads, torch)


def tensors_finite(tensors: Iterable[Any]) -> bool:
    """Whether every floating-point tensor given is finite (weights, optimizer state)."""
    import torch

    found = [_local(t) for t in tensors if torch.is_tensor(t) and t.is_floating_point()]
    return _all_finite(found, torch)


def optimizer_tensors(optimizer: Any) -> Iterable[Any]:
    """The optimizer's state tensors (Adam's moments, ...)."""
    state = getattr(getattr(optimizer, "optimizer", optimizer), "state", {})
    for entry in state.values():
        if isinstance(entry, Mapping):
            yield from entry.values()


def _local(tensor: Any) -> Any:
    return tensor.to_local() if hasattr(tensor, "to_local") else tensor


def _all_finite(tensors: list[Any], torch: Any) -> bool:
    groups: dict[tuple[Any, Any], list[Any]] = {}
    for t in tensors:
        if t.numel():
            groups.setdefault((t.device, t.dtype), []).append(t)
    for group in groups.values():
        norms = torch._foreach_norm(group, ord=math.inf)  # max |x|: inf or NaN if any is
        if not bool(torch.isfinite(torch.stack(norms)).all()):
            return False
    return True


def describe(values: Mapping[str, float]) -> str:
    """`train_loss NaN, grad_norm Infinity`: what was not finite, as the status spells it."""
    return ", ".join(f"{k} {spelled(v)}" for k, v in values.items() if not math.isfinite(v))
