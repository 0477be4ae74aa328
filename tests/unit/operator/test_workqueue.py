"""WorkQueue's timing: batched adds (a job's child events) and the look each pass asks for."""

from __future__ import annotations

import asyncio
from collections.abc import Awaitable, Callable

from ftoperator.workqueue import WorkQueue


def _queue(
    work: Callable[[str], Awaitable[None]] | None = None,
) -> tuple[WorkQueue, list[tuple[str, float]]]:
    """A started queue whose handler records (key, loop time) of each pass."""
    passes: list[tuple[str, float]] = []

    async def handler(key: str) -> None:
        passes.append((key, asyncio.get_running_loop().time()))
        if work is not None:
            await work(key)

    queue = WorkQueue(handler, workers=2)
    queue.start()
    return queue, passes


def test_changes_batched_within_the_period_cost_one_pass() -> None:
    async def run() -> None:
        queue, passes = _queue()
        start = asyncio.get_running_loop().time()
        for _ in range(5):  # a pod created, scheduled, started, its Job counting it
            queue.add_batched("ns/a", 0.2)
            await asyncio.sleep(0.02)
        await asyncio.sleep(0.4)
        assert [key for key, _ in passes] == ["ns/a"]
        assert passes[0][1] - start >= 0.19  # not before the period from the first one
        queue.add_batched("ns/a", 0.1)  # a change after that pass: one more
        await asyncio.sleep(0.3)
        assert len(passes) == 2
        await queue.stop()

    asyncio.run(run())


def test_a_pass_that_starts_first_takes_the_batchs_place() -> None:
    async def run() -> None:
        queue, passes = _queue()
        queue.add_batched("ns/a", 0.2)
        queue.add("ns/a")  # another reason to look now: this pass sees the change too
        await asyncio.sleep(0.4)
        assert len(passes) == 1
        await queue.stop()

    asyncio.run(run())


def test_a_change_seen_during_a_pass_is_looked_at_after_it_whatever_the_pass_asks() -> None:
    """The pass may have planned before the change came; its own look (resync, far away)
    replaces the looks earlier passes asked for, never a batch that is waiting."""

    async def run() -> None:
        async def work(key: str) -> None:
            if len(passes) == 1:
                queue.add_batched(key, 0.05)  # arrives while this pass runs
                await asyncio.sleep(0.1)
            queue.requeue_after(key, 60.0)  # as reconcile() does at its end

        queue, passes = _queue(work)
        queue.add("ns/a")
        await asyncio.sleep(0.4)
        assert len(passes) == 2
        await queue.stop()

    asyncio.run(run())


def test_each_pass_replaces_the_look_the_last_one_asked_for() -> None:
    async def run() -> None:
        queue, passes = _queue()
        queue.requeue_after("ns/a", 0.1)  # a reason then (pods missing, say)...
        queue.requeue_after("ns/a", 5.0)  # ...gone at the next pass: no look at 0.1 s
        await asyncio.sleep(0.3)
        assert passes == []
        queue.add_after("ns/a", 0.1)  # add_after keeps the earliest (the retry backoff)
        queue.add_after("ns/a", 5.0)
        await asyncio.sleep(0.3)
        assert len(passes) == 1
        await queue.stop()

    asyncio.run(run())
