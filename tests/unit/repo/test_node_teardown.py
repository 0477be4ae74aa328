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


def _node_runs_in(owner: Path) -> bool:
    script = "source hack/lib.sh && use_state /nonexistent && source hack/node.sh"
    result = subprocess.run(
        ["bash", "-c", f'{script} && node_runs_in "{owner}"'], cwd=REPO, check=False
    )
    return result.returncode == 0


def test_a_node_whose_processes_all_died_is_a_stale_claim(tmp_path: Path) -> None:
    """A run killed outright (a lost session, a CI timeout) leaves the node's owner file and
    PID files behind: the next cluster takes the node over instead of refusing to start."""
    owner = tmp_path / "cluster"
    pids = owner / "pids"
    pids.mkdir(parents=True)
    assert not _node_runs_in(owner), "no PID files: nothing runs"

    gone = subprocess.Popen(["sleep", "0"])
    gone.wait()
    (pids / "kubelet.pid").write_text(f"{gone.pid}\n")
    (pids / "kubelet.bin").write_text("sleep")
    assert not _node_runs_in(owner), "the kubelet's PID is dead"

    other = subprocess.Popen(["sleep", "120"])  # a live PID that runs another binary
    try:
        (pids / "containerd.pid").write_text(f"{other.pid}\n")
        (pids / "containerd.bin").write_text("/nonexistent/containerd")
        assert not _node_runs_in(owner), "a reused PID is not the node's containerd"
        (pids / "containerd.bin").write_text("sleep")
        assert _node_runs_in(owner), "the owner's containerd still runs"
    finally:
        other.kill()
        other.wait()


def _claim_store(cache: Path) -> str:
    script = "source hack/lib.sh && use_state /nonexistent && source hack/node.sh && claim_store"
    return subprocess.run(
        ["bash", "-c", script], cwd=REPO, capture_output=True, text=True, check=True,
        env={"PATH": "/usr/bin:/bin", "HOME": str(cache), "FTO_CACHE": str(cache)},
    ).stderr  # fmt: skip


def test_buildkits_state_is_dropped_when_its_containerd_store_was_replaced(tmp_path: Path) -> None:
    """BuildKit's cache records name snapshots of the containerd store it was made with: kept
    beside a new store (the old deleted to free disk), every cached build step failed with
    "parent snapshot ... does not exist" (CI, 2026-11-26)."""
    store, buildkit = tmp_path / "node-containerd", tmp_path / "buildkit"
    _claim_store(tmp_path)
    (buildkit / "cache.db").write_text("records of this store")
    _claim_store(tmp_path)
    assert (buildkit / "cache.db").exists(), "the same store: BuildKit's cache is kept"

    subprocess.run(["rm", "-rf", str(store)], check=True)  # what freeing the disk did
    said = _claim_store(tmp_path)
    assert not (buildkit / "cache.db").exists(), "state of a deleted store was kept"
    assert "belongs to another containerd store" in said
    assert (buildkit / "fto-store-id").read_text() == (store / "fto-store-id").read_text()
