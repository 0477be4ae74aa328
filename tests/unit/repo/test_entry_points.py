"""Every benchmark script starts: its --help runs (a broken import, or a script whose name
shadows a standard-library module for its siblings, fails here rather than in `make bench`)."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest

from fttestkit.paths import REPO

SCRIPTS = sorted((REPO / "bench").glob("*.py"))
STDLIB = set(sys.stdlib_module_names)


@pytest.mark.parametrize("script", SCRIPTS, ids=[s.name for s in SCRIPTS])
def test_benchmark_script_help(script: Path) -> None:
    done = subprocess.run(
        [sys.executable, str(script), "--help"], capture_output=True, text=True, timeout=300,
        check=False, cwd=REPO,
    )  # fmt: skip
    assert done.returncode == 0, done.stderr[-2000:]
    assert "usage:" in done.stdout


def test_no_script_shadows_the_standard_library() -> None:
    """Python puts a script's folder first on sys.path: a bench/operator.py made `import
    operator` (inside collections, dataclasses, ...) load the benchmark for its siblings."""
    shadowing = [s.name for s in SCRIPTS if s.stem in STDLIB]
    assert not shadowing
