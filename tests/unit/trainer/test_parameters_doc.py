"""docs/parameters.md lists every parameter of the styles our users come from, under the exact
names their documents use (read from ../shared/seeds), and every API path it names exists."""

from __future__ import annotations

import re

import pytest

from ftapi.crd import build_openapi_schema
from fttestkit.paths import REPO
from fttrainer.configs import flat, hydra, toml_config, yaml_config
from tests.seeds import documented_keys

DOC = REPO / "docs" / "parameters.md"
# style (as tests.seeds names it) -> (section heading prefix, how the doc spells a key)
SECTIONS = {
    "flat flags": ("## 1.", lambda key: f"--{key}"),
    "flat .env": ("## 1.", str.upper),
    "toml": ("## 2.", lambda key: key.removeprefix("fine_tuner.").replace("mlflow.", "[mlflow] ")),
    "yaml": ("## 3.", str),
    "hydra": ("## 4.", lambda key: f"--{key}"),
}
# Every key of our own tables, the same way.
TABLES = {
    "flat flags": set(flat.KEYS),
    "flat .env": set(flat.TABLE),
    "toml": {f"fine_tuner.{k}" for k in toml_config.FINE_TUNER}
    | {f"mlflow.{k}" for k in toml_config.MLFLOW},
    "yaml": set(yaml_config.KEYS),
    "hydra": set(hydra.KEYS),
}


def _listed(heading: str) -> set[str]:
    """The backticked names in the first column of the section's table."""
    section = DOC.read_text().split(heading, 1)[1].split("\n## ", 1)[0]
    cells = re.findall(r"^\| ([^|]+) \|", section, flags=re.MULTILINE)
    return {name for cell in cells for name in re.findall(r"`([^`]+)`", cell)}


@pytest.mark.parametrize("style", list(SECTIONS))
def test_every_documented_key_is_listed_under_its_exact_name(style: str) -> None:
    heading, spell = SECTIONS[style]
    documented, _ = documented_keys()[style]
    listed = _listed(heading)
    missing = sorted(spell(key) for key in documented | TABLES[style] if spell(key) not in listed)
    assert not missing, f"{style}: missing from docs/parameters.md: {missing}"


def test_every_named_api_path_exists() -> None:
    schema = build_openapi_schema()
    paths = set(re.findall(r"`(spec(?:\.[A-Za-z0-9]+)+)", DOC.read_text()))
    assert len(paths) > 80
    for path in sorted(paths):
        node = schema
        for part in path.split("."):
            node = node.get("items", node)
            assert part in node.get("properties", {}), f"{path}: no field {part!r}"
            node = node["properties"][part]
