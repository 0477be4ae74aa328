"""Where outputs go: a local directory or s3://bucket/prefix, behind one small interface.

    store = open_store("s3://models/run-1", s3=spec.output.s3)
    files = store.upload_dir(Path("out/checkpoint-500"), "checkpoint-500", checksum=True)
    store.write_bytes("checkpoint-500/manifest.json", manifest)  # small, atomic, written last
    store.list("checkpoint-")                                    # [ObjectInfo(key, size), ...]
    store.delete([o.key for o in store.list("checkpoint-100/")])  # batched

Both stores make every object appear whole or not at all: S3 shows a multipart upload only
once it is completed (a failed one is aborted, never completed), and the local store writes
a temporary file, fsyncs it and renames it into place. That is what a checkpoint protocol
needs to be able to write its manifest last and trust it.

S3 credentials come from boto3's standard chain (AWS_* variables, which is how a
`credentialsSecretRef` reaches the trainer; the pod's web identity; a profile) and never
appear in messages or logs: errors are explained in our own words from the error code.

Uploads: one bounded pool of request threads per call, shared by the parts of large files
(multipart) and by whole small files, fed in order by the calling thread, which reads each
file once (hashing it with SHA-256 on the way when asked). Failures are retried twice over:
botocore's "standard" mode absorbs short blips, and around it every request is retried with
exponential backoff and jitter for as long as `retry_deadline` while the endpoint keeps
failing, so a multipart upload survives a store outage of minutes by re-sending only the
parts that failed, under the same upload id. An endpoint that has never answered in this
process gets only `unreachable_deadline`: a wrong endpoint fails fast.

The package: base.py (the Store interface, ObjectInfo, errors, shared sizes), local.py
(LocalStore), s3.py (S3Store, its uploads, retries and error explanations, s3_client) and
paths.py (what both share); open_store() picks one for a URI.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

from ftapi.v1alpha1 import S3Spec
from fttrainer.storage.base import (
    MAX_CONCURRENCY,
    PART_SIZE,
    NotFoundError,
    ObjectInfo,
    StorageError,
    Store,
)
from fttrainer.storage.local import LocalStore
from fttrainer.storage.paths import contained, upload_tree
from fttrainer.storage.s3 import S3Store, _explain, s3_client

__all__ = [
    "MAX_CONCURRENCY",
    "PART_SIZE",
    "LocalStore",
    "NotFoundError",
    "ObjectInfo",
    "S3Store",
    "StorageError",
    "Store",
    "_explain",
    "contained",
    "open_store",
    "s3_client",
    "upload_tree",
]


def open_store(uri: str, *, s3: S3Spec | None = None, client: Any = None) -> Store:
    """The store for an output URI: s3://bucket[/prefix] or a local directory."""
    if uri.startswith("s3://"):
        bucket, _, prefix = uri.removeprefix("s3://").partition("/")
        if not bucket:
            raise StorageError(f"{uri}: no bucket in the URI")
        return S3Store(bucket, prefix.strip("/"), client or s3_client(s3))
    if "://" in uri:
        raise StorageError(f"{uri}: unsupported output URI (use s3:// or a local path)")
    return LocalStore(Path(uri))
