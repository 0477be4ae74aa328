"""Every TrainerCallback of ours, in one place: each is a thin adapter from the Trainer's
events to the module that does the work.

The recipe adds them in this order, and the order matters (callbacks run in the order they
were added, so on_save of one sees what the ones before it did):

    StallWatch            when training runs and each step's end, for the stall watchdog
                          (supervision/watchdog.py) and this rank's report (supervision/ranks.py)
    NonFiniteGuard        a NaN/inf loss or gradient before the optimizer step (and loss
                          spikes), and a checkpoint with non-finite weights, before
                          anything saves it (supervision/divergence.py) ...
    TrackerIds            write the tracker runs' ids into the checkpoint
                          (reporting/tracking.py) ...
    CheckpointUpload      ... before it is uploaded and its manifest committed (checkpointing/)
    ProgressCallback      ... and only then reported in the job's status (reporting/progress.py)
    GracefulStop          SIGTERM: save at the end of this step, then stop
    RecomputeFirstLayers  activation recompute on the first N decoder layers only
                          (model/recompute.py)
    EarlyStopping         stop when the watched evaluation metric stops improving (joins
                          after the base evaluation)

Stopping on SIGTERM at a step boundary, with a checkpoint, so a restart loses one step:

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

import json
import logging
import math
import shutil
import signal
import threading
from pathlib import Path
from types import FrameType
from typing import Any, Protocol

from transformers import TrainerCallback

from .checkpointing.protocol import Manifest, best, checkpoint_name
from .checkpointing.resume import barrier, gathered, metrics_at
from .checkpointing.store import CheckpointStore
from .model.recompute import decoder_layers
from .reporting.progress import ProgressReporter
from .reporting.tracking import TRACKERS_FILE, TrackerRuns
from .startup import StartupClock
from .supervision.divergence import (
    Diverged,
    LossWatch,
    RollBack,
    SpikeWatch,
    decide,
    describe,
    gradients_finite,
    optimizer_tensors,
    tensors_finite,
)
from .supervision.faults import Faults
from .supervision.ranks import ComputeTimer, RankReporter
from .supervision.watchdog import Watchdog

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


def _reduced(value: float, op: str) -> tuple[float, int]:
    """`value` reduced over the ranks by `op` ("sum" or "max"), and the number of ranks (1
    outside a distributed run: the value as it is)."""
    import torch
    import torch.distributed as dist

    if not (dist.is_available() and dist.is_initialized() and dist.get_world_size() > 1):
        return value, 1
    device = "cuda" if dist.get_backend() == "nccl" else "cpu"
    tensor = torch.tensor([value], dtype=torch.float64, device=device)
    dist.all_reduce(tensor, op=dist.ReduceOp.SUM if op == "sum" else dist.ReduceOp.MAX)
    return float(tensor.item()), dist.get_world_size()


def _mean(value: float) -> float:
    """The mean of `value` over the ranks (the Trainer logs the ranks' mean loss)."""
    total, ranks = _reduced(value, "sum")
    return total / ranks


def _anyone(flag: bool) -> bool:
    """True on every rank when it is True on any (one small all-reduce per step)."""
    return bool(_reduced(1.0 if flag else 0.0, "max")[0])


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

    def on_evaluate(
        self, args: Any, state: Any, control: Any, metrics: Any = None, **_: Any
    ) -> None:
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
            control.should_save = True  # the end of training is a checkpoint (CheckpointUpload)
            self.stopped_at = state.global_step


class RecomputeFirstLayers(TrainerCallback):
    """Leave activation recompute on for the first `layers` decoder layers only.

    The Trainer switches recompute on in `train()`, before `on_train_begin` (also on
    resume), so the flags set here are the ones training runs with."""

    def __init__(self, layers: int) -> None:
        self.layers = layers

    def on_train_begin(self, args: Any, state: Any, control: Any, **kwargs: Any) -> None:
        model = kwargs.get("model")
        blocks = decoder_layers(model) if model is not None else []
        if not any(block.gradient_checkpointing for block in blocks):
            log.warning(
                "activation recompute of %d layers asked, but no decoder layer of this "
                "model recomputes: leaving it as it is",
                self.layers,
            )
            return
        for index, block in enumerate(blocks):
            block.gradient_checkpointing = index < self.layers
        log.info(
            "activation recompute on the first %d of %d decoder layers",
            min(self.layers, len(blocks)),
            len(blocks),
        )


class RollbackRecorder(Protocol):
    def __call__(self, *, step: int, resume_from: int | None, message: str) -> None: ...


class NonFiniteGuard(TrainerCallback):
    """training.onNonFinite on every rank: before each optimizer step, whether any rank's
    losses or gradients were not finite (one all-reduce), and the action `decide` picks;
    before each checkpoint is uploaded, whether the weights and optimizer state it holds
    are finite (never a resume point otherwise). Add it first: its on_save must run before
    CheckpointUpload's."""

    def __init__(
        self,
        watch: LossWatch,
        reporter: ProgressReporter,
        *,
        action: str,
        limit: int,
        learning_rate_factor: float,
        record_rollback: RollbackRecorder,
        faults: Faults,
        spikes: SpikeWatch | None = None,
    ) -> None:
        self.watch = watch
        self.spikes = spikes or SpikeWatch(0.0)
        self.faults = faults
        self.reporter = reporter
        self.action = action
        self.limit = limit
        self.learning_rate_factor = learning_rate_factor
        self.record_rollback = record_rollback
        self.rollbacks = 0  # earlier attempts' (prepare)
        self.skipped_in_a_row = 0
        self.skipped = 0
        self.last_finite: tuple[int, float] | None = None
        self.last_checkpoint: int | None = None

    def prepare(self, *, rollbacks: int, resumed_step: int | None) -> None:
        """Before training: the rollbacks earlier attempts made (from the checkpoint store)
        and the step this attempt resumes from."""
        self.rollbacks = rollbacks
        self.last_checkpoint = resumed_step
        if rollbacks:
            self.faults.nan_steps = frozenset()  # the test fault strikes once per job

    def on_train_begin(
        self,
        args: Any,
        state: Any,
        control: Any,
        optimizer: Any = None,
        lr_scheduler: Any = None,
        **_: Any,
    ) -> None:
        """After a rollback the learning rate is lowered here: the optimizer and scheduler
        were just restored from the checkpoint with the old one."""
        self.watch.logged_step = state.global_step  # a resumed run logs from its step
        factor = self.learning_rate_factor**self.rollbacks
        if factor == 1.0 or optimizer is None:
            return
        for group in optimizer.param_groups:
            group["lr"] *= factor
            if "initial_lr" in group:
                group["initial_lr"] *= factor
        for name in ("base_lrs", "_last_lr"):  # what the schedule scales, what is logged
            if isinstance(getattr(lr_scheduler, name, None), list):
                setattr(lr_scheduler, name, [lr * factor for lr in getattr(lr_scheduler, name)])
        log.warning(
            "rollback %d: learning rate x%g (training.rollbackLearningRateFactor)",
            self.rollbacks,
            factor,
        )

    def on_pre_optimizer_step(
        self,
        args: Any,
        state: Any,
        control: Any,
        model: Any = None,
        optimizer: Any = None,
        **_: Any,
    ) -> None:
        step = state.global_step + 1
        losses = self.watch.take()
        loss = sum(losses) / len(losses) if losses else math.nan
        values = {"train_loss": loss}
        if model is not None and not gradients_finite(model.parameters()):
            values["grad_norm"] = math.nan
        if not _anyone(not all(math.isfinite(v) for v in values.values())):
            self.skipped_in_a_row = 0
            if losses:
                self.last_finite = (step, loss)
                self._spike(step, loss, main=bool(state.is_world_process_zero))
            return
        if all(math.isfinite(v) for v in values.values()):
            values = {}  # finite here: another rank's were not
        self._act(step, values, state, optimizer=optimizer, model=model)

    def _spike(self, step: int, loss: float, *, main: bool) -> None:
        average = self.spikes.observe(loss)
        if average is None or not main:
            return
        message = (
            f"step {step}: training loss {loss:.4g} is {loss / average:.1f}x its "
            f"moving average {average:.4g} (training.lossSpikeFactor "
            f"{self.spikes.factor:g}); a learning rate too high often shows so"
        )
        log.warning("loss spike: %s", message)
        self.reporter.warned(reason="LossSpike", step=step, message=message)

    def _act(
        self, step: int, values: dict[str, float], state: Any, *, optimizer: Any, model: Any
    ) -> None:
        what = describe(values) or "not finite on another rank"
        choice = decide(
            self.action,
            skipped_in_a_row=self.skipped_in_a_row,
            rollbacks=self.rollbacks,
            limit=self.limit,
        )
        if choice == "skip" and self.last_finite is None:
            choice = "stop"  # no finite step yet in this attempt: nothing to go on from
        main = bool(state.is_world_process_zero)
        if choice == "skip":
            for holder in (optimizer, model):
                if holder is not None:
                    holder.zero_grad(set_to_none=True)  # the optimizer skips what has no grad
            self.skipped_in_a_row += 1
            self.skipped += 1
            added = sum(float(value.float().mean().item()) for value in self.watch.step_returned)
            self.watch.skipped(_mean(added))
            log.warning(
                "step %d: %s: its batch is skipped (%d in a row, %d in all; "
                "training.nonFiniteLimit %d)",
                step,
                what,
                self.skipped_in_a_row,
                self.skipped,
                self.limit,
            )
            if main:
                self.reporter.non_finite_step(values, step=step, skipped=True)
            return
        last = (
            f"last finite loss {self.last_finite[1]:.4g} at step {self.last_finite[0]}"
            if self.last_finite
            else "no finite loss in this attempt"
        )
        message = f"step {step}: {what} ({last})"
        if self.action == "skip" and self.skipped_in_a_row >= self.limit:
            message += f"; {self.skipped_in_a_row} steps skipped in a row before it"
        elif self.action == "skip":
            message += "; no finite step in this attempt to go on from"
        self._fail(step, message, values, choice, main)

    def _fail(
        self, step: int, message: str, values: dict[str, float], choice: str, main: bool
    ) -> None:
        if choice == "rollback":
            message += (
                f"; rolling back to checkpoint step {self.last_checkpoint} "
                f"({self.rollbacks + 1} of {self.limit})"
                if self.last_checkpoint is not None
                else "; rolling back to the start (no checkpoint yet)"
            )
            if main:
                self.record_rollback(step=step, resume_from=self.last_checkpoint, message=message)
        elif self.action == "rollback":
            message += f"; {self.rollbacks} rollbacks already (training.nonFiniteLimit)"
        log.error("%s", message)
        if main:
            self.reporter.non_finite_step(values, step=step, skipped=False, flush=True)
        raise RollBack(message) if choice == "rollback" else Diverged(message)

    def on_save(
        self,
        args: Any,
        state: Any,
        control: Any,
        model: Any = None,
        optimizer: Any = None,
        **_: Any,
    ) -> None:
        step = state.global_step
        finite = (model is None or tensors_finite(model.parameters())) and (
            optimizer is None or tensors_finite(optimizer_tensors(optimizer))
        )
        if not _anyone(not finite):
            self.last_checkpoint = step
            return
        folder = Path(args.output_dir) / checkpoint_name(step)
        if state.is_local_process_zero:
            shutil.rmtree(folder, ignore_errors=True)  # never uploaded, never resumed from
        choice = "rollback" if self.action == "rollback" and self.rollbacks < self.limit else "stop"
        message = (
            f"step {step}: the weights or optimizer state are not finite; checkpoint "
            f"{folder.name} was not saved"
        )
        self._fail(step, message, {}, choice, bool(state.is_world_process_zero))


class StallWatch(TrainerCallback):
    """Tells the process's Watchdog (supervision/watchdog.py) when training runs and each step's end
    (evaluations and checkpoint saves are phases of their own: trainer_class.FineTuneTrainer),
    and this rank's report (supervision/ranks.py) each step's wall and forward time."""

    def __init__(self, watchdog: Watchdog, ranks: RankReporter, timer: ComputeTimer) -> None:
        self.watchdog = watchdog
        self.ranks = ranks
        self.timer = timer

    def on_train_begin(self, args: Any, state: Any, control: Any, **_: Any) -> None:
        self.watchdog.began_training()

    def on_train_end(self, args: Any, state: Any, control: Any, **_: Any) -> None:
        self.watchdog.training = False

    def on_step_end(self, args: Any, state: Any, control: Any, **_: Any) -> None:
        took = self.watchdog.stepped(state.global_step)
        self.ranks.stepped(state.global_step, step_seconds=took, compute_seconds=self.timer.take())


class TrackerIds(TrainerCallback):
    """Records the tracker runs' ids in each checkpoint before CheckpointUpload uploads it
    (so it must come before that callback)."""

    def __init__(self, runs: TrackerRuns) -> None:
        self.runs = runs

    def on_save(self, args: Any, state: Any, control: Any, **_: Any) -> None:
        if state.is_world_process_zero and self.runs.ids:
            folder = Path(args.output_dir) / checkpoint_name(state.global_step)
            (folder / TRACKERS_FILE).write_text(json.dumps(self.runs.ids, sort_keys=True))


class CheckpointUpload(TrainerCallback):
    """After the Trainer writes checkpoint-<step>/ locally: upload, manifest, retention."""

    def __init__(self, checkpoints: CheckpointStore, keep: int, *, keep_best: bool) -> None:
        self.checkpoints = checkpoints
        self.keep = keep
        self.keep_best = keep_best  # output.finalModel best: retention spares the best one
        # Rank 0, for the progress report: the newest committed checkpoint, and how many
        # complete ones retention kept.
        self.latest: Manifest | None = None
        self.kept = 0

    def on_step_end(self, args: Any, state: Any, control: Any, **_: Any) -> None:
        """Training always ends on a checkpoint: a restart after it (a publish that failed,
        a kill while evaluating) resumes there and trains nothing again."""
        if state.max_steps > 0 and state.global_step >= state.max_steps:
            control.should_save = True

    def on_save(self, args: Any, state: Any, control: Any, **_: Any) -> None:
        step = state.global_step
        folder = Path(args.output_dir) / checkpoint_name(step)
        uploaded = []
        if state.is_local_process_zero:
            log.info("uploading %s", folder.name)
            uploaded = self.checkpoints.upload_files(step, folder)
        uploaded = gathered(uploaded)
        if state.is_world_process_zero:
            self.latest = self.checkpoints.save(
                step,
                folder,
                metrics=metrics_at(state.log_history, step),
                epoch=state.epoch,
                uploaded=uploaded,
            )
            complete = self.checkpoints.complete()
            protect = best(complete) if self.keep_best else None
            doomed = self.checkpoints.retain(self.keep, protect=protect.step if protect else None)
            self.kept = sum(1 for manifest in complete if manifest.step not in doomed)
        barrier()  # no rank runs ahead into a step whose checkpoint is not committed


class FirstStep(TrainerCallback):
    """Times the first optimizer step of the attempt, then reports where the time before it
    went (status.startup, result.json)."""

    def __init__(self, clock: StartupClock, reporter: ProgressReporter) -> None:
        self.clock = clock
        self.reporter = reporter
        self.done = False

    def on_train_begin(self, args: Any, state: Any, control: Any, **_: Any) -> None:
        self.clock.training_started()

    def on_step_end(self, args: Any, state: Any, control: Any, **_: Any) -> None:
        if self.done:
            return
        self.done = True
        startup = self.clock.first_step_done()
        log.info("startup: %s", startup.to_dict())
        if state.is_world_process_zero:
            self.reporter.started_up(startup)


class ProgressCallback(TrainerCallback):
    """Feeds the Trainer's events to the reporter, on the world's rank 0 only.

    Add it after CheckpointUpload: callbacks run in the order they were added, and a
    checkpoint is reported only once its manifest is written."""

    def __init__(self, reporter: ProgressReporter, upload: CheckpointUpload | None = None) -> None:
        self.reporter = reporter
        self.upload = upload

    def _reporting(self, state: Any) -> bool:
        return self.reporter.enabled and bool(state.is_world_process_zero)

    def on_train_begin(self, args: Any, state: Any, control: Any, **_: Any) -> None:
        if self._reporting(state):
            self.reporter.training_started(
                step=state.global_step,
                total_steps=state.max_steps,
                epoch=state.epoch,
                tokens_seen=float(getattr(state, "num_input_tokens_seen", 0) or 0),
            )

    def on_step_end(self, args: Any, state: Any, control: Any, **_: Any) -> None:
        if self._reporting(state):
            # The flow callbacks (before ours) have decided what follows this step.
            follows = control.should_log or control.should_evaluate or control.should_save
            self.reporter.stepped(step=state.global_step, epoch=state.epoch, send=not follows)
            self._evaluation_next(control)

    def on_epoch_end(self, args: Any, state: Any, control: Any, **_: Any) -> None:
        if self._reporting(state):
            self._evaluation_next(control)

    def _evaluation_next(self, control: Any) -> None:
        """The flow callbacks decided to evaluate now: say so, an evaluation can take long.
        on_evaluate turns the stage back to training."""
        if control.should_evaluate and self.reporter.stage == "training":
            self.reporter.report_stage("evaluating")

    def on_log(self, args: Any, state: Any, control: Any, logs: Any = None, **_: Any) -> None:
        if self._reporting(state) and logs:
            self.reporter.logged(logs, step=state.global_step, epoch=state.epoch)

    def on_evaluate(
        self, args: Any, state: Any, control: Any, metrics: Any = None, **_: Any
    ) -> None:
        if self._reporting(state) and metrics:
            self.reporter.evaluated(metrics, step=state.global_step, epoch=state.epoch)

    def on_save(self, args: Any, state: Any, control: Any, **_: Any) -> None:
        if not self._reporting(state) or self.upload is None or self.upload.latest is None:
            return
        latest = self.upload.latest
        uri = f"{self.upload.checkpoints.uri}/{checkpoint_name(latest.step)}"
        self.reporter.checkpointed(uri=uri, step=latest.step, count=self.upload.kept)

    def on_train_end(self, args: Any, state: Any, control: Any, **_: Any) -> None:
        if self._reporting(state):
            self.reporter.stepped(step=state.global_step, epoch=state.epoch, force=True)
