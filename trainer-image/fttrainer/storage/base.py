"""The storage interface: what the trainer needs from an output location, its errors
and the sizes every store shares.
"""

from __future__ import annotations

import builtins
import logging
from collections.abc import Collection, Iterable
from dataclasses import dataclass
from pathlib import Path
from typing import Protocol, TypeVar

log = logging.getLogger("fttrainer.storage")
T = TypeVar("T")

MiB = 1024 * 1024
PART_SIZE = 32 * MiB
"""Multipart part size; also the largest file sent in one PUT. Memory held by an upload is
about (concurrency + 1) x PART_SIZE."""
MULTIPART_THRESHOLD = PART_SIZE
MAX_CONCURRENCY = 8
"""Requests in flight per upload or download call (parts and whole files together)."""
RETRY_DEADLINE = 300.0
"""Seconds a failing request is retried once the endpoint has answered in this process."""
UNREACHABLE_DEADLINE = 10.0
"""Seconds a request is retried while the endpoint has never answered (wrong endpoint?)."""
MAX_PARTS = 10_000  # S3's limit; larger files get larger parts
DELETE_BATCH = 1000  # S3's DeleteObjects limit
_TMP_MARK = ".fto-tmp-"  # in the names of the local store's not-yet-renamed files


class StorageError(RuntimeError):
    """An output location that cannot be used, said in words (no credentials inside)."""


class NotFoundError(StorageError):
    """The object (or local file) does not exist."""


class _UploadLost(StorageError):
    """The multipart upload id is gone (aborted elsewhere): the file must start over."""


class _Cancelled(Exception):
    """Another request of the same call failed; this one stops."""


@dataclass(frozen=True, order=True)
class ObjectInfo:
    """An object in a store: its key relative to the store's prefix, size in bytes and,
    when it was just uploaded with `checksum=True` (or written with write_bytes), the hex
    SHA-256 of its content."""

    key: str
    size: int
    sha256: str | None = None


class Store(Protocol):
    """What the trainer needs from an output location. Keys are relative to the store's root
    and use "/"; a prefix given to list/download_dir is a plain string prefix ("checkpoint-"
    matches "checkpoint-500/..."), except that download_dir treats it as a folder."""

    @property
    def uri(self) -> str: ...
    def upload_file(self, source: Path, key: str, *, checksum: bool = False) -> ObjectInfo: ...
    def upload_dir(
        self, source: Path, prefix: str = "", *, skip: Collection[str] = (), checksum: bool = False
    ) -> list[ObjectInfo]: ...
    def download_file(self, key: str, destination: Path) -> None: ...
    def download_dir(self, prefix: str, target: Path) -> list[Path]: ...
    def read_bytes(self, key: str) -> bytes: ...
    def write_bytes(self, key: str, data: bytes) -> ObjectInfo: ...
    def stat(self, key: str) -> ObjectInfo | None: ...
    def list(self, prefix: str = "") -> builtins.list[ObjectInfo]: ...
    def delete(self, keys: Iterable[str]) -> None: ...
