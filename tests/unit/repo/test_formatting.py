"""CONTRIBUTING.md's formatter rule, held in product code (the API, operator, trainer and
client): ruff decides the format, and `# fmt: skip` only ends a module-level table (a
multi-line assignment or call whose rows are read across), never a line of logic."""

from __future__ import annotations

import ast
import subprocess

from fttestkit.paths import REPO

PRODUCT = ("api", "operator", "trainer-image", "client")


def _skips() -> dict[str, list[int]]:
    command = ["git", "grep", "-n", "-e", "# fmt: skip", "--", *(f"{p}/*.py" for p in PRODUCT)]
    found = subprocess.run(command, cwd=REPO, capture_output=True, text=True)
    skips: dict[str, list[int]] = {}
    for hit in found.stdout.splitlines():
        path, line, _ = hit.split(":", 2)
        skips.setdefault(path, []).append(int(line))
    return skips


def test_fmt_skip_in_product_code_only_ends_a_module_level_table() -> None:
    skips = _skips()
    assert skips, "no `# fmt: skip` found at all: the grep is wrong"
    astray = []
    for path, lines in skips.items():
        tree = ast.parse((REPO / path).read_text())
        tables = {
            s.end_lineno
            for s in tree.body
            if isinstance(s, ast.Assign | ast.AnnAssign | ast.Expr) and s.end_lineno != s.lineno
        }
        astray += [f"{path}:{line}" for line in lines if line not in tables]
    assert astray == []
    assert sum(len(lines) for lines in skips.values()) < 30
