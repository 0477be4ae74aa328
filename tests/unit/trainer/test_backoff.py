"""The one backoff both S3 paths (the store's transfers and a dataset's download) wait by."""

from __future__ import annotations

import pytest

from fttrainer.storage.s3 import backoff_delay


@pytest.mark.parametrize(("tries", "low", "high"), [(0, 0.25, 0.5), (1, 0.5, 1.0), (3, 2.0, 4.0),
                                                    (5, 5.0, 10.0), (40, 5.0, 10.0)])  # fmt: skip
def test_the_wait_doubles_from_half_a_second_to_ten_with_jitter(
    tries: int, low: float, high: float
) -> None:
    waits = {backoff_delay(tries, remaining=100.0) for _ in range(200)}
    assert all(low <= w <= high for w in waits), (tries, min(waits), max(waits))
    assert len(waits) > 1  # jittered: ranks failing together do not retry together


def test_the_wait_never_passes_the_deadline() -> None:
    assert backoff_delay(10, remaining=0.3) <= 0.3
    assert backoff_delay(10, remaining=-1.0) == 0.0
