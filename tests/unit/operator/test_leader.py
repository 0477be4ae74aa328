"""The pure parts of leader election: when a Lease may be taken, and what gets written."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta
from typing import Any

import pytest

from ftoperator.leader import (
    Decision,
    LeaseRecord,
    LeaseTimings,
    claimed,
    decide,
    default_identity,
    released,
)

ME = "operator-0_aaaa"
OTHER = "operator-1_bbbb"
T0 = datetime(2026, 11, 21, 12, 0, 0, 250000, tzinfo=UTC)
T1 = T0 + timedelta(seconds=7)


def held_by(holder: str, duration: int = 15) -> LeaseRecord:
    return LeaseRecord(holder, duration, acquire_time=T0, renew_time=T0, transitions=3)


# (record, first seen unchanged at, now) -> decision; times are monotonic seconds.
DECISIONS = {
    "no lease yet: create it": (None, 100.0, 100.0, Decision.CREATE),
    "ours: renew": (held_by(ME), 100.0, 101.0, Decision.RENEW),
    "ours, even if we were slow: renew": (held_by(ME), 100.0, 500.0, Decision.RENEW),
    "released (no holder): take at once": (held_by(""), 100.0, 100.0, Decision.TAKE),
    "other, just seen: wait": (held_by(OTHER), 100.0, 100.0, Decision.WAIT),
    "other, unchanged 14.9 of 15 s: wait": (held_by(OTHER), 100.0, 114.9, Decision.WAIT),
    "other, unchanged for its lease duration: take": (held_by(OTHER), 100.0, 115.0, Decision.TAKE),
    "other, long dead: take": (held_by(OTHER), 100.0, 900.0, Decision.TAKE),
    "other's own lease duration counts, not ours": (
        held_by(OTHER, 60),
        100.0,
        130.0,
        Decision.WAIT,
    ),
}


@pytest.mark.parametrize(
    ("record", "observed_at", "now", "expected"), DECISIONS.values(), ids=DECISIONS.keys()
)
def test_decide(
    record: LeaseRecord | None, observed_at: float, now: float, expected: Decision
) -> None:
    assert decide(record, ME, observed_at, now) is expected


def test_decide_ignores_the_records_renew_time() -> None:
    """Another node's clock is not trusted: a renewTime from long ago, first seen just now,
    is not expired (a fresh candidate waits one lease duration)."""
    ancient = LeaseRecord(OTHER, 15, acquire_time=T0, renew_time=T0 - timedelta(days=1))
    assert decide(ancient, ME, observed_at=100.0, now=101.0) is Decision.WAIT


CLAIMS = {
    "create: first holder, no transition": (
        None,
        LeaseRecord(ME, 15, acquire_time=T1, renew_time=T1, transitions=0),
    ),
    "renew: keeps acquireTime and transitions": (
        held_by(ME),
        LeaseRecord(ME, 15, acquire_time=T0, renew_time=T1, transitions=3),
    ),
    "take over from another: one more transition": (
        held_by(OTHER),
        LeaseRecord(ME, 15, acquire_time=T1, renew_time=T1, transitions=4),
    ),
    "take a released lease: one more transition": (
        released(held_by(OTHER), T0),
        LeaseRecord(ME, 15, acquire_time=T1, renew_time=T1, transitions=4),
    ),
}


@pytest.mark.parametrize(("record", "expected"), CLAIMS.values(), ids=CLAIMS.keys())
def test_claimed(record: LeaseRecord | None, expected: LeaseRecord) -> None:
    assert claimed(record, ME, 15, T1) == expected


def test_released_leaves_no_holder_and_keeps_the_count() -> None:
    record = released(held_by(ME), T1)
    assert (record.holder, record.transitions, record.renew_time) == ("", 3, T1)
    assert decide(record, OTHER, observed_at=100.0, now=100.0) is Decision.TAKE


def test_spec_times_always_carry_microseconds() -> None:
    """The API server's MicroTime needs six fraction digits; isoformat() drops a zero fraction."""
    whole_second = datetime(2026, 11, 21, 12, 0, 0, tzinfo=UTC)
    spec = LeaseRecord(ME, 15, acquire_time=whole_second, renew_time=T0).spec()
    assert spec["acquireTime"].isoformat() == "2026-11-21T12:00:00.000001+00:00"
    assert spec["renewTime"] == T0
    assert spec["holderIdentity"] == ME
    assert spec["leaseDurationSeconds"] == 15


BAD_TIMINGS = {
    "renew deadline not shorter than the lease": dict(lease_duration=10, renew_deadline=10),
    "renew period not shorter than the deadline": dict(renew_deadline=5, renew_period=5),
    "retry period not shorter than the deadline": dict(renew_deadline=3, retry_period=3),
    "zero": dict(retry_period=0),
}


@pytest.mark.parametrize("kwargs", BAD_TIMINGS.values(), ids=BAD_TIMINGS.keys())
def test_timings_refuse_unsafe_combinations(kwargs: dict[str, Any]) -> None:
    with pytest.raises(ValueError, match="must be"):
        LeaseTimings(**kwargs)


def test_default_timings_are_client_gos() -> None:
    assert LeaseTimings() == LeaseTimings(15, 10.0, 5.0, 2.0)


def test_identity_is_the_pod_name_plus_a_random_suffix(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("POD_NAME", "finetune-operator-7d9f-xk2p")
    first, second = default_identity(), default_identity()
    assert first.startswith("finetune-operator-7d9f-xk2p_")
    assert first != second
