"""The operator as a real process for integration tests, and namespaces it watches.

The operator watches every namespace named op-*; `ns` gives each test a fresh one."""

from __future__ import annotations

import os
import socket
import subprocess
import sys
from pathlib import Path

from tests.integration.conftest import REPO, Cluster

NAMESPACE_PREFIX = "op-"


class Operator:
    """The operator process, watching every namespace named op-*."""

    def __init__(self, cluster: Cluster, log: Path, *extra: str) -> None:
        self.cluster = cluster
        self.log_path = log
        self.port = _free_port()
        env = {**os.environ, "KUBECONFIG": cluster.kubeconfig, "PYTHONUNBUFFERED": "1"}
        self.process = subprocess.Popen(
            [sys.executable, "-m", "ftoperator", "--namespace", f"{NAMESPACE_PREFIX}*",
             "--no-leader-election", "--metrics-bind", "127.0.0.1",
             "--metrics-port", str(self.port), "--resync-seconds", "10", *extra],
            stdout=log.open("ab"), stderr=subprocess.STDOUT, env=env, cwd=REPO,
        )  # fmt: skip

    def log(self) -> str:
        return self.log_path.read_text(errors="replace")[-6000:]

    def kill(self) -> None:
        """SIGKILL: no cleanup, no Lease release (a crash, an OOM kill, a lost node)."""
        self.process.kill()
        self.process.wait(timeout=30)

    def stop(self) -> None:
        self.process.terminate()
        try:
            self.process.wait(timeout=30)
        except subprocess.TimeoutExpired:
            self.process.kill()


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])
