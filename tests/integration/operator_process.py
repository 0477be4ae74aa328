"""The operator as a real process for integration tests, and namespaces it watches.

The operator watches every namespace named op-*; `ns` gives each test a fresh one."""

from __future__ import annotations

import os
import subprocess
import sys
from collections.abc import Sequence
from pathlib import Path

from tests.integration.conftest import REPO, Cluster
from tests.ports import free_port

NAMESPACE_PREFIX = "op-"


class Operator:
    """The operator process, watching every namespace named op-* (or `namespaces`)."""

    def __init__(
        self, cluster: Cluster, log: Path, *extra: str,
        namespaces: Sequence[str] = (f"{NAMESPACE_PREFIX}*",),
    ) -> None:  # fmt: skip
        self.cluster = cluster
        self.log_path = log
        self.port = free_port()
        self.extra = extra
        self.namespaces = tuple(namespaces)
        self.starts = 0
        self.process = self._spawn()

    def _spawn(self) -> subprocess.Popen[bytes]:
        env = {**os.environ, "KUBECONFIG": self.cluster.kubeconfig, "PYTHONUNBUFFERED": "1"}
        watched = [arg for namespace in self.namespaces for arg in ("--namespace", namespace)]
        self.starts += 1
        return subprocess.Popen(
            [sys.executable, "-m", "ftoperator", *watched,
             "--no-leader-election", "--metrics-bind", "127.0.0.1",
             "--metrics-port", str(self.port), "--resync-seconds", "10", *self.extra],
            stdout=self.log_path.open("ab"), stderr=subprocess.STDOUT, env=env, cwd=REPO,
        )  # fmt: skip

    @property
    def pid(self) -> int:
        return self.process.pid

    def running(self) -> bool:
        return self.process.poll() is None

    def log(self) -> str:
        return self.log_path.read_text(errors="replace")[-6000:]

    def kill(self) -> None:
        """SIGKILL: no cleanup, no Lease release (a crash, an OOM kill, a lost node)."""
        self.process.kill()
        self.process.wait(timeout=30)

    def restart(self) -> None:
        """A new process with the same arguments and log (appended), as a Deployment's
        restart would; the old one is SIGKILLed first if it still runs."""
        if self.running():
            self.kill()
        self.port = free_port()  # the old port may still linger (TIME_WAIT)
        self.process = self._spawn()

    def stop(self) -> None:
        self.process.terminate()
        try:
            self.process.wait(timeout=30)
        except subprocess.TimeoutExpired:
            self.process.kill()
