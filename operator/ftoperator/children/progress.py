"""The attempt's FineTuneJobProgress: the one object the trainer may write (its progress)."""

from __future__ import annotations

from typing import Any

from ftapi.constants import API_VERSION, PROGRESS_KIND

from .naming import Meta, Names


def build_progress(names: Names, meta: Meta) -> dict[str, Any]:
    return {
        "apiVersion": API_VERSION,
        "kind": PROGRESS_KIND,
        "metadata": meta(names.progress, "progress"),
    }
