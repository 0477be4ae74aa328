"""Editing manifests as dicts (what is applied is what the user wrote, plus what submit
changes): setting a field by its spoken path, and laying a cluster's job defaults beneath."""

from __future__ import annotations

import copy
import re
from typing import Any

_PART = re.compile(r"([^.\[\]]+)|\[(\d+)\]")


def field_parts(path: str) -> list[str | int]:
    """`spec.rewards[0].function` -> ["spec", "rewards", 0, "function"]."""
    parts: list[str | int] = []
    for name, index in _PART.findall(path):
        parts.append(int(index) if index else name)
    return parts


def set_field(manifest: dict[str, Any], path: str, value: Any) -> None:
    """Set the field `path` names; its parents must exist (they name a value read from it)."""
    *parents, leaf = field_parts(path)
    node: Any = manifest
    for part in parents:
        node = node[part]
    node[leaf] = value


def get_field(manifest: dict[str, Any], path: str) -> Any:
    node: Any = manifest
    for part in field_parts(path):
        try:
            node = node[part]
        except (KeyError, IndexError, TypeError):
            return None
    return node


def beneath(defaults: dict[str, Any], manifest: dict[str, Any]) -> dict[str, Any]:
    """`manifest` laid over `defaults`: mappings merge key by key, anything else (a list, a
    value) the manifest sets wins whole. Neither argument is changed."""
    merged: dict[str, Any] = {}  # the manifest's keys in its order, then the defaults' others
    for key, value in manifest.items():
        under = defaults.get(key)
        if isinstance(value, dict) and isinstance(under, dict):
            merged[key] = beneath(under, value)
        else:
            merged[key] = copy.deepcopy(value)
    for key, value in defaults.items():
        if key not in merged:
            merged[key] = copy.deepcopy(value)
    return merged
