"""merge_patch(before, after): the RFC 7386 patch that the API server turns back into `after`;
apply_merge_patch: what the API server makes of it (the status a write of ours left)."""

from __future__ import annotations

import copy
from typing import Any

import pytest

from ftoperator.merge_patch import apply_merge_patch, merge_patch


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


@pytest.mark.parametrize("case", list(CASES))
def test_apply_merge_patch_turns_before_into_after_and_changes_nothing_given(case: str) -> None:
    before, after, _ = CASES[case]
    kept = copy.deepcopy(before)
    patch = merge_patch(before, after)
    assert apply_merge_patch(before, patch) == after == apply(before, patch)
    assert before == kept


def test_apply_merge_patch_as_rfc_7386_says() -> None:
    """A patch this operator's merge_patch never makes, the RFC's own cases: nulls inside an
    object that replaces a scalar are dropped, and applying to a missing key makes it."""
    target = {"a": "b", "c": {"d": "e", "f": "g"}, "x": 1}
    patch = {"a": "z", "c": {"f": None}, "x": {"y": None, "w": 2}, "n": {"m": [1, None]}}
    expected = {"a": "z", "c": {"d": "e"}, "x": {"w": 2}, "n": {"m": [1, None]}}
    assert apply_merge_patch(target, patch) == expected == apply(target, patch)
