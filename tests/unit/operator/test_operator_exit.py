"""The operator's event-loop exception handler: kopf's watch-stream close error at exit is
not an ERROR traceback on a normal stop; every other loop error still is."""

from __future__ import annotations

import asyncio
import logging
from collections.abc import AsyncGenerator, Iterator

import kopf
import pytest
from kopf._cogs.clients.watching import infinite_watch
from kopf._cogs.structs.references import Resource

from ftoperator.main import quiet_watch_close


async def stream() -> AsyncGenerator[int]:
    yield 1


def close_error(asyncgen: object) -> dict[str, object]:
    """What asyncio passes its handler when closing `asyncgen` raised (base_events.py)."""
    error = RuntimeError("generator didn't stop after athrow()")
    return {"message": "an error occurred during closing of asynchronous generator "
            f"{asyncgen!r}", "exception": error, "asyncgen": asyncgen}  # fmt: skip


@pytest.fixture
def loop() -> Iterator[asyncio.AbstractEventLoop]:
    loop = asyncio.new_event_loop()
    loop.set_exception_handler(quiet_watch_close)
    yield loop
    loop.close()


def test_kopfs_watch_stream_closing_at_exit_is_logged_at_debug_only(
    loop: asyncio.AbstractEventLoop, caplog: pytest.LogCaptureFixture
) -> None:
    resource = Resource("finetune.dev", "v1alpha1", "finetunejobs")
    watch = infinite_watch(settings=kopf.OperatorSettings(), resource=resource, namespace=None)
    caplog.set_level(logging.DEBUG)
    loop.call_exception_handler(close_error(watch))
    assert [r.levelno for r in caplog.records] == [logging.DEBUG]
    assert "watch stream closed at exit" in caplog.text
    loop.run_until_complete(watch.aclose())  # type: ignore[attr-defined]  # typed as an iterator


def test_any_other_generators_close_error_keeps_its_error_and_traceback(
    loop: asyncio.AbstractEventLoop, caplog: pytest.LogCaptureFixture
) -> None:
    ours = stream()
    loop.call_exception_handler(close_error(ours))
    assert [r.levelno for r in caplog.records] == [logging.ERROR]
    assert "RuntimeError: generator didn't stop after athrow()" in caplog.text
    loop.run_until_complete(ours.aclose())


def test_a_task_exception_is_still_reported(
    loop: asyncio.AbstractEventLoop, caplog: pytest.LogCaptureFixture
) -> None:
    loop.call_exception_handler({"message": "Task exception was never retrieved",
                                 "exception": ValueError("boom")})  # fmt: skip
    assert [r.levelno for r in caplog.records] == [logging.ERROR]
    assert "ValueError: boom" in caplog.text
