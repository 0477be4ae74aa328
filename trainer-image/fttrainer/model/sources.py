"""Models, tokenizers and adapters named by s3://bucket/prefix, fetched before loading.

transformers and PEFT load local directories and hub ids only, so an s3:// source is
downloaded once per machine into the cache (XDG_CACHE_HOME/finetune/models: the pod's
/workspace volume), with the output's S3 settings (endpoint, region, credentials). Every
process of a node asks; one downloads while the others wait on a file lock, and a directory
only counts once it holds its completion marker: a download that died half-way is started
again, never loaded.
"""

from __future__ import annotations

import fcntl
import hashlib
import logging
import os
import shutil
from pathlib import Path

from ftapi.v1alpha1 import FineTuneJobSpec, S3Spec
from fttrainer.storage import open_store

log = logging.getLogger(__name__)
COMPLETE = ".finetune-complete"


def cache_root() -> Path:
    base = os.environ.get("XDG_CACHE_HOME") or str(Path.home() / ".cache")
    return Path(base) / "finetune" / "models"


def fetch(uri: str, *, s3: S3Spec | None, root: Path, field: str) -> Path:
    """The local copy of the s3:// folder `uri` (downloaded unless already complete)."""
    name = uri.rstrip("/").rsplit("/", 1)[-1] or "model"
    target = root / f"{name}-{hashlib.sha256(uri.encode()).hexdigest()[:12]}"
    if (target / COMPLETE).is_file():
        return target
    root.mkdir(parents=True, exist_ok=True)
    with open(root / f".{target.name}.lock", "w") as lock:
        fcntl.flock(lock, fcntl.LOCK_EX)  # the other local processes wait for this one
        if (target / COMPLETE).is_file():
            return target
        partial = target.with_name(target.name + ".partial")
        shutil.rmtree(partial, ignore_errors=True)
        files = open_store(uri, s3=s3).download_dir("", partial)
        if not files:
            raise ValueError(f"spec.{field}: {uri}: no objects under that prefix")
        (partial / COMPLETE).write_text(uri + "\n")
        shutil.rmtree(target, ignore_errors=True)
        partial.rename(target)
        log.info("%s: %s -> %s (%d files)", field, uri, target, len(files))
    return target


def localized(spec: FineTuneJobSpec, root: Path | None = None) -> FineTuneJobSpec:
    """`spec` with every s3:// model, tokenizer and adapter replaced by its local copy."""
    root = root or cache_root()
    s3 = spec.output.s3

    def local(uri: str | None, field: str) -> str | None:
        if uri is None or not uri.startswith("s3://"):
            return uri
        return str(fetch(uri, s3=s3, root=root, field=field))

    model = spec.model.model_copy(update={
        "name": local(spec.model.name, "model.name"),
        "tokenizer": local(spec.model.tokenizer, "model.tokenizer"),
    })  # fmt: skip
    update: dict[str, object] = {"model": model}
    adapter = spec.method.adapter
    if adapter is not None and adapter.uri.startswith("s3://"):
        update["method"] = spec.method.model_copy(update={
            "adapter": adapter.model_copy(update={"uri": local(adapter.uri, "method.adapter.uri")})
        })  # fmt: skip
    return spec.model_copy(update=update)
