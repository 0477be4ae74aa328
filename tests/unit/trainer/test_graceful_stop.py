"""GracefulStop: SIGTERM sets a flag; the end of the running step saves and stops."""

from __future__ import annotations

import os
import signal
import time
from types import SimpleNamespace

import pytest

from fttrainer.callbacks import GracefulStop, Stopped


def _control() -> SimpleNamespace:
    return SimpleNamespace(should_save=False, should_training_stop=False)


def test_nothing_happens_without_a_signal() -> None:
    stop, control = GracefulStop(), _control()
    stop.on_step_end(None, SimpleNamespace(global_step=3), control)
    assert not control.should_save and not control.should_training_stop
    stop.raise_if_stopped()  # a normal end goes on to publish


def test_a_real_sigterm_saves_at_the_end_of_the_step_and_stops() -> None:
    stop = GracefulStop()
    previous = signal.getsignal(signal.SIGTERM)
    try:
        stop.install()
        os.kill(os.getpid(), signal.SIGTERM)  # handled: the process lives on
        deadline = time.monotonic() + 5
        while not stop.requested and time.monotonic() < deadline:
            time.sleep(0.01)
        control = _control()
        stop.on_step_end(None, SimpleNamespace(global_step=7), control)
        assert control.should_save and control.should_training_stop
        # Once: the save that follows is the only one.
        again = _control()
        stop.on_step_end(None, SimpleNamespace(global_step=8), again)
        assert not again.should_save
        with pytest.raises(Stopped) as stopped:
            stop.raise_if_stopped()
        assert stopped.value.step == 7
    finally:
        signal.signal(signal.SIGTERM, previous)
