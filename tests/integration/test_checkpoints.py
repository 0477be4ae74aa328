"""The checkpoint protocol against the real S3 server (and a local directory): what counts
as a checkpoint, what retention deletes, and that downloads are checked."""

from __future__ import annotations

import os
import uuid
from pathlib import Path

import pytest

from ftapi.v1alpha1 import S3Spec
from fttestkit.cluster import Cluster
from fttrainer.checkpointing.protocol import MANIFEST
from fttrainer.checkpointing.store import CheckpointError, CheckpointStore
from fttrainer.storage import LocalStore, Store, open_store, s3_client

pytestmark = pytest.mark.integration


def _checkpoint(folder: Path, step: int) -> Path:
    """A checkpoint-shaped folder whose content depends on the step."""
    folder.mkdir(parents=True, exist_ok=True)
    (folder / "adapter_model.safetensors").write_bytes(os.urandom(2048) + bytes([step]))
    (folder / "optimizer.pt").write_bytes(bytes([step]) * 4096)
    (folder / "trainer_state.json").write_text(f'{{"global_step": {step}}}')
    (folder / "nested").mkdir(exist_ok=True)
    (folder / "nested" / "rng_state_0.pth").write_bytes(os.urandom(100))
    return folder


@pytest.fixture(params=["s3", "local"])
def store(request: pytest.FixtureRequest, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Store:
    if request.param == "local":
        return LocalStore(tmp_path / "store")
    cluster: Cluster = request.getfixturevalue("cluster")
    for name in ("AWS_ACCESS_KEY_ID", "AWS_SECRET_ACCESS_KEY", "AWS_REGION"):
        monkeypatch.setenv(name, cluster.env[name])
    s3 = S3Spec(endpoint=cluster.env["FTO_S3_ENDPOINT"], force_path_style=True)
    bucket = f"ckpt-{uuid.uuid4().hex[:12]}"
    s3_client(s3).create_bucket(Bucket=bucket)
    return open_store(f"s3://{bucket}/runs", s3=s3)


def test_only_checkpoints_with_a_valid_manifest_count(store: Store, tmp_path: Path) -> None:
    checkpoints = CheckpointStore(store, "job-a")
    assert checkpoints.newest() is None
    for step in (2, 4):
        checkpoints.save(step, _checkpoint(tmp_path / f"c{step}", step))
    # Step 6 uploaded its files but was killed before the manifest: it does not count.
    checkpoints.upload_files(6, _checkpoint(tmp_path / "c6", 6))
    newest = checkpoints.newest()
    assert newest is not None and newest.step == 4
    assert {f.path for f in newest.files} == {
        "adapter_model.safetensors", "optimizer.pt", "trainer_state.json", "nested/rng_state_0.pth"
    }  # fmt: skip
    # A file cut short after the manifest was written: step 4 no longer counts, 2 does.
    store.write_bytes("checkpoints/job-a/checkpoint-4/optimizer.pt", b"short")
    assert [m.step for m in checkpoints.complete()] == [2]
    # A missing file, likewise.
    store.delete(["checkpoints/job-a/checkpoint-2/nested/rng_state_0.pth"])
    assert checkpoints.newest() is None


def test_corrupt_or_foreign_manifests_are_ignored(store: Store, tmp_path: Path) -> None:
    mine, other = CheckpointStore(store, "job-a"), CheckpointStore(store, "job-b")
    mine.save(2, _checkpoint(tmp_path / "a2", 2))
    other.save(8, _checkpoint(tmp_path / "b8", 8))
    assert mine.newest().step == 2  # type: ignore[union-attr]
    # Another job's manifest copied under this job's folder is not this job's checkpoint.
    manifest = store.read_bytes(f"checkpoints/job-b/checkpoint-8/{MANIFEST}")
    for name in ("adapter_model.safetensors", "optimizer.pt", "trainer_state.json"):
        data = store.read_bytes(f"checkpoints/job-b/checkpoint-8/{name}")
        store.write_bytes(f"checkpoints/job-a/checkpoint-8/{name}", data)
    store.write_bytes(f"checkpoints/job-a/checkpoint-8/{MANIFEST}", manifest)
    assert mine.newest().step == 2  # type: ignore[union-attr]
    store.write_bytes(f"checkpoints/job-a/checkpoint-2/{MANIFEST}", b'{"format": 1, "st')
    assert mine.newest() is None


def test_download_restores_the_files_and_checks_them(store: Store, tmp_path: Path) -> None:
    checkpoints = CheckpointStore(store, "job-a")
    source = _checkpoint(tmp_path / "c3", 3)
    manifest = checkpoints.save(3, source)
    restored = checkpoints.download(manifest, tmp_path / "restored")
    assert restored.name == "checkpoint-3"
    for path in source.rglob("*"):
        if path.is_file():
            assert (restored / path.relative_to(source)).read_bytes() == path.read_bytes()
    # Same size, other bytes: the size check passes, the checksum does not.
    key = "checkpoints/job-a/checkpoint-3/optimizer.pt"
    store.write_bytes(key, bytes([99]) * 4096)
    with pytest.raises(CheckpointError, match=r"optimizer\.pt: content differs from its manifest"):
        checkpoints.download(manifest, tmp_path / "again")


def test_retention_keeps_the_newest_and_removes_leftovers(store: Store, tmp_path: Path) -> None:
    checkpoints = CheckpointStore(store, "job-a")
    checkpoints.upload_files(1, _checkpoint(tmp_path / "c1", 1))  # a killed upload
    for step in (2, 4, 6):
        checkpoints.save(step, _checkpoint(tmp_path / f"c{step}", step))
        checkpoints.retain(keep=2)
    checkpoints.upload_files(7, _checkpoint(tmp_path / "c7", 7))  # "in progress"
    assert checkpoints.retain(keep=2) == []
    steps = {o.key.split("/")[2] for o in store.list("checkpoints/job-a/")}
    assert steps == {"checkpoint-4", "checkpoint-6", "checkpoint-7"}
    assert [m.step for m in checkpoints.complete()] == [6, 4]
    assert checkpoints.retain(keep=1, protect=4) == []  # the best one is protected


def test_a_finished_run_is_cleared_before_the_job_runs_again(store: Store, tmp_path: Path) -> None:
    checkpoints = CheckpointStore(store, "job-a")
    checkpoints.save(10, _checkpoint(tmp_path / "c10", 10))
    assert not checkpoints.done()
    checkpoints.mark_done(10)
    assert checkpoints.done()
    checkpoints.clear()
    assert store.list("checkpoints/job-a/") == []
    assert checkpoints.newest() is None and not checkpoints.done()
