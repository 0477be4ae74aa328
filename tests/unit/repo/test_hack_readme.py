"""hack/README.md's files table names every script and folder in hack/, and every file it
names exists: a newcomer finds each script's job there, and a script that was renamed or
never written is not referred to."""

from __future__ import annotations

import re

from fttestkit.paths import HACK


def _table() -> str:
    text = (HACK / "README.md").read_text()
    return text[text.index("## Files") : text.index("\n## ", text.index("## Files") + 1)]


def test_every_script_and_folder_of_hack_is_in_the_files_table() -> None:
    table = _table()
    named = set(re.findall(r"`([\w./<>-]+?)/?`", table))
    present = {p.name for p in HACK.iterdir() if p.suffix in (".sh", ".env")}
    present |= {p.name for p in HACK.iterdir() if p.is_dir() and p.name != "__pycache__"}
    missing = sorted(
        name for name in present
        if not any(n == name or n.startswith(f"{name}/") for n in named)
    )  # fmt: skip
    assert missing == [], f"not in hack/README.md's files table: {missing}"


def test_every_file_the_table_names_exists() -> None:
    for name in re.findall(r"^\| `([\w./-]+)`", _table(), flags=re.MULTILINE):
        if "<" not in name:
            assert (HACK / name).exists(), name
