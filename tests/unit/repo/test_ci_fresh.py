"""hack/ci-fresh.sh, how a developer sees a new machine without one: its command runs in a
fresh clone of HEAD, ../shared beside it, with a HOME in which every cache a new machine
lacks is empty, while Go and Python still work. Run here with a cheap command instead of
`bash .ci/run` (which the note of any change to hack/ or the lanes reports in full)."""

from __future__ import annotations

import os
import subprocess
from pathlib import Path

from fttestkit.paths import REPO

SCRIPT = REPO / "hack" / "ci-fresh.sh"

# What the command reports about the machine it was given: one "key=value" per line.
PROBE = r"""
echo "pwd=$PWD"
echo "home=$HOME"
echo "head=$(git rev-parse HEAD)"
echo "shared=$(test -d ../shared && echo yes)"
echo "gomodcache=$(go env GOMODCACHE)"
echo "gocache=$(go env GOCACHE)"
echo "cached=$(ls -A "$HOME/.cache" "$HOME/go" 2>/dev/null | tr '\n' ' ')"
echo "python=$(python3 -c 'import sys; print(sys.version_info[0])')"
echo "ci=$CI"
echo "kubeconfig=${KUBECONFIG:-}"
"""


def _run(
    tmp_path: Path, *command: str, keep: bool = False, min_gb: str = "0"
) -> subprocess.CompletedProcess[str]:
    env = {**os.environ, "GOMODCACHE": "/nonexistent/leak", "KUBECONFIG": "/leak",
           "FTO_CI_FRESH_MIN_GB": min_gb}  # fmt: skip
    args = [str(SCRIPT), "--dir", str(tmp_path / "fresh"), *(["--keep"] if keep else [])]
    return subprocess.run(
        [*args, "--", *command], capture_output=True, text=True, timeout=300, env=env,
        check=False,
    )  # fmt: skip


def test_the_command_sees_a_fresh_clone_and_an_empty_home(tmp_path: Path) -> None:
    done = _run(tmp_path, "bash", "-c", PROBE, keep=True)
    assert done.returncode == 0, done.stdout + done.stderr
    seen = dict(line.split("=", 1) for line in done.stdout.splitlines() if "=" in line)
    fresh = tmp_path / "fresh"
    assert seen["pwd"] == str(fresh / "main")
    assert seen["home"] == str(fresh / "home")
    head = subprocess.run(["git", "rev-parse", "HEAD"], cwd=REPO, capture_output=True,
                          text=True, check=True).stdout.strip()  # fmt: skip
    assert seen["head"] == head
    assert seen["shared"] == "yes"
    # Go's caches are under the empty HOME, not this machine's (nor the environment's).
    assert seen["gomodcache"].startswith(str(fresh / "home"))
    assert seen["gocache"].startswith(str(fresh / "home"))
    assert seen["cached"] == ""
    assert seen["python"] == "3"
    assert seen["ci"] == "true"
    assert seen["kubeconfig"] == ""
    assert "exit 0 after" in done.stdout
    assert fresh.is_dir()  # --keep


def test_a_failure_is_its_exit_status_and_keeps_the_folder(tmp_path: Path) -> None:
    done = _run(tmp_path, "bash", "-c", "echo broke; exit 3")
    assert done.returncode == 3
    assert "broke" in (tmp_path / "fresh" / "ci.log").read_text()


def test_a_success_removes_the_folder_unless_kept(tmp_path: Path) -> None:
    done = _run(tmp_path, "true")
    assert done.returncode == 0, done.stdout + done.stderr
    assert not (tmp_path / "fresh").exists()


def test_a_kept_folder_gets_a_new_clone_and_keeps_its_home(tmp_path: Path) -> None:
    """The cached run: HOME's caches carry over, the clone does not (CI's is always new)."""
    leftover = "touch leftover-in-clone; mkdir -p $HOME/.cache/kept"
    assert _run(tmp_path, "bash", "-c", leftover, keep=True).returncode == 0
    done = _run(tmp_path, "bash", "-c", "ls -A; ls -A $HOME/.cache", keep=True)
    assert done.returncode == 0, done.stdout + done.stderr
    assert "leftover-in-clone" not in done.stdout
    assert "kept" in done.stdout


def test_too_little_disk_is_refused_before_the_clone(tmp_path: Path) -> None:
    """A run's HOME fills to ~35 GB: with too little free it stops at once, saying so, instead
    of failing half an hour in (the images, 2026-11-28)."""
    done = _run(tmp_path, "touch", "ran", min_gb="1000000")
    assert done.returncode == 2
    assert "GB free under" in done.stderr and "FTO_CI_FRESH_MIN_GB" in done.stderr
    assert not (tmp_path / "fresh" / "main").exists()
