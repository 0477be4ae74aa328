"""Helpers both stores share: walking a folder to upload, joining keys, and keeping
paths read from a store inside their target folder.
"""

from __future__ import annotations

import builtins
import hashlib
from collections.abc import Collection
from pathlib import Path

from fttrainer.storage.base import MiB, StorageError, Store


def upload_tree(
    store: Store, source: Path, prefix: str, *, skip: tuple[str, ...] = ()
) -> builtins.list[str]:
    """Every file under `source` (but top-level folders in `skip`); the keys written."""
    return [info.key for info in store.upload_dir(source, prefix, skip=skip)]


def _walk(source: Path, prefix: str, skip: Collection[str]) -> list[tuple[Path, str]]:
    if not source.is_dir():
        raise StorageError(f"cannot upload {source}: not a directory")
    files = []
    for path in sorted(p for p in source.rglob("*") if p.is_file()):
        relative = path.relative_to(source)
        if relative.parts[0] not in skip:
            files.append((path, _join(prefix, relative.as_posix())))
    return files


def sha256_file(path: Path) -> str:
    """The file's sha256 (hex), read in 8 MiB blocks: checkpoint manifests, OCI layers,
    data and model lineage all hash this way."""
    hasher = hashlib.sha256()
    with open(path, "rb") as reader:
        while chunk := reader.read(8 * MiB):
            hasher.update(chunk)
    return hasher.hexdigest()


def _join(prefix: str, key: str) -> str:
    return f"{prefix.rstrip('/')}/{key}" if prefix else key


def contained(target: Path, relative: str, *, source: str) -> Path:
    """`target / relative`, refused when the name would land outside `target`.

    Object keys and manifest paths come from the store, which anyone with write access to
    the bucket controls: AWS keeps `..` segments and a leading `/` in keys literally, so a
    key `prefix/../../home/x` must not become a path outside the download folder."""
    parts = relative.replace("\\", "/").split("/")
    if (
        relative.startswith("/")
        or any(part in ("..", "") for part in parts[:-1])
        or (parts[-1] in ("..", ".", ""))
    ):
        raise StorageError(f"{source}: refusing {relative!r}: it names a path outside {target}")
    path = target / relative
    if not path.resolve().is_relative_to(target.resolve()):
        raise StorageError(f"{source}: refusing {relative!r}: it names a path outside {target}")
    return path


def _folder(prefix: str) -> str:
    """A prefix as a folder: "checkpoint-5" must not match "checkpoint-50/..."."""
    return f"{prefix.rstrip('/')}/" if prefix.strip("/") else ""
