"""The local directory store: every file appears whole or not at all (temporary file,
fsync, rename).
"""

from __future__ import annotations

import hashlib
import os
import shutil
import uuid
from collections.abc import Collection, Iterable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path

from fttrainer.storage.base import (
    _TMP_MARK,
    MiB,
    NotFoundError,
    ObjectInfo,
    StorageError,
)
from fttrainer.storage.paths import _folder, _walk, contained, sha256_file


@dataclass
class LocalStore:
    """A directory. Writes go to a hidden temporary file that is fsynced and renamed into
    place, so a reader never sees half a file."""

    root: Path

    @property
    def uri(self) -> str:
        return str(self.root)

    def upload_file(self, source: Path, key: str, *, checksum: bool = False) -> ObjectInfo:
        target = self.root / key
        with _local(f"copy {source} to {target}"):
            if target.exists() and os.path.samefile(source, target):
                digest = sha256_file(source) if checksum else None
                return ObjectInfo(key, source.stat().st_size, digest)
            size, digest = _copy_atomic(source, target, checksum=checksum)
        return ObjectInfo(key, size, digest)

    def upload_dir(
        self, source: Path, prefix: str = "", *, skip: Collection[str] = (), checksum: bool = False
    ) -> list[ObjectInfo]:
        return [self.upload_file(p, k, checksum=checksum) for p, k in _walk(source, prefix, skip)]

    def download_file(self, key: str, destination: Path) -> None:
        with _local(f"copy {self.root / key} to {destination}"):
            _copy_atomic(self.root / key, destination, checksum=False)

    def download_dir(self, prefix: str, target: Path) -> list[Path]:
        folder = _folder(prefix)
        files = []
        for info in self.list(folder):
            destination = contained(target, info.key[len(folder) :], source=str(self.root))
            self.download_file(info.key, destination)
            files.append(destination)
        return files

    def read_bytes(self, key: str) -> bytes:
        with _local(f"read {self.root / key}"):
            return (self.root / key).read_bytes()

    def write_bytes(self, key: str, data: bytes) -> ObjectInfo:
        with _local(f"write {self.root / key}"):
            _write_atomic(self.root / key, data)
        return ObjectInfo(key, len(data), hashlib.sha256(data).hexdigest())

    def stat(self, key: str) -> ObjectInfo | None:
        path = self.root / key
        return ObjectInfo(key, path.stat().st_size) if path.is_file() else None

    def list(self, prefix: str = "") -> list[ObjectInfo]:
        if not self.root.is_dir():
            return []
        found = []
        for path in self.root.rglob("*"):
            key = path.relative_to(self.root).as_posix()
            if key.startswith(prefix) and _TMP_MARK not in path.name and path.is_file():
                found.append(ObjectInfo(key, path.stat().st_size))
        return sorted(found)

    def delete(self, keys: Iterable[str]) -> None:
        for key in keys:
            path = self.root / key
            with _local(f"delete {path}"):
                path.unlink(missing_ok=True)
                # Empty folders left behind (checkpoint-100/) go too, up to the root.
                parent = path.parent
                while parent != self.root and parent.is_dir() and not any(parent.iterdir()):
                    parent.rmdir()
                    parent = parent.parent


def _copy_atomic(source: Path, target: Path, *, checksum: bool) -> tuple[int, str | None]:
    """Copy via a temporary file in the target's folder; (size, sha256 hex or None)."""
    target.parent.mkdir(parents=True, exist_ok=True)
    temporary = target.with_name(f".{target.name}{_TMP_MARK}{uuid.uuid4().hex[:8]}")
    hasher = hashlib.sha256() if checksum else None
    try:
        with open(source, "rb") as reader, open(temporary, "wb") as writer:
            if hasher is None:
                shutil.copyfileobj(reader, writer, 8 * MiB)
            else:
                while chunk := reader.read(8 * MiB):
                    hasher.update(chunk)
                    writer.write(chunk)
            writer.flush()
            os.fsync(writer.fileno())
            size = writer.tell()
        os.replace(temporary, target)
    except BaseException:
        temporary.unlink(missing_ok=True)
        raise
    _fsync_dir(target.parent)
    return size, hasher.hexdigest() if hasher else None


def _write_atomic(target: Path, data: bytes) -> None:
    target.parent.mkdir(parents=True, exist_ok=True)
    temporary = target.with_name(f".{target.name}{_TMP_MARK}{uuid.uuid4().hex[:8]}")
    try:
        with open(temporary, "wb") as writer:
            writer.write(data)
            writer.flush()
            os.fsync(writer.fileno())
        os.replace(temporary, target)
    except BaseException:
        temporary.unlink(missing_ok=True)
        raise
    _fsync_dir(target.parent)


def _fsync_dir(folder: Path) -> None:
    """Make a rename durable (a no-op where directories cannot be opened)."""
    try:
        handle = os.open(folder, os.O_RDONLY)
    except OSError:
        return
    try:
        os.fsync(handle)
    except OSError:
        pass
    finally:
        os.close(handle)


@contextmanager
def _local(action: str) -> Iterator[None]:
    try:
        yield
    except FileNotFoundError as error:
        raise NotFoundError(f"cannot {action}: {error.filename} does not exist") from None
    except OSError as error:
        raise StorageError(f"cannot {action}: {error.strerror or error}") from None
