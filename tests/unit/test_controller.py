"""When the controller distrusts its cache and asks the API server (pods_behind): the
operator restarted and the Job's watch event arrived before its pods' (a crash test found
failures reported as BackoffLimitExceeded instead of their exit code that way)."""

from __future__ import annotations

from typing import Any

import pytest

from ftoperator.controller import pods_behind


def _job(active: int = 0, succeeded: int = 0, failed: int = 0, *, condition: str | None = None,
         uncounted_failed: int = 0) -> dict[str, Any]:  # fmt: skip
    status: dict[str, Any] = {"active": active, "succeeded": succeeded, "failed": failed}
    if condition:
        status["conditions"] = [{"type": condition, "status": "True"}]
    if uncounted_failed:
        status["uncountedTerminatedPods"] = {
            "failed": [f"uid-{i}" for i in range(uncounted_failed)]
        }
    return {"status": status}


def _pod(phase: str) -> dict[str, Any]:
    return {"status": {"phase": phase}}


@pytest.mark.parametrize(
    ("job", "cached", "behind"),
    [
        (_job(), [], False),  # no pods yet, none known
        (_job(active=2), [_pod("Running"), _pod("Running")], False),
        (_job(active=2), [_pod("Running")], True),  # one pod's event is late
        (_job(active=2), [], True),  # right after a restart: Job seen, pods not yet
        (_job(failed=1, condition="Failed"), [], True),
        (_job(failed=1, condition="Failed"), [_pod("Failed")], False),
        (_job(active=1, condition="FailureTarget"), [_pod("Running")], True),  # failure not seen
        (_job(uncounted_failed=1), [], True),
        (_job(succeeded=2, condition="Complete"), [_pod("Succeeded"), _pod("Succeeded")], False),
    ],
    ids=["empty", "in-step", "one-late", "all-late", "failed-unseen", "failed-seen",
         "failure-target", "uncounted", "complete"],
)  # fmt: skip
def test_pods_behind(job: dict[str, Any], cached: list[dict[str, Any]], behind: bool) -> None:
    assert pods_behind(job, cached) is behind
