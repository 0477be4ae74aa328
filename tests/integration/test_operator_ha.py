"""Two operator replicas (real processes) share one Lease: one reconciles, the other stands
by; a graceful stop hands over at once, a crash after the Lease expires (15 s)."""

from __future__ import annotations

import re
import time
import urllib.request
import uuid
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from fttestkit.builders import make_job
from fttestkit.cluster import Cluster, eventually, fresh_namespace
from fttestkit.finetunejobs import create_ftj, phase_is
from fttestkit.operator import Operator

pytestmark = pytest.mark.integration
LEASE = "ha-test-leader"


@pytest.fixture
def ha_ns(cluster: Cluster, crd: dict[str, Any]) -> Iterator[str]:
    with fresh_namespace(cluster, f"ha-{uuid.uuid4().hex[:10]}") as name:
        yield name


def _leads(operator: Operator) -> bool:
    try:
        page = urllib.request.urlopen(f"http://127.0.0.1:{operator.port}/metrics", timeout=2)
    except OSError:
        return False
    found = re.search(r"^finetune_operator_leader (\S+)$", page.read().decode(), re.MULTILINE)
    return found is not None and float(found.group(1)) == 1.0


def _run_job(cluster: Cluster, ns: str, name: str, leader: Operator) -> None:
    manifest = make_job(name).set("resources", {"gpusPerNode": 1}).obj()
    create_ftj(cluster, ns, manifest)

    def succeeded() -> bool:
        return phase_is(cluster, ns, name, "Succeeded") is not None

    try:
        eventually(succeeded, timeout=90, what=f"{name} Succeeded")
    except AssertionError as error:
        raise AssertionError(f"{error}\n{leader.log()}") from None


def test_one_replica_leads_and_the_other_takes_over(
    cluster: Cluster, ha_ns: str, tmp_path: Path
) -> None:
    args = ("--leader-election", "--lease-namespace", ha_ns, "--lease-name", LEASE)
    first = Operator(cluster, tmp_path / "first.log", *args, namespaces=[ha_ns])
    second: Operator | None = None
    try:
        eventually(lambda: _leads(first), timeout=60, what="the first replica leads")
        second = Operator(cluster, tmp_path / "second.log", *args, namespaces=[ha_ns])
        _run_job(cluster, ns=ha_ns, name="under-first", leader=first)
        assert not _leads(second), "two leaders"
        assert "under-first" not in second.log()

        # Graceful stop: the Lease is released and the standby leads at once.
        stopped = time.monotonic()
        first.stop()
        eventually(lambda: _leads(second), timeout=15, interval=0.2, what="takeover")
        handover = time.monotonic() - stopped
        _run_job(cluster, ns=ha_ns, name="under-second", leader=second)

        # A crash: no release, the standby waits for the Lease to expire, then leads.
        first = Operator(cluster, tmp_path / "first.log", *args, namespaces=[ha_ns])
        eventually(lambda: _port_up(first), timeout=60, what="the restarted replica's endpoint")
        assert not _leads(first)
        killed = time.monotonic()
        second.kill()
        eventually(lambda: _leads(first), timeout=60, interval=0.5, what="takeover after a crash")
        failover = time.monotonic() - killed
        _run_job(cluster, ns=ha_ns, name="after-crash", leader=first)
        print(f"\nhandover after a graceful stop {handover:.1f} s, after a crash {failover:.1f} s")
        assert handover < 10
        # The standby counts the 15 s lease from when it last saw a renewal (<= 5 s before).
        assert 8 <= failover < 45
    finally:
        first.stop()
        if second is not None and second.running():
            second.stop()


def _port_up(operator: Operator) -> bool:
    try:
        urllib.request.urlopen(f"http://127.0.0.1:{operator.port}/healthz", timeout=2)
    except OSError:
        return False
    return True
