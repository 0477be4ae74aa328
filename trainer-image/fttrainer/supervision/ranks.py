"""Each rank's own report: that it is alive, and how fast it computes.

Rank 0's ProgressReport (reporting/progress.py) tells the operator how the run goes; it cannot tell
which rank went quiet when a job hangs, nor which rank the others wait for. So every rank
(rank 0 too) writes a small RankReport (ftapi.progress) under `ranks.<rank>` of the job's
FineTuneJobProgress: when it starts, at most every heartbeat after a step, and re-sent
(newly dated) at every heartbeat while nothing happens, from a thread of its own: a rank
waiting in a collective still reports, a stopped process does not.

What it measures per optimizer step:

- the step's wall time (from the watchdog, which leaves evaluations and saves out): about
  the same on every rank, since each collective waits for the slowest;
- the step's forward passes (ComputeTimer, around compute_loss): under data parallelism
  no collective runs inside a forward pass, so this is the rank's own speed. On a GPU it
  is timed with CUDA events, read once the step's loss was synchronised (divergence.py
  reads it before every optimizer step), so no extra device sync is added.

The operator compares the ranks (ftoperator.stragglers) and names a slow one's pod and node.
"""

from __future__ import annotations

import os
import statistics
import time
from collections import deque
from collections.abc import Callable, Mapping
from datetime import datetime
from pathlib import Path
from typing import Any
from urllib.parse import quote

from ftapi.constants import GROUP, PROGRESS_PLURAL, VERSION
from ftapi.progress import (
    ENV_NODE_NAME,
    ENV_POD_NAME,
    RANKS_FIELD,
    STALL_REPORT_CHARS,
    RankReport,
)
from fttrainer.reporting.progress import (
    FINISH_TIMEOUT_SECONDS,
    MERGE_PATCH,
    KubeTarget,
    Sender,
    _utc_now,
    attempt_of,
    progress_object,
)

# How many recent steps the reported medians cover.
WINDOW_STEPS = 32
# How long a stalled process waits for its last report before it exits.
STALL_REPORT_TIMEOUT_SECONDS = 5.0


class RankSink:
    """Writes one rank's report under ranks.<rank> (a merge patch leaves the others)."""

    def __init__(self, target: KubeTarget, namespace: str, name: str, rank: int) -> None:
        self.target, self.rank = target, rank
        namespace, name = quote(namespace, safe=""), quote(name, safe="")
        self.path = f"/apis/{GROUP}/{VERSION}/namespaces/{namespace}/{PROGRESS_PLURAL}/{name}"

    def send(self, report: RankReport) -> None:
        document = report.model_dump_json(by_alias=True, exclude_none=True)
        body = {RANKS_FIELD: {str(self.rank): document}}
        self.target.request("PATCH", self.path, body, content_type=MERGE_PATCH)


class RankReporter:
    """One per process. `stepped` is called from the training thread and never blocks."""

    def __init__(
        self,
        sink: Any | None,
        *,
        rank: int = 0,
        attempt: int = 0,
        pod: str | None = None,
        node: str | None = None,
        interval: float = 60.0,
        clock: Callable[[], float] = time.monotonic,
        now: Callable[[], datetime] = _utc_now,
    ) -> None:
        self._sender: Sender | None = None
        if sink is not None:
            # A heartbeat sends the current state: the step reached since the last report.
            self._sender = Sender(
                sink,
                background=True,
                heartbeat=interval,
                now=now,
                final=lambda r: r.done,
                current=self.report,
            )
        self.rank, self.attempt, self.pod, self.node = rank, attempt, pod, node
        self.interval = interval
        self.clock, self.now = clock, now
        self.step = 0
        self.stepped_at: datetime | None = None
        self.step_seconds: deque[float] = deque(maxlen=WINDOW_STEPS)
        self.compute_seconds: deque[float] = deque(maxlen=WINDOW_STEPS)
        # Their medians, computed on the training thread: the heartbeat thread reads these.
        self._medians: tuple[float | None, float | None] = (None, None)
        self.done = False
        self.stall: str | None = None
        self._last_sent: float | None = None

    @classmethod
    def from_env(
        cls,
        environ: Mapping[str, str] = os.environ,
        account_dir: Path | None = None,
        **kwargs: Any,
    ) -> RankReporter:
        """A reporter to the job's progress object, or a no-op outside a cluster."""
        found = progress_object(environ, account_dir)
        if found is None:
            return cls(None)
        target, namespace, name = found
        rank = int(environ.get("RANK", "0") or 0)
        return cls(
            RankSink(target, namespace, name, rank),
            rank=rank,
            attempt=attempt_of(environ),
            pod=environ.get(ENV_POD_NAME) or None,
            node=environ.get(ENV_NODE_NAME) or None,
            **kwargs,
        )

    @property
    def enabled(self) -> bool:
        return self._sender is not None

    def started(self) -> None:
        """The process is up (its silence from now on is a stall)."""
        self._send(force=True)

    def stepped(
        self, step: int, *, step_seconds: float | None, compute_seconds: float | None
    ) -> None:
        first = self.stepped_at is None
        if step_seconds is not None:
            self.step_seconds.append(step_seconds)
        if compute_seconds is not None:
            self.compute_seconds.append(compute_seconds)
        self._medians = (_median(self.step_seconds), _median(self.compute_seconds))
        self.step, self.stepped_at = step, self.now()
        self._send(force=first)  # the first step at once: the rank is past its startup

    def finish(self, timeout: float = FINISH_TIMEOUT_SECONDS) -> None:
        """This process's part of the run is over: no more reports (the others may still
        publish, which is not a silence)."""
        self.done = True
        self._send(force=True)
        if self._sender is not None:
            self._sender.flush(timeout)

    def stalled(self, text: str, timeout: float = STALL_REPORT_TIMEOUT_SECONDS) -> None:
        """The watchdog stops this process: its verdict and stack go out in one last report,
        waited for at most `timeout` (the process exits next, whether it was sent or not)."""
        self.stall = text[:STALL_REPORT_CHARS]  # the verdict and the innermost frames first
        self._send(force=True)
        if self._sender is not None:
            self._sender.flush(timeout)

    def report(self) -> RankReport:
        return RankReport(
            attempt=self.attempt,
            rank=self.rank,
            pod=self.pod,
            node=self.node,
            step=self.step,
            stepped_at=self.stepped_at,
            step_seconds=self._medians[0],
            compute_seconds=self._medians[1],
            done=self.done,
            stalled=self.stall,
            updated_at=self.now(),
        )

    def _send(self, *, force: bool = False) -> None:
        if self._sender is None:
            return
        now = self.clock()
        if not force and self._last_sent is not None and now - self._last_sent < self.interval:
            return
        self._last_sent = now
        self._sender.submit(self.report())


def _median(values: deque[float]) -> float | None:
    return round(statistics.median(values), 6) if values else None


class ComputeTimer:
    """The time this rank spends in training forward passes, per optimizer step."""

    def __init__(self, clock: Callable[[], float] = time.perf_counter) -> None:
        self.clock = clock
        self._seconds = 0.0
        self._counted = False
        self._events: list[tuple[Any, Any]] = []  # CUDA (start, end) pairs not yet read

    def attach(self, model: Any) -> None:
        """Time `model`'s training forward passes themselves, through forward hooks on the
        unwrapped model: not the trainer's compute_loss around them, where the collectives
        of a distributed run (DDP's buffer broadcast, TRL's metric all-gathers) would add
        the wait for the slowest rank to every rank's time. The pre-hook goes first, so
        what other pre-hooks do (the test faults' sleeps) counts as this rank's compute."""
        started: list[Any] = []

        def before(module: Any, args: Any) -> None:
            if module.training:
                parameter = next(module.parameters(), None)
                started.append(self.begin(getattr(parameter, "device", None)))

        def after(module: Any, args: Any, output: Any) -> None:
            if started:
                self.end(started.pop())

        import torch

        # torch.compile (training.torchCompile) traces module hooks into its graph: a clock
        # read there is a constant of the trace, and each step's start time fails a guard
        # (a recompile per step, seen in the compiled model's test). They run eagerly.
        eager_before = torch.compiler.disable(before)  # type: ignore[no-untyped-call]
        eager_after = torch.compiler.disable(after)  # type: ignore[no-untyped-call]
        model.register_forward_pre_hook(eager_before, prepend=True)
        model.register_forward_hook(eager_after)

    def begin(self, device: Any) -> Any:
        if getattr(device, "type", None) == "cuda":
            import torch

            start = torch.cuda.Event(enable_timing=True)  # type: ignore[no-untyped-call]
            start.record()
            return start
        return self.clock()

    def end(self, started: Any) -> None:
        if isinstance(started, float):
            self._seconds += self.clock() - started
            self._counted = True
            return
        import torch

        end = torch.cuda.Event(enable_timing=True)  # type: ignore[no-untyped-call]
        end.record()
        self._events.append((started, end))

    def take(self) -> float | None:
        """The forward time of the steps since the last call (None: none was timed). CUDA
        pairs still running are left for the next call."""
        waiting = []
        for start, end in self._events:
            if end.query():
                self._seconds += start.elapsed_time(end) / 1000.0
                self._counted = True
            else:
                waiting.append((start, end))
        self._events = waiting
        seconds = self._seconds if self._counted else None
        self._seconds, self._counted = 0.0, False
        return seconds
