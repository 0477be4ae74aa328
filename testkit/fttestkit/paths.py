"""Where the repository's parts are. The kit is installed editable (uv's workspace), so its
files stay in the clone and the repository root is two folders up."""

from __future__ import annotations

from pathlib import Path

REPO = Path(__file__).resolve().parents[2]
HACK = REPO / "hack"
CRD_PATH = REPO / "crds" / "finetune.dev_finetunejobs.yaml"
PROGRESS_CRD_PATH = REPO / "crds" / "finetune.dev_finetunejobprogresses.yaml"
