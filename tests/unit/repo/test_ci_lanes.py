"""hack/test.sh (`make test`, CI) runs every tier pytest knows: a tier added to the
testpaths but not to a lane would never run in CI, and would not be missed; and a run that
leaves the real node out says so, and why."""

from __future__ import annotations

import re
import subprocess
import tomllib

import pytest

from fttestkit.paths import REPO

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


@pytest.mark.parametrize(
    ("uid", "fto_node", "reason"),
    [
        (1000, "auto", "not root"),
        (1000, "1", "not root"),
        (0, "0", "FTO_NODE=0"),
        (0, "auto", ""),
        (0, "later", ""),
    ],
)
def test_make_test_says_why_it_leaves_the_node_images_and_e2e_out(
    uid: int, fto_node: str, reason: str
) -> None:
    said = subprocess.run(
        ["bash", "-c", f'source hack/lib.sh && node_left_out_reason {uid} "{fto_node}"'],
        cwd=REPO, capture_output=True, text=True, check=True,
    ).stdout.strip()  # fmt: skip
    assert said.startswith(reason) and bool(said) == bool(reason), said
    script = (REPO / "hack" / "test.sh").read_text()
    # Said first and last: before the lanes start and after the step table.
    assert script.count("\nleft_out\n") == 2, "left_out is not called at the start and the end"
