"""hack/test.sh (`make test`, CI) runs every tier pytest knows: a tier added to the
testpaths but not to a lane would never run in CI, and would not be missed; and a run that
leaves the real node out says so, and why."""

from __future__ import annotations

import os
import re
import signal
import subprocess
import time
import tomllib
from pathlib import Path

import pytest

from fttestkit.paths import REPO

SCRIPT = (REPO / "hack" / "test.sh").read_text()


def test_every_testpath_runs_in_a_lane() -> None:
    testpaths = tomllib.loads((REPO / "pyproject.toml").read_text())["tool"]["pytest"][
        "ini_options"
    ]["testpaths"]
    in_lanes = set(re.findall(r"\btests/[a-z_]+\b", SCRIPT))
    assert set(testpaths) <= in_lanes, set(testpaths) - in_lanes


def test_the_integration_tier_runs_every_part_of_the_serial_marker() -> None:
    """The parallel run leaves the `serial` tests out; the two serial runs after it take
    exactly them: first those that need no Kueue or Kubeflow Trainer, then the `platform`
    ones, once the background build of those tools has ended."""
    assert '-m "not serial"' in SCRIPT
    serial = SCRIPT.index('-m "serial and not platform"')
    waited = SCRIPT.index('wait "$platform_build"')
    platform = SCRIPT.index('-m "serial and platform"')
    assert serial < waited < platform
    assert SCRIPT.index('step "go tools (platform)" hack/build.sh platform') < serial


def test_the_serial_tests_that_run_kueue_or_kubeflow_are_marked_platform() -> None:
    """A `platform` test left unmarked would run before its tools are built (and build them
    inside its own time limit); one marked needlessly would only wait longer."""
    collected = subprocess.run(
        [".venv/bin/pytest", "--collect-only", "-q", "-p", "no:cacheprovider",
         "tests/integration", "-m", "serial and platform"],
        cwd=REPO, capture_output=True, text=True, check=False,
    ).stdout  # fmt: skip
    ids = {line for line in collected.splitlines() if "::" in line}
    kueue = {i for i in ids if i.startswith("tests/integration/test_kueue.py::")}
    assert len(kueue) >= 3, collected[-2000:]
    make_targets = "tests/integration/test_make_targets.py::"
    assert ids - kueue == {
        f"{make_targets}test_target_runs[tools]",
        f"{make_targets}test_the_operator_benchmark_runs_directly_as_its_docstring_says",
        f"{make_targets}test_the_create_cost_benchmark_takes_the_create_apart",
    }, collected[-2000:]


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


def _function(name: str) -> str:
    match = re.search(rf"^{name}\(\) \{{\n.*?^\}}\n", SCRIPT, re.M | re.S)
    assert match, f"{name} is not defined in hack/test.sh"
    return match.group(0)


def test_a_failed_steps_last_lines_are_printed_again_and_a_daemon_does_not_hold_its_step(
    tmp_path: Path,
) -> None:
    """CI's report keeps a run's first and last lines: a failed step's reason, printed in
    the middle, must come again at the end. A step that leaves a daemon behind (the
    cluster's) must still end when its command does."""
    script = "\n".join(
        [
            f"LOGS={tmp_path}; T0=$(date +%s); LANE=checks",
            _function("step"),
            _function("failed_steps_output"),
            f"step 'starts a daemon' bash -c '(sleep 60 & echo $! >{tmp_path}/daemon)'",
            # The reason comes a moment after the numbers, as a failing command's last words
            # do: the two tee processes must not append it before stdout's lines (a loaded
            # machine once had it land first, out of the printed tail).
            "step 'fails' bash -c 'seq 1 100; sleep 1; echo the reason >&2; exit 3'",
            "step 'passes' echo fine",
            # The step's tee processes (one for stdout, one for stderr) write on their own
            # time (a loaded machine may take seconds); the real run reads the logs long
            # after its lanes end. Both must have written: waiting for stderr's line alone
            # once read the log before stdout's last line was in it.
            f"log={tmp_path}/step.checks.fails.log; for _ in $(seq 200); do"
            " grep -q 'the reason' $log && grep -qx 100 $log && break; sleep 0.05; done",
            "failed_steps_output",
        ]
    )
    out, err = tmp_path / "out", tmp_path / "err"
    started = time.monotonic()
    try:
        # Files, as the lanes' logs are: a pipe would stay open as long as the daemon.
        with out.open("w") as stdout, err.open("w") as stderr:
            subprocess.run(["bash", "-c", script], stdout=stdout, stderr=stderr, timeout=30)
        assert time.monotonic() - started < 20, "a step waited for the daemon it started"
    finally:
        os.kill(int((tmp_path / "daemon").read_text()), signal.SIGTERM)
    end = out.read_text().split("the end of a failed step's output")
    assert len(end) == 2, out.read_text()  # only the failed step
    assert "[checks] fails (exit 3)" in end[1]
    assert "100\n" in end[1] and "the reason" in end[1] and "\n50\n" not in end[1]
    assert "the reason" in err.read_text()  # and it still reached the lane's own stderr


def test_the_libraries_are_compiled_once_at_install() -> None:
    """`make install` writes the libraries' .pyc: where PYTHONDONTWRITEBYTECODE is set (this
    project's machines), every process compiled torch, transformers and peft from source
    again without them, about 11 CPU-s per trainer process."""
    code = (
        "import importlib.util, os\n"
        "import torch, transformers.modeling_utils as m, peft\n"
        "for mod in (torch, m, peft):\n"
        "    pyc = importlib.util.cache_from_source(mod.__file__)\n"
        "    print(mod.__name__, os.path.exists(pyc))\n"
    )
    done = subprocess.run(
        [str(REPO / ".venv" / "bin" / "python"), "-c", code], capture_output=True, text=True,
        check=True, env={**os.environ, "PYTHONDONTWRITEBYTECODE": "1"},
    )  # fmt: skip
    assert done.stdout.split() == [
        "torch", "True", "transformers.modeling_utils", "True", "peft", "True"
    ], done.stdout  # fmt: skip
    # And hack/test.sh lets Python write the clone's own (and pytest's rewritten tests').
    assert re.search(r"^unset PYTHONDONTWRITEBYTECODE$", SCRIPT, re.M)
