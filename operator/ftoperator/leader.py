"""Leader election on a coordination.k8s.io/v1 Lease, the way client-go does it.

Two operator replicas run; only the one holding the Lease reconciles. The other waits, ready
to take over when the leader releases the Lease (a clean shutdown: at once) or stops renewing
it (a crash: once `leaseDurationSeconds` passed without a renewal).

    elector = LeaderElector(api_client, namespace, identity=default_identity())
    async with elector.leading() as lost:   # blocks until we lead; releases on exit
        ...                                 # run kopf; stop it when `lost` is set

or, step by step:

    await elector.acquire()                 # blocks until we lead
    renewing = asyncio.create_task(elector.renew_until_lost())  # returns (and sets
    ...                                     # `elector.lost`) when leadership is lost
    await elector.release()

How expiry is judged (as in client-go): a candidate never compares the Lease's `renewTime`
with its own clock, since clocks of two nodes may disagree. It notes, on its own monotonic
clock, when it first saw the current record, and takes the Lease only when that record stayed
unchanged for `leaseDurationSeconds`. A freshly started candidate therefore waits one full
lease duration even behind a long-dead leader; a released Lease (empty holder) is taken at once.

Safety: the leader counts its deadline from *before* the request of its last successful renewal,
and gives up after `renew_deadline`, which is shorter than the lease duration. Candidates start
counting no earlier than that write, so the leader knows it lost at least
`lease_duration - renew_deadline` seconds before anyone else may take over: the time the caller
has to stop reconciling.

Every write is a full update carrying the `resourceVersion` that was read, so of two replicas
writing at once exactly one wins; the other gets 409 Conflict and tries again later.
The operator's ServiceAccount needs get, create and update on `leases` in its namespace.
"""

from __future__ import annotations

import asyncio
import enum
import logging
import os
import random
import socket
import time
import uuid
from collections.abc import AsyncIterator, Callable
from contextlib import asynccontextmanager, suppress
from dataclasses import dataclass, replace
from datetime import UTC, datetime
from typing import Any

import urllib3
from kubernetes import client
from kubernetes.client.exceptions import ApiException

log = logging.getLogger(__name__)

DEFAULT_LEASE_NAME = "finetune-operator-leader"
# What a failed request may raise: the API server's answer, or the transport giving up.
REQUEST_ERRORS = (ApiException, urllib3.exceptions.HTTPError, OSError)


@dataclass(frozen=True)
class LeaseTimings:
    """client-go's knobs, plus how often a healthy leader renews.

    lease_duration: how long a candidate waits for a renewal before taking the Lease.
    renew_deadline: how long the leader keeps retrying a failing renewal before it gives up.
    renew_period:   how often the leader renews while all is well.
    retry_period:   how often a candidate tries to acquire, and a failing renewal is retried.
    """

    lease_duration: int = 15
    renew_deadline: float = 10.0
    renew_period: float = 5.0
    retry_period: float = 2.0

    def __post_init__(self) -> None:
        if min(self.lease_duration, self.renew_deadline, self.renew_period, self.retry_period) <= 0:
            raise ValueError(f"leader election timings must be positive: {self}")
        if not self.renew_deadline < self.lease_duration:
            raise ValueError(
                f"renew_deadline ({self.renew_deadline}) must be shorter than lease_duration "
                f"({self.lease_duration}): the leader must notice it lost before others take over"
            )
        if not self.renew_period < self.renew_deadline:
            raise ValueError(
                f"renew_period ({self.renew_period}) must be shorter than renew_deadline "
                f"({self.renew_deadline})"
            )
        if not self.retry_period < self.renew_deadline:
            raise ValueError(
                f"retry_period ({self.retry_period}) must be shorter than renew_deadline "
                f"({self.renew_deadline})"
            )


@dataclass(frozen=True)
class LeaseRecord:
    """The part of a Lease's spec that leader election reads and writes."""

    holder: str = ""
    lease_duration: int = 0
    acquire_time: datetime | None = None
    renew_time: datetime | None = None
    transitions: int = 0

    @classmethod
    def from_lease(cls, lease: client.V1Lease) -> LeaseRecord:
        spec = lease.spec or client.V1LeaseSpec()
        return cls(
            holder=spec.holder_identity or "",
            lease_duration=spec.lease_duration_seconds or 0,
            acquire_time=spec.acquire_time,
            renew_time=spec.renew_time,
            transitions=spec.lease_transitions or 0,
        )

    def spec(self) -> dict[str, Any]:
        return {
            "holderIdentity": self.holder,
            "leaseDurationSeconds": self.lease_duration,
            "acquireTime": _microtime(self.acquire_time),
            "renewTime": _microtime(self.renew_time),
            "leaseTransitions": self.transitions,
        }


class Decision(enum.Enum):
    CREATE = "create"  # no Lease yet
    TAKE = "take"  # free (released) or expired: take it over
    RENEW = "renew"  # ours already
    WAIT = "wait"  # someone else holds it and has renewed recently enough


def decide(record: LeaseRecord | None, identity: str, observed_at: float, now: float) -> Decision:
    """What to do with the Lease `record`, first seen unchanged at `observed_at` (monotonic s).

    Pure. A record held by another replica expires `lease_duration` seconds after this
    replica first saw it; its `renewTime` (another node's clock) is not trusted.
    """
    if record is None:
        return Decision.CREATE
    if record.holder == identity:
        return Decision.RENEW
    if not record.holder or now >= observed_at + record.lease_duration:
        return Decision.TAKE
    return Decision.WAIT


def claimed(
    record: LeaseRecord | None, identity: str, lease_duration: int, now: datetime
) -> LeaseRecord:
    """The record to write to acquire or renew: a takeover counts one transition."""
    if record is not None and record.holder == identity:
        return replace(record, lease_duration=lease_duration, renew_time=now)
    return LeaseRecord(
        holder=identity,
        lease_duration=lease_duration,
        acquire_time=now,
        renew_time=now,
        transitions=0 if record is None else record.transitions + 1,
    )


def released(record: LeaseRecord, now: datetime) -> LeaseRecord:
    """The record to write on a clean shutdown: no holder, so a candidate takes it at once."""
    return replace(record, holder="", lease_duration=1, acquire_time=now, renew_time=now)


def default_identity() -> str:
    """The pod's name (POD_NAME from the downward API, else the hostname) plus a random suffix,
    so a restarted container never mistakes its predecessor's Lease for its own."""
    return f"{os.environ.get('POD_NAME') or socket.gethostname()}_{uuid.uuid4().hex[:8]}"


class _Outcome(enum.Enum):
    LEADING = "leading"  # we hold the Lease now (acquired or renewed)
    HELD = "held"  # another replica holds it
    RETRY = "retry"  # a conflict or an API error: try again later


class LeaderElector:
    """Acquires, renews and releases one Lease. Use it from a single asyncio loop.

    `on_change(True)` is called once leadership is acquired and `on_change(False)` once it is
    lost or released (e.g. to set a metric). `lost` is set when renewal failed for longer than
    `renew_deadline`, or another replica took the Lease: the caller must stop reconciling now.
    """

    def __init__(
        self,
        api: client.ApiClient,
        namespace: str,
        name: str = DEFAULT_LEASE_NAME,
        identity: str | None = None,
        timings: LeaseTimings | None = None,
        on_change: Callable[[bool], None] | None = None,
    ) -> None:
        self.namespace = namespace
        self.name = name
        self.identity = identity or default_identity()
        self.timings = timings or LeaseTimings()
        self.lost = asyncio.Event()
        self._leases = client.CoordinationV1Api(api)
        self._on_change = on_change
        self._leading = False
        self._last_renewal = 0.0  # monotonic time before the request that last renewed
        self._observed: LeaseRecord | None = None
        self._observed_at = 0.0
        self._last_holder_logged: str | None = None

    @property
    def is_leader(self) -> bool:
        return self._leading

    async def acquire(self) -> None:
        """Block until this replica holds the Lease (retrying every ~`retry_period`)."""
        if self.lost.is_set():
            raise RuntimeError("this elector lost leadership; start a new process to lead again")
        while await self._try_acquire_or_renew(renewing=False) is not _Outcome.LEADING:
            await asyncio.sleep(self.timings.retry_period * random.uniform(1.0, 1.2))
        self._set_leading(True)
        log.info("Acquired leader Lease %s/%s as %s", self.namespace, self.name, self.identity)

    async def renew_until_lost(self) -> None:
        """Renew the Lease every `renew_period` until that fails; then set `lost` and return."""
        if not self._leading:
            raise RuntimeError("renew_until_lost() needs leadership: await acquire() first")
        reason = ""
        while not reason:
            await asyncio.sleep(self.timings.renew_period)
            reason = await self._renew()
        self._set_leading(False)
        self.lost.set()
        log.error("Lost leader Lease %s/%s: %s", self.namespace, self.name, reason)

    async def release(self) -> None:
        """Give the Lease up so another replica takes it at once. Best effort: an error is
        logged (the Lease then simply expires). A no-op when another replica holds it."""
        was_leading, self._leading = self._leading, False
        try:
            lease = await self._call(self._leases.read_namespaced_lease, self.name, self.namespace)
            record = LeaseRecord.from_lease(lease)
            if record.holder == self.identity:
                body = self._body(lease, released(record, datetime.now(UTC)))
                await self._call(
                    self._leases.replace_namespaced_lease, self.name, self.namespace, body
                )
                log.info("Released leader Lease %s/%s", self.namespace, self.name)
        except REQUEST_ERRORS as error:
            log.warning(
                "Could not release leader Lease %s/%s: %s", self.namespace, self.name, error
            )
        if was_leading and self._on_change:
            self._on_change(False)

    @asynccontextmanager
    async def leading(self) -> AsyncIterator[asyncio.Event]:
        """Acquire, renew in the background while the block runs, release on the way out.
        Yields `lost`."""
        await self.acquire()
        renewing = asyncio.create_task(self.renew_until_lost(), name="leader-lease-renewal")
        try:
            yield self.lost
        finally:
            renewing.cancel()
            with suppress(asyncio.CancelledError):
                await renewing
            if not self.lost.is_set():
                await self.release()

    async def _renew(self) -> str:
        """Renew, retrying until `renew_deadline` after the last renewal. '' on success, else
        why leadership is lost."""
        deadline = self._last_renewal + self.timings.renew_deadline
        while (remaining := deadline - time.monotonic()) > 0:
            try:
                async with asyncio.timeout(remaining):
                    outcome = await self._try_acquire_or_renew(renewing=True)
            except TimeoutError:
                break
            if outcome is _Outcome.LEADING:
                return ""
            if outcome is _Outcome.HELD:
                if self._observed is None:
                    return "the Lease was deleted"
                return f"the Lease is now held by {self._observed.holder!r}"
            pause = min(self.timings.retry_period, deadline - time.monotonic())
            await asyncio.sleep(max(0.0, pause))
        return f"no successful renewal within renew_deadline ({self.timings.renew_deadline}s)"

    async def _try_acquire_or_renew(self, *, renewing: bool) -> _Outcome:
        """One read-decide-write round (client-go's tryAcquireOrRenew)."""
        started = time.monotonic()
        try:
            lease: client.V1Lease | None = await self._call(
                self._leases.read_namespaced_lease, self.name, self.namespace
            )
        except ApiException as error:
            if error.status != 404:
                log.warning(
                    "Reading leader Lease %s/%s failed: %s", self.namespace, self.name, error
                )
                return _Outcome.RETRY
            lease = None
        except REQUEST_ERRORS as error:
            log.warning("Reading leader Lease %s/%s failed: %s", self.namespace, self.name, error)
            return _Outcome.RETRY

        current = None if lease is None else LeaseRecord.from_lease(lease)
        if current != self._observed or current is None:
            self._observed, self._observed_at = current, time.monotonic()
        decision = decide(current, self.identity, self._observed_at, time.monotonic())
        if decision is Decision.WAIT or (renewing and decision is not Decision.RENEW):
            self._log_holder(current)
            return _Outcome.HELD

        wanted = claimed(current, self.identity, self.timings.lease_duration, datetime.now(UTC))
        try:
            if lease is None:
                body = {"metadata": {"name": self.name}, "spec": wanted.spec()}
                written = await self._call(
                    self._leases.create_namespaced_lease, self.namespace, body
                )
            else:
                written = await self._call(
                    self._leases.replace_namespaced_lease,
                    self.name,
                    self.namespace,
                    self._body(lease, wanted),
                )
        except ApiException as error:
            if error.status == 409:  # another replica wrote first (or created it first)
                log.info("Leader Lease %s/%s changed under us; retrying", self.namespace, self.name)
            else:
                log.warning(
                    "Writing leader Lease %s/%s failed: %s", self.namespace, self.name, error
                )
            return _Outcome.RETRY
        except REQUEST_ERRORS as error:
            log.warning("Writing leader Lease %s/%s failed: %s", self.namespace, self.name, error)
            return _Outcome.RETRY
        self._observed, self._observed_at = LeaseRecord.from_lease(written), time.monotonic()
        self._last_renewal = started
        return _Outcome.LEADING

    def _body(self, lease: client.V1Lease, record: LeaseRecord) -> dict[str, Any]:
        """A full update of `lease`'s spec, conditional on the resourceVersion that was read."""
        version = lease.metadata.resource_version if lease.metadata else None
        return {
            "metadata": {"name": self.name, "resourceVersion": version},
            "spec": record.spec(),
        }

    async def _call(self, method: Callable[..., Any], *args: Any) -> Any:
        # The client is synchronous: run it off the loop, and never let one request hang
        # longer than the leader may go without renewing.
        timeout = self.timings.renew_deadline
        return await asyncio.to_thread(method, *args, _request_timeout=timeout)

    def _set_leading(self, leading: bool) -> None:
        self._leading = leading
        if self._on_change:
            self._on_change(leading)

    def _log_holder(self, record: LeaseRecord | None) -> None:
        holder = record.holder if record else ""
        if holder != self._last_holder_logged:
            self._last_holder_logged = holder
            log.info(
                "Leader Lease %s/%s is held by %r; standing by", self.namespace, self.name, holder
            )


def _microtime(value: datetime | None) -> datetime | None:
    """The client writes datetimes with isoformat(), which drops the fraction when it is zero,
    and the API server's MicroTime then refuses the value: keep the fraction non-zero (1 µs)."""
    if value is None or value.microsecond:
        return value
    return value.replace(microsecond=1)
