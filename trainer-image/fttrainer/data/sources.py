"""Reading raw rows from local files, s3:// objects and hf:// datasets.

Every row remembers where it came from (`file.jsonl:12`), so a bad row is reported with its
file and line instead of a stack trace. Unparseable lines do not stop the read: they are
collected as `Problem`s and the caller decides (the data report lists them all).
"""

from __future__ import annotations

import csv
import json
import logging
import re
import tempfile
import time
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any, NoReturn, TextIO

from ftapi.redaction import redact
from fttrainer.storage.paths import sha256_file

log = logging.getLogger(__name__)

SUFFIXES = (".jsonl", ".json", ".csv", ".parquet", ".txt")
# Bounds on what one file may make the trainer hold: a field (or parquet row) far larger
# than any sample (the csv module's own default, 128 KiB, refuses long documents), nesting
# deeper than any chat (deeper JSON crashes recursive code later: RecursionError), and what
# a parquet file may decode to: a few compressed KB of one repeated value (dictionary
# encoding, zstd) can decode to many GB, so the bound follows the size on disk; any file
# may decode to MIN_PARQUET_BYTES, and larger real text compresses far less than 100x.
MAX_FIELD_BYTES = 64 * 2**20
MAX_DEPTH = 64
MAX_PARQUET_EXPANSION = 100
MIN_PARQUET_BYTES = 256 * 2**20
PARQUET_BATCH_ROWS = 64
BOM = "\ufeff"


class DataSourceError(RuntimeError):
    """The source as a whole cannot be read (missing file, unknown type, unreachable hub)."""


class DataUnavailableError(RuntimeError):
    """The data's S3 endpoint kept failing (no connection, timeouts, 5xx) for
    DOWNLOAD_DEADLINE: nothing is wrong with the data, so this is no DataSourceError (an
    InvalidInput verdict, never restarted) but a failure a restart may cure. A pod that
    could not connect to its S3 server for 15 s was once failed for good as "1 bad row"."""


DOWNLOAD_DEADLINE = 120.0
"""Seconds a data download is retried through transient failures."""


class JsonValueError(ValueError):
    """A JSON value json would take but the trainer refuses (raised by the parse hooks)."""


class DuplicateKeyError(JsonValueError):
    """A JSON object gives one key twice: json keeps the last value, losing the other."""


# Python refuses to convert integers of more digits (a ValueError that is not a JSON error).
MAX_INT_DIGITS = 4300


def bounded_int(text: str) -> int:
    """json's parse_int: an integer, or JsonValueError for one too long to convert."""
    if len(text.lstrip("-")) > MAX_INT_DIGITS:
        raise JsonValueError(f"a number of {len(text)} digits (at most {MAX_INT_DIGITS})")
    return int(text)


def loads(text: str) -> Any:
    """json.loads with the trainer's refusals: a key given twice, an integer too long."""
    return json.loads(text, object_pairs_hook=unique_keys, parse_int=bounded_int)


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
    sha256: str | None = None
    """The file's content hash when asked for (lineage: output.oci's annotations); None for
    hf:// data."""


def read_source(
    uri: str, *, split: str | None = None, s3_client: Any = None, digest: bool = False
) -> RawData:
    """All rows of one source, in memory (small inputs: evaluation prompts, benchmarks);
    `s3_client` is a boto3 client for s3:// URIs. `digest`: also hash the file (one more
    read of it; only output.oci's lineage asks). Training data streams instead
    (`opened_source`, data/prepare.py)."""
    if uri.startswith("hf://"):
        with opened_source(uri, split=split) as (items, _):
            return RawData([item for item in items if isinstance(item, Row)], [])
    with opened_source(uri, split=split, s3_client=s3_client) as (_, local):
        assert local is not None
        return read_file(local, label=uri, digest=digest)


@contextmanager
def opened_source(
    uri: str, *, split: str | None = None, s3_client: Any = None
) -> Iterator[tuple[Iterator[Row | Problem], Path | None]]:
    """(the source's rows and problems, one at a time; its local file, None for hf://).
    An s3:// object is downloaded to a temporary file that lives as long as the context.
    A source that cannot be read at all raises DataSourceError, here or while iterating."""
    if uri.startswith("hf://"):
        yield _read_hub(uri.removeprefix("hf://"), split or "train"), None
    elif uri.startswith("s3://"):
        if s3_client is None:
            raise DataSourceError(f"{uri}: no S3 client configured")
        bucket, _, key = uri.removeprefix("s3://").partition("/")
        with tempfile.TemporaryDirectory() as scratch:
            local = Path(scratch) / Path(key).name
            _download(uri, s3_client, bucket, key, local)
            yield iter_file(local, label=uri), local
    else:
        yield iter_file(Path(uri), label=uri), Path(uri)


def read_file(path: Path, *, label: str | None = None, digest: bool = False) -> RawData:
    """All rows of one local file, in memory (see `read_source`)."""
    rows: list[Row] = []
    problems: list[Problem] = []
    for item in iter_file(path, label=label):
        if isinstance(item, Row):
            rows.append(item)
        else:
            problems.append(item)
    return RawData(rows, problems, "sha256:" + sha256_file(path) if digest else None)


def iter_file(path: Path, *, label: str | None = None) -> Iterator[Row | Problem]:
    """The rows and problems of one local file, one at a time. The type and the file's
    existence are checked at once, before the first row."""
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
    return readers[suffix](path, label)


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
                value = loads(line)
            except json.JSONDecodeError as exc:
                yield Problem(origin, f"invalid JSON: {exc.msg} (column {exc.colno})")
                continue
            except JsonValueError as exc:
                yield Problem(origin, str(exc))
                continue
            except RecursionError:
                yield Problem(origin, f"JSON nested more than {MAX_DEPTH} levels deep")
                continue
            if not isinstance(value, dict):
                yield Problem(origin, f"expected a JSON object, got {type(value).__name__}")
                continue
            # Deeper than MAX_DEPTH takes more than MAX_DEPTH brackets: most lines need no walk.
            if raw.count(b"{") + raw.count(b"[") > MAX_DEPTH and too_deep(value):
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
    """A JSON array of objects, one item parsed at a time (memory holds one item and a
    chunk of text, whatever the file's size); any other document (the {"data": [...]}
    wrapper) is parsed whole."""
    try:
        with path.open(encoding="utf-8-sig") as handle:
            items = _JsonArray(handle, label)
            values = items if items.is_array() else _whole_json_rows(items.rest(), label)
            for index, item in enumerate(values):
                origin = f"{label}:item {index}"
                if isinstance(item, dict) and too_deep(item):
                    yield Problem(origin, f"JSON nested more than {MAX_DEPTH} levels deep")
                elif isinstance(item, dict):
                    yield Row(item, origin)
                else:
                    yield Problem(origin, f"expected an object, got {type(item).__name__}")
    except JsonValueError as exc:
        raise DataSourceError(f"{label}: {exc}") from None
    except UnicodeDecodeError as exc:
        raise _not_utf8(path, label, exc) from None
    except json.JSONDecodeError as exc:
        raise DataSourceError(f"{label}:{exc.lineno}: not valid JSON: {exc}") from None
    except RecursionError:
        raise DataSourceError(f"{label}: JSON nested too deeply") from None


def _whole_json_rows(text: str, label: str) -> list[Any]:
    value = loads(text)
    if isinstance(value, dict) and isinstance(value.get("data"), list):
        value = value["data"]
    if not isinstance(value, list):
        raise DataSourceError(f"{label}: expected a list of objects (or {{'data': [...]}})")
    return value


class _JsonArray:
    """The items of a top-level JSON array read from a text stream, chunk by chunk; an
    error names the line of the whole file, as json's would."""

    CHUNK = 2**20
    SPACE = re.compile(r"[ \t\n\r]*")

    def __init__(self, handle: TextIO, label: str) -> None:
        self._handle, self._label = handle, label
        self._decoder = json.JSONDecoder(object_pairs_hook=unique_keys, parse_int=bounded_int)
        self._text, self._pos, self._lines_before, self._eof = "", 0, 0, False

    def is_array(self) -> bool:
        return self._next_char() == "["

    def rest(self) -> str:
        """What is left of the document, read whole."""
        return self._text[self._pos :] + self._handle.read()

    def __iter__(self) -> Iterator[Any]:
        if not self.is_array():
            self._fail("Expecting '['")
        self._pos += 1
        char = self._next_char()
        while char != "]":
            yield self._item()
            char = self._next_char()
            if char == ",":
                self._pos += 1
                self._next_char()
            elif char != "]":
                self._fail("Expecting ',' delimiter" if char else "Expecting ']'")
        self._pos += 1
        if self._next_char():
            self._fail("Extra data")

    def _item(self) -> Any:
        """The value at the position; more text is read while it may be cut off (a value
        that ends where the text does may go on: `12` of `123`)."""
        while True:
            try:
                value, end = self._decoder.raw_decode(self._text, self._pos)
            except json.JSONDecodeError as exc:
                if self._more():
                    continue
                self._fail(exc.msg, exc.pos)
            if end < len(self._text) or not self._more():
                self._pos = end
                return value

    def _more(self) -> bool:
        """Read a chunk, dropping the text before the position; False at the end. An item
        larger than a row may be is refused rather than read on."""
        if self._eof:
            return False
        if len(self._text) - self._pos > MAX_FIELD_BYTES:
            raise DataSourceError(
                f"{self._label}:{self._line(self._pos)}: an item of the array is larger than "
                f"{_mib(MAX_FIELD_BYTES)}, more than a row may hold (or the JSON is not valid)"
            )
        chunk = self._handle.read(self.CHUNK)
        if not chunk:
            self._eof = True
            return False
        self._lines_before += self._text.count("\n", 0, self._pos)
        self._text, self._pos = self._text[self._pos :] + chunk, 0
        return True

    def _next_char(self) -> str:
        """The next character that is not white space ("" at the end), reading as needed."""
        while True:
            match = self.SPACE.match(self._text, self._pos)
            assert match is not None  # the pattern matches the empty string
            self._pos = match.end()
            if self._pos < len(self._text):
                return self._text[self._pos]
            if not self._more():
                return ""

    def _line(self, pos: int) -> int:
        return self._lines_before + self._text.count("\n", 0, pos) + 1

    def _fail(self, message: str, pos: int | None = None) -> NoReturn:
        at = self._pos if pos is None else pos
        raise DataSourceError(f"{self._label}:{self._line(at)}: not valid JSON: {message}")


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


def parquet_budget(size_on_disk: int) -> int:
    """The most bytes a parquet file of this size may decode to."""
    return max(MIN_PARQUET_BYTES, MAX_PARQUET_EXPANSION * size_on_disk)


def _read_parquet(path: Path, label: str) -> Iterator[Row | Problem]:
    """Row group by row group, each one's decoded size counted before it is decoded: text
    columns are read as dictionaries (one repeated value is held once), their rows sized
    from the dictionary, and only a group within the file's budget and the per-row bound
    is turned into Python rows."""
    import pyarrow as pa
    import pyarrow.parquet as pq

    size = path.stat().st_size
    budget = parquet_budget(size)

    def too_big(group: int, what: str) -> DataSourceError:
        return DataSourceError(
            f"{label}:row group {group}: the file {what} more than {_mib(budget)} "
            f"({MAX_PARQUET_EXPANSION}x its {_mib(size)} on disk, at least "
            f"{_mib(MIN_PARQUET_BYTES)}): refused as a decompression bomb. Real data this "
            "repetitive reads fine as JSONL; or split the file into several."
        )

    try:
        plain_reader = pq.ParquetFile(path)
        schema, leaves = plain_reader.schema_arrow, plain_reader.schema
        # Every text leaf, nested ones too (messages.list.element.content), is read as a
        # dictionary: one repeated value is held once until the rows are sized.
        text = [
            leaves.column(i).path
            for i in range(len(leaves))
            if leaves.column(i).physical_type == "BYTE_ARRAY"
        ]
        parquet = pq.ParquetFile(path, read_dictionary=text)
    except (pa.ArrowException, OSError) as exc:
        raise DataSourceError(f"{label}: not a readable parquet file ({exc})") from None
    metadata = parquet.metadata
    # What the file says about itself, before anything is read: its pages' sizes, and its
    # row count times the width of the columns that are not text (a constant column of a
    # billion integers is a few bytes of run-length encoding).
    fixed_width = sum(_width(field.type) for field in schema if not _is_text(field.type))
    declared = 0
    for group in range(metadata.num_row_groups):
        chunks = metadata.row_group(group)
        pages = sum(chunks.column(c).total_uncompressed_size for c in range(chunks.num_columns))
        declared += max(pages, chunks.num_rows * fixed_width)
        if declared > budget:
            raise too_big(group, "declares")
    index, held = 0, 0
    try:
        for group in range(metadata.num_row_groups):
            table = parquet.read_row_group(group, use_threads=False)
            sizes = _decoded_row_sizes(table)
            for offset, row_size in enumerate(sizes):
                held += row_size
                if held > budget:
                    raise too_big(group, "decodes to")
                if row_size > MAX_FIELD_BYTES:
                    raise DataSourceError(
                        f"{label}:row {index + offset} (row group {group}): the row decodes "
                        f"to {_mib(row_size)}, more than the {_mib(MAX_FIELD_BYTES)} a row "
                        "may hold"
                    )
            plain = pa.table(
                [
                    c.cast(c.type.value_type) if pa.types.is_dictionary(c.type) else c
                    for c in table.columns
                ],
                names=table.column_names,
            )
            del table
            for batch in plain.to_batches(max_chunksize=1024):
                for record in batch.to_pylist():
                    yield Row(record, f"{label}:row {index}")
                    index += 1
    except (pa.ArrowException, OSError) as exc:
        raise DataSourceError(f"{label}:row {index}: {exc}") from None


def _decoded_row_sizes(table: Any) -> list[int]:
    """Bytes each row of a row group holds once decoded, counted without decoding it."""
    import numpy as np

    sizes = np.zeros(table.num_rows, dtype=np.int64)
    for column in table.columns:
        sizes += np.concatenate(
            [_array_row_sizes(part) for part in column.chunks] or [np.zeros(0, np.int64)]
        )
    return [int(size) for size in sizes]


def _array_row_sizes(array: Any) -> Any:
    """Per-element decoded bytes of an arrow array: dictionary text by its values'
    lengths, lists, maps and structs by what they hold (each value's row from the offsets)."""
    import numpy as np
    import pyarrow as pa
    import pyarrow.compute as pc

    kind = array.type
    if pa.types.is_dictionary(kind):
        if _is_text(kind.value_type):
            lengths = pc.binary_length(array.dictionary).take(array.indices)
            return pc.fill_null(lengths, 0).to_numpy(zero_copy_only=False).astype(np.int64)
        return _array_row_sizes(array.dictionary_decode())
    if _is_text(kind):
        return (
            pc.fill_null(pc.binary_length(array), 0).to_numpy(zero_copy_only=False).astype(np.int64)
        )
    if pa.types.is_list(kind) or pa.types.is_large_list(kind) or pa.types.is_map(kind):
        offsets = array.offsets.to_numpy(zero_copy_only=False).astype(np.int64)
        values = array.values.slice(offsets[0], offsets[-1] - offsets[0])  # a map's: entries
        parents = np.repeat(np.arange(len(array)), np.diff(offsets))
        held = np.bincount(parents, weights=_array_row_sizes(values), minlength=len(array))
        return held.astype(np.int64) + 8
    if pa.types.is_struct(kind):
        sizes = np.zeros(len(array), dtype=np.int64)
        for field in array.flatten():
            sizes += _array_row_sizes(field)
        return sizes
    return np.full(len(array), _width(kind), dtype=np.int64)


def _width(kind: Any) -> int:
    """Bytes per row of a decoded column that is not text (nested columns: at least one
    offset)."""
    import pyarrow as pa

    try:
        return max(1, int(kind.bit_width) // 8)
    except ValueError:  # not fixed width: lists, structs, maps
        return 8 if pa.types.is_nested(kind) else 1


def _is_text(kind: Any) -> bool:
    import pyarrow as pa

    return bool(
        pa.types.is_string(kind)
        or pa.types.is_large_string(kind)
        or pa.types.is_binary(kind)
        or pa.types.is_large_binary(kind)
    )


def _mib(size: int) -> str:
    for unit, scale in (("GiB", 2**30), ("MiB", 2**20), ("KiB", 2**10)):
        if size >= scale:
            return f"{size / scale:.1f} {unit}"
    return f"{size} bytes"


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


def _download(uri: str, s3_client: Any, bucket: str, key: str, local: Path) -> None:
    from fttrainer.storage.s3 import backoff_delay, is_transient

    started = time.monotonic()
    tries = 0
    while True:
        try:
            s3_client.download_file(bucket, key, str(local))
            return
        except Exception as exc:  # botocore's errors carry the useful text
            said = redact(str(exc))
            if not is_transient(exc):
                raise DataSourceError(f"{uri}: cannot download: {said}") from None
            waited = time.monotonic() - started
            if waited >= DOWNLOAD_DEADLINE:
                raise DataUnavailableError(
                    f"{uri}: cannot download: {said} (still failing after {waited:.0f} s; "
                    "the data was not read, a restart tries again)"
                ) from None
            log.warning(
                "%s: cannot download (%s); retrying for up to %.0f s more",
                uri,
                said,
                DOWNLOAD_DEADLINE - waited,
            )
            time.sleep(backoff_delay(tries, DOWNLOAD_DEADLINE - waited))
            tries += 1


def _read_hub(name: str, split: str) -> Iterator[Row | Problem]:
    try:
        import datasets

        table = datasets.load_dataset(name, split=split)
    except Exception as exc:
        raise DataSourceError(
            f"hf://{name}: cannot load split {split!r} from the Hugging Face Hub "
            f"({redact(str(exc))}). "
            "Without network access to the Hub, copy the data to s3:// or a local file."
        ) from None
    return (Row(dict(r), f"hf://{name}[{split}]:row {i}") for i, r in enumerate(table))
