"""Leader election against the real API server: two electors in one event loop, short timings.

What a user of two operator replicas would notice: only one reconciles; a clean shutdown
hands over at once; a crashed leader is replaced only after its Lease expired; a leader that
cannot renew stops before anyone else may start; racing writes are settled by the API server.
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import Callable, Coroutine
from datetime import UTC, datetime
from typing import Any, TypeVar

import pytest
import urllib3
from kubernetes import client

from ftoperator.leader import LeaderElector, LeaseRecord, LeaseTimings
from fttestkit.cluster import Cluster

pytestmark = pytest.mark.integration
T = TypeVar("T")
LEASE = "finetune-operator-leader"
FAST = LeaseTimings(lease_duration=2, renew_deadline=1.5, renew_period=0.5, retry_period=0.2)


def run(scenario: Coroutine[Any, Any, T]) -> T:
    async def bounded() -> T:
        return await asyncio.wait_for(scenario, timeout=60)

    return asyncio.run(bounded())


def lease(cluster: Cluster, namespace: str) -> client.V1Lease:
    return client.CoordinationV1Api(cluster.api).read_namespaced_lease(LEASE, namespace)


def record(cluster: Cluster, namespace: str) -> LeaseRecord:
    return LeaseRecord.from_lease(lease(cluster, namespace))


def bump(cluster: Cluster, namespace: str) -> None:
    """Another writer changes the Lease (a new resourceVersion) without taking it."""
    body = {"metadata": {"labels": {"bumped": str(time.monotonic_ns())}}}
    client.CoordinationV1Api(cluster.api).patch_namespaced_lease(LEASE, namespace, body)


class Replica:
    """An elector plus what it reported through on_change."""

    def __init__(self, cluster: Cluster, namespace: str, name: str) -> None:
        self.changes: list[bool] = []
        self.elector = LeaderElector(
            cluster.api, namespace, LEASE, f"{name}_test", FAST, on_change=self.changes.append
        )

    @property
    def identity(self) -> str:
        return self.elector.identity

    def wrap(self, method: str, before: Callable[[], None] | None = None) -> list[int]:
        """Spy on one Lease API call; `before` runs (once) ahead of the first call.
        Returns the HTTP statuses of the errors that call raised."""
        leases = self.elector._leases
        real = getattr(leases, method)
        errors: list[int] = []
        pending = [before] if before else []

        def spy(*args: Any, **kwargs: Any) -> Any:
            result = real(*args, **kwargs)
            while pending:
                pending.pop()()
            return result

        def spy_errors(*args: Any, **kwargs: Any) -> Any:
            try:
                return spy(*args, **kwargs)
            except client.ApiException as error:
                errors.append(error.status)
                raise

        setattr(leases, method, spy_errors)
        return errors


async def until(predicate: Callable[[], bool], timeout: float, what: str) -> float:
    """Poll `predicate` every 20 ms; return the monotonic time it first held."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if predicate():
            return time.monotonic()
        await asyncio.sleep(0.02)
    raise AssertionError(f"timed out after {timeout}s waiting for {what}")


async def stop(*tasks: asyncio.Task[Any]) -> None:
    for task in tasks:
        task.cancel()
    await asyncio.gather(*tasks, return_exceptions=True)


def test_exactly_one_of_two_replicas_leads(cluster: Cluster, namespace: str) -> None:
    a, b = Replica(cluster, namespace, "a"), Replica(cluster, namespace, "b")

    async def scenario() -> None:
        # Both start at once: both find no Lease and race to create it; one create gets 409.
        acquiring = {a: asyncio.create_task(a.elector.acquire()),
                     b: asyncio.create_task(b.elector.acquire())}  # fmt: skip
        done, _ = await asyncio.wait(acquiring.values(), return_when=asyncio.FIRST_COMPLETED)
        assert len(done) == 1
        leader, standby = (a, b) if acquiring[a] in done else (b, a)
        renewing = asyncio.create_task(leader.elector.renew_until_lost())
        # Well past the lease duration: the standby must keep waiting while the leader renews.
        await asyncio.sleep(2 * FAST.lease_duration)
        assert not acquiring[standby].done()
        assert (leader.elector.is_leader, standby.elector.is_leader) == (True, False)
        assert not leader.elector.lost.is_set()
        assert record(cluster, namespace).holder == leader.identity
        assert (leader.changes, standby.changes) == ([True], [])
        await stop(renewing, acquiring[standby])

    run(scenario())
    final = record(cluster, namespace)
    assert (final.transitions, final.lease_duration) == (0, FAST.lease_duration)


def test_released_lease_is_taken_over_at_once(cluster: Cluster, namespace: str) -> None:
    a, b = Replica(cluster, namespace, "a"), Replica(cluster, namespace, "b")

    async def scenario() -> None:
        async with a.elector.leading() as lost:
            standby = asyncio.create_task(b.elector.acquire())
            await asyncio.sleep(1.0)
            assert not standby.done()
            assert not lost.is_set()
        released_at = time.monotonic()  # leaving the block released the Lease
        await standby
        # A released Lease has no holder: taken within a retry period, not after expiry.
        assert time.monotonic() - released_at < 1.0
        assert record(cluster, namespace).holder == b.identity
        assert record(cluster, namespace).transitions == 1

        # ... and back: every change of holder counts.
        await b.elector.release()
        await a.elector.acquire()
        assert record(cluster, namespace).holder == a.identity
        await a.elector.release()

    run(scenario())
    assert record(cluster, namespace).transitions == 2
    assert record(cluster, namespace).holder == ""
    assert a.changes == [True, False, True, False]
    assert b.changes == [True, False]


def test_crashed_leader_is_replaced_only_after_its_lease_expired(
    cluster: Cluster, namespace: str
) -> None:
    a, b = Replica(cluster, namespace, "a"), Replica(cluster, namespace, "b")

    async def scenario() -> None:
        await a.elector.acquire()
        renewing = asyncio.create_task(a.elector.renew_until_lost())
        standby = asyncio.create_task(b.elector.acquire())
        await asyncio.sleep(1.5)  # a few renewals; b keeps seeing a fresh record
        assert not standby.done()
        await stop(renewing)  # the leader dies: no more renewals, no release
        await asyncio.sleep(0.1)  # let a renewal already on the wire land
        last_renewal = record(cluster, namespace).renew_time
        await standby
        taken_over = record(cluster, namespace)
        assert taken_over.acquire_time and last_renewal
        waited = (taken_over.acquire_time - last_renewal).total_seconds()
        # Not before the lease duration passed; and soon after (a retry period, plus slack).
        assert waited >= FAST.lease_duration
        assert waited < FAST.lease_duration + 1.0
        assert taken_over.holder == b.identity
        assert taken_over.transitions == 1
        await b.elector.release()

    run(scenario())


@pytest.mark.parametrize("failure", ["errors", "hangs"])
def test_leader_that_cannot_renew_gives_up_before_anyone_may_take_over(
    cluster: Cluster, namespace: str, failure: str
) -> None:
    a = Replica(cluster, namespace, "a")

    def broken(*args: Any, **kwargs: Any) -> Any:
        if failure == "hangs":  # a request that never answers (within the deadline)
            time.sleep(FAST.lease_duration + 0.5)
        raise urllib3.exceptions.ProtocolError("connection refused")

    async def scenario() -> tuple[float, float, float]:
        before = time.monotonic()
        await a.elector.acquire()
        renewed = time.monotonic()  # the write of the last good renewal is done by now
        a.elector._leases.read_namespaced_lease = broken  # type: ignore[method-assign]
        await a.elector.renew_until_lost()
        return before, renewed, time.monotonic()

    before, renewed, lost_at = run(scenario())
    assert a.elector.lost.is_set()
    assert not a.elector.is_leader
    assert a.changes == [True, False]
    # It kept retrying until the renew deadline, not giving up at the first failure ...
    assert lost_at - before >= FAST.renew_deadline
    # ... and knew it lost before a candidate could take over (lease duration after the write).
    assert lost_at - renewed < FAST.lease_duration
    # A replica that lost leadership never leads again (the process must restart).
    with pytest.raises(RuntimeError, match="lost leadership"):
        run(a.elector.acquire())


def test_leader_notices_at_once_when_another_replica_took_the_lease(
    cluster: Cluster, namespace: str
) -> None:
    a = Replica(cluster, namespace, "a")

    async def scenario() -> None:
        await a.elector.acquire()
        renewing = asyncio.create_task(a.elector.renew_until_lost())
        await asyncio.sleep(0.7)
        current = lease(cluster, namespace)
        assert current.spec
        current.spec.holder_identity = "intruder"
        await asyncio.to_thread(
            client.CoordinationV1Api(cluster.api).replace_namespaced_lease,
            LEASE, namespace, current,
        )  # fmt: skip
        taken = time.monotonic()
        await renewing
        # Found on its next renewal, well before its renew deadline would run out.
        assert time.monotonic() - taken < FAST.renew_period + 0.5
        assert a.elector.lost.is_set()

    run(scenario())
    assert record(cluster, namespace).holder == "intruder"  # not overwritten
    assert a.changes == [True, False]


def test_conflicting_write_while_acquiring_is_retried(cluster: Cluster, namespace: str) -> None:
    a, b = Replica(cluster, namespace, "a"), Replica(cluster, namespace, "b")

    async def scenario() -> None:
        await a.elector.acquire()
        await a.elector.release()
        # Between b's read and b's write, someone else writes: b's update is refused (409).
        b.wrap("read_namespaced_lease", before=lambda: bump(cluster, namespace))
        conflicts = b.wrap("replace_namespaced_lease")
        await b.elector.acquire()
        assert conflicts == [409]
        await b.elector.release()

    run(scenario())
    # One takeover, counted once, despite the refused write.
    assert record(cluster, namespace).transitions == 1
    assert b.changes == [True, False]


def test_conflicting_write_while_renewing_keeps_the_leader(
    cluster: Cluster, namespace: str
) -> None:
    a = Replica(cluster, namespace, "a")

    async def scenario() -> list[int]:
        await a.elector.acquire()
        a.wrap("read_namespaced_lease", before=lambda: bump(cluster, namespace))
        conflicts = a.wrap("replace_namespaced_lease")
        renewing = asyncio.create_task(a.elector.renew_until_lost())
        await until(lambda: bool(conflicts), timeout=5, what="the renewal's 409")
        renewed_at = datetime.now(UTC)
        # The renewal is retried and succeeds; leadership carries on.
        await until(
            lambda: (record(cluster, namespace).renew_time or renewed_at) > renewed_at,
            timeout=FAST.renew_deadline,
            what="a renewal after the conflict",
        )
        await asyncio.sleep(FAST.lease_duration)
        assert a.elector.is_leader
        assert not a.elector.lost.is_set()
        await stop(renewing)
        await a.elector.release()
        return conflicts

    assert run(scenario()) == [409]
    assert a.changes == [True, False]
