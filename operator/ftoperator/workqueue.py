"""The work queue of FineTuneJob keys every reconcile pass is taken from.

`WorkQueue` has client-go's workqueue semantics: a key is queued at most once, never
processed by two workers at a time, and a key added while it is being processed is
processed once more afterwards (nothing is lost, nothing runs twice concurrently). A key
whose pass raised is retried after a per-key exponential backoff (client-go's default
controller rate limiter: 5 ms doubling up to 1000 s, reset by a pass that succeeds), so a
job that keeps failing costs ever fewer requests and log lines instead of a steady load.

One word for "process it again later": re-queue. `add` (now), `add_after` (at the latest
in N s, an earlier timer wins: retries), `add_batched` (a watch event, batched) and
`requeue_after` (the pass's own next look, replacing the one asked for before).
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Awaitable, Callable, Hashable
from typing import Any

log = logging.getLogger("ftoperator")

Handler = Callable[[Any], Awaitable[None]]

BACKOFF_BASE_SECONDS = 0.005
BACKOFF_MAX_SECONDS = 1000.0


def backoff(failures: int) -> float:
    """Delay before the retry after the `failures`-th consecutive failure (1-based)."""
    return float(min(BACKOFF_BASE_SECONDS * 2.0 ** min(failures - 1, 64), BACKOFF_MAX_SECONDS))


class WorkQueue:
    """Keys to reconcile, processed by a fixed number of workers."""

    def __init__(self, handler: Handler, *, workers: int = 16) -> None:
        self.handler = handler
        self.workers = workers
        self._queue: asyncio.Queue[Hashable] = asyncio.Queue()
        self._queued: set[Hashable] = set()
        self._processing: set[Hashable] = set()
        self._dirty: set[Hashable] = set()
        self._tasks: list[asyncio.Task[None]] = []
        self._timers: dict[Hashable, asyncio.TimerHandle] = {}
        self._batched: dict[Hashable, asyncio.TimerHandle] = {}  # add_batched's
        self._failures: dict[Hashable, int] = {}

    def add(self, key: Hashable) -> None:
        if key in self._processing:
            self._dirty.add(key)
        elif key not in self._queued:
            self._queued.add(key)
            self._queue.put_nowait(key)

    def add_after(self, key: Hashable, seconds: float) -> None:
        """Process key in `seconds` (client-go's AddAfter: a retry's backoff, a node's
        grace); an earlier pending timer wins."""
        loop = asyncio.get_running_loop()
        existing = self._timers.get(key)
        due = loop.time() + max(0.0, seconds)
        if existing is not None and existing.when() <= due:
            return
        if existing is not None:
            existing.cancel()
        self._timers[key] = loop.call_at(due, self._fire, key)

    def add_batched(self, key: Hashable, seconds: float) -> None:
        """Process key within `seconds`, once for every change seen meanwhile: the Job
        controller batches a Job's pod events for a second (syncJobBatchPeriod), and a
        job's pods and Job change several times within one (created, scheduled, started,
        counted). A key already queued sees the change anyway; a pass that starts before
        the batch is due sees it too and takes the batch's place. Never withdrawn by
        requeue_after, so a change seen during a pass is still looked at afterwards."""
        if key in self._queued or key in self._batched:
            return
        self._batched[key] = asyncio.get_running_loop().call_later(
            max(0.0, seconds), self._fire_batched, key
        )

    def _fire_batched(self, key: Hashable) -> None:
        self._batched.pop(key, None)
        self.add(key)

    def requeue_after(self, key: Hashable, seconds: float) -> None:
        """Process key again in `seconds`, in place of any re-queue asked for before: a pass
        says when it next needs one, and what an earlier pass wanted may be moot."""
        existing = self._timers.pop(key, None)
        if existing is not None:
            existing.cancel()
        self.add_after(key, seconds)

    def _fire(self, key: Hashable) -> None:
        self._timers.pop(key, None)
        self.add(key)

    def start(self) -> None:
        self._tasks = [asyncio.create_task(self._work()) for _ in range(self.workers)]

    async def stop(self) -> None:
        for timer in [*self._timers.values(), *self._batched.values()]:
            timer.cancel()
        for task in self._tasks:
            task.cancel()
        await asyncio.gather(*self._tasks, return_exceptions=True)

    def __len__(self) -> int:
        return self._queue.qsize()

    async def _work(self) -> None:
        while True:
            key = await self._queue.get()
            self._queued.discard(key)
            self._processing.add(key)
            batched = self._batched.pop(key, None)
            if batched is not None:  # this pass sees what the batch was waiting to show
                batched.cancel()
            try:
                await self.handler(key)
            except asyncio.CancelledError:
                raise
            except Exception:  # one key's error never stops the worker; it is retried
                failures = self._failures[key] = self._failures.get(key, 0) + 1
                delay = backoff(failures)
                log.exception(
                    "reconciling %s failed (%d in a row); retrying in %.3g s", key, failures, delay
                )
                self._dirty.discard(key)  # the retry waits for its backoff
                self.add_after(key, delay)
            else:
                self._failures.pop(key, None)
            finally:
                self._processing.discard(key)
                if key in self._dirty:
                    self._dirty.discard(key)
                    self.add(key)
