"""The ranks' own reports as the operator reads them from a FineTuneJobProgress."""

from __future__ import annotations

from datetime import UTC, datetime

from ftapi.progress import RankReport
from ftoperator.cache import Cache, rank_reports
from ftoperator.ranks import slow_ranks

NOW = datetime(2026, 1, 1, 12, 0, 0, tzinfo=UTC)
KEY = ("team-a", "llama")


def text(rank: int, **fields: object) -> str:
    return RankReport(rank=rank, updated_at=NOW, **fields).model_dump_json(by_alias=True)  # type: ignore[arg-type]


def test_malformed_or_misfiled_rank_reports_are_left_out() -> None:
    found = rank_reports(
        {
            "0": text(0, step=3),
            "1": "{not json",
            "2": text(3),
            "4": 17,
            "5": text(5).replace('"step":0', '"step":-1'),
        },
        KEY,
    )
    assert list(found) == [0]
    assert found[0].step == 3
    assert rank_reports(None, KEY) == {} and rank_reports(["x"], KEY) == {}


def test_rank_reports_are_read_only_with_the_jobs_own_progress_object() -> None:
    cache = Cache()
    cache.jobs[KEY] = {"metadata": {"uid": "u1"}}
    report = '{"attempt": 0, "stage": "training", "updatedAt": "2026-01-01T12:00:00Z"}'
    cache.observe_progress(KEY, report, "u1", {"1": text(1)})
    assert list(cache.ranks_of(KEY)) == [1]
    cache.observe_progress(KEY, report, "another-uid", {"1": text(1)})  # a deleted job's
    assert cache.ranks_of(KEY) == {}
    cache.observe_progress(KEY, None, "u1", {"1": text(1)})
    assert cache.ranks_of(KEY) == {}


def test_a_rank_is_compared_with_the_median_of_the_others() -> None:
    def ranks(*compute: float | None, done: int | None = None) -> dict[int, RankReport]:
        return {r: RankReport(rank=r, compute_seconds=c, done=r == done, updated_at=NOW)
                for r, c in enumerate(compute)}  # fmt: skip

    assert slow_ranks(ranks(1.0, 2.0), 0, 1.5) == {1: 2.0}  # two ranks: the slow one only
    assert slow_ranks(ranks(1.0, 1.1, 0.9, 1.0, 3.0), 0, 1.5) == {4: 3.0}
    assert slow_ranks(ranks(1.0, 1.4), 0, 1.5) == {}
    assert slow_ranks(ranks(1.0), 0, 1.5) == {}  # nothing to compare with
    assert slow_ranks(ranks(1.0, None, 5.0, done=2), 0, 1.5) == {}  # unmeasured, finished
    assert slow_ranks(ranks(1.0, 3.0), 1, 1.5) == {}  # another attempt's reports
