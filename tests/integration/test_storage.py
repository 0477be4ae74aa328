"""The storage layer against the real S3 server: round trips, multipart, small objects,
clear errors that never contain the secret, and `finetune run` publishing its results to
s3://. The local store's guarantees (atomic writes, sizes, checksums) are at the end.
Outages are in test_storage_resilience.py (they need a server of their own)."""

from __future__ import annotations

import hashlib
import json
import logging
import os
import socket
import subprocess
import sys
import time
import uuid
from collections.abc import Iterator
from pathlib import Path

import boto3
import pytest
from botocore.config import Config

from ftapi.v1alpha1 import S3Spec
from fttestkit.cluster import Cluster
from fttestkit.paths import REPO
from fttrainer.storage import (
    LocalStore,
    NotFoundError,
    ObjectInfo,
    S3Store,
    StorageError,
    open_store,
)

pytestmark = pytest.mark.integration


@pytest.fixture
def s3_env(cluster: Cluster, monkeypatch: pytest.MonkeyPatch) -> dict[str, str]:
    names = ("AWS_ACCESS_KEY_ID", "AWS_SECRET_ACCESS_KEY", "AWS_REGION")
    for name in names:
        monkeypatch.setenv(name, cluster.env[name])
    return {name: cluster.env[name] for name in names}


@pytest.fixture
def bucket(cluster: Cluster, s3_env: dict[str, str]) -> Iterator[str]:
    client = boto3.client("s3", endpoint_url=cluster.env["FTO_S3_ENDPOINT"],
                          config=Config(s3={"addressing_style": "path"}))  # fmt: skip
    name = f"store-{uuid.uuid4().hex[:10]}"
    client.create_bucket(Bucket=name)
    yield name
    for page in client.get_paginator("list_objects_v2").paginate(Bucket=name):
        for item in page.get("Contents", []):
            client.delete_object(Bucket=name, Key=item["Key"])
    client.delete_bucket(Bucket=name)


def _spec(cluster: Cluster) -> S3Spec:
    return S3Spec(endpoint=cluster.env["FTO_S3_ENDPOINT"], force_path_style=True)


def test_round_trip_with_multipart(cluster: Cluster, bucket: str, tmp_path: Path) -> None:
    source = tmp_path / "run"
    (source / "final").mkdir(parents=True)
    big = os.urandom(12 * 1024 * 1024)
    (source / "final" / "weights.bin").write_bytes(big)
    (source / "result.json").write_text("{}")
    store = open_store(f"s3://{bucket}/jobs/a", s3=_spec(cluster))
    assert isinstance(store, S3Store)
    store.part_size = store.multipart_threshold = 5 * 1024 * 1024
    uploaded = store.upload_dir(source, "", checksum=True)
    assert [(o.key, o.size) for o in uploaded] == [("final/weights.bin", len(big)),
                                                    ("result.json", 2)]  # fmt: skip
    assert uploaded[0].sha256 == hashlib.sha256(big).hexdigest()
    assert [(o.key, o.size) for o in store.list()] == [(o.key, o.size) for o in uploaded]
    head = store.client.head_object(Bucket=bucket, Key="jobs/a/final/weights.bin")
    assert head["ETag"].strip('"').endswith("-3")  # 12 MiB in 5 MiB parts
    copied = store.download_dir("final", tmp_path / "back")
    assert [p.name for p in copied] == ["weights.bin"]
    assert hashlib.sha256(copied[0].read_bytes()).digest() == hashlib.sha256(big).digest()
    store.delete(["result.json", "never-there.json"])
    assert [o.key for o in store.list()] == ["final/weights.bin"]


def test_small_objects_stat_and_batched_delete(
    cluster: Cluster, bucket: str, tmp_path: Path
) -> None:
    """What a checkpoint manifest needs: whole small writes, reads, stat, bulk delete."""
    store = open_store(f"s3://{bucket}/jobs/b", s3=_spec(cluster))
    manifest = json.dumps({"step": 5, "files": {}}).encode()
    info = store.write_bytes("checkpoint-5/manifest.json", manifest)
    assert info == ObjectInfo("checkpoint-5/manifest.json", len(manifest),
                              hashlib.sha256(manifest).hexdigest())  # fmt: skip
    assert store.read_bytes("checkpoint-5/manifest.json") == manifest
    assert store.stat("checkpoint-5/manifest.json") == ObjectInfo(info.key, info.size)
    assert store.stat("checkpoint-5/missing.json") is None
    with pytest.raises(NotFoundError, match="no such object"):
        store.read_bytes("checkpoint-5/missing.json")
    shards = tmp_path / "shards"
    shards.mkdir()
    for i in range(1001):  # two DeleteObjects batches
        (shards / f"shard-{i:04d}").write_bytes(b"x")
    keys = [o.key for o in store.upload_dir(shards, "checkpoint-50")]
    assert len(keys) == 1001
    assert [o.key for o in store.list("checkpoint-5/")] == ["checkpoint-5/manifest.json"]
    store.delete(keys)
    assert [o.key for o in store.list()] == ["checkpoint-5/manifest.json"]


def test_missing_bucket_is_explained_fast(
    cluster: Cluster, s3_env: dict[str, str], tmp_path: Path
) -> None:
    (tmp_path / "f.bin").write_bytes(b"x" * 10)
    store = open_store(f"s3://no-such-bucket-{uuid.uuid4().hex[:6]}/x", s3=_spec(cluster))
    started = time.monotonic()
    with pytest.raises(StorageError, match=r"the bucket 'no-such-bucket-.*' does not exist"):
        store.list()
    with pytest.raises(StorageError, match=r"cannot upload .* does not exist"):
        store.upload_file(tmp_path / "f.bin", "f.bin")
    assert time.monotonic() - started < 5


def test_wrong_endpoint_is_explained_fast(s3_env: dict[str, str], tmp_path: Path) -> None:
    with socket.socket() as probe:  # a port nothing listens on
        probe.bind(("127.0.0.1", 0))
        port = probe.getsockname()[1]
    spec = S3Spec(endpoint=f"http://127.0.0.1:{port}", force_path_style=True)
    started = time.monotonic()
    with pytest.raises(StorageError) as caught:
        open_store("s3://b/x", s3=spec).list()
    assert str(caught.value) == (
        f"cannot list s3://b/x/: cannot reach the S3 endpoint http://127.0.0.1:{port} "
        "(connection refused); check output.s3.endpoint"
    )
    assert time.monotonic() - started < 20


@pytest.mark.parametrize(
    ("access_key", "reason"),
    [("unknown-key", "the access key is not known"), (None, "the secret key does not match")],
    ids=["unknown-access-key", "wrong-secret"],
)
def test_bad_credentials_are_explained_without_the_secret(
    cluster: Cluster, bucket: str, tmp_path: Path, monkeypatch: pytest.MonkeyPatch,
    caplog: pytest.LogCaptureFixture, access_key: str | None, reason: str,
) -> None:  # fmt: skip
    caplog.set_level(logging.DEBUG)  # botocore's own debug logging too
    secret = "not-the-right-secret-" + uuid.uuid4().hex
    monkeypatch.setenv("AWS_ACCESS_KEY_ID", access_key or cluster.env["AWS_ACCESS_KEY_ID"])
    monkeypatch.setenv("AWS_SECRET_ACCESS_KEY", secret)
    (tmp_path / "big.bin").write_bytes(os.urandom(6 * 1024 * 1024))
    store = open_store(f"s3://{bucket}/x", s3=_spec(cluster))
    assert isinstance(store, S3Store)
    store.part_size = store.multipart_threshold = 5 * 1024 * 1024
    started = time.monotonic()
    errors = []
    for action in (store.list, lambda: store.upload_file(tmp_path / "big.bin", "big.bin")):
        with pytest.raises(StorageError) as caught:
            action()
        errors.append(caught.value)
    assert time.monotonic() - started < 5  # not retried
    for error in errors:
        assert "access denied" in str(error) and reason in str(error)
        assert secret not in str(error) and secret not in repr(error)
    assert secret not in caplog.text


def test_finetune_run_publishes_to_s3(
    cluster: Cluster, bucket: str, s3_env: dict[str, str], tmp_path: Path
) -> None:
    from fttrainer.tiny import save_tiny_model

    model = save_tiny_model("llama", tmp_path / "model")
    s3 = {"endpoint": cluster.env["FTO_S3_ENDPOINT"], "forcePathStyle": True}
    output = {"uri": f"s3://{bucket}/quickstart", "s3": s3}
    result = subprocess.run(
        [sys.executable, "-m", "fttrainer.cli", "run", str(REPO / "examples/quickstart-cpu.yaml"),
         "--set", f"model.name={model}", "--set", "training.maxSteps=2",
         "--set", f"output={json.dumps(output)}", "--output", str(tmp_path / "run")],
        cwd=REPO, capture_output=True, text=True, check=False, env={**os.environ, **s3_env},
    )  # fmt: skip
    assert result.returncode == 0, result.stderr[-2000:]
    assert f"to s3://{bucket}/quickstart" in result.stdout
    keys = [o.key for o in open_store(output["uri"], s3=_spec(cluster)).list()]
    assert {"final/adapter_model.safetensors", "result.json", "final_metrics.json"} <= set(keys)
    assert not any(k.startswith("trainer/") for k in keys)
    assert s3_env["AWS_SECRET_ACCESS_KEY"] not in result.stdout + result.stderr


def test_local_store_writes_whole_files_only(tmp_path: Path) -> None:
    root = tmp_path / "store"
    store = open_store(str(root))
    assert isinstance(store, LocalStore)
    source = tmp_path / "checkpoint-3"
    (source / "optimizer").mkdir(parents=True)
    (source / "model.safetensors").write_bytes(b"m" * 3000)
    (source / "optimizer" / "state.pt").write_bytes(b"o" * 10)
    (source / "trainer").mkdir()
    (source / "trainer" / "scratch").write_bytes(b"s")

    infos = store.upload_dir(source, "checkpoint-3", skip=("trainer",), checksum=True)

    assert infos == [
        ObjectInfo("checkpoint-3/model.safetensors", 3000, hashlib.sha256(b"m" * 3000).hexdigest()),
        ObjectInfo("checkpoint-3/optimizer/state.pt", 10, hashlib.sha256(b"o" * 10).hexdigest()),
    ]
    store.write_bytes("checkpoint-3/manifest.json", b"{}")
    # A writer that died half-way leaves only a hidden temporary file, which is not listed.
    (root / "checkpoint-3" / ".manifest.json.fto-tmp-dead").write_bytes(b"{")
    assert [(o.key, o.size) for o in store.list("checkpoint-")] == [
        ("checkpoint-3/manifest.json", 2),
        ("checkpoint-3/model.safetensors", 3000),
        ("checkpoint-3/optimizer/state.pt", 10),
    ]
    assert store.read_bytes("checkpoint-3/manifest.json") == b"{}"
    assert store.stat("checkpoint-3/optimizer/state.pt") == ObjectInfo(
        "checkpoint-3/optimizer/state.pt", 10
    )
    assert store.stat("checkpoint-3/nothing") is None
    with pytest.raises(NotFoundError):
        store.read_bytes("checkpoint-3/nothing")
    back = store.download_dir("checkpoint-3", tmp_path / "back")
    assert sorted(p.relative_to(tmp_path / "back").as_posix() for p in back) == [
        "manifest.json", "model.safetensors", "optimizer/state.pt",
    ]  # fmt: skip
    store.delete(["checkpoint-3/optimizer/state.pt", "checkpoint-3/never-there"])
    assert not (root / "checkpoint-3" / "optimizer").exists()  # empty folders go too
