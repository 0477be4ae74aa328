"""Stand-ins the reporters' and the watchdog's unit tests share."""

from __future__ import annotations

from typing import Any


class ManualClock:
    """A monotonic clock that moves only when a test sets `t`."""

    def __init__(self, t: float = 0.0) -> None:
        self.t = t

    def __call__(self) -> float:
        return self.t


class Collect:
    """A sink that keeps what it is sent."""

    def __init__(self) -> None:
        self.reports: list[Any] = []

    def send(self, report: Any) -> None:
        self.reports.append(report)
