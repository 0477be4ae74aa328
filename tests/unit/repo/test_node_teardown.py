"""hack/node.sh's teardown reaches every containerd shim of the node's containerd: a shim
that outlived `make cluster-down` held the node's mounts (its old pattern expected
`-address` right after `-namespace`, but containerd puts `-id` between them)."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

from fttestkit.paths import REPO


def _pattern(socket: str) -> str:
    script = "source hack/lib.sh && use_state /nonexistent && source hack/node.sh"
    return subprocess.run(
        ["bash", "-c", f'{script} && shim_pattern "{socket}"'],
        cwd=REPO, capture_output=True, text=True, check=True,
    ).stdout.strip()  # fmt: skip


def test_the_shim_pattern_kills_this_containerds_shims_in_any_namespace(tmp_path: Path) -> None:
    socket = str(tmp_path / "containerd.sock")
    other = str(tmp_path / "other" / "containerd.sock")
    shim = tmp_path / "containerd-shim-runc-v2"  # a stand-in with the shim's command line
    shim.write_text(f"#!{sys.executable}\nimport time\ntime.sleep(120)\n")  # no children
    shim.chmod(0o755)

    def spawn(namespace: str, address: str) -> subprocess.Popen[bytes]:
        return subprocess.Popen(
            [str(shim), "-namespace", namespace, "-id", "abc123", "-address", address]
        )

    ours = [spawn("k8s.io", socket), spawn("buildkit", socket)]
    theirs = spawn("k8s.io", other)
    try:
        subprocess.run(["pkill", "-KILL", "-f", _pattern(socket)], check=False)
        for process in ours:
            assert process.wait(timeout=10) == -9
        assert theirs.poll() is None, "another containerd's shim was killed"
    finally:
        for process in (*ours, theirs):
            process.kill()
            process.wait()
