"""The storage layer against the real S3 server: round trips, multipart, clear errors
that never contain the secret, and `finetune run` publishing its results to s3://."""

from __future__ import annotations

import hashlib
import json
import os
import subprocess
import sys
import uuid
from collections.abc import Iterator
from pathlib import Path

import boto3
import pytest
from botocore.config import Config

from ftapi.v1alpha1 import S3Spec
from fttrainer.storage import S3Store, StorageError, open_store
from tests.integration.conftest import REPO, Cluster

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
    assert store.upload_dir(source, "") == ["final/weights.bin", "result.json"]
    assert store.list() == ["final/weights.bin", "result.json"]
    head = store.client.head_object(Bucket=bucket, Key="jobs/a/final/weights.bin")
    assert head["ETag"].strip('"').endswith("-3")  # 12 MiB in 5 MiB parts
    copied = store.download_dir("final", tmp_path / "back")
    assert [p.name for p in copied] == ["weights.bin"]
    assert hashlib.sha256(copied[0].read_bytes()).digest() == hashlib.sha256(big).digest()
    store.delete(["result.json"])
    assert store.list() == ["final/weights.bin"]


def test_missing_bucket_and_wrong_endpoint(cluster: Cluster, s3_env: dict[str, str]) -> None:
    with pytest.raises(StorageError, match="the bucket does not exist"):
        open_store(f"s3://no-such-bucket-{uuid.uuid4().hex[:6]}/x", s3=_spec(cluster)).list()
    with pytest.raises(StorageError, match="cannot reach the S3 endpoint"):
        open_store(
            "s3://b/x", s3=S3Spec(endpoint="http://127.0.0.1:9", force_path_style=True)
        ).list()


def test_bad_credentials_are_explained_without_the_secret(
    cluster: Cluster, bucket: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    secret = "not-the-right-secret-" + uuid.uuid4().hex
    monkeypatch.setenv("AWS_ACCESS_KEY_ID", "unknown-key")
    monkeypatch.setenv("AWS_SECRET_ACCESS_KEY", secret)
    with pytest.raises(StorageError) as caught:
        open_store(f"s3://{bucket}/x", s3=_spec(cluster)).list()
    assert "access key is not known" in str(caught.value)
    assert secret not in str(caught.value) and secret not in repr(caught.value)


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
    keys = open_store(output["uri"], s3=_spec(cluster)).list()
    assert {"final/adapter_model.safetensors", "result.json", "final_metrics.json"} <= set(keys)
    assert not any(k.startswith("trainer/") for k in keys)
    assert s3_env["AWS_SECRET_ACCESS_KEY"] not in result.stdout + result.stderr
