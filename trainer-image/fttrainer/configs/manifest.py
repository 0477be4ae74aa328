"""The native style: a FineTuneJob manifest (the same YAML `kubectl apply` takes)."""

from __future__ import annotations

from typing import Any

from .base import Translation

STYLE = "FineTuneJob manifest"


def looks_like(document: Any) -> bool:
    return isinstance(document, dict) and (
        "spec" in document or "kind" in document or "apiVersion" in document
    )


def translate(document: dict[str, Any], *, source: str) -> Translation:
    return Translation(STYLE, source, document)
