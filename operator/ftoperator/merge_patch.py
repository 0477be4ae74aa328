"""The JSON merge patch (RFC 7386) that turns one status into another, and its application. Pure.

The operator computes each job's whole status and writes only the difference. A merge patch
of the new status alone would keep every field the new one no longer has (the API server
merges objects key by key), so a finished job would still show its last tokens/s; here a
removed key is sent as null, which deletes it. Lists are replaced whole, as RFC 7386 does.
"""

from __future__ import annotations

from typing import Any


def merge_patch(before: dict[str, Any], after: dict[str, Any]) -> dict[str, Any]:
    """What to send so that `before` becomes `after`; empty when they are equal."""
    patch: dict[str, Any] = {key: None for key in before if key not in after}
    for key, value in after.items():
        old = before.get(key)
        if isinstance(value, dict) and isinstance(old, dict):
            nested = merge_patch(old, value)
            if nested:
                patch[key] = nested
        elif key not in before or old != value:
            patch[key] = value
    return patch


def apply_merge_patch(target: dict[str, Any], patch: dict[str, Any]) -> dict[str, Any]:
    """`target` with `patch` applied, as the API server applies it (RFC 7386: null deletes a
    key, an object merges key by key, anything else replaces). `target` is not changed."""
    result = dict(target)
    for key, value in patch.items():
        if value is None:
            result.pop(key, None)
        elif isinstance(value, dict):
            old = result.get(key)
            result[key] = apply_merge_patch(old if isinstance(old, dict) else {}, value)
        else:
            result[key] = value
    return result
