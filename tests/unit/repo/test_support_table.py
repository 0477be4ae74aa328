"""docs/trainer.md's support table is the one the trainer tier runs, cell for cell."""

from __future__ import annotations

import subprocess
import sys

from fttestkit.paths import REPO
from tests.trainer.support import METHODS, MOE_EXCEPTIONS, cells, render


def test_the_docs_show_the_table_the_matrix_runs() -> None:
    docs = (REPO / "docs" / "trainer.md").read_text()
    assert render() in docs, "regenerate it: python -m tests.trainer.support"
    printed = subprocess.run([sys.executable, "-m", "tests.trainer.support"], cwd=REPO,
                             capture_output=True, text=True, check=True, timeout=120)  # fmt: skip
    assert printed.stdout == render() + "\n"


def test_every_refusal_is_explained_and_every_family_runs_lora() -> None:
    refused = set(MOE_EXCEPTIONS.values())
    table = render()
    assert all(f"refused ({mark})" in table for mark in "abc"[: len(refused)])
    assert {arch for arch, method, _ in cells() if method == "lora"} >= {
        arch for arch, _, _ in cells()
    }
    assert set(METHODS) == {method for _, method, _ in cells()}
