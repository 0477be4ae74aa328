"""A FineTuneJob CRD from a release newer than this code: this tree's CRD with fields added,
as the next release would add them (defaulted to the behaviour from before them).

    crd = newer_crd()                  # spec.training.newKnob (default 1), spec.newBlock
    stored = with_newer_defaults(job)  # a job as the API server returns it under that CRD
"""

from __future__ import annotations

import copy
from typing import Any

from ftapi.crd import build_crd

NEWER_FIELDS: dict[str, dict[str, Any]] = {
    "spec.training.newKnob": {
        "type": "integer", "default": 1, "minimum": 1,
        "description": "A knob of a newer release (1: as before).",
    },
    "spec.newBlock": {
        "type": "object", "default": {},
        "description": "A settings block of a newer release.",
        "properties": {"level": {"type": "integer", "default": 3}},
    },
}  # fmt: skip
DEFAULTS_OF_NEWER_FIELDS = {"spec.training.newKnob": 1, "spec.newBlock": {"level": 3}}


def newer_crd() -> dict[str, Any]:
    crd = build_crd()
    schema = crd["spec"]["versions"][0]["schema"]["openAPIV3Schema"]
    for path, prop in NEWER_FIELDS.items():
        *parents, leaf = path.split(".")
        node = schema
        for part in parents:
            node = node["properties"][part]
        node.setdefault("properties", {})[leaf] = copy.deepcopy(prop)
    return crd


def newer_schema() -> dict[str, Any]:
    """The newer CRD's openAPIV3Schema (what the operator reads from the stored CRD)."""
    schema: dict[str, Any] = newer_crd()["spec"]["versions"][0]["schema"]["openAPIV3Schema"]
    return schema


def with_fields(manifest: dict[str, Any], values: dict[str, Any]) -> dict[str, Any]:
    """`manifest` with the dotted paths of `values` set (mappings created on the way)."""
    result = copy.deepcopy(manifest)
    for path, value in values.items():
        *parents, leaf = path.split(".")
        node = result
        for part in parents:
            node = node.setdefault(part, {})
        node[leaf] = copy.deepcopy(value)
    return result


def with_newer_defaults(manifest: dict[str, Any]) -> dict[str, Any]:
    """A job as the API server returns it under newer_crd(): the newer fields defaulted."""
    return with_fields(manifest, DEFAULTS_OF_NEWER_FIELDS)
