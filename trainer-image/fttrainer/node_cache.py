"""Folders made once per machine and shared by every process on it: downloaded models
(model/sources.py) and prepared data (data/prepared.py).

They live under XDG_CACHE_HOME/finetune (the pod's /workspace volume). Every process of a
node asks for the same folder; the first takes a file lock and fills it while the others
wait on the lock, and a folder only counts once it holds its completion marker, written
last: a fill that died half-way is started again, never read.
"""

from __future__ import annotations

import fcntl
import hashlib
import os
import shutil
from collections.abc import Callable
from pathlib import Path

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


def cached_folder(target: Path, fill: Callable[[Path], str]) -> tuple[Path, bool]:
    """`target`, filled by `fill(partial folder)` (which returns the marker's text) unless
    a complete copy is there; (target, whether this process filled it). One process of the
    machine fills, the others wait on the lock and then find it complete."""
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
            marker = fill(partial)
        except BaseException:
            shutil.rmtree(partial, ignore_errors=True)  # nothing half-made is left behind
            raise
        (partial / COMPLETE).write_text(marker + "\n")
        shutil.rmtree(target, ignore_errors=True)
        partial.rename(target)
    return target, True
