"""Folders made once per machine and shared by every process on it: downloaded models
(model/sources.py) and prepared data (data/prepared.py).

They live under XDG_CACHE_HOME/finetune (the pod's /workspace volume). Every process of a
node asks for the same folder; the first takes a file lock and fills it while the others
wait on the lock, and a folder only counts once it holds its completion marker, written
last: a fill that died half-way is started again, never read. A mirror (the job's output
store) can keep a copy for the other nodes and for attempts restarted elsewhere.
"""

from __future__ import annotations

import fcntl
import hashlib
import logging
import os
import shutil
from collections.abc import Callable
from pathlib import Path

from fttrainer.storage import StorageError, Store

log = logging.getLogger(__name__)

COMPLETE = ".finetune-complete"


def cache_root(kind: str) -> Path:
    """XDG_CACHE_HOME/finetune/<kind> (models, data)."""
    base = os.environ.get("XDG_CACHE_HOME") or str(Path.home() / ".cache")
    return Path(base) / "finetune" / kind


def folder_for(root: Path, name: str, key: str) -> Path:
    """`root`/<name>-<12 hex digits of the key's sha256>."""
    return root / f"{name}-{hashlib.sha256(key.encode()).hexdigest()[:12]}"


def is_complete(folder: Path) -> bool:
    return (folder / COMPLETE).is_file()


def cached_folder(
    target: Path, fill: Callable[[Path], str], *, mirror: Store | None = None
) -> tuple[Path, bool]:
    """`target`, filled by `fill(partial folder)` (which returns the marker's text) unless
    a complete copy is there; (target, whether this process filled it). One process of the
    machine fills, the others wait on the lock and then find it complete.

    `mirror`: a store (the job's output location) that keeps complete copies under
    <target's name>/, marker last, so another node, or the node of a restarted attempt,
    downloads what an earlier one made instead of making it again. The mirror is a saving,
    never a cause of failure: when it cannot be read or written the folder is made here."""
    if is_complete(target):
        return target, False
    target.parent.mkdir(parents=True, exist_ok=True)
    with open(target.parent / f".{target.name}.lock", "w") as lock:
        fcntl.flock(lock, fcntl.LOCK_EX)  # the other local processes wait for this one
        if is_complete(target):
            return target, False
        partial = target.with_name(target.name + ".partial")
        shutil.rmtree(partial, ignore_errors=True)
        partial.mkdir(parents=True)
        try:
            filled = not (mirror is not None and _downloaded(mirror, target.name, partial))
            if filled:
                marker = fill(partial)
                if mirror is not None:
                    _upload(mirror, target.name, partial, marker)
                (partial / COMPLETE).write_text(marker + "\n")
        except BaseException:
            shutil.rmtree(partial, ignore_errors=True)  # nothing half-made is left behind
            raise
        shutil.rmtree(target, ignore_errors=True)
        partial.rename(target)
    return target, filled


def _downloaded(mirror: Store, name: str, partial: Path) -> bool:
    """Whether the mirror had a complete copy, now in `partial` (marker included)."""
    try:
        if mirror.stat(f"{name}/{COMPLETE}") is None:
            return False
        mirror.download_dir(name, partial)
    except StorageError as exc:
        log.warning("%s/%s: cannot download (%s); made here instead", mirror.uri, name, exc)
        shutil.rmtree(partial, ignore_errors=True)
        partial.mkdir(parents=True)
        return False
    if not is_complete(partial):  # the marker went between the stat and the download
        shutil.rmtree(partial, ignore_errors=True)
        partial.mkdir(parents=True)
        return False
    log.info("%s: downloaded from %s/%s", name, mirror.uri.rstrip("/"), name)
    return True


def _upload(mirror: Store, name: str, folder: Path, marker: str) -> None:
    """The folder's files, then its marker: a copy counts only once whole."""
    try:
        mirror.upload_dir(folder, name)
        mirror.write_bytes(f"{name}/{COMPLETE}", (marker + "\n").encode())
    except StorageError as exc:
        log.warning("%s/%s: cannot upload (%s); kept on this node only", mirror.uri, name, exc)
