"""Names that come from a store (object keys, checkpoint manifest paths) never become local
paths outside the folder they are downloaded into. AWS S3 keeps `..` and a leading `/` in
keys literally (MinIO refuses them), so the logic is tested here without a server."""

from __future__ import annotations

import hashlib
from pathlib import Path
from typing import Any

import pytest

from fttrainer.checkpointing.protocol import FileEntry, Manifest
from fttrainer.checkpointing.store import CheckpointError, CheckpointStore
from fttrainer.storage import LocalStore, S3Store, StorageError, contained

ESCAPES = {
    "parent": "../outside.txt",
    "deep parent": "a/../../outside.txt",
    "absolute": "/etc/passwd",
    "backslash parent": "..\\outside.txt",
    "empty segment": "a//b",
    "dot": ".",
}
SAFE = {"plain": "model.safetensors", "nested": "a/b/c.json", "dots in a name": "a..b/c..d"}


@pytest.mark.parametrize("name", list(ESCAPES.values()), ids=list(ESCAPES))
def test_names_outside_the_target_are_refused(tmp_path: Path, name: str) -> None:
    with pytest.raises(StorageError, match="outside"):
        contained(tmp_path / "folder", name, source="s3://b/p")


@pytest.mark.parametrize("name", list(SAFE.values()), ids=list(SAFE))
def test_names_inside_the_target_are_kept(tmp_path: Path, name: str) -> None:
    assert contained(tmp_path, name, source="s3://b/p") == tmp_path / name


def test_a_symlinked_folder_cannot_lead_outside(tmp_path: Path) -> None:
    (tmp_path / "target").mkdir()
    (tmp_path / "target" / "link").symlink_to(tmp_path)
    with pytest.raises(StorageError, match="outside"):
        contained(tmp_path / "target", "link/escaped.txt", source="s3://b/p")


def test_a_manifest_naming_a_path_outside_the_checkpoint_is_refused(tmp_path: Path) -> None:
    """A forged MANIFEST.json whose file list points at ../../ cannot make restore write
    outside the checkpoint folder (nothing is written there)."""
    store = LocalStore(tmp_path / "store")
    data = b"payload"
    (tmp_path / "store" / "job" / "checkpoint-3").mkdir(parents=True)
    (tmp_path / "store" / "job" / "outside.txt").write_bytes(data)
    checkpoints = CheckpointStore(store, "job")
    entry = FileEntry("../../../escaped.txt", len(data), hashlib.sha256(data).hexdigest())
    manifest = Manifest(step=3, job="job", files=(entry,))
    target = tmp_path / "scratch" / "deep"
    with pytest.raises(CheckpointError, match="outside"):
        checkpoints.download(manifest, target)
    assert not (tmp_path / "escaped.txt").exists()
    assert not list(tmp_path.rglob("escaped.txt"))


class _Listing:
    """The one S3 call download_dir makes before downloading: a listing with keys that AWS
    would store as given. (No S3 server here keeps such keys: MinIO refuses them.)"""

    def __init__(self, keys: list[str]) -> None:
        self.keys = keys
        self.meta = type("Meta", (), {"endpoint_url": "https://s3.amazonaws.com"})()

    def get_paginator(self, name: str) -> Any:
        keys = self.keys

        class Paginator:
            def paginate(self, **_: Any) -> list[dict[str, Any]]:
                return [{"Contents": [{"Key": key, "Size": 1} for key in keys]}]

        return Paginator()


def test_s3_keys_with_parent_segments_are_refused_before_any_download(tmp_path: Path) -> None:
    store = S3Store("bucket", "tasks", client=_Listing(["tasks/ok.yaml", "tasks/../../x"]))
    with pytest.raises(StorageError, match="outside"):
        store.download_dir("", tmp_path / "harness_tasks")
    assert not list(tmp_path.rglob("*"))
