"""Models, tokenizers and adapters named by s3://bucket/prefix or oci://registry/repository,
fetched before loading.

transformers and PEFT load local directories and hub ids only, so an s3:// or oci:// source is
downloaded once per machine into the cache (XDG_CACHE_HOME/finetune/models: the pod's
/workspace volume), with the output's S3 settings (endpoint, region, credentials) or
model.registry's. Every process of a node asks; one downloads while the others wait on a
file lock, and a directory only counts once it holds its completion marker: a download that
died half-way is started again, never loaded. An oci:// tag is resolved to its digest first,
and the copy is kept by digest: a tag pushed again is fetched again.
"""

from __future__ import annotations

import logging
from collections.abc import Callable
from pathlib import Path

from ftapi.constants import ENV_OCI_PULL_CA, ENV_OCI_PULL_SECRET
from ftapi.v1alpha1 import FineTuneJobSpec, S3Spec
from ftapi.v1alpha1.registry import RegistryAccess
from fttrainer import node_cache
from fttrainer.node_cache import COMPLETE, cached_folder, folder_for
from fttrainer.storage import open_store

log = logging.getLogger(__name__)


def cache_root() -> Path:
    return node_cache.cache_root("models")


def fetch(uri: str, *, s3: S3Spec | None, root: Path, field: str) -> Path:
    """The local copy of the s3:// folder `uri` (downloaded unless already complete)."""

    def download(partial: Path) -> str:
        if not open_store(uri, s3=s3).download_dir("", partial):
            raise ValueError(f"spec.{field}: {uri}: no objects under that prefix")
        return uri

    return _cached(uri, uri, root=root, field=field, download=download)


def fetch_image(uri: str, *, registry: RegistryAccess | None, root: Path, field: str) -> Path:
    """The local copy of the oci:// image `uri`'s models/ folder (fttrainer.publishing.oci), kept by
    the digest its tag resolves to now."""
    from fttrainer.publishing.oci import OciError, connect, parse_reference, pull_model

    try:
        client = connect(
            uri,
            secret_env=ENV_OCI_PULL_SECRET,
            ca_env=ENV_OCI_PULL_CA,
            plain_http=registry is not None and registry.plain_http,
        )
        try:
            reference = parse_reference(uri)
            digest = (
                reference.digest or client.get_manifest(reference.repository, reference.target)[1]
            )
            pinned = f"oci://{reference.registry}/{reference.repository}@{digest}"

            def download(partial: Path) -> str:
                pull_model(pinned, partial, client)
                if not any(partial.rglob("*")):
                    raise ValueError(f"spec.{field}: {uri}: the image has no files under models/")
                return f"{uri}\n{digest}"

            return _cached(uri, pinned, root=root, field=field, download=download)
        finally:
            client.close()
    except OciError as exc:
        if not exc.permanent:
            raise  # the registry unreachable: the attempt fails and a restart tries again
        raise ValueError(f"spec.{field}: {exc}") from None  # refused, missing: bad input


def pulled_digest(folder: Path) -> str | None:
    """The image digest an oci:// source's local copy came from (its marker's second line)."""
    marker = folder / COMPLETE
    lines = marker.read_text().splitlines() if marker.is_file() else []
    return lines[1] if len(lines) > 1 else None


def _cached(uri: str, key: str, *, root: Path, field: str, download: Callable[[Path], str]) -> Path:
    """`root`/<name>-<hash of key>, filled by `download` (which returns the marker's text)
    unless a complete copy is there; one process of the machine downloads, the rest wait."""
    name = uri.split("@")[0].rstrip("/").rsplit("/", 1)[-1].replace(":", "-") or "model"
    target, filled = cached_folder(folder_for(root, name, key), download)
    if filled:
        files = sum(1 for p in target.rglob("*") if p.is_file()) - 1
        log.info("%s: %s -> %s (%d files)", field, uri, target, files)
    return target


def localized(spec: FineTuneJobSpec, root: Path | None = None) -> FineTuneJobSpec:
    """`spec` with every s3:// and oci:// model, tokenizer and adapter replaced by its local
    copy."""
    root = root or cache_root()
    s3 = spec.output.s3

    def local(uri: str | None, field: str) -> str | None:
        if uri is not None and uri.startswith("s3://"):
            return str(fetch(uri, s3=s3, root=root, field=field))
        if uri is not None and uri.startswith("oci://"):
            return str(fetch_image(uri, registry=spec.model.registry, root=root, field=field))
        return uri

    model = spec.model.model_copy(
        update={
            "name": local(spec.model.name, "model.name"),
            "tokenizer": local(spec.model.tokenizer, "model.tokenizer"),
        }
    )
    update: dict[str, object] = {"model": model}
    adapter = spec.method.adapter
    if adapter is not None and adapter.uri.startswith(("s3://", "oci://")):
        update["method"] = spec.method.model_copy(
            update={
                "adapter": adapter.model_copy(
                    update={"uri": local(adapter.uri, "method.adapter.uri")}
                )
            }
        )
    return spec.model_copy(update=update)
