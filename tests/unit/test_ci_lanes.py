"""hack/test.sh (`make test`, CI) runs every tier pytest knows: a tier added to the
testpaths but not to a lane would never run in CI, and would not be missed."""

from __future__ import annotations

import re
import tomllib

from tests.conftest import REPO

SCRIPT = (REPO / "hack" / "test.sh").read_text()


def test_every_testpath_runs_in_a_lane() -> None:
    testpaths = tomllib.loads((REPO / "pyproject.toml").read_text())["tool"]["pytest"][
        "ini_options"
    ]["testpaths"]
    in_lanes = set(re.findall(r"\btests/[a-z_]+\b", SCRIPT))
    assert set(testpaths) <= in_lanes, set(testpaths) - in_lanes


def test_the_integration_tier_runs_both_halves_of_the_serial_marker() -> None:
    """The parallel run leaves the `serial` tests out; the second run must take exactly them."""
    assert '-m "not serial"' in SCRIPT
    assert re.search(r"pytest\"? tests/integration -m serial\b", SCRIPT)
