"""A process a test or a benchmark starts and must not leave behind: the operator, a Go
controller manager, the operator as a Helm release would run it, a benchmark's peer, an
MLflow tracking server.

    process = ManagedProcess("operator", tmp / "operator.log")
    process.start([sys.executable, "-m", "ftoperator"], env=env,
                  ready=lambda: http_ok(f"http://127.0.0.1:{port}/readyz"))
    process.log(since_start=True)   # what this start wrote (the file is appended to)
    process.stop()                  # SIGTERM, SIGKILL after the grace period

start() waits for readiness and fails with the log's end when the process exits first or is
not ready in time: a harness never hangs on a process that died.
"""

from __future__ import annotations

import contextlib
import os
import signal
import subprocess
import time
import urllib.request
from collections.abc import Callable, Mapping, Sequence
from pathlib import Path

LOG_TAIL = 6000  # characters of the log a failure shows


def sigterm_as_ctrl_c() -> None:
    """SIGTERM raises KeyboardInterrupt in this process, so that a script's Ctrl-C clean-up
    (its managed processes stopped, its namespaces deleted) also runs when it is killed."""

    def interrupt(signum: int, frame: object) -> None:
        raise KeyboardInterrupt

    signal.signal(signal.SIGTERM, interrupt)


def http_ok(url: str) -> bool:
    """The URL answers 200 (a /readyz or /healthz probe)."""
    try:
        with urllib.request.urlopen(url, timeout=2) as answer:
            return bool(answer.status == 200)
    except OSError:
        return False


class ManagedProcess:
    """One process: spawned with its output appended to `log_path`, probed until ready,
    stopped with SIGTERM and then SIGKILL."""

    def __init__(self, name: str, log_path: Path) -> None:
        self.name = name
        self.log_path = log_path
        self.process: subprocess.Popen[bytes] | None = None
        self.offset = 0  # the log's size when the current process started
        self.starts = 0
        self.own_group = False  # started in its own session: signals reach its whole group

    def start(
        self, command: Sequence[str], *, env: Mapping[str, str], cwd: Path | None = None,
        ready: Callable[[], bool] | None = None, timeout: float = 120, new_session: bool = False,
    ) -> None:  # fmt: skip
        """Spawn `command` and, given a `ready` probe, wait until it answers True.
        `new_session`: its own session, out of reach of a signal to the test's group; stop()
        and kill() then signal its whole group (a server's workers, a launcher's children)."""
        self.log_path.parent.mkdir(parents=True, exist_ok=True)
        self.offset = self.log_path.stat().st_size if self.log_path.exists() else 0
        self.starts += 1
        self.own_group = new_session
        with self.log_path.open("ab") as log:
            self.process = subprocess.Popen(
                list(command), stdout=log, stderr=subprocess.STDOUT, env=dict(env), cwd=cwd,
                start_new_session=new_session,
            )  # fmt: skip
        if ready is not None:
            self.wait_until(ready, timeout, "ready")

    def wait_until(self, probe: Callable[[], bool], timeout: float, what: str) -> None:
        """Poll `probe`; fail with the log's end when the process exits or time runs out."""
        deadline = time.monotonic() + timeout
        while not probe():
            if not self.running():
                code = self.process.returncode if self.process is not None else None
                raise RuntimeError(f"{self.name} exited ({code}) before {what}\n{self.log()}")
            if time.monotonic() > deadline:
                raise RuntimeError(f"{self.name} not {what} after {timeout:.0f} s\n{self.log()}")
            time.sleep(0.3)

    @property
    def pid(self) -> int:
        assert self.process is not None, f"{self.name} was not started"
        return self.process.pid

    def running(self) -> bool:
        return self.process is not None and self.process.poll() is None

    def log(self, *, since_start: bool = False, tail: int | None = LOG_TAIL) -> str:
        """The log (the current start's part only with `since_start`), its last `tail`
        characters unless tail is None."""
        if not self.log_path.exists():
            return ""
        text = self.log_path.read_bytes()[self.offset if since_start else 0 :]
        decoded = text.decode(errors="replace")
        return decoded if tail is None else decoded[-tail:]

    def _signal(self, number: signal.Signals) -> None:
        assert self.process is not None
        if self.own_group:
            with contextlib.suppress(ProcessLookupError):  # the group is gone already
                os.killpg(self.process.pid, number)
        else:
            self.process.send_signal(number)

    def kill(self) -> None:
        """SIGKILL: no cleanup (a crash, an OOM kill, a lost node)."""
        if self.running():
            assert self.process is not None
            self._signal(signal.SIGKILL)
            self.process.wait(timeout=30)

    def stop(self, grace: float = 30) -> None:
        """SIGTERM, as a rollout or a user stops it; SIGKILL after `grace` seconds."""
        if not self.running():
            return
        assert self.process is not None
        self._signal(signal.SIGTERM)
        try:
            self.process.wait(timeout=grace)
        except subprocess.TimeoutExpired:
            self._signal(signal.SIGKILL)
            self.process.wait(timeout=10)
