"""The S3 store: multipart uploads with one bounded request pool, retries around
botocore's for as long as an outage lasts, errors explained in words without credentials.
"""

from __future__ import annotations

import base64
import builtins
import hashlib
import logging
import random
import threading
import time
from collections.abc import Callable, Collection, Iterable
from concurrent.futures import CancelledError, Future, ThreadPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from ftapi.redaction import redact
from ftapi.v1alpha1 import S3Spec
from fttrainer.storage.base import (
    DELETE_BATCH,
    MAX_CONCURRENCY,
    MAX_PARTS,
    MULTIPART_THRESHOLD,
    PART_SIZE,
    RETRY_DEADLINE,
    UNREACHABLE_DEADLINE,
    MiB,
    NotFoundError,
    ObjectInfo,
    StorageError,
    T,
    _Cancelled,
    _UploadLost,
    log,
)
from fttrainer.storage.paths import _folder, _join, _walk, contained

# Error codes worth retrying: throttling, server-side trouble, a body damaged on the way.
TRANSIENT_CODES = frozenset({
    "SlowDown", "Throttling", "ThrottlingException", "RequestThrottled", "TooManyRequests",
    "RequestLimitExceeded", "RequestTimeout", "RequestTimeoutException", "InternalError",
    "ServiceUnavailable", "BadDigest", "XAmzContentChecksumMismatch", "IncompleteBody",
    "XMinioServerNotInitialized", "XMinioReadQuorum", "XMinioWriteQuorum",
})  # fmt: skip
TRANSIENT_STATUS = frozenset({429, 500, 502, 503, 504})
DENIED = {
    "AccessDenied": "access denied (the credentials lack permission for this bucket or key)",
    "AllAccessDisabled": "access denied (all access to this bucket has been disabled)",
    "403": "access denied (HTTP 403)",
    "InvalidAccessKeyId": "access denied: the access key is not known to this S3 endpoint "
    "(check the credentials Secret / AWS_ACCESS_KEY_ID)",
    "SignatureDoesNotMatch": "access denied: the secret key does not match the access key "
    "(check the credentials Secret / AWS_SECRET_ACCESS_KEY)",
    "InvalidToken": "access denied: the session token is not valid",
    "ExpiredToken": "access denied: the session token has expired",
}
WRONG_REGION = frozenset(
    {
        "AuthorizationHeaderMalformed",
        "PermanentRedirect",
        "IllegalLocationConstraintException",
        "InvalidRegion",
        "301",
    }
)
# Endpoints that have answered at least once in this process: from then on, connection
# errors mean an outage (retry for a long time), not a wrong address (fail fast).
_ANSWERED: set[str] = set()


# How long one request waits for the server's answer (an endpoint that accepts and never
# answers is bounded by this x botocore's 3 attempts, then by S3Store's retry deadline).
READ_TIMEOUT = 30.0


def s3_client(
    s3: S3Spec | None = None,
    *,
    concurrency: int = MAX_CONCURRENCY,
    read_timeout: float = READ_TIMEOUT,
) -> Any:
    """A boto3 S3 client for the spec's endpoint, region and addressing style; credentials
    and anything unset come from the standard AWS environment (AWS_ENDPOINT_URL_S3 too)."""
    import boto3
    from botocore.config import Config

    s3_options: dict[str, Any] = {
        # Over plain http botocore would hash every byte with SHA-256 to sign it (and the
        # server would hash it again to check). Integrity comes from the CRC32 checksum
        # header instead, which is signed, as botocore already does over https.
        "payload_signing_enabled": False,
    }
    kwargs: dict[str, Any] = {}
    if s3 is not None:
        if s3.endpoint:
            kwargs["endpoint_url"] = s3.endpoint
        if s3.region:
            kwargs["region_name"] = s3.region
        if s3.force_path_style:
            s3_options["addressing_style"] = "path"
    config = Config(
        # Short blips are botocore's; the long outages are ours (S3Store._retrying).
        retries={"mode": "standard", "total_max_attempts": 3},
        connect_timeout=5,
        read_timeout=read_timeout,
        tcp_keepalive=True,
        max_pool_connections=concurrency + 4,
        s3=s3_options,
    )
    # A fresh session: boto3's default one caches the first credentials it resolves.
    return boto3.session.Session().client("s3", config=config, **kwargs)


@dataclass
class S3Store:
    """s3://bucket/prefix. See the module docstring for concurrency, retries and errors."""

    bucket: str
    prefix: str
    client: Any = field(repr=False)
    part_size: int = PART_SIZE
    multipart_threshold: int = MULTIPART_THRESHOLD
    concurrency: int = MAX_CONCURRENCY
    retry_deadline: float = RETRY_DEADLINE
    unreachable_deadline: float = UNREACHABLE_DEADLINE

    @property
    def uri(self) -> str:
        return f"s3://{self.bucket}/{self.prefix}".rstrip("/")

    def upload_file(self, source: Path, key: str, *, checksum: bool = False) -> ObjectInfo:
        """Upload one file (multipart above `multipart_threshold`); size checked after."""
        [info] = _Uploads(self, checksum=checksum).run([(source, key)])
        found = self.stat(key)
        self._check_sizes([info], {key: found.size} if found else {})
        return info

    def upload_dir(
        self, source: Path, prefix: str = "", *, skip: Collection[str] = (), checksum: bool = False
    ) -> list[ObjectInfo]:
        """Every file under `source` (top-level folders in `skip` left out) to prefix/...,
        concurrently; sizes checked after with one listing."""
        files = _walk(source, prefix, skip)
        started = time.monotonic()
        infos = _Uploads(self, checksum=checksum).run(files)
        listed = {o.key: o.size for o in self.list(_folder(prefix))}
        self._check_sizes(infos, listed)
        seconds = time.monotonic() - started
        total = sum(i.size for i in infos)
        log.info(
            "uploaded %d files (%.1f MB) to %s in %.1f s (%.0f MB/s)",
            len(infos),
            total / 1e6,
            self._uri(prefix),
            seconds,
            total / 1e6 / max(seconds, 1e-9),
        )
        return sorted(infos)

    def download_file(self, key: str, destination: Path) -> None:
        self._download([(key, destination, None)], f"download {self._uri(key)}")

    def download_dir(self, prefix: str, target: Path) -> list[Path]:
        """Every object under the folder `prefix` into `target` (paths relative to it)."""
        folder = _folder(prefix)
        items: list[tuple[str, Path, int | None]] = [
            (o.key, contained(target, o.key[len(folder) :], source=self._uri(folder)), o.size)
            for o in self.list(folder)
            if not o.key.endswith("/")  # folder markers some tools create
        ]
        self._download(items, f"download {self._uri(folder)}")
        return [destination for _, destination, _ in items]

    def read_bytes(self, key: str) -> bytes:
        def read() -> bytes:
            body = self.client.get_object(Bucket=self.bucket, Key=self._key(key))["Body"]
            return bytes(body.read())

        return self._retrying(f"read {self._uri(key)}", read)

    def write_bytes(self, key: str, data: bytes) -> ObjectInfo:
        """One PUT (visible whole or not at all), checked by S3 against our SHA-256."""
        digest = hashlib.sha256(data).digest()
        self._call(
            f"write {self._uri(key)}",
            "put_object",
            Bucket=self.bucket,
            Key=self._key(key),
            Body=data,
            ChecksumSHA256=base64.b64encode(digest).decode(),
        )
        return ObjectInfo(key, len(data), digest.hex())

    def stat(self, key: str) -> ObjectInfo | None:
        try:
            head = self._call(
                f"look up {self._uri(key)}", "head_object", Bucket=self.bucket, Key=self._key(key)
            )
        except NotFoundError:
            return None
        return ObjectInfo(key, int(head["ContentLength"]))

    def list(self, prefix: str = "") -> list[ObjectInfo]:
        base = self._key("")
        found: list[ObjectInfo] = []

        def fetch() -> None:
            found.clear()
            paginator = self.client.get_paginator("list_objects_v2")
            for page in paginator.paginate(Bucket=self.bucket, Prefix=self._key(prefix)):
                found.extend(
                    ObjectInfo(o["Key"][len(base) :], int(o["Size"]))
                    for o in page.get("Contents", [])
                )

        self._retrying(f"list {self._uri(prefix)}", fetch)
        return sorted(found)

    def delete(self, keys: Iterable[str]) -> None:
        """Batched DeleteObjects (1000 keys a request); missing keys are fine."""
        keys = builtins.list(keys)
        for start in range(0, len(keys), DELETE_BATCH):
            batch = keys[start : start + DELETE_BATCH]
            response = self._call(
                f"delete {len(batch)} objects under {self.uri}",
                "delete_objects",
                Bucket=self.bucket,
                Delete={"Objects": [{"Key": self._key(k)} for k in batch], "Quiet": True},
            )
            if errors := response.get("Errors"):
                first = errors[0]
                raise StorageError(
                    f"cannot delete {len(errors)} of {len(batch)} objects under {self.uri}: "
                    f"{first.get('Key')}: {first.get('Code')} {first.get('Message', '')}".strip()
                )

    # -- requests, retries, errors

    def _call(
        self, action: str, operation: str, cancel: threading.Event | None = None, **params: Any
    ) -> Any:
        return self._retrying(action, lambda: getattr(self.client, operation)(**params), cancel)

    def _retrying(
        self, action: str, attempt: Callable[[], T], cancel: threading.Event | None = None
    ) -> T:
        """`attempt()`, retried on transient failures with exponential backoff and jitter until
        the deadline; any other failure, or the deadline, raises StorageError."""
        endpoint = str(self.client.meta.endpoint_url)
        failing_since = 0.0
        tries = 0
        while True:
            try:
                result = attempt()
            except _Cancelled:
                raise
            except Exception as error:
                if _answered(error):
                    _ANSWERED.add(endpoint)
                if not is_transient(error):
                    raise _explain(action, error, self) from None
                now = time.monotonic()
                failing_since = failing_since or now
                answered = endpoint in _ANSWERED
                limit = self.retry_deadline if answered else self.unreachable_deadline
                waited = now - failing_since
                if waited >= limit:
                    raise _explain(action, error, self, waited=waited) from None
                delay = backoff_delay(tries, limit - waited)
                tries += 1
                level = logging.WARNING if tries == 1 else logging.DEBUG
                log.log(
                    level,
                    "%s: %s; retrying for up to %.0f s more",
                    action,
                    _describe(error),
                    limit - waited,
                )
                if cancel is None:
                    time.sleep(delay)
                elif cancel.wait(delay):
                    raise _Cancelled() from None
            else:
                _ANSWERED.add(endpoint)
                if tries:
                    log.info(
                        "%s: succeeded after %.0f s of failures",
                        action,
                        time.monotonic() - failing_since,
                    )
                return result

    def _download(self, items: builtins.list[tuple[str, Path, int | None]], action: str) -> None:
        """Objects to files through one s3transfer manager (ranged GETs for large ones, files
        written under a temporary name and renamed); failed files are retried as a batch."""
        from boto3.s3.transfer import TransferConfig, create_transfer_manager

        config = TransferConfig(
            multipart_threshold=self.multipart_threshold,
            multipart_chunksize=self.part_size,
            max_concurrency=self.concurrency,
        )
        remaining = items

        def attempt() -> None:
            nonlocal remaining
            failed, first = [], None
            with create_transfer_manager(self.client, config) as manager:
                futures = []
                for key, destination, size in remaining:
                    destination.parent.mkdir(parents=True, exist_ok=True)
                    futures.append(
                        manager.download(
                            self.bucket,
                            self._key(key),
                            str(destination),
                            subscribers=[_KnownSize(size)] if size is not None else [],
                        )
                    )
                for item, future in zip(remaining, futures, strict=True):
                    try:
                        future.result()
                    except Exception as error:
                        failed.append(item)
                        first = first or error
            remaining = failed
            if first is not None:
                raise first

        self._retrying(action, attempt)
        for key, destination, size in items:
            if size is not None and destination.stat().st_size != size:
                raise StorageError(
                    f"cannot {action}: {destination} has {destination.stat().st_size} bytes, "
                    f"{self._uri(key)} has {size}"
                )

    def _check_sizes(self, infos: Iterable[ObjectInfo], listed: dict[str, int]) -> None:
        for info in infos:
            if listed.get(info.key) != info.size:
                found = listed.get(info.key, "no")
                raise StorageError(
                    f"upload to {self._uri(info.key)} did not stick: {found} bytes there, "
                    f"{info.size} sent"
                )

    def _key(self, key: str) -> str:
        return _join(self.prefix, key)

    def _uri(self, key: str) -> str:
        return f"s3://{self.bucket}/{self._key(key)}"


@dataclass
class _Pending:
    """A file whose requests are in the pool."""

    path: Path
    key: str
    size: int
    futures: list[Future[Any]]
    upload_id: str | None = None  # multipart only
    sha256: str | None = None
    restarts: int = 0


class _Uploads:
    """One upload call. The calling thread reads the files in order, once (hashing as it
    reads), and hands requests to a bounded pool: parts of large files and whole small
    files share it, so many small files and one huge one both keep it busy. At most
    concurrency + 1 buffers are read and not yet sent, which bounds memory. The first
    failure that is not retried cancels the rest and aborts the open multipart uploads."""

    def __init__(self, store: S3Store, *, checksum: bool) -> None:
        self.store = store
        self.checksum = checksum
        self.pool = ThreadPoolExecutor(store.concurrency, thread_name_prefix="s3-upload")
        self.buffers = threading.Semaphore(store.concurrency + 1)
        self.cancel = threading.Event()
        self.failure: BaseException | None = None
        self.open: dict[str, str] = {}  # key -> id of multipart uploads not completed

    def run(self, files: Iterable[tuple[Path, str]]) -> list[ObjectInfo]:
        try:
            pending = [self._start(path, key) for path, key in files]
            return [self._finish(p) for p in pending]
        except BaseException:
            self.cancel.set()
            raise
        finally:
            self.pool.shutdown(wait=True, cancel_futures=True)
            self._abort_open()

    def _start(self, path: Path, key: str, restarts: int = 0) -> _Pending:
        store, uri = self.store, self.store._uri(key)
        try:
            size = path.stat().st_size
            if size < store.multipart_threshold:
                self._take_buffer()
                try:
                    data = path.read_bytes()
                except BaseException:
                    self.buffers.release()
                    raise
                digest = hashlib.sha256(data).digest() if self.checksum else None
                future = self._submit(self._put, key, data, digest)
                hexdigest = digest.hex() if digest else None
                return _Pending(path, key, len(data), [future], sha256=hexdigest)
            upload_id = store._call(
                f"start uploading {path} to {uri}",
                "create_multipart_upload",
                self.cancel,
                Bucket=store.bucket,
                Key=store._key(key),
                ChecksumAlgorithm="CRC32",
            )["UploadId"]
            self.open[key] = upload_id
            part_size = max(store.part_size, -(-size // MAX_PARTS // MiB) * MiB)
            hasher = hashlib.sha256() if self.checksum else None
            futures: list[Future[Any]] = []
            sent = 0
            with open(path, "rb") as reader:
                for number in range(1, MAX_PARTS + 1):
                    self._take_buffer()
                    data = reader.read(part_size)
                    if not data:
                        self.buffers.release()
                        break
                    if hasher is not None:
                        hasher.update(data)
                    futures.append(self._submit(self._put_part, key, upload_id, number, data))
                    sent += len(data)
        except OSError as error:
            raise StorageError(f"cannot upload {path}: {error.strerror or error}") from None
        if sent != size:
            raise StorageError(f"cannot upload {path}: it changed while being uploaded")
        digest_hex = hasher.hexdigest() if hasher else None
        return _Pending(path, key, sent, futures, upload_id, digest_hex, restarts)

    def _finish(self, pending: _Pending) -> ObjectInfo:
        store, key = self.store, pending.key
        info = ObjectInfo(key, pending.size, pending.sha256)
        try:
            parts = [f.result() for f in pending.futures]
            if pending.upload_id is None:
                return info
            action = f"complete the upload of {pending.path} to {store._uri(key)}"
            try:
                store._call(
                    action,
                    "complete_multipart_upload",
                    self.cancel,
                    Bucket=store.bucket,
                    Key=store._key(key),
                    UploadId=pending.upload_id,
                    MultipartUpload={"Parts": parts},
                )
            except _UploadLost:
                # A retried completion whose first try succeeded finds no upload: fine if
                # the object is exactly the one we assembled.
                if not self._completed(key, parts, pending.size):
                    raise
            self.open.pop(key, None)
            return info
        except _UploadLost:
            self.open.pop(key, None)
            if pending.restarts >= 2:
                raise
            log.warning(
                "%s: the multipart upload was lost; starting the file again", store._uri(key)
            )
            return self._finish(self._start(pending.path, key, pending.restarts + 1))
        except (_Cancelled, CancelledError):
            raise self.failure or StorageError("upload cancelled") from None

    def _put(self, key: str, data: bytes, digest: bytes | None) -> None:
        store = self.store
        extra = {"ChecksumSHA256": base64.b64encode(digest).decode()} if digest else {}
        store._call(
            f"upload to {store._uri(key)}",
            "put_object",
            self.cancel,
            Bucket=store.bucket,
            Key=store._key(key),
            Body=data,
            **extra,
        )

    def _put_part(self, key: str, upload_id: str, number: int, data: bytes) -> dict[str, Any]:
        store = self.store
        response = store._call(
            f"upload part {number} of {store._uri(key)}",
            "upload_part",
            self.cancel,
            Bucket=store.bucket,
            Key=store._key(key),
            UploadId=upload_id,
            PartNumber=number,
            Body=data,
            ChecksumAlgorithm="CRC32",
        )
        part = {"PartNumber": number, "ETag": response["ETag"]}
        if "ChecksumCRC32" in response:
            part["ChecksumCRC32"] = response["ChecksumCRC32"]
        return part

    def _completed(self, key: str, parts: list[dict[str, Any]], size: int) -> bool:
        """Is the object the one these parts make (size, and S3's multipart ETag)?"""
        store = self.store
        try:
            head = store._call(
                f"look up {store._uri(key)}",
                "head_object",
                self.cancel,
                Bucket=store.bucket,
                Key=store._key(key),
            )
        except NotFoundError:
            return False
        md5s = b"".join(bytes.fromhex(p["ETag"].strip('"')) for p in parts)
        etag = f'"{hashlib.md5(md5s).hexdigest()}-{len(parts)}"'
        return int(head["ContentLength"]) == size and head.get("ETag") == etag

    def _submit(self, fn: Callable[..., Any], *args: Any) -> Future[Any]:
        future = self.pool.submit(fn, *args)
        future.add_done_callback(self._done)
        return future

    def _done(self, future: Future[Any]) -> None:
        self.buffers.release()
        if future.cancelled():
            return
        error = future.exception()
        if error is not None and not isinstance(error, _Cancelled | _UploadLost):
            self.failure = self.failure or error
            self.cancel.set()

    def _take_buffer(self) -> None:
        while not self.buffers.acquire(timeout=0.2):
            self._raise_if_failed()
        if self.cancel.is_set():
            self.buffers.release()
            self._raise_if_failed()

    def _raise_if_failed(self) -> None:
        if self.cancel.is_set():
            raise self.failure or StorageError("upload cancelled")

    def _abort_open(self) -> None:
        """Abort what was started and not completed: its parts never become an object."""
        for key, upload_id in self.open.items():
            store = self.store
            try:
                store.client.abort_multipart_upload(
                    Bucket=store.bucket, Key=store._key(key), UploadId=upload_id
                )
            except Exception as error:
                log.warning(
                    "could not abort the unfinished multipart upload of %s (%s); it is not "
                    "visible, and a lifecycle rule (AbortIncompleteMultipartUpload) removes it",
                    store._uri(key),
                    _describe(error),
                )


class _KnownSize:
    """s3transfer subscriber: the size is known from the listing, so no HEAD per file."""

    def __init__(self, size: int) -> None:
        self.size = size

    def on_queued(self, future: Any, **_: Any) -> None:
        future.meta.provide_transfer_size(self.size)

    def on_progress(self, **_: Any) -> None:
        pass

    def on_done(self, **_: Any) -> None:
        pass


def backoff_delay(tries: int, remaining: float) -> float:
    """The wait before try `tries + 1`: 0.5 s doubling to 10 s, with jitter so that ranks
    failing together do not retry together, never past the deadline's `remaining`."""
    grown: float = min(10.0, 0.5 * 2.0**tries)
    return max(0.0, min(remaining, grown * random.uniform(0.5, 1.0)))


def is_transient(error: BaseException) -> bool:
    """A failure a later try may not meet (no connection, a timeout, throttling, a 5xx)."""
    from botocore.exceptions import (
        ClientError,
        ConnectionError,
        HTTPClientError,
        IncompleteReadError,
    )
    from s3transfer.exceptions import RetriesExceededError

    if isinstance(error, ClientError):
        code, status = _code(error)
        return code in TRANSIENT_CODES or status in TRANSIENT_STATUS
    return isinstance(
        error, ConnectionError | HTTPClientError | IncompleteReadError | RetriesExceededError
    )


def _answered(error: BaseException) -> bool:
    from botocore.exceptions import ClientError

    return isinstance(error, ClientError)


def _code(error: Any) -> tuple[str, int]:
    response = getattr(error, "response", None) or {}
    code = str(response.get("Error", {}).get("Code", ""))
    status = int(response.get("ResponseMetadata", {}).get("HTTPStatusCode", 0) or 0)
    return code, status


def _explain(action: str, error: BaseException, store: S3Store, *, waited: float = 0) -> Exception:
    """StorageError (NotFoundError, _UploadLost) for a botocore error, in our own words."""
    from botocore.exceptions import ClientError, NoCredentialsError, PartialCredentialsError

    endpoint = _redact(str(store.client.meta.endpoint_url))
    if isinstance(error, NoCredentialsError | PartialCredentialsError):
        reason = (
            "no S3 credentials found (set output.s3.credentialsSecretRef, or "
            "AWS_ACCESS_KEY_ID and AWS_SECRET_ACCESS_KEY)"
        )
    elif isinstance(error, ClientError):
        code, status = _code(error)
        details = error.response.get("Error", {})
        if code in ("NoSuchKey", "404", "NotFound"):
            return NotFoundError(f"cannot {action}: no such object")
        if code == "NoSuchUpload":
            return _UploadLost(f"cannot {action}: the multipart upload no longer exists")
        if code == "NoSuchBucket":
            reason = f"the bucket {store.bucket!r} does not exist at {endpoint}"
        elif code in DENIED:
            reason = DENIED[code]
        elif code in WRONG_REGION:
            headers = error.response.get("ResponseMetadata", {}).get("HTTPHeaders", {})
            actual = details.get("Region") or headers.get("x-amz-bucket-region")
            where = f" (it is in {actual})" if actual else ""
            reason = (
                f"the bucket {store.bucket!r} is not in region "
                f"{store.client.meta.region_name}{where}: set output.s3.region"
            )
        elif waited:
            reason = f"{endpoint} kept failing for {waited:.0f} s ({code}, HTTP {status})"
        else:
            reason = f"{code or status}: {details.get('Message', '')}".rstrip(": ")
    elif waited and endpoint in _ANSWERED:
        reason = f"the S3 endpoint {endpoint} kept failing for {waited:.0f} s ({_describe(error)})"
    elif is_transient(error):
        reason = (
            f"cannot reach the S3 endpoint {endpoint} ({_describe(error)}); "
            "check output.s3.endpoint"
        )
    else:
        reason = f"{type(error).__name__}: {error}"
    return StorageError(f"cannot {action}: {reason}")


def _describe(error: BaseException) -> str:
    """A few words for a failure, never its full text (which can carry request details)."""
    from botocore import exceptions as e
    from s3transfer.exceptions import RetriesExceededError

    if isinstance(error, RetriesExceededError) and error.last_exception is not None:
        return _describe(error.last_exception)
    if isinstance(error, e.ClientError):
        code, status = _code(error)
        return f"{code or 'error'} (HTTP {status})"
    inner = str(getattr(error, "kwargs", {}).get("error", ""))
    if isinstance(error, e.ConnectTimeoutError):
        return "connect timed out"
    if isinstance(error, e.SSLError):
        return "TLS handshake failed (http vs https?)"
    if isinstance(error, e.EndpointConnectionError):
        if "refused" in inner.lower():
            return "connection refused"
        if "resolve" in inner.lower() or "name or service" in inner.lower():
            return "host name not found"
        return "cannot connect"
    if isinstance(error, e.ReadTimeoutError):
        return "no answer within the read timeout"
    if isinstance(error, e.ConnectionClosedError):
        return "connection closed"
    return type(error).__name__


def _redact(url: str) -> str:
    """The endpoint without any user:password@ it might carry."""
    return redact(url, limit=2048)
