"""Where an attempt's time before its first training step goes (status.startup): the data
(prepared now, or found prepared on the node), the model and trainer, the first step, and
in all from the process's start (imports included).

    clock = StartupClock()                  # Recipe.setup begins
    with clock.data(): ...                  # prepare_data, check_tokens
    clock.setup_done(data_reused=...)       # the trainer is built
    clock.training_started()                # FirstStep: on_train_begin
    startup = clock.first_step_done()       # FirstStep: the first on_step_end
"""

from __future__ import annotations

import os
import time
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

from ftapi.v1alpha1.status import Startup


def process_seconds() -> float | None:
    """Seconds since this process started (Linux: /proc), None where that cannot be read."""
    try:
        uptime = float(Path("/proc/uptime").read_text().split()[0])
        fields = Path("/proc/self/stat").read_text().rsplit(")", 1)[1].split()
        started = int(fields[19]) / os.sysconf("SC_CLK_TCK")
    except (OSError, ValueError, IndexError):
        return None
    return max(0.0, uptime - started)


class StartupClock:
    def __init__(self) -> None:
        self._began = time.monotonic()
        self._data = 0.0
        self._setup: float | None = None
        self._training: float | None = None
        self.startup = Startup()

    @contextmanager
    def data(self) -> Iterator[None]:
        """Time spent on the data (more than one stretch: the samples, then the tokens)."""
        began = time.monotonic()
        try:
            yield
        finally:
            self._data += time.monotonic() - began

    def setup_done(self, *, data_reused: bool) -> None:
        setup = time.monotonic() - self._began
        self.startup = Startup(
            data_seconds=round(self._data, 2),
            data_reused=data_reused,
            model_seconds=round(max(0.0, setup - self._data), 2),
        )

    def training_started(self) -> None:
        self._training = time.monotonic()

    def first_step_done(self) -> Startup:
        if self._training is not None:
            self.startup.first_step_seconds = round(time.monotonic() - self._training, 2)
        total = process_seconds()
        self.startup.total_seconds = None if total is None else round(total, 2)
        return self.startup
