"""The test kit's ManagedProcess leaves nothing behind: a process started in its own session
(an MLflow server and its uvicorn worker) is stopped with its whole group, and a start that
dies or never gets ready fails with the log's end instead of hanging."""

from __future__ import annotations

import os
import sys
import time
from pathlib import Path

import pytest

from fttestkit.process import ManagedProcess

# A parent that starts a child in its own group, writes the child's PID, then waits.
PARENT = """
import subprocess, sys, time
child = subprocess.Popen([sys.executable, "-c", "import time; time.sleep(120)"])
open(sys.argv[1], "w").write(str(child.pid))
print("ready", flush=True)
time.sleep(120)
"""


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    # a zombie the test's own process does not reap still answers kill(0)
    status = Path(f"/proc/{pid}/stat").read_text().split()[2]
    return status != "Z"


@pytest.mark.parametrize("how", ["stop", "kill"])
def test_a_process_in_its_own_session_is_stopped_with_its_children(
    tmp_path: Path, how: str
) -> None:
    pid_file = tmp_path / "child.pid"
    process = ManagedProcess("parent", tmp_path / "parent.log")
    process.start(
        [sys.executable, "-c", PARENT, str(pid_file)], env=dict(os.environ), new_session=True,
        ready=lambda: "ready" in process.log(since_start=True), timeout=60,
    )  # fmt: skip
    child = int(pid_file.read_text())
    assert _alive(child)
    getattr(process, how)()
    deadline = time.monotonic() + 10
    while _alive(child) and time.monotonic() < deadline:
        time.sleep(0.1)
    assert not _alive(child), f"{how}() left the server's worker running"
    assert not process.running()


def test_a_start_that_exits_first_fails_with_its_log(tmp_path: Path) -> None:
    process = ManagedProcess("broken", tmp_path / "broken.log")
    with pytest.raises(RuntimeError, match=r"(?s)broken exited \(3\) before ready.*no config"):
        process.start(
            [sys.executable, "-c", "import sys; print('no config'); sys.exit(3)"],
            env=dict(os.environ), ready=lambda: False, timeout=60,
        )  # fmt: skip


def test_a_script_killed_with_sigterm_runs_its_ctrl_c_clean_up(tmp_path: Path) -> None:
    """The benchmarks stop their controllers and delete their namespaces on Ctrl-C; a kill
    (SIGTERM, as `timeout` or a CI runner sends) must do the same, not leave them running."""
    import subprocess

    script = (
        "import os, signal, sys, time\n"
        "from fttestkit.process import sigterm_as_ctrl_c\n"
        "sigterm_as_ctrl_c()\n"
        "try:\n"
        "    os.kill(os.getpid(), signal.SIGTERM)\n"
        "    time.sleep(30)\n"
        "except KeyboardInterrupt:\n"
        "    print('cleaned up')\n"
    )
    done = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True,
                          timeout=60, check=False)  # fmt: skip
    assert done.returncode == 0 and done.stdout.strip() == "cleaned up", done
