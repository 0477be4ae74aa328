"""Where outputs go: a local directory or s3://bucket/prefix, behind one small interface.

    store = open_store("s3://models/run-1", s3=spec.output.s3)
    store.upload_dir(Path("results/run-1"), "")       # every file, multipart where large
    store.list("checkpoint-")                          # keys under the prefix

S3 uses boto3's standard credential chain (AWS_* variables, the pod's identity, a Secret's
keys injected as environment variables); credentials are never logged or put in errors.
Large files go up as concurrent multipart uploads; throttling and connection errors are
retried with backoff by botocore's "standard" retry mode.
"""

from __future__ import annotations

import shutil
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Protocol

from ftapi.v1alpha1 import S3Spec

MULTIPART_THRESHOLD = 64 * 1024 * 1024
PART_SIZE = 64 * 1024 * 1024
MAX_CONCURRENCY = 8


class StorageError(RuntimeError):
    """An output location that cannot be used, said in words (no credentials inside)."""


class Store(Protocol):
    def upload_file(self, source: Path, key: str) -> None: ...
    def upload_dir(self, source: Path, prefix: str) -> list[str]: ...
    def download_dir(self, prefix: str, target: Path) -> list[Path]: ...
    def download_file(self, key: str, destination: Path) -> None: ...
    def list(self, prefix: str = "") -> list[str]: ...
    def delete(self, keys: list[str]) -> None: ...


def open_store(uri: str, *, s3: S3Spec | None = None, client: Any = None) -> Store:
    if uri.startswith("s3://"):
        bucket, _, prefix = uri.removeprefix("s3://").partition("/")
        if not bucket:
            raise StorageError(f"{uri}: no bucket in the URI")
        return S3Store(bucket, prefix.strip("/"), client or s3_client(s3))
    if "://" in uri:
        raise StorageError(f"{uri}: unsupported output URI (use s3:// or a local path)")
    return LocalStore(Path(uri))


def s3_client(s3: S3Spec | None) -> Any:
    import boto3
    from botocore.config import Config

    config: dict[str, Any] = {"retries": {"mode": "standard", "max_attempts": 10}}
    kwargs: dict[str, Any] = {}
    if s3 is not None:
        if s3.endpoint:
            kwargs["endpoint_url"] = s3.endpoint
        if s3.region:
            kwargs["region_name"] = s3.region
        if s3.force_path_style:
            config["s3"] = {"addressing_style": "path"}
    # A fresh session: boto3's default one caches the first credentials it resolves.
    return boto3.session.Session().client("s3", config=Config(**config), **kwargs)


@dataclass
class LocalStore:
    root: Path

    def upload_file(self, source: Path, key: str) -> None:
        target = self.root / key
        target.parent.mkdir(parents=True, exist_ok=True)
        if source.resolve() != target.resolve():
            shutil.copy2(source, target)

    def upload_dir(self, source: Path, prefix: str) -> list[str]:
        return upload_tree(self, source, prefix)

    def download_dir(self, prefix: str, target: Path) -> list[Path]:
        return download_tree(self, prefix, target)

    def download_file(self, key: str, destination: Path) -> None:
        shutil.copy2(self.root / key, destination)

    def list(self, prefix: str = "") -> list[str]:
        if not self.root.exists():
            return []
        keys = (p.relative_to(self.root).as_posix() for p in self.root.rglob("*") if p.is_file())
        return sorted(k for k in keys if k.startswith(prefix))

    def delete(self, keys: list[str]) -> None:
        for key in keys:
            (self.root / key).unlink(missing_ok=True)


@dataclass
class S3Store:
    bucket: str
    prefix: str
    client: Any
    part_size: int = PART_SIZE
    multipart_threshold: int = MULTIPART_THRESHOLD

    def upload_file(self, source: Path, key: str) -> None:
        from boto3.s3.transfer import TransferConfig

        transfer = TransferConfig(
            multipart_threshold=self.multipart_threshold,
            multipart_chunksize=self.part_size,
            max_concurrency=MAX_CONCURRENCY,
        )
        with _explained(f"upload to {self._uri(key)}"):
            self.client.upload_file(str(source), self.bucket, self._key(key), Config=transfer)

    def upload_dir(self, source: Path, prefix: str) -> list[str]:
        return upload_tree(self, source, prefix)

    def download_dir(self, prefix: str, target: Path) -> list[Path]:
        return download_tree(self, prefix, target)

    def download_file(self, key: str, destination: Path) -> None:
        with _explained(f"download {self._uri(key)}"):
            self.client.download_file(self.bucket, self._key(key), str(destination))

    def list(self, prefix: str = "") -> list[str]:
        keys = []
        paginator = self.client.get_paginator("list_objects_v2")
        base = self._key("")
        with _explained(f"list {self._uri(prefix)}"):
            for page in paginator.paginate(Bucket=self.bucket, Prefix=self._key(prefix)):
                keys += [o["Key"][len(base) :].lstrip("/") for o in page.get("Contents", [])]
        return sorted(keys)

    def delete(self, keys: list[str]) -> None:
        for start in range(0, len(keys), 1000):
            chunk = [{"Key": self._key(k)} for k in keys[start : start + 1000]]
            with _explained(f"delete under {self._uri('')}"):
                self.client.delete_objects(Bucket=self.bucket, Delete={"Objects": chunk})

    def _key(self, key: str) -> str:
        return _join(self.prefix, key)

    def _uri(self, key: str) -> str:
        return f"s3://{self.bucket}/{self._key(key)}"


def upload_tree(
    store: Store, source: Path, prefix: str, *, skip: tuple[str, ...] = ()
) -> list[str]:
    """Every file under `source` (but top-level folders in `skip`), keys relative to it."""
    keys = []
    for path in sorted(p for p in source.rglob("*") if p.is_file()):
        relative = path.relative_to(source)
        if relative.parts[0] in skip:
            continue
        key = _join(prefix, relative.as_posix())
        store.upload_file(path, key)
        keys.append(key)
    return keys


def download_tree(store: Store, prefix: str, target: Path) -> list[Path]:
    """Every key under `prefix` into `target`, paths relative to the prefix."""
    files = []
    for key in store.list(prefix):
        destination = target / key[len(prefix) :].lstrip("/")
        destination.parent.mkdir(parents=True, exist_ok=True)
        store.download_file(key, destination)
        files.append(destination)
    return files


def _join(prefix: str, key: str) -> str:
    return f"{prefix.rstrip('/')}/{key}" if prefix else key


@contextmanager
def _explained(action: str) -> Iterator[None]:
    """Turn botocore's errors into StorageError with the cause in words."""
    from boto3.exceptions import S3UploadFailedError
    from botocore.exceptions import ClientError, EndpointConnectionError, NoCredentialsError

    try:
        yield
    except NoCredentialsError:
        reason = "no S3 credentials (set a credentialsSecretRef or AWS_* variables)"
    except EndpointConnectionError as error:
        reason = f"cannot reach the S3 endpoint {error.kwargs.get('endpoint_url', '')}"
    except (ClientError, S3UploadFailedError) as error:
        reason = _client_reason(error)
    else:
        return
    raise StorageError(f"cannot {action}: {reason}") from None


def _client_reason(error: Any) -> str:
    text = str(error)
    code = getattr(error, "response", {}).get("Error", {}).get("Code", "")
    known = {
        "NoSuchBucket": "the bucket does not exist",
        "AccessDenied": "access denied (check the credentials' permissions)",
        "InvalidAccessKeyId": "the access key is not known to this S3 endpoint",
        "SignatureDoesNotMatch": "the secret key does not match the access key",
    }
    for name, reason in known.items():
        if name in (code, text) or name in text:
            return reason
    return code or text.split(":")[-1].strip()
