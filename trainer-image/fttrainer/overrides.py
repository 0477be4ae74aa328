"""`--set dotted.path=value` overrides applied to a manifest before validation.

Values are parsed as YAML scalars/collections, so `--set training.epochs=2` gives an int,
`--set method.lora.targetModules=[q_proj,v_proj]` a list. The `spec.` prefix is optional.
"""

from __future__ import annotations

import copy
from typing import Any

import yaml


class OverrideError(ValueError):
    """A --set argument that is not `path=value`."""


def apply_overrides(manifest: dict[str, Any], assignments: list[str]) -> dict[str, Any]:
    result = copy.deepcopy(manifest)
    for assignment in assignments:
        path, sep, raw = assignment.partition("=")
        if not sep or not path.strip():
            raise OverrideError(f"--set {assignment!r}: expected dotted.path=value")
        parts = path.strip().split(".")
        if parts[0] not in ("spec", "metadata"):
            parts.insert(0, "spec")
        node = result
        for part in parts[:-1]:
            child = node.setdefault(part, {})
            if not isinstance(child, dict):
                raise OverrideError(f"--set {path}: {part} is not a mapping")
            node = child
        node[parts[-1]] = yaml.safe_load(raw) if raw.strip() else ""
    return result
