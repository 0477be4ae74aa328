"""Reading raw rows from local files, s3:// objects and hf:// datasets.

Every row remembers where it came from (`file.jsonl:12`), so a bad row is reported with its
file and line instead of a stack trace. Unparseable lines do not stop the read: they are
collected as `Problem`s and the caller decides (the data report lists them all).
"""

from __future__ import annotations

import csv
import json
import tempfile
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from ftapi.redaction import redact

SUFFIXES = (".jsonl", ".json", ".csv", ".parquet", ".txt")
# Bounds on what one file may make the trainer hold: a field far larger than any sample
# (the csv module's own default, 128 KiB, refuses long documents), nesting deeper than any
# chat (deeper JSON crashes recursive code later: RecursionError), and a parquet file's
# uncompressed size (a few compressed MB can expand to many GB).
MAX_FIELD_BYTES = 64 * 2**20
MAX_DEPTH = 64
MAX_PARQUET_BYTES = 8 * 2**30
BOM = "\ufeff"


class DataSourceError(RuntimeError):
    """The source as a whole cannot be read (missing file, unknown type, unreachable hub)."""


class DuplicateKeyError(ValueError):
    """A JSON object gives one key twice: json keeps the last value, losing the other."""


def unique_keys(pairs: list[tuple[str, Any]]) -> dict[str, Any]:
    """json's object_pairs_hook that refuses a key given twice."""
    result: dict[str, Any] = {}
    for key, value in pairs:
        if key in result:
            raise DuplicateKeyError(f"the key {key!r} is given twice")
        result[key] = value
    return result


@dataclass(frozen=True)
class Row:
    data: dict[str, Any]
    origin: str  # "path:line" (or "path:row N" for columnar files)


@dataclass(frozen=True)
class Problem:
    origin: str
    message: str

    def __str__(self) -> str:
        return f"{self.origin}: {self.message}"


@dataclass
class RawData:
    rows: list[Row]
    problems: list[Problem]


def read_source(uri: str, *, split: str | None = None, s3_client: Any = None) -> RawData:
    """All rows of one source; `s3_client` is a boto3 client for s3:// URIs."""
    if uri.startswith("hf://"):
        return _read_hub(uri.removeprefix("hf://"), split or "train")
    if uri.startswith("s3://"):
        return _read_s3(uri, s3_client)
    return read_file(Path(uri), label=uri)


def read_file(path: Path, *, label: str | None = None) -> RawData:
    label = label or str(path)
    suffix = path.suffix.lower()
    if suffix not in SUFFIXES:
        raise DataSourceError(f"{label}: unsupported file type {suffix!r} (use {SUFFIXES})")
    if not path.is_file():
        raise DataSourceError(f"{label}: no such file")
    readers = {
        ".jsonl": _read_jsonl,
        ".json": _read_json,
        ".csv": _read_csv,
        ".parquet": _read_parquet,
        ".txt": _read_txt,
    }
    rows: list[Row] = []
    problems: list[Problem] = []
    for item in readers[suffix](path, label):
        if isinstance(item, Row):
            rows.append(item)
        else:
            problems.append(item)
    return RawData(rows, problems)


def _read_jsonl(path: Path, label: str) -> Iterator[Row | Problem]:
    with path.open("rb") as handle:
        for number, raw in enumerate(handle, start=1):
            origin = f"{label}:{number}"
            try:
                line = raw.decode("utf-8")
            except UnicodeDecodeError as exc:
                yield Problem(origin, f"not UTF-8 ({exc.reason} at byte {exc.start})")
                continue
            if number == 1:
                line = line.removeprefix(BOM)  # editors on Windows write one
            if not line.strip():
                continue
            try:
                value = json.loads(line, object_pairs_hook=unique_keys)
            except json.JSONDecodeError as exc:
                yield Problem(origin, f"invalid JSON: {exc.msg} (column {exc.colno})")
                continue
            except DuplicateKeyError as exc:
                yield Problem(origin, str(exc))
                continue
            except RecursionError:
                yield Problem(origin, f"JSON nested more than {MAX_DEPTH} levels deep")
                continue
            if not isinstance(value, dict):
                yield Problem(origin, f"expected a JSON object, got {type(value).__name__}")
                continue
            if too_deep(value):
                yield Problem(origin, f"JSON nested more than {MAX_DEPTH} levels deep")
                continue
            yield Row(value, origin)


def too_deep(value: Any, limit: int = MAX_DEPTH) -> bool:
    """Whether containers nest deeper than `limit` (checked without recursion)."""
    stack: list[tuple[Any, int]] = [(value, 1)]
    while stack:
        item, depth = stack.pop()
        if isinstance(item, dict):
            children: Any = item.values()
        elif isinstance(item, list):
            children = item
        else:
            continue
        if depth > limit:
            return True
        stack.extend((child, depth + 1) for child in children)
    return False


def _read_json(path: Path, label: str) -> Iterator[Row | Problem]:
    try:
        value = json.loads(path.read_text(encoding="utf-8-sig"), object_pairs_hook=unique_keys)
    except DuplicateKeyError as exc:
        raise DataSourceError(f"{label}: {exc}") from None
    except UnicodeDecodeError as exc:
        raise _not_utf8(path, label, exc) from None
    except json.JSONDecodeError as exc:
        raise DataSourceError(f"{label}:{exc.lineno}: not valid JSON: {exc}") from None
    except RecursionError:
        raise DataSourceError(f"{label}: JSON nested too deeply") from None
    if isinstance(value, dict) and isinstance(value.get("data"), list):
        value = value["data"]
    if not isinstance(value, list):
        raise DataSourceError(f"{label}: expected a list of objects (or {{'data': [...]}})")
    for index, item in enumerate(value):
        origin = f"{label}:item {index}"
        if isinstance(item, dict) and too_deep(item):
            yield Problem(origin, f"JSON nested more than {MAX_DEPTH} levels deep")
        elif isinstance(item, dict):
            yield Row(item, origin)
        else:
            yield Problem(origin, f"expected an object, got {type(item).__name__}")


def _read_csv(path: Path, label: str) -> Iterator[Row | Problem]:
    csv.field_size_limit(MAX_FIELD_BYTES)
    try:
        # utf-8-sig: a byte-order mark (Excel writes one) is not part of the first header.
        with path.open(newline="", encoding="utf-8-sig") as handle:
            reader = csv.DictReader(handle)
            header = reader.fieldnames or []
            twice = sorted({name for name in header if name and header.count(name) > 1})
            if twice:
                raise DataSourceError(
                    f"{label}:1: the header names {', '.join(map(repr, twice))} more than once "
                    "(one of the columns would be lost)"
                )
            records = iter(reader)
            while True:
                try:
                    record = next(records)
                except StopIteration:
                    break
                except csv.Error as exc:  # a field over the limit, a NUL byte, ...
                    # line_num counts the lines of complete records: the bad one is next.
                    raise DataSourceError(f"{label}:{reader.line_num + 1}: {exc}") from None
                origin = f"{label}:{reader.line_num}"
                if None in record:
                    yield Problem(origin, "more fields than the header has")
                    continue
                yield Row(dict(record), origin)
    except UnicodeDecodeError as exc:
        raise _not_utf8(path, label, exc) from None


def _not_utf8(path: Path, label: str, error: UnicodeDecodeError) -> DataSourceError:
    """A whole-file decoding error, located at its line: the decoder sees chunks, not lines
    (a newline byte never occurs inside a UTF-8 character, so lines decode on their own)."""
    with path.open("rb") as handle:
        for number, raw in enumerate(handle, start=1):
            try:
                raw.decode("utf-8")
            except UnicodeDecodeError as exc:
                return DataSourceError(
                    f"{label}:{number}: not UTF-8 ({exc.reason} at byte {exc.start} of the "
                    "line): save the file as UTF-8"
                )
    return DataSourceError(f"{label}: not UTF-8 ({error.reason})")


def _read_parquet(path: Path, label: str) -> Iterator[Row | Problem]:
    import pyarrow as pa
    import pyarrow.parquet as pq

    try:
        parquet = pq.ParquetFile(path)
    except (pa.ArrowException, OSError) as exc:
        raise DataSourceError(f"{label}: not a readable parquet file ({exc})") from None
    metadata = parquet.metadata
    expanded = 0
    for group in range(metadata.num_row_groups):
        expanded += metadata.row_group(group).total_byte_size
        if expanded > MAX_PARQUET_BYTES:
            raise DataSourceError(
                f"{label}:row group {group}: the file expands to more than "
                f"{MAX_PARQUET_BYTES / 2**30:g} GiB uncompressed; split it into several files"
            )
    # Decoded in batches, counting what they hold: dictionary-encoded columns look small in
    # the metadata and expand only when decoded.
    starts = [0]
    for group in range(metadata.num_row_groups):
        starts.append(starts[-1] + metadata.row_group(group).num_rows)
    index, held = 0, 0
    try:
        for batch in parquet.iter_batches(batch_size=1024):
            held += batch.nbytes
            if held > MAX_PARQUET_BYTES:
                group = max(g for g, start in enumerate(starts[:-1]) if start <= index)
                raise DataSourceError(
                    f"{label}:row group {group}: the file expands to more than "
                    f"{MAX_PARQUET_BYTES / 2**30:g} GiB decoded; split it into several files"
                )
            for record in batch.to_pylist():
                yield Row(record, f"{label}:row {index}")
                index += 1
    except (pa.ArrowException, OSError) as exc:
        raise DataSourceError(f"{label}:row {index}: {exc}") from None


def _read_txt(path: Path, label: str) -> Iterator[Row | Problem]:
    with path.open("rb") as handle:
        for number, raw in enumerate(handle, start=1):
            try:
                line = raw.decode("utf-8").rstrip("\r\n")
            except UnicodeDecodeError as exc:
                yield Problem(f"{label}:{number}", f"not UTF-8 ({exc.reason})")
                continue
            if line.strip():
                yield Row({"text": line}, f"{label}:{number}")


def _read_s3(uri: str, s3_client: Any) -> RawData:
    if s3_client is None:
        raise DataSourceError(f"{uri}: no S3 client configured")
    bucket, _, key = uri.removeprefix("s3://").partition("/")
    with tempfile.TemporaryDirectory() as scratch:
        local = Path(scratch) / Path(key).name
        try:
            s3_client.download_file(bucket, key, str(local))
        except Exception as exc:  # botocore's errors carry the useful text
            raise DataSourceError(f"{uri}: cannot download: {redact(str(exc))}") from None
        return read_file(local, label=uri)


def _read_hub(name: str, split: str) -> RawData:
    try:
        import datasets

        table = datasets.load_dataset(name, split=split)
    except Exception as exc:
        raise DataSourceError(
            f"hf://{name}: cannot load split {split!r} from the Hugging Face Hub "
            f"({redact(str(exc))}). "
            "Without network access to the Hub, copy the data to s3:// or a local file."
        ) from None
    return RawData([Row(dict(r), f"hf://{name}[{split}]:row {i}") for i, r in enumerate(table)], [])
