"""Fixture builders: the smallest valid FineTuneJob manifest, changed one field at a time.

make_job().set("spec.method.type", "qlora").set("spec.method.quantization.bits", 8).obj()
"""

from __future__ import annotations

import copy
from typing import Any, Self


def minimal_manifest(name: str = "tiny") -> dict[str, Any]:
    return {
        "apiVersion": "finetune.dev/v1alpha1",
        "kind": "FineTuneJob",
        "metadata": {"name": name},
        "spec": {
            "model": {"name": "org/base-model"},
            "dataset": {"train": {"uri": "s3://data/train.jsonl"}},
            "output": {"uri": "s3://models/tiny"},
        },
    }


class JobBuilder:
    def __init__(self, name: str = "tiny") -> None:
        self._manifest = minimal_manifest(name)

    def set(self, path: str, value: Any) -> Self:
        """Set a dotted path (creating mappings on the way); `spec.` may be omitted."""
        *parents, leaf = self._parts(path)
        node = self._manifest
        for part in parents:
            node = node.setdefault(part, {})
        node[leaf] = copy.deepcopy(value)
        return self

    def without(self, path: str) -> Self:
        *parents, leaf = self._parts(path)
        node = self._manifest
        for part in parents:
            node = node[part]
        del node[leaf]
        return self

    def obj(self) -> dict[str, Any]:
        return copy.deepcopy(self._manifest)

    @staticmethod
    def _parts(path: str) -> list[str]:
        parts = path.split(".")
        if parts[0] not in ("spec", "metadata", "status", "apiVersion", "kind"):
            parts.insert(0, "spec")
        return parts


def make_job(name: str = "tiny") -> JobBuilder:
    return JobBuilder(name)
