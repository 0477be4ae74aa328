"""Load → convert → check → clean → split, streamed into the job's prepared samples
(data/prepared.py), and the report of them.

    prepared = prepare_data(spec)           # raises DataError listing every bad row
    prepared.report.render()                # what `finetune validate` prints
    prepared.train                          # the samples, read from the mapped Arrow

Rows are read, converted and checked a batch at a time and written as they pass; the checks
keep their findings (origins) and a 16-byte hash per sample for deduplication, and the split
an 8-byte position per training sample: what memory holds besides one batch. The result is
kept on the node under a key of everything that decides it (the files' digests, the dataset
settings), so `finetune validate`, every rank and a restarted attempt share one preparation.
"""

from __future__ import annotations

import atexit
import json
import logging
import random
import shutil
import time
import uuid
from array import array
from collections.abc import Callable
from itertools import islice
from pathlib import Path
from typing import Any, TypeVar

from ftapi.v1alpha1 import DataSource, FineTuneJobSpec
from fttrainer.node_cache import cache_root, cached_folder, folder_for
from fttrainer.storage import Store
from fttrainer.storage.paths import sha256_file

from .cleaning import Inspector
from .formats import (
    FormatContext,
    RowError,
    convert_row,
    sample_tools,
    tool_call_names,
    trained_call_names,
)
from .images import PLACEHOLDER, ImageKeeper
from .prepared import (
    BATCH,
    FORMAT_VERSION,
    IMAGES,
    PARTS,
    DataReport,
    PreparedData,
    read_arrow,
    samples_schema,
    stream_arrow,
    stream_taken,
    write_arrow,
)
from .sources import DataSourceError, Problem, Row, opened_source

log = logging.getLogger(__name__)
MAX_LISTED = 20  # origins shown per finding in the report
T = TypeVar("T")

__all__ = ["DataError", "DataReport", "PreparedData", "prepare_data", "split_samples"]


class DataError(RuntimeError):
    """The data cannot be used as declared; `problems` says where (file:line) and why."""

    def __init__(self, problems: list[Problem], report: DataReport | None = None) -> None:
        self.problems = problems
        self.report = report
        shown = "\n".join(f"  {p}" for p in problems[:MAX_LISTED])
        more = (
            f"\n  ... and {len(problems) - MAX_LISTED} more" if len(problems) > MAX_LISTED else ""
        )
        super().__init__(f"{len(problems)} bad row(s) in the data:\n{shown}{more}")


def prepare_data(
    spec: FineTuneJobSpec,
    *,
    s3_client: Any = None,
    root: Path | None = None,
    mirror: Store | None = None,
) -> PreparedData:
    """The job's prepared samples: found on this node (or in `mirror`, the job's output
    store), or made now (one process of the node makes them, the others wait). `root`: where
    prepared data is kept (the node cache)."""
    dataset = spec.dataset
    sources = [
        (part, source)
        for part, source in zip(
            PARTS, (dataset.train, dataset.validation, dataset.test), strict=True
        )
        if source is not None
    ]
    if s3_client is None and any(s.uri.startswith("s3://") for _, s in sources):
        s3_client = _s3_client_of(spec)
    started = time.monotonic()
    identity = data_identity(spec, sources, s3_client)
    key = identity if identity is not None else f"unidentified {uuid.uuid4()}"
    target = folder_for(root or cache_root("data"), "samples", key)

    def fill(partial: Path) -> str:
        _prepare(spec, sources, s3_client, partial)
        return key

    folder, filled = cached_folder(target, fill, mirror=mirror if identity is not None else None)
    if identity is None:  # nothing could find it again: removed when this process ends
        atexit.register(shutil.rmtree, folder, ignore_errors=True)
    data = PreparedData.open(folder, reused=not filled, pinned=identity is not None)
    verb = "prepared" if filled else "reused"
    log.info("data: %s %s in %.1f s", verb, folder, time.monotonic() - started)
    return data


def _s3_client_of(spec: FineTuneJobSpec) -> Any:
    """The job's S3 client (output.s3's endpoint and credentials), for s3:// data."""
    from fttrainer.storage import s3_client

    return s3_client(spec.output.s3)


def refuse_images(prepared: PreparedData, uri: str, model: str) -> None:
    """Images in the rows of a run whose model reads text only: refused before the model
    loads (read as text, every image would become the characters `<image>`)."""
    images = prepared.report.images
    if images is not None:
        why = (
            f"the rows carry {images.count} image(s), and the model {model!r} reads text only "
            f"(its config has no vision_config): each would be read as the text {PLACEHOLDER!r}"
        )
        raise DataError([Problem(uri, why)], prepared.report)


def data_identity(
    spec: FineTuneJobSpec, sources: list[tuple[str, DataSource]], s3_client: Any
) -> str | None:
    """What decides the prepared samples, as text: the dataset settings, the split, what the
    rewards read, and each file's content (a local file's sha256, an S3 object's ETag and
    size); None when a source cannot be pinned (hf://, an S3 object that cannot be asked):
    such data is prepared every time."""
    lines = [
        f"format {FORMAT_VERSION}",
        spec.dataset.model_dump_json(),
        spec.effective_split().model_dump_json(),
        json.dumps(_required_columns(spec)),
        f"trainer {spec.trainer.type} digests {spec.output.oci is not None}",
    ]
    for part, source in sources:
        pinned = _source_identity(source.uri, s3_client)
        if pinned is None:
            return None
        lines.append(f"{part} {source.uri} {source.split} {pinned}")
    return "\n".join(lines)


def _source_identity(uri: str, s3_client: Any) -> str | None:
    if uri.startswith("hf://"):
        return None
    if uri.startswith("s3://"):
        bucket, _, key = uri.removeprefix("s3://").partition("/")
        try:
            head = s3_client.head_object(Bucket=bucket, Key=key)
        except Exception:  # the download says what is wrong, with its retries
            return None
        return f"etag {head.get('ETag')} size {head.get('ContentLength')}"
    path = Path(uri)
    return f"sha256 {sha256_file(path)}" if path.is_file() else None


def _required_columns(spec: FineTuneJobSpec) -> tuple[tuple[str, str], ...]:
    """prompt_only columns the GRPO rewards read, with what reads them (for the message)."""
    grpo = spec.trainer.grpo if spec.trainer.type == "grpo" else None
    return tuple(
        (reward.column, f"the {reward.name or reward.type} reward")
        for reward in (grpo.rewards if grpo else [])
        if reward.column
    )


def _prepare(
    spec: FineTuneJobSpec, sources: list[tuple[str, DataSource]], s3_client: Any, folder: Path
) -> None:
    """Scan every source into scan.arrow (converted, checked), then write the parts."""
    import numpy as np

    dataset = spec.dataset
    context = FormatContext.from_spec(dataset, _required_columns(spec))
    inspector = Inspector(scan_pii=dataset.cleaning.pii != "off")
    keeper = ImageKeeper(folder / IMAGES, lambda: s3_client or _s3_client_of(spec))
    report = DataReport()
    problems: list[Problem] = []
    spans: dict[str, tuple[int, int]] = {}  # part -> its source's samples in the scan
    scan_path = folder / "scan.arrow"
    written = 0

    def batches(source: DataSource, unread: list[Problem], unconverted: list[Problem]) -> Any:
        nonlocal written
        rows = 0
        with opened_source(source.uri, split=source.split, s3_client=s3_client) as (items, local):
            while chunk := list(islice(items, BATCH)):
                rows += len(chunk)
                batch = _converted(
                    chunk,
                    dataset.format,
                    context,
                    inspector,
                    unread,
                    unconverted,
                    lambda refs: keeper.digests(refs, source.uri),
                )
                written += len(batch["sample"])
                yield batch
            digest = "sha256:" + sha256_file(local) if spec.output.oci and local else None
        report.sources[source.uri] = rows
        report.digests[source.uri] = digest

    def scanned() -> Any:
        for part, source in sources:
            start = written
            unread: list[Problem] = []  # lines that do not parse, then rows that do not convert
            unconverted: list[Problem] = []
            try:
                yield from batches(source, unread, unconverted)
                problems.extend(unread + unconverted)
            except DataSourceError as exc:  # the source as a whole: its rows are not listed
                problems.append(Problem(source.uri, str(exc).removeprefix(f"{source.uri}: ")))
            spans[part] = (start, written)

    report.samples = write_arrow(scan_path, samples_schema(), scanned())
    report.findings = inspector.findings
    report.images = keeper.counts if keeper.counts.count else None
    duplicates = stream_taken(scan_path, inspector.duplicate_positions())
    report.findings.duplicates = [o for batch in duplicates for o in batch["origin"].to_pylist()]
    if problems:
        raise DataError(problems, report)
    if dataset.cleaning.pii == "fail" and report.findings.pii:
        located = [
            Problem(o, f"contains {kind}") for kind, os in report.findings.pii.items() for o in os
        ]
        raise DataError(located, report)
    kept = _kept(scan_path, _drop_set(report, spec), report.samples)
    in_train = np.flatnonzero(kept[slice(*spans["train"])]) + spans["train"][0]
    train, validation, test = split_positions(len(in_train), spec)
    rows = {
        "train": in_train[train],
        "validation": in_train[validation],
        "test": in_train[test],
    }
    for part in ("validation", "test"):
        if part in spans:
            declared = np.flatnonzero(kept[slice(*spans[part])]) + spans[part][0]
            rows[part] = np.concatenate([rows[part], declared])
    if not len(rows["train"]):
        raise DataError([Problem(dataset.train.uri, "no training samples left")], report)
    for part, positions in rows.items():
        _write_part(scan_path, positions, folder / f"{part}.arrow")
    scan_path.unlink()
    report.splits = {part: len(positions) for part, positions in rows.items()}
    (folder / "report.json").write_text(report.to_json())


def _converted(
    chunk: list[Row | Problem],
    fmt: str,
    context: FormatContext,
    inspector: Inspector,
    unread: list[Problem],
    unconverted: list[Problem],
    kept_images: Callable[[list[str]], tuple[list[str], list[str]]],
) -> dict[str, list[Any]]:
    """A chunk of rows as converted samples (columns of samples_schema), each checked, its
    images read, checked and kept (`kept_images`: references -> digests, problems); a row
    that does not convert, or holds a bad image, is a problem at its file and line."""
    columns: dict[str, list[Any]] = {name: [] for name in samples_schema().names}
    for item in chunk:
        if isinstance(item, Problem):
            unread.append(item)
            continue
        try:
            samples = convert_row(fmt, item.data, context)
        except RowError as exc:
            unconverted.append(Problem(item.origin, str(exc)))
            continue
        bad = [
            p
            for sample in samples
            if "images" in sample
            for p in _with_digests(sample, kept_images)
        ]
        if bad:
            unconverted.extend(Problem(item.origin, problem) for problem in bad)
            continue
        for sample in samples:
            inspector.add(sample, item.origin)
            # default=str: what JSON has no type for (parquet timestamps) becomes text.
            columns["sample"].append(json.dumps(sample, ensure_ascii=False, default=str))
            columns["origin"].append(item.origin)
            columns["tools"].append(sample_tools(sample) is not None)
            columns["calls"].append(bool(tool_call_names(sample)))
            columns["trained_calls"].append(bool(trained_call_names(sample)))
    return columns


def _with_digests(
    sample: dict[str, Any], kept_images: Callable[[list[str]], tuple[list[str], list[str]]]
) -> list[str]:
    """The sample's image references replaced by the digests they are kept under; the
    problems of those that are no usable image."""
    digests, problems = kept_images(sample["images"])
    sample["images"] = digests
    return problems


def _kept(scan_path: Path, drop: set[str], samples: int) -> Any:
    """Per scanned sample: not dropped (cleaning drops by origin, as the report lists)."""
    import numpy as np
    import pyarrow as pa
    import pyarrow.compute as pc

    if not drop:
        return np.ones(samples, dtype=bool)
    value_set = pa.array(sorted(drop), pa.string())
    dropped = [
        pc.is_in(batch.column("origin"), value_set=value_set).to_numpy(zero_copy_only=False)
        for batch in stream_arrow(scan_path)
    ]
    return ~np.concatenate(dropped).astype(bool)


def _write_part(scan_path: Path, positions: Any, path: Path) -> None:
    """The scan's rows at `positions`, in that order, written to `path`. A part in
    shuffled order (validation, test) is written in the scan's order first, then reordered
    from that file, mapped: only the part's own pages are read."""
    import numpy as np

    order = np.argsort(positions, kind="stable")
    if np.array_equal(order, np.arange(len(positions))):
        write_arrow(path, samples_schema(), stream_taken(scan_path, positions))
        return
    in_scan_order = path.with_suffix(".unordered")
    write_arrow(in_scan_order, samples_schema(), stream_taken(scan_path, positions[order]))
    ranks = np.empty_like(order)
    ranks[order] = np.arange(len(order))  # where each wanted row is in scan order
    table = read_arrow(in_scan_order)
    write_arrow(
        path,
        samples_schema(),
        (
            b
            for i in range(0, len(ranks), BATCH)
            for b in table.take(ranks[i : i + BATCH]).to_batches()
        ),
    )
    del table
    in_scan_order.unlink()


def split_positions(n: int, spec: FineTuneJobSpec) -> tuple[Any, Any, Any]:
    """Deterministic split of n samples by ratio and seed, as positions (train in order,
    validation and test in shuffled order): the same rows land in the same part each run.
    The shuffle is `random.Random(seed).shuffle`'s, on 8-byte integers, not a list of
    Python ints."""
    import numpy as np

    split = spec.effective_split()
    order = array("q", range(n))
    randbelow = random.Random(split.seed)._randbelow  # type: ignore[attr-defined]  # shuffle's own
    for i in reversed(range(1, n)):
        j = randbelow(i + 1)
        order[i], order[j] = order[j], order[i]
    n_validation = round(n * split.validation)
    n_test = round(n * split.test)
    if split.validation > 0 and n_validation == 0 and n > 1:
        n_validation = 1
    shuffled = np.frombuffer(order, dtype=np.int64)
    validation = shuffled[:n_validation]
    test = shuffled[n_validation : n_validation + n_test]
    train = np.sort(shuffled[n_validation + n_test :])
    return train, validation, test


def split_samples(samples: list[T], spec: FineTuneJobSpec) -> tuple[list[T], list[T], list[T]]:
    """`split_positions` applied to a list."""
    return tuple(  # type: ignore[return-value]
        [samples[int(i)] for i in positions] for positions in split_positions(len(samples), spec)
    )


def _drop_set(report: DataReport, spec: FineTuneJobSpec) -> set[str]:
    cleaning = spec.dataset.cleaning
    findings = report.findings
    drop: set[str] = set()
    for reason, wanted, origins in (
        ("duplicate", cleaning.deduplicate, findings.duplicates),
        ("empty response", cleaning.drop_empty, findings.empty),
        ("PII", cleaning.pii == "drop", [o for os in findings.pii.values() for o in os]),
    ):
        if wanted and origins:
            report.dropped[reason] = len(set(origins) - drop)
            drop.update(origins)
    return drop
