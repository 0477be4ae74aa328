"""merge_patch(before, after): the RFC 7386 patch that the API server turns back into `after`."""

from __future__ import annotations

from typing import Any

import pytest

from ftoperator.merge_patch import merge_patch


def apply(target: Any, patch: Any) -> Any:
    """RFC 7386's MergePatch algorithm (what the API server does with the patch)."""
    if not isinstance(patch, dict):
        return patch
    result = dict(target) if isinstance(target, dict) else {}
    for key, value in patch.items():
        if value is None:
            result.pop(key, None)
        else:
            result[key] = apply(result.get(key), value)
    return result


CASES: dict[str, tuple[dict[str, Any], dict[str, Any], dict[str, Any]]] = {
    "equal: nothing to write": (
        {"phase": "Running", "progress": {"step": 5}},
        {"phase": "Running", "progress": {"step": 5}},
        {},
    ),
    "a nested field that is gone is deleted": (
        {"phase": "Running", "progress": {"step": 5, "tokensPerSecond": 812.0}},
        {"phase": "Succeeded", "progress": {"step": 5}},
        {"phase": "Succeeded", "progress": {"tokensPerSecond": None}},
    ),
    "a whole object that is gone is deleted": (
        {"phase": "Failed", "metrics": {"gradNorm": 1.0}}, {"phase": "Failed"}, {"metrics": None},
    ),
    "lists are replaced whole": (
        {"conditions": [{"type": "Running"}, {"type": "Failed"}]},
        {"conditions": [{"type": "Running"}]},
        {"conditions": [{"type": "Running"}]},
    ),
    "an object replacing a scalar is sent whole": (
        {"checkpoint": "x"}, {"checkpoint": {"step": 1}}, {"checkpoint": {"step": 1}},
    ),
}  # fmt: skip


@pytest.mark.parametrize("case", list(CASES))
def test_merge_patch(case: str) -> None:
    before, after, expected = CASES[case]
    patch = merge_patch(before, after)
    assert patch == expected
    assert apply(before, patch) == after
