"""A run that stops making progress is stopped, with the stacks that say where.

Each `finetune run` process (each rank) runs one Watchdog thread, started before the heavy
imports (torch, transformers), so a process that hangs while importing, initialising CUDA
or joining the other ranks is stopped too. The training thread tells it which phase it is
in and when progress happened (callbacks.StallWatch: training began, an optimizer step
ended; FineTuneTrainer through phase_of: an evaluation or a checkpoint save during training;
the recipe: the final evaluation, save and publish); the watchdog holds each phase to its
deadline from runPolicy.stallDetection (an evaluation or a save inside the starting or
first-step phase pauses that phase's clock: each has its own budget):

    starting     process start -> the start of training (imports, rendezvous,
                 model and data; `note` says which)                       startupSeconds
    first-step   the start of training -> the end of the first step      firstStepSeconds
    step         each later step: stepTimeFactor x this attempt's median step,
                 at least minimumSeconds
    evaluating   each evaluation (the final one and its task scores too)  evaluationSeconds
    saving       each checkpoint's save and upload, the final save and publish
                                                                         checkpointSeconds

Past the deadline it writes the Python stacks of every thread (faulthandler: no lock, no
allocation, so it works when the training thread holds the GIL in C code or a lock) to
stderr, then, in a distributed run, the last collectives of PyTorch's flight recorder (NCCL
or gloo: which ones this rank started and which never completed), records the Stalled
verdict with the stuck thread's innermost frames and the collective in flight where the
operator reads it (termination.py), and ends the process at once (os._exit: a hung thread
would block a normal exit). The operator restarts the job from its newest checkpoint.

A rank blocked before a collective leaves the others waiting inside it: every rank's
watchdog fires, and the stacks name the collective on the waiting ranks and the blocking
call on the blocked one.
"""

from __future__ import annotations

import faulthandler
import json
import logging
import os
import statistics
import sys
import threading
import time
import traceback
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from typing import Any, Literal

from ftapi.contract import STALLED
from ftapi.v1alpha1.scheduling import StallDetection
from fttrainer.termination import record

log = logging.getLogger("fttrainer")

Phase = Literal["starting", "first-step", "step", "evaluating", "saving"]

# How many of the stuck thread's innermost frames the termination message names.
FRAMES_NAMED = 4


@dataclass
class Deadlines:
    """runPolicy.stallDetection as the watchdog applies it (pure: tested without threads)."""

    spec: StallDetection
    step_seconds: list[float] = field(default_factory=list)

    @property
    def median_step(self) -> float:
        return statistics.median(self.step_seconds) if self.step_seconds else 0.0

    def of(self, phase: Phase) -> float:
        if phase == "starting":
            return float(self.spec.startup_seconds)
        if phase == "first-step":
            return float(self.spec.first_step_seconds)
        if phase == "evaluating":
            return float(self.spec.evaluation_seconds)
        if phase == "saving":
            return float(self.spec.checkpoint_seconds)
        return max(float(self.spec.minimum_seconds), self.spec.step_time_factor * self.median_step)

    def explain(self, phase: Phase) -> str:
        if phase == "starting":
            return "runPolicy.stallDetection.startupSeconds"
        if phase == "first-step":
            return "runPolicy.stallDetection.firstStepSeconds"
        if phase == "evaluating":
            return "runPolicy.stallDetection.evaluationSeconds"
        if phase == "saving":
            return "runPolicy.stallDetection.checkpointSeconds"
        return (
            f"stepTimeFactor {self.spec.step_time_factor:g} x the median step "
            f"{self.median_step:.3g} s, at least minimumSeconds "
            f"{self.spec.minimum_seconds}"
        )


class Watchdog:
    """One per process; `enter` and `stepped` are called from the training thread."""

    def __init__(
        self,
        spec: StallDetection,
        *,
        clock: Callable[[], float] = time.monotonic,
        on_stall: Callable[[str], None] | None = None,
        poll: float = 1.0,
    ) -> None:
        self.deadlines = Deadlines(spec)
        self.enabled = spec.enabled
        self.clock = clock
        self.poll = poll
        self.on_stall = on_stall or self._stop_reporting
        # Where the verdict and the training thread's stack go before the process exits
        # besides the log (the recipe: this rank's report, ranks.RankReporter.stalled).
        self.report_stall: Callable[[str], None] | None = None
        self.phase: Phase = "starting"
        self.since = clock()
        self.doing = "loading the model and data"
        """What the starting phase is doing (`note`): named when it runs past its deadline."""
        self.on_deadline: Callable[[float], None] | None = None
        """Told each new phase's deadline (CollectiveTimeout.follow)."""
        self._told: float | None = None
        self.training = False  # between the Trainer's on_train_begin and on_train_end
        self.step = 0
        # The starting or first-step phase an evaluation or a save interrupted, and how
        # long it had run: resume() goes on with it from there.
        self._paused: tuple[Phase, float] | None = None
        self.main_thread = threading.main_thread()
        self._lock = threading.Lock()
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None

    def start(self) -> Watchdog:
        if self.enabled and self._thread is None:
            self._thread = threading.Thread(
                target=self._watch, name="fttrainer-watchdog", daemon=True
            )
            self._thread.start()
        return self

    def close(self) -> None:
        self._stop.set()

    def enter(self, phase: Phase) -> None:
        """A new phase starts now (its own deadline)."""
        with self._lock:
            now = self.clock()
            if self.phase in ("starting", "first-step") and phase in ("evaluating", "saving"):
                self._paused = (self.phase, now - self.since)
            self.phase, self.since = phase, now
        self._tell()

    @contextmanager
    def phase_of(self, phase: Literal["evaluating", "saving"]) -> Iterator[None]:
        """An evaluation or a checkpoint save as a phase of its own, whoever decided on it
        (the base evaluation, the save steps, the last step, a SIGTERM, early stopping).
        After training an evaluation runs in the phase the recipe set for it (the final
        evaluation and its task scores)."""
        if phase == "evaluating" and not self.training and self.phase != "starting":
            yield
            return
        self.enter(phase)
        try:
            yield
        finally:
            self.resume()

    def note(self, doing: str) -> None:
        """What the starting phase does now (importing the libraries, joining the other
        ranks, downloading the model...): the verdict names it. The clock goes on."""
        with self._lock:
            self.doing = doing

    def began_training(self) -> None:
        """The Trainer's on_train_begin: loading is over, the first step's budget starts."""
        with self._lock:
            self.training = True
            if self.step == 0:
                self.phase, self.since, self._paused = "first-step", self.clock(), None
        self._tell()

    def resume(self) -> None:
        """An evaluation or a checkpoint ended: the next step starts now, or the starting
        or first-step phase it interrupted goes on where it was."""
        with self._lock:
            now = self.clock()
            if self.step > 0:
                self.phase, self.since = "step", now
            elif self._paused is not None:
                phase, ran = self._paused
                self.phase, self.since, self._paused = phase, now - ran, None
            else:
                self.phase, self.since = "starting", now
        self._tell()

    def stepped(self, step: int) -> float | None:
        """An optimizer step ended: the next one starts now. Its wall time (None for the
        first, whose time is the startup's)."""
        with self._lock:
            now = self.clock()
            took = None
            if self.phase == "step":  # a whole step, not the end of the startup phase
                took = now - self.since
                self.deadlines.step_seconds.append(took)
                del self.deadlines.step_seconds[:-1000]  # the median of the recent ones
            self.phase, self.since, self.step = "step", now, step
        self._tell()
        return took

    def _tell(self) -> None:
        """on_deadline, when the current phase's deadline moved by a second or more."""
        if self.on_deadline is None:
            return
        with self._lock:
            deadline = self.deadlines.of(self.phase)
        if self._told is None or abs(deadline - self._told) >= 1.0:
            self._told = deadline
            self.on_deadline(deadline)

    def overdue(self) -> str | None:
        """Why the current phase is past its deadline, or None."""
        with self._lock:
            waited = self.clock() - self.since
            deadline = self.deadlines.of(self.phase)
            if waited <= deadline:
                return None
            what = {
                "starting": f"training has not started (it was {self.doing})",
                "first-step": "the first optimizer step has not ended",
                "step": f"optimizer step {self.step + 1} has not ended",
                "evaluating": "the evaluation has not ended",
                "saving": "the checkpoint save and upload have not ended",
            }[self.phase]
            return (
                f"{what} after {waited:.0f} s (deadline {deadline:.0f} s: "
                f"{self.deadlines.explain(self.phase)})"
            )

    def _stop_reporting(self, reason: str) -> None:
        _stop_process(
            reason, report=self.report_stall, stack=lambda: thread_stack(self.main_thread)
        )

    def _watch(self) -> None:
        while not self._stop.wait(self.poll):
            reason = self.overdue()
            if reason is not None:
                self.on_stall(f"{reason}; {innermost_frames(self.main_thread)}")
                return


def _frames(thread: threading.Thread) -> list[traceback.FrameSummary] | None:
    """The thread's frames, innermost first; None when it is gone."""
    frame = sys._current_frames().get(thread.ident or -1)
    return None if frame is None else list(reversed(traceback.extract_stack(frame)))


def innermost_frames(thread: threading.Thread, count: int = FRAMES_NAMED) -> str:
    """`stuck in file.py:12 fn <- file.py:40 caller ...`: where the thread waits."""
    frames = _frames(thread)
    if frames is None:
        return "the training thread is gone"
    named = [f"{os.path.basename(f.filename)}:{f.lineno} {f.name}" for f in frames[:count]]
    return "stuck in " + " <- ".join(named)


def thread_stack(thread: threading.Thread) -> str:
    """The thread's stack, innermost frame first, one `file.py:12 fn` per line."""
    frames = _frames(thread)
    if frames is None:
        return "the training thread is gone"
    return "\n".join(f"  {f.filename}:{f.lineno} {f.name}" for f in frames)


class CollectiveTimeout:
    """The default process group's collective timeout follows the watchdog: the current
    phase's deadline plus MARGIN_SECONDS. The watchdog fires first, with every thread's
    stack; the timeout is the backstop for a process whose watchdog cannot run, and a
    collective stuck inside a training step ends within that step's deadline, not the
    longest phase's (startupSeconds, 2 h by default). Sub-groups (FSDP's hybrid shards) keep
    the timeout they were created with."""

    MARGIN_SECONDS = 60

    def follow(self, deadline: float) -> None:
        import datetime

        import torch.distributed as dist

        if dist.is_available() and dist.is_initialized():
            dist.set_timeout(datetime.timedelta(seconds=deadline + self.MARGIN_SECONDS))


def _stop_process(
    reason: str,
    *,
    report: Callable[[str], None] | None = None,
    stack: Callable[[], str] | None = None,
) -> None:
    """Stacks to the log, the verdict and the training thread's stack to the rank's
    report, the verdict where the operator reads it, then exit at once."""
    rank = os.environ.get("RANK", "0")
    sys.stderr.write(
        f"\nfinetune: stalled (rank {rank}): {reason}\n"
        "the stacks of every thread of this process follow:\n"
    )
    sys.stderr.flush()
    faulthandler.dump_traceback(file=sys.stderr, all_threads=True)
    sys.stderr.flush()
    entries = recorded_collectives()
    if entries:
        sys.stderr.write(
            "the last collectives of this rank (PyTorch's flight recorder), "
            "oldest first:\n" + "".join(f"  {describe_collective(e)}\n" for e in entries)
        )
        sys.stderr.flush()
        waiting = [describe_collective(e) for e in entries if not e.get("retired")]
        if waiting:
            reason += f"; in flight: {waiting[-1]}"
    if report is not None:
        text = f"{reason}\nstack of the training thread, innermost first:\n"
        try:
            report(text + (stack() if stack else ""))
        except Exception as error:  # exiting either way: say it, go on
            sys.stderr.write(f"finetune: the stall report was not sent: {error}\n")
    code = record(STALLED, f"rank {rank}: {reason}")
    os._exit(code)


# How many of the flight recorder's newest entries the log shows.
COLLECTIVES_SHOWN = 8


def recorded_collectives(timeout: float = 5.0) -> list[dict[str, Any]]:
    """The newest entries of PyTorch's flight recorder for this rank's default process group
    (NCCL or gloo), or none outside a distributed run. Read from a helper thread within
    `timeout`: the process must end even if the dump itself hangs."""
    torch = sys.modules.get("torch")
    if torch is None:
        return []
    distributed = torch.distributed
    if not distributed.is_available() or not distributed.is_initialized():
        return []
    found: list[dict[str, Any]] = []

    def dump() -> None:
        c10d = torch._C._distributed_c10d
        backend = str(distributed.get_backend())
        if backend == "nccl":
            raw = c10d._dump_nccl_trace_json(includeCollectives=True, onlyActive=False)
        else:
            raw = c10d._dump_fr_trace_json(
                includeCollectives=True, onlyActive=False, backend=backend
            )
        text = raw.decode() if isinstance(raw, bytes) else str(raw)
        found.extend(json.loads(text).get("entries") or [])

    reader = threading.Thread(target=dump, name="flight-recorder-dump", daemon=True)
    reader.start()
    reader.join(timeout)
    return found[-COLLECTIVES_SHOWN:]


def describe_collective(entry: dict[str, Any]) -> str:
    """`gloo:all_reduce #2 of default_pg, sizes [[4]], scheduled, not completed`."""
    group = entry.get("process_group") or ["", ""]
    name = group[1] if isinstance(group, list) and len(group) > 1 else group
    done = "completed" if entry.get("retired") else "not completed"
    return (
        f"{entry.get('profiling_name', '?')} #{entry.get('collective_seq_id', '?')} of "
        f"{name}, sizes {entry.get('input_sizes', '?')}, {entry.get('state', '?')}, "
        f"{done}"
    )
