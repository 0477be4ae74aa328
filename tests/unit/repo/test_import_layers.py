"""The import layers `make lint` checks (lint-imports, contracts in pyproject.toml): the
API imports neither the operator nor the trainer, those two never import each other (they
ship in different images), nothing that ships imports the tests or their kit (fttestkit),
and the kit imports no test. Each case copies the packages, adds one deliberate back-import
and shows the check refusing it; the untouched copy passes, so the refusal is the
back-import's."""

from __future__ import annotations

import shutil
import subprocess
import sys
from pathlib import Path

import pytest

from fttestkit.paths import REPO

PACKAGES = {
    "ftapi": "api",
    "ftoperator": "operator",
    "fttrainer": "trainer-image",
    "fttestkit": "testkit",
}


def _lint_imports(root: Path) -> subprocess.CompletedProcess[str]:
    """lint-imports with the repository's contracts, on the copies under `root` (first on
    the path, so they win over the installed packages)."""
    return subprocess.run(
        [str(Path(sys.executable).parent / "lint-imports"), "--no-cache",
         str(REPO / "pyproject.toml")],
        cwd=root, env={"PATH": "/usr/bin:/bin", "PYTHONPATH": str(root)},
        capture_output=True, text=True, timeout=300,
    )  # fmt: skip


@pytest.fixture
def copies(tmp_path: Path) -> Path:
    for package, folder in PACKAGES.items():
        shutil.copytree(REPO / folder / package, tmp_path / package)
    shutil.copytree(REPO / "tests", tmp_path / "tests", ignore=shutil.ignore_patterns("*.pyc"))
    return tmp_path


def test_the_tree_keeps_its_layers(copies: Path) -> None:
    result = _lint_imports(copies)
    assert result.returncode == 0, result.stdout + result.stderr
    assert "0 broken" in result.stdout


@pytest.mark.parametrize(
    ("importer", "imported", "contract"),
    [
        ("ftapi", "ftoperator.config", "api <- operator | trainer"),
        ("ftapi", "fttrainer.recipe", "api <- operator | trainer"),
        ("fttrainer", "ftoperator.children", "api <- operator | trainer"),
        ("ftoperator", "fttrainer.cli", "api <- operator | trainer"),
        ("ftoperator", "tests.cases", "nothing that ships imports the tests"),
        ("fttrainer", "fttestkit.builders", "nothing that ships imports the tests"),
        ("fttestkit", "tests.cases", "the test kit is imported by the tests, never the other way"),
    ],
)
def test_a_back_import_breaks_the_check(
    copies: Path, importer: str, imported: str, contract: str
) -> None:
    (copies / importer / "_back_import.py").write_text(f"import {imported}  # deliberate\n")
    result = _lint_imports(copies)
    assert result.returncode != 0
    assert f"{contract}" in result.stdout and "BROKEN" in result.stdout, result.stdout
    assert f"{importer}._back_import -> {imported}" in result.stdout, result.stdout
