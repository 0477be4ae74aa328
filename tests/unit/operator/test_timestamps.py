"""The API's timestamps as the operator reads them: what another client wrote badly is an
unknown time (None), never an exception in the middle of a pass."""

from __future__ import annotations

from datetime import UTC, datetime

import pytest

from ftoperator.timestamps import api_time


def test_an_api_timestamp_is_an_aware_utc_time() -> None:
    assert api_time("2026-11-27T02:39:33Z") == datetime(2026, 11, 27, 2, 39, 33, tzinfo=UTC)
    # Without a zone (a hand-written status): UTC, so it compares with the rest.
    assert api_time("2026-11-27T02:39:33") == datetime(2026, 11, 27, 2, 39, 33, tzinfo=UTC)


@pytest.mark.parametrize("stamp", [None, "", "yesterday", 1764211173, {"t": 1}])
def test_an_absent_or_unreadable_timestamp_is_unknown(stamp: object) -> None:
    assert api_time(stamp) is None
