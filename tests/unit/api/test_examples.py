"""Every shipped example is a valid FineTuneJob that tells the reader how to run it."""

from __future__ import annotations

import re
from pathlib import Path

import pytest

from ftapi import load_job
from fttestkit.paths import REPO

EXAMPLES = sorted((REPO / "examples").glob("*.yaml"))


def test_there_are_examples() -> None:
    assert len(EXAMPLES) >= 12


@pytest.mark.parametrize("path", EXAMPLES, ids=[p.name for p in EXAMPLES])
def test_example_parses(path: Path) -> None:
    job = load_job(path)
    assert job.metadata.name and job.spec.model.name


@pytest.mark.parametrize("path", EXAMPLES, ids=[p.name for p in EXAMPLES])
def test_example_opens_with_the_command_that_runs_it(path: Path) -> None:
    header = path.read_text().splitlines()[:3]
    assert header[0].startswith("# "), "first line: what the example is"
    assert any(
        ("kubectl apply -f examples/" + path.name) in line
        or ("finetune run examples/" + path.name) in line
        for line in header
    )


@pytest.mark.parametrize("path", EXAMPLES, ids=[p.name for p in EXAMPLES])
def test_local_data_files_exist(path: Path) -> None:
    spec = load_job(path).spec
    sources = [spec.dataset.train, spec.dataset.validation, spec.dataset.test]
    for source in filter(None, sources):
        if "://" not in source.uri:
            assert (path.parent.parent / source.uri).is_file(), source.uri


def test_every_example_has_a_readme_section_saying_when_to_use_it() -> None:
    readme = (EXAMPLES[0].parent / "README.md").read_text()
    sections = dict(re.findall(r"^## \[([\w.-]+)\]\([\w.-]+\)\n\n(.+)$", readme, re.MULTILINE))
    assert set(sections) == {path.name for path in EXAMPLES}
    for name, paragraph in sections.items():
        assert "**Use it when**" in paragraph, name
