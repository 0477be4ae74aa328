"""README's "Repository layout" and "Tests" sections name what the tree holds: every
top-level folder of the repository in the layout block, every folder of tests/ (and of
tests/unit/) in the tiers table. A folder added without a line fails here."""

from __future__ import annotations

import re
import subprocess

from fttestkit.paths import REPO


def _section(title: str) -> str:
    text = (REPO / "README.md").read_text()
    return text.split(f"\n## {title}\n", 1)[1].split("\n## ", 1)[0]


def _tracked_folders(under: str = "") -> set[str]:
    command = ["git", "ls-files", *([under] if under else [])]
    files = subprocess.run(command, cwd=REPO, capture_output=True, text=True, check=True)
    return {
        f.split("/")[under.count("/")]
        for f in files.stdout.split()
        if f.count("/") > under.count("/")
    }


def test_the_layout_block_names_every_top_level_folder() -> None:
    block = _section("Repository layout").split("```", 2)[1]
    named = set(re.findall(r"^([\w.-]+)/", block, re.M))
    hidden = {name for name in _tracked_folders() if name.startswith(".")}
    assert _tracked_folders() - hidden - named == set()
    assert named - _tracked_folders() == set()  # nothing named that is not there


def test_the_tiers_table_names_every_test_folder() -> None:
    table = _section("Tests")
    rows = [line for line in table.splitlines() if line.startswith("| ") and "`tests/" in line]
    cited = " ".join(rows)
    assert {f for f in _tracked_folders("tests/") if f != "__pycache__"} <= set(
        re.findall(r"`tests/(\w+)", cited)
    )
    unit = re.search(r"`tests/unit/\{([\w,]+)\}`", cited)
    assert unit is not None
    assert set(unit.group(1).split(",")) == _tracked_folders("tests/unit/")
    words = ["no", "one", "two", "three", "four", "five", "six", "seven", "eight"]
    assert f"`make test` runs {words[len(rows)]} tiers" in table
