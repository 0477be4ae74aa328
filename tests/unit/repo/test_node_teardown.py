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


def test_teardown_forgets_the_images_pulled_from_local_registries(tmp_path: Path) -> None:
    """What the kubelet pulled from a local registry goes with the node (that registry keeps
    it), with the IDs only those names used; the images built here stay. Before, every e2e
    run's trainer image (7 GB) stayed in the node's store. `ctr` is a stand-in that lists a
    store and logs what is removed; the names and the ID column are ctr's."""
    listing = "\n".join([
        "REF TYPE DIGEST SIZE PLATFORMS LABELS",
        "10.244.0.1:21599/e2e-af7ad9/trainer@sha256:aaa x sha256:m1 6.9GiB linux/amd64 -",
        "10.244.0.1:22320/e2e-models/tiny-a3@sha256:bbb x sha256:m2 530KiB linux/amd64 -",
        "docker.io/library/finetune-trainer:dev x sha256:m3 6.9GiB linux/amd64 -",
        "sha256:id1 x sha256:m1 6.9GiB linux/amd64 -",
        "sha256:id3 x sha256:m3 6.9GiB linux/amd64 -",
    ])  # fmt: skip
    store = tmp_path / "store"
    store.write_text(listing + "\n")
    removed = tmp_path / "removed"
    fake = f"""
containerd_ready() {{ return 0; }}
ctr_() {{  # ctr_ -n k8s.io images ls|rm [REF]
  case "$3 $4" in
    "images ls") touch "{removed}"
                 awk 'FILENAME == ARGV[1] {{gone[$1]; next}} !($1 in gone)' "{removed}" "{store}" ;;
    "images rm") echo "$5" >> "{removed}" ;;
  esac
}}
"""
    script = "source hack/lib.sh && use_state /nonexistent && source hack/node.sh"
    subprocess.run(["bash", "-c", f"{script}\n{fake}\nforget_pulled_images"], cwd=REPO,
                   check=True)  # fmt: skip
    assert removed.read_text().split() == [
        "10.244.0.1:21599/e2e-af7ad9/trainer@sha256:aaa",
        "10.244.0.1:22320/e2e-models/tiny-a3@sha256:bbb",
        "sha256:id1",
    ]
