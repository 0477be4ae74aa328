"""The S3 store when the S3 server goes away: a 30 s outage in the middle of a multipart
upload is retried through (the same upload id, only the lost parts again) and the object's
SHA-256 is right; an outage longer than the deadline fails with a clear error instead of
hanging, and leaves no half object behind.

These tests start their own MinIO (the cached binary of hack/build.sh, a temporary data
dir, a free loopback port) so they can kill it without disturbing anyone using the shared
cluster's server.
"""

from __future__ import annotations

import hashlib
import logging
import os
import secrets
import shutil
import socket
import subprocess
import threading
import time
import uuid
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import boto3
import pytest
from botocore.config import Config
from botocore.exceptions import ClientError

from ftapi.v1alpha1 import S3Spec
from fttestkit.paths import HACK
from fttestkit.ports import free_port
from fttestkit.process import ManagedProcess, http_ok
from fttrainer.storage import S3Store, StorageError, open_store, s3_client

pytestmark = pytest.mark.integration
MiB = 1024 * 1024
OUTAGE_SECONDS = 30


class MinioServer(ManagedProcess):
    """One MinIO process we own: killed and restarted on the same port and data dir."""

    def __init__(self, data: Path, log: Path) -> None:
        super().__init__("minio", log)
        self.data = data
        self.port, self.console_port = free_port(), free_port()
        self.user = "fto-test-" + uuid.uuid4().hex[:8]
        self.password = secrets.token_hex(16)
        self.region = "eu-central-1"  # not the client's default, to exercise redirects

    @property
    def endpoint(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    def start_server(self) -> None:
        env = {
            **os.environ, "MINIO_ROOT_USER": self.user, "MINIO_ROOT_PASSWORD": self.password,
            "MINIO_SITE_REGION": self.region, "MINIO_BROWSER": "off", "MINIO_UPDATE": "off",
            "MINIO_CI_CD": "1",
        }  # fmt: skip
        self.start(
            [_minio_binary(), "server", str(self.data), "--address", f"127.0.0.1:{self.port}",
             "--console-address", f"127.0.0.1:{self.console_port}", "--quiet"],
            env=env, new_session=True, timeout=60,
            ready=lambda: http_ok(f"{self.endpoint}/minio/health/ready"),
        )  # fmt: skip

    def client(self) -> Any:
        return boto3.session.Session().client(
            "s3", endpoint_url=self.endpoint, region_name=self.region,
            aws_access_key_id=self.user, aws_secret_access_key=self.password,
            config=Config(s3={"addressing_style": "path"}),
        )  # fmt: skip


def _minio_binary() -> str:
    """The cached MinIO binary, built by hack/build.sh if it is not there yet."""
    path = subprocess.run(
        [str(HACK / "bin-path.sh"), "minio"], capture_output=True, text=True, check=True
    ).stdout.strip()
    if not Path(path).is_file():
        subprocess.run([str(HACK / "build.sh"), "minio"], check=True, capture_output=True)
    return path


@pytest.fixture
def minio(tmp_path_factory: pytest.TempPathFactory) -> Iterator[MinioServer]:
    root = tmp_path_factory.mktemp("minio")
    server = MinioServer(root / "data", root / "minio.log")
    server.start_server()
    yield server
    server.kill()
    shutil.rmtree(root, ignore_errors=True)  # hundreds of MB; pytest would keep them


@pytest.fixture
def scratch(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Path]:
    """A folder for the big test files, removed after the test."""
    folder = tmp_path_factory.mktemp("scratch")
    yield folder
    shutil.rmtree(folder, ignore_errors=True)


@pytest.fixture
def store_env(minio: MinioServer, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("AWS_ACCESS_KEY_ID", minio.user)
    monkeypatch.setenv("AWS_SECRET_ACCESS_KEY", minio.password)
    monkeypatch.setenv("AWS_REGION", "us-east-1")  # wrong on purpose: botocore redirects


class GatedClient:
    """The real client, except that after `parts_before_outage` parts have gone up, further
    UploadPart calls wait until the test has killed the server: the outage then really
    happens in the middle of the upload, whatever the machine's speed."""

    def __init__(self, client: Any, parts_before_outage: int) -> None:
        self._client = client
        self._parts_left = parts_before_outage
        self._lock = threading.Lock()
        self.reached = threading.Event()  # the outage may start
        self.killed = threading.Event()  # the server is down: let the parts go

    def upload_part(self, **params: Any) -> Any:
        with self._lock:
            gated = self._parts_left <= 0
        if gated:
            self.reached.set()
            assert self.killed.wait(120), "the test never killed the server"
        response = self._client.upload_part(**params)
        with self._lock:
            self._parts_left -= 1
        return response

    def __getattr__(self, name: str) -> Any:
        return getattr(self._client, name)


def _big_file(path: Path, size: int) -> str:
    """Random (incompressible) bytes; their SHA-256."""
    hasher = hashlib.sha256()
    with open(path, "wb") as writer:
        for _ in range(size // (8 * MiB)):
            chunk = os.urandom(8 * MiB)
            hasher.update(chunk)
            writer.write(chunk)
    return hasher.hexdigest()


def _upload_in_thread(store: S3Store, source: Path, key: str) -> tuple[threading.Thread, dict]:
    outcome: dict[str, Any] = {}

    def upload() -> None:
        started = time.monotonic()
        try:
            outcome["info"] = store.upload_file(source, key, checksum=True)
        except BaseException as error:
            outcome["error"] = error
        outcome["seconds"] = time.monotonic() - started

    thread = threading.Thread(target=upload, name="upload", daemon=True)
    thread.start()
    return thread, outcome


@pytest.mark.timeout(240)
def test_upload_survives_a_30s_outage(
    minio: MinioServer, store_env: None, scratch: Path, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.INFO, logger="fttrainer.storage")
    admin = minio.client()
    admin.create_bucket(Bucket="ckpt")
    source = scratch / "model.safetensors"
    expected = _big_file(source, 208 * MiB)
    spec = S3Spec(endpoint=minio.endpoint, force_path_style=True)
    client = GatedClient(s3_client(spec), parts_before_outage=3)
    store = S3Store("ckpt", "run-1", client, part_size=8 * MiB, multipart_threshold=8 * MiB,
                    concurrency=4)  # fmt: skip

    thread, outcome = _upload_in_thread(store, source, "checkpoint-10/model.safetensors")
    assert client.reached.wait(60), f"the upload never got going: {outcome}"
    minio.kill()
    client.killed.set()
    time.sleep(OUTAGE_SECONDS)
    assert thread.is_alive(), f"the upload gave up during the outage: {outcome}"
    minio.start_server()
    thread.join(120)

    assert not thread.is_alive(), "the upload did not finish after the server came back"
    assert "error" not in outcome, outcome.get("error")
    info = outcome["info"]
    assert info.size == 208 * MiB and info.sha256 == expected
    assert outcome["seconds"] >= OUTAGE_SECONDS
    body = admin.get_object(Bucket="ckpt", Key="run-1/checkpoint-10/model.safetensors")["Body"]
    hasher = hashlib.sha256()
    for chunk in iter(lambda: body.read(8 * MiB), b""):
        hasher.update(chunk)
    assert hasher.hexdigest() == expected
    # Resumed, not restarted: one upload id all along, nothing left open.
    assert "retrying" in caplog.text and "starting the file again" not in caplog.text
    assert admin.list_multipart_uploads(Bucket="ckpt").get("Uploads", []) == []


@pytest.mark.timeout(180)
def test_outage_beyond_the_deadline_fails_clearly_and_leaves_no_object(
    minio: MinioServer, store_env: None, scratch: Path
) -> None:
    admin = minio.client()
    admin.create_bucket(Bucket="ckpt")
    source = scratch / "model.safetensors"
    _big_file(source, 64 * MiB)
    spec = S3Spec(endpoint=minio.endpoint, force_path_style=True)
    client = GatedClient(s3_client(spec), parts_before_outage=2)
    store = S3Store("ckpt", "", client, part_size=8 * MiB, multipart_threshold=8 * MiB,
                    concurrency=2, retry_deadline=8)  # fmt: skip

    thread, outcome = _upload_in_thread(store, source, "model.safetensors")
    assert client.reached.wait(60), f"the upload never got going: {outcome}"
    minio.kill()
    client.killed.set()
    thread.join(90)

    assert not thread.is_alive(), "the upload hangs instead of failing"
    error = outcome.get("error")
    assert isinstance(error, StorageError), outcome
    assert f"{minio.endpoint} kept failing for" in str(error)
    assert "connection refused" in str(error)
    assert outcome["seconds"] < 60
    minio.start_server()
    listed = admin.list_objects_v2(Bucket="ckpt").get("Contents", [])
    assert listed == []  # the parts that went up never became an object


@pytest.fixture
def silent_endpoint() -> Iterator[str]:
    """A TCP server that accepts every connection and never answers a byte."""
    server = socket.create_server(("127.0.0.1", 0))
    held: list[socket.socket] = []
    stop = threading.Event()

    def accept() -> None:
        server.settimeout(0.2)
        while not stop.is_set():
            try:
                held.append(server.accept()[0])
            except TimeoutError:
                continue

    thread = threading.Thread(target=accept, daemon=True)
    thread.start()
    yield f"http://127.0.0.1:{server.getsockname()[1]}"
    stop.set()
    thread.join(5)
    for connection in held:
        connection.close()
    server.close()


@pytest.mark.timeout(120)
def test_an_endpoint_that_never_answers_ends_with_a_reason_within_the_deadlines(
    silent_endpoint: str, monkeypatch: pytest.MonkeyPatch, scratch: Path
) -> None:
    """Connections succeed, answers never come: each request is cut at the read timeout
    (botocore tries 3 times), the store retries until its deadline, then fails naming the
    endpoint and why; an upload, a read and a listing alike."""
    monkeypatch.setenv("AWS_ACCESS_KEY_ID", "test")
    monkeypatch.setenv("AWS_SECRET_ACCESS_KEY", "test-secret")
    spec = S3Spec(endpoint=silent_endpoint, force_path_style=True, region="us-east-1")
    store = S3Store("ckpt", "run", s3_client(spec, read_timeout=2), retry_deadline=5)
    source = scratch / "small.bin"
    source.write_bytes(b"x" * 1024)
    calls = (
        lambda: store.upload_file(source, "small.bin"),
        lambda: store.read_bytes("DONE.json"),
        lambda: store.list("checkpoints/"),
    )
    for call in calls:
        started = time.monotonic()
        with pytest.raises(StorageError) as raised:
            call()
        took = time.monotonic() - started
        assert 5 <= took < 40, took  # 3 x 2 s per request, past the 5 s deadline: not a hang
        assert silent_endpoint in str(raised.value)
        assert "no answer within the read timeout" in str(raised.value)


def test_many_files_and_one_large_one_with_checksums(
    minio: MinioServer, store_env: None, tmp_path: Path
) -> None:
    """A checkpoint-like folder: bounded pool across files + multipart, sizes and digests."""
    minio.client().create_bucket(Bucket="ckpt")
    source = tmp_path / "checkpoint-7"
    (source / "optimizer").mkdir(parents=True)
    contents = {"model.safetensors": os.urandom(21 * MiB + 5), "empty.txt": b""}
    contents.update({f"optimizer/shard-{i}.pt": os.urandom(1000 * i + 1) for i in range(40)})
    for name, data in contents.items():
        (source / name).write_bytes(data)
    spec = S3Spec(endpoint=minio.endpoint, force_path_style=True, region="us-west-2")
    store = open_store("s3://ckpt/jobs/x", s3=spec)
    assert isinstance(store, S3Store)
    store.part_size = store.multipart_threshold = 5 * MiB

    infos = store.upload_dir(source, "checkpoint-7", checksum=True)

    assert [i.key for i in infos] == sorted(f"checkpoint-7/{name}" for name in contents)
    for info in infos:
        data = contents[info.key.removeprefix("checkpoint-7/")]
        assert (info.size, info.sha256) == (len(data), hashlib.sha256(data).hexdigest())
    assert {(o.key, o.size) for o in store.list("checkpoint-7/")} == {
        (i.key, i.size) for i in infos
    }
    head = minio.client().head_object(Bucket="ckpt", Key="jobs/x/checkpoint-7/model.safetensors")
    assert head["ETag"].strip('"').endswith("-5")  # 21 MiB in 5 MiB parts
    back = store.download_dir("checkpoint-7", tmp_path / "back")
    assert len(back) == len(contents)
    for name, data in contents.items():
        assert (tmp_path / "back" / name).read_bytes() == data


def test_wrong_region_errors_are_explained() -> None:
    """AWS answers a request signed for the wrong region with one of these codes (MinIO's
    own answer is followed by botocore's redirect, see the test above)."""
    from fttrainer.storage import _explain

    store = S3Store("ckpt", "", s3_client(S3Spec(endpoint="http://127.0.0.1:1", region="x-1")))
    for code in ("AuthorizationHeaderMalformed", "PermanentRedirect"):
        response: Any = {
            "Error": {"Code": code, "Message": "...", "Region": "eu-west-3"},
            "ResponseMetadata": {"HTTPStatusCode": 400, "HTTPHeaders": {}},
        }
        error = _explain("list s3://ckpt", ClientError(response, "ListObjectsV2"), store)
        assert str(error) == (
            "cannot list s3://ckpt: the bucket 'ckpt' is not in region x-1 "
            "(it is in eu-west-3): set output.s3.region"
        )
