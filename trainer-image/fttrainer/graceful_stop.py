"""Stopping on SIGTERM at a step boundary, with a checkpoint, so a restart loses one step.

Kubernetes asks a pod to stop with SIGTERM (preemption, a node drain, a spot reclaim, the
job's deletion) and kills it after the pod's grace period (spec.runPolicy.
terminationGracePeriodSeconds). torchrun forwards the signal to its workers and waits for
them (TORCH_ELASTIC_SHUTDOWN_TIMEOUT, which the operator sets from the grace period).

In each worker the handler only sets a flag. At the end of the step that is running, the
ranks agree (one all-reduce of the flags: a signal may reach one node only, and saving is
collective), save a checkpoint through the usual path (the Trainer writes it, CheckpointUpload
uploads it and commits its manifest), and stop training. The run then exits with
EXIT_STOPPED instead of publishing a final model: it is not finished, and the next attempt
resumes from that checkpoint.
"""

from __future__ import annotations

import logging
import signal
import threading
from types import FrameType
from typing import Any

from transformers import TrainerCallback

log = logging.getLogger("fttrainer")


class Stopped(Exception):
    """Training stopped on SIGTERM after saving the checkpoint of `step`."""

    def __init__(self, step: int) -> None:
        super().__init__(f"stopped on SIGTERM after saving the checkpoint of step {step}")
        self.step = step


class GracefulStop(TrainerCallback):
    """Turns SIGTERM into "save at the end of this step, then stop"."""

    def __init__(self) -> None:
        self.requested = False
        self.stopped_at: int | None = None

    def install(self) -> None:
        """Handle SIGTERM in this process (only the main thread may set handlers)."""
        if threading.current_thread() is threading.main_thread():
            signal.signal(signal.SIGTERM, self._on_sigterm)

    def _on_sigterm(self, signum: int, frame: FrameType | None) -> None:
        if not self.requested:
            log.warning("SIGTERM: saving a checkpoint at the end of this step, then stopping")
        self.requested = True

    def on_step_end(self, args: Any, state: Any, control: Any, **_: Any) -> None:
        if self.stopped_at is None and _anyone(self.requested):
            control.should_save = True
            control.should_training_stop = True
            self.stopped_at = state.global_step
            log.warning("stopping at step %d: its checkpoint is saved next", state.global_step)

    def raise_if_stopped(self) -> None:
        """After Trainer.train() returned: a stopped run must not go on to publish."""
        if self.stopped_at is not None:
            raise Stopped(self.stopped_at)


def _anyone(flag: bool) -> bool:
    """True on every rank when it is True on any (one small all-reduce per step)."""
    import torch
    import torch.distributed as dist

    if not (dist.is_available() and dist.is_initialized() and dist.get_world_size() > 1):
        return flag
    device = "cuda" if dist.get_backend() == "nccl" else "cpu"
    value = torch.tensor([1 if flag else 0], dtype=torch.int32, device=device)
    dist.all_reduce(value, op=dist.ReduceOp.MAX)
    return bool(value.item())
