"""Uploading what a manifest names on this machine, content-addressed, so a pod can read it.

    plan = plan_staging(local_locations(job, base), "s3://bucket/staging", hashes)
    report = Stager(s3_client).upload(plan, progress)
    manifest = rewrite(manifest, plan)

A file goes to `<staging>/blobs/<sha256>/<name>` (its name kept: the trainer reads the format
from the extension); a folder (a model, an adapter, harness tasks) to
`<staging>/trees/<digest>/...`, where the digest covers every file's path and content, and is
marked complete by `<staging>/trees/<digest>.staged`, written last. The same content always
lands at the same key, so re-submitting unchanged data uploads nothing, and a submit cut off
halfway never leaves a folder a later one would take for complete (its marker is missing;
the next submit uploads what is missing and writes it).

A JSON or JSON Lines data file whose rows name images beside it (`img/1.png`, the relative
paths the trainer resolves against the data file's folder) goes up as a tree of the file and
those images, paths kept, so the trainer finds them beside the uploaded file; its key covers
the images' content as well as the rows'. A referenced image missing here, or given as an
absolute path, is refused with the file and line, before anything is uploaded.
"""

from __future__ import annotations

import hashlib
import json
import os
import threading
from collections.abc import Callable, Iterable, Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from ftapi.locations import Location, read_locations
from ftapi.v1alpha1 import FineTuneJob

from .errors import StagingError
from .manifests import set_field
from .store import split_uri

MiB = 1024 * 1024
# Folders a model or data directory carries that are no part of it.
SKIPPED_DIRECTORIES = frozenset({".git", "__pycache__", ".cache", ".ipynb_checkpoints"})
MARKER_SUFFIX = ".staged"
PARALLEL_FILES = 8
# Where the trainer reads a row's image references: a content part's "image" (or, ending in
# an image suffix, its "url" or "path": also OpenAI's image_url.url) and the images column.
IMAGE_KEYS = frozenset({"image", "images"})
IMAGE_OR_FILE_KEYS = frozenset({"url", "path"})
IMAGE_SUFFIXES = (".png", ".jpg", ".jpeg", ".webp", ".gif", ".bmp", ".tif", ".tiff", ".mpo")
ROWS_WITH_IMAGES = (".jsonl", ".json")


@dataclass(frozen=True)
class LocalPath:
    """A manifest field that names a file or folder on this machine."""

    location: Location
    path: Path


@dataclass(frozen=True)
class StagedFile:
    source: Path
    key: str
    size: int


@dataclass(frozen=True)
class StagedPath:
    """Where one local path goes: its files' keys, and the URI the manifest gets instead."""

    local: LocalPath
    bucket: str
    uri: str
    files: tuple[StagedFile, ...]
    marker: str | None = None
    """A folder's completion marker (written after all its files)."""

    @property
    def size(self) -> int:
        return sum(f.size for f in self.files)


@dataclass
class StageReport:
    uploaded_files: int = 0
    uploaded_bytes: int = 0
    present_files: int = 0
    present_bytes: int = 0
    paths: list[StagedPath] = field(default_factory=list)


def split_s3_uri(uri: str) -> tuple[str, str]:
    """(bucket, prefix) of s3://bucket/prefix; the prefix without slashes at either end."""
    if not uri.startswith("s3://"):
        raise StagingError(f"the staging location {uri!r} is not an s3:// URI")
    bucket, prefix = split_uri(uri)
    if not bucket:
        raise StagingError(f"the staging location {uri!r} names no bucket")
    return bucket, prefix.strip("/")


def local_locations(job: FineTuneJob, base: Path) -> tuple[list[LocalPath], list[str]]:
    """The fields naming this machine's files (relative paths against `base`), and the
    problems: a path that does not exist where the field must be local. A model, tokenizer
    or adapter name is local when it exists as a path (a hub id `org/name` does not) or is
    written as one (./, ../, ~); data, harness tasks and reward files are local unless a URI."""
    from ftapi.v1alpha1.model import is_relative_path

    found: list[LocalPath] = []
    problems: list[str] = []
    for location in read_locations(job):
        value = location.value
        if "://" in value:
            continue
        path = (base / Path(value).expanduser()).resolve()
        if path.exists():
            found.append(LocalPath(location, path))
        elif location.kind != "model" or is_relative_path(value):
            problems.append(f"{location.field}: {value!r} does not exist on this machine")
    return found, problems


class HashCache:
    """sha256 of files, remembered by (path, size, mtime): re-submitting a 15 GB model does not
    read it again. Kept in one JSON file; a damaged one is ignored (everything is rehashed)."""

    def __init__(self, path: Path | None) -> None:
        self.path = path
        self.entries: dict[str, list[Any]] = {}
        self._lock = threading.Lock()
        if path is not None and path.is_file():
            try:
                loaded = json.loads(path.read_text())
                self.entries = loaded if isinstance(loaded, dict) else {}
            except (OSError, ValueError):
                self.entries = {}

    def sha256(self, path: Path) -> str:
        stat = path.stat()
        key = str(path)
        with self._lock:
            known = self.entries.get(key)
        if known and known[:2] == [stat.st_size, stat.st_mtime_ns]:
            return str(known[2])
        digest = hashlib.sha256()
        with open(path, "rb") as reader:
            while chunk := reader.read(8 * MiB):
                digest.update(chunk)
        with self._lock:
            self.entries[key] = [stat.st_size, stat.st_mtime_ns, digest.hexdigest()]
        return digest.hexdigest()

    def save(self) -> None:
        if self.path is None:
            return
        try:
            self.path.parent.mkdir(parents=True, exist_ok=True)
            temporary = self.path.with_suffix(".tmp")
            temporary.write_text(json.dumps(self.entries))
            os.replace(temporary, self.path)
        except OSError:
            pass  # a cache: losing it costs a rehash, nothing else


def folder_files(root: Path) -> list[Path]:
    """The files of a folder to upload, in a stable order, without SKIPPED_DIRECTORIES."""
    files = []
    for directory, subdirectories, names in os.walk(root, followlinks=True):
        subdirectories[:] = sorted(d for d in subdirectories if d not in SKIPPED_DIRECTORIES)
        files += [Path(directory) / name for name in sorted(names)]
    return files


def row_images(data_file: Path, columns: Iterable[str] = ()) -> tuple[list[Path], list[str]]:
    """The images a JSON or JSON Lines data file's rows name by a path beside it (where the
    trainer reads references: IMAGE_KEYS, IMAGE_OR_FILE_KEYS and the images column
    `columns`), and the problems: one that does not exist here, an absolute path, a path
    leaving the file's folder."""
    folder = data_file.parent
    keys = IMAGE_KEYS | set(columns)
    found: dict[Path, None] = {}
    problems: list[str] = []
    for line, row in _rows(data_file):
        for ref in _references(row, keys):
            if "://" in ref or ref.startswith("data:"):
                continue
            where = f"{data_file}:{line}: {ref!r}"
            path = Path(ref)
            if path.is_absolute():
                problems.append(f"{where}: an absolute path (make it relative to the data file)")
                continue
            resolved = (folder / path).resolve()
            if not resolved.is_relative_to(folder.resolve()):
                problems.append(f"{where}: leaves the data file's folder")
            elif not resolved.is_file():
                problems.append(f"{where}: does not exist on this machine")
            else:
                found[folder / path] = None
    return list(found), problems


def _rows(data_file: Path) -> Iterable[tuple[int, Any]]:
    """(line, row) of a JSON Lines file, or (1, the document) of a JSON file; what does not
    parse is skipped (the trainer reports it with its line)."""
    with data_file.open(encoding="utf-8", errors="replace") as lines:
        if data_file.suffix == ".json":
            try:
                yield 1, json.load(lines)
            except ValueError:
                return
            return
        for number, text in enumerate(lines, start=1):
            try:
                yield number, json.loads(text)
            except ValueError:
                continue


def _references(value: Any, keys: set[str] | frozenset[str]) -> Iterable[str]:
    """The strings under `keys` (and image-named ones under IMAGE_OR_FILE_KEYS), anywhere
    in a row."""
    if isinstance(value, dict):
        for key, item in value.items():
            if key in keys:
                named = [item] if isinstance(item, str) else item if isinstance(item, list) else []
                yield from (ref for ref in named if isinstance(ref, str))
            elif key in IMAGE_OR_FILE_KEYS and isinstance(item, str):
                if item.lower().endswith(IMAGE_SUFFIXES):
                    yield item
            else:
                yield from _references(item, keys)
    elif isinstance(value, list):
        for item in value:
            yield from _references(item, keys)


def plan_staging(
    locals_: Sequence[LocalPath],
    staging: str,
    hashes: HashCache,
    image_columns: Iterable[str] = (),
) -> list[StagedPath]:
    """Where each local path goes under `staging` (s3://bucket/prefix), by content.
    `image_columns`: the job's images column (dataset.columns.images), if it names one."""
    bucket, prefix = split_s3_uri(staging)
    root = f"{prefix}/" if prefix else ""
    planned = []
    for local in locals_:
        images: list[Path] = []
        if local.path.is_file() and local.path.suffix in ROWS_WITH_IMAGES:
            images, problems = row_images(local.path, image_columns)
            if problems:
                shown = "\n  ".join(problems[:10])
                more = f"\n  ... and {len(problems) - 10} more" if len(problems) > 10 else ""
                raise StagingError(
                    f"{local.location.field}: images its rows name cannot be uploaded:\n"
                    f"  {shown}{more}"
                )
        if images:  # the file and its images as one tree, paths kept
            members = [local.path, *images]
            top = local.path.parent
            planned.append(_tree(local, members, top, bucket, root, hashes, local.path.name))
            continue
        if local.path.is_file():
            digest = hashes.sha256(local.path)
            key = f"{root}blobs/{digest}/{local.path.name}"
            files: tuple[StagedFile, ...] = (
                StagedFile(local.path, key, local.path.stat().st_size),
            )
            planned.append(StagedPath(local, bucket, f"s3://{bucket}/{key}", files))
            continue
        members = folder_files(local.path)
        if not members:
            raise StagingError(f"{local.location.field}: the folder {local.path} is empty")
        planned.append(_tree(local, members, local.path, bucket, root, hashes))
    return planned


def _tree(
    local: LocalPath,
    members: list[Path],
    top: Path,
    bucket: str,
    root: str,
    hashes: HashCache,
    inside: str = "",
) -> StagedPath:
    """`members` (paths under `top`) as one tree keyed by their paths and content; the
    manifest points at the tree, or at the file `inside` it."""
    relative = [m.relative_to(top).as_posix() for m in members]
    shas = [hashes.sha256(m) for m in members]
    tree = hashlib.sha256(
        "".join(f"{name}\0{sha}\n" for name, sha in zip(relative, shas, strict=True)).encode()
    ).hexdigest()
    base = f"{root}trees/{tree}"
    files = tuple(
        StagedFile(m, f"{base}/{name}", m.stat().st_size)
        for m, name in zip(members, relative, strict=True)
    )
    uri = f"s3://{bucket}/{base}" + (f"/{inside}" if inside else "")
    return StagedPath(local, bucket, uri, files, marker=base + MARKER_SUFFIX)


def rewrite(manifest: dict[str, Any], staged: Iterable[StagedPath]) -> dict[str, Any]:
    """The manifest with every staged field pointing at its upload."""
    for item in staged:
        set_field(manifest, item.local.location.field, item.uri + item.local.location.suffix)
    return manifest


Progress = Callable[[int], None]


class Stager:
    """Uploads a plan with boto3: files in parallel, large ones in parallel multipart parts;
    what is already there (same key, same size) is counted and skipped."""

    def __init__(self, s3: Any, *, parallel: int = PARALLEL_FILES) -> None:
        self.s3 = s3
        self.parallel = parallel

    def _present(self, bucket: str, key: str, size: int | None = None) -> bool:
        from botocore.exceptions import ClientError

        try:
            head = self.s3.head_object(Bucket=bucket, Key=key)
        except ClientError as exc:
            if exc.response.get("Error", {}).get("Code") in ("404", "NoSuchKey", "NotFound"):
                return False
            raise
        return size is None or int(head.get("ContentLength", -1)) == size

    def missing(
        self, plan: Sequence[StagedPath]
    ) -> tuple[list[tuple[StagedPath, StagedFile]], StageReport]:
        """The files still to upload; the report counts the ones already there."""
        report = StageReport(paths=list(plan))
        todo: list[tuple[StagedPath, StagedFile]] = []
        for item in plan:
            if item.marker is not None and self._present(item.bucket, item.marker):
                report.present_files += len(item.files)
                report.present_bytes += item.size
                continue
            for staged in item.files:
                if self._present(item.bucket, staged.key, staged.size):
                    report.present_files += 1
                    report.present_bytes += staged.size
                else:
                    todo.append((item, staged))
        return todo, report

    def upload(self, plan: Sequence[StagedPath], progress: Progress | None = None) -> StageReport:
        from boto3.s3.transfer import TransferConfig

        todo, report = self.missing(plan)
        config = TransferConfig(
            multipart_threshold=64 * MiB, multipart_chunksize=64 * MiB, max_concurrency=8
        )

        def send(job: tuple[StagedPath, StagedFile]) -> None:
            item, staged = job
            self.s3.upload_file(
                str(staged.source), item.bucket, staged.key, Config=config, Callback=progress
            )

        with ThreadPoolExecutor(max_workers=self.parallel) as pool:
            for _ in pool.map(send, todo):
                pass
        report.uploaded_files = len(todo)
        report.uploaded_bytes = sum(staged.size for _, staged in todo)
        for item in plan:  # markers last: a folder is complete only once all of it is there
            if item.marker is not None and not self._present(item.bucket, item.marker):
                self.s3.put_object(Bucket=item.bucket, Key=item.marker, Body=b"")
        return report
