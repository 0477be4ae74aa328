"""Data files this team never wrote: each is read, or refused with its file and line (or row
group), in bounded time and memory; never a crash (csv.Error, RecursionError, TypeError)."""

from __future__ import annotations

import json
import time
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import pytest

from fttrainer.data import sources
from fttrainer.data.cleaning import inspect, pii_kinds
from fttrainer.data.sources import DataSourceError, Problem, read_file


def test_a_csv_field_larger_than_the_csv_modules_default_is_read(tmp_path: Path) -> None:
    document = "word " * 60_000  # 300 kB: csv's default limit is 128 KiB
    path = tmp_path / "long.csv"
    path.write_text(f'question,answer\n"summarise","{document}"\n', encoding="utf-8")
    (row,) = read_file(path).rows
    assert row.data["answer"] == document


def test_a_csv_field_over_the_bound_is_refused_with_its_line(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(sources, "MAX_FIELD_BYTES", 1000)
    path = tmp_path / "huge.csv"
    path.write_text(f"question,answer\nq,a\nq,{'x' * 5000}\n", encoding="utf-8")
    with pytest.raises(DataSourceError, match=r"huge.csv:3: field larger than field limit"):
        read_file(path)


@pytest.mark.parametrize("suffix", [".csv", ".jsonl", ".json"])
def test_a_byte_order_mark_is_not_part_of_the_data(tmp_path: Path, suffix: str) -> None:
    body = {
        ".csv": "question,answer\nq,a\n",
        ".jsonl": '{"question": "q", "answer": "a"}\n',
        ".json": '[{"question": "q", "answer": "a"}]',
    }[suffix]
    path = tmp_path / f"bom{suffix}"
    path.write_bytes(b"\xef\xbb\xbf" + body.encode())
    data = read_file(path)
    assert data.problems == [] and [r.data for r in data.rows] == [{"question": "q", "answer": "a"}]


def test_deeply_nested_json_is_a_located_problem(tmp_path: Path) -> None:
    path = tmp_path / "deep.jsonl"
    deep = {"messages": [{"role": "user", "content": "x"}]}
    for _ in range(200):
        deep = {"nested": deep}
    lines = [
        '{"text": "fine"}',
        json.dumps(deep),
        '{"text": ' + "[" * 100_000 + "]" * 100_000 + "}",
    ]
    path.write_text("\n".join(lines) + "\n")
    data = read_file(path)
    assert [r.origin for r in data.rows] == [f"{path}:1"]
    assert [str(p) for p in data.problems] == [
        f"{path}:2: JSON nested more than 64 levels deep",
        f"{path}:3: JSON nested more than 64 levels deep",
    ]
    whole = tmp_path / "deep.json"
    whole.write_text("[" * 100_000 + "]" * 100_000)
    with pytest.raises(DataSourceError, match="nested too deeply"):
        read_file(whole)


def test_a_number_too_long_for_python_is_a_located_problem(tmp_path: Path) -> None:
    """json hands integers to int(), which refuses more than 4300 digits with a ValueError
    that is not a JSON error: it crashed the read."""
    digits = "1" * 5000
    lines = tmp_path / "numbers.jsonl"
    lines.write_text(f'{{"text": "fine"}}\n{{"text": "x", "id": {digits}}}\n')
    data = read_file(lines)
    assert [r.origin for r in data.rows] == [f"{lines}:1"]
    assert [str(p) for p in data.problems] == [f"{lines}:2: a number of 5000 digits (at most 4300)"]
    whole = tmp_path / "numbers.json"
    whole.write_text(f'[{{"text": "x", "id": {digits}}}]')
    with pytest.raises(DataSourceError, match=r"numbers\.json: a number of 5000 digits"):
        read_file(whole)


def test_parquet_timestamps_do_not_break_the_checks(tmp_path: Path) -> None:
    import pyarrow as pa
    import pyarrow.parquet as pq

    path = tmp_path / "prompts.parquet"
    stamp = datetime(2026, 11, 22, tzinfo=UTC)
    pq.write_table(pa.table({"prompt": ["a", "a"], "created": [stamp, stamp]}), path)
    rows = read_file(path).rows
    findings = inspect([(r.data, r.origin) for r in rows])
    assert findings.duplicates == [f"{path}:row 1"]


def _one_value_repeated(path: Path, value: str, rows: int, **write: Any) -> None:
    """A parquet file of one text column holding `value` in every row, dictionary-encoded
    (the value is stored once): a few hundred bytes on disk, rows x len(value) decoded."""
    import numpy as np
    import pyarrow as pa
    import pyarrow.parquet as pq

    column = pa.DictionaryArray.from_arrays(np.zeros(rows, dtype=np.int32), pa.array([value]))
    pq.write_table(pa.table({"text": column}), path, compression="zstd",
                   dictionary_pagesize_limit=2 * len(value), **write)  # fmt: skip


def test_a_parquet_file_that_decodes_far_beyond_its_size_is_refused_in_time(
    tmp_path: Path,
) -> None:
    """Its metadata is honest and small (one dictionary page): only counting what the rows
    hold before decoding them finds the 4 GiB; the second row group is never read."""
    path = tmp_path / "bomb.parquet"
    _one_value_repeated(path, "x" * 2**22, 1024, row_group_size=512)
    assert path.stat().st_size < 4096
    started = time.monotonic()
    with pytest.raises(DataSourceError) as refused:
        read_file(path)
    assert time.monotonic() - started < 10
    assert str(refused.value).startswith(f"{path}:row group 0: the file decodes to more than")
    assert "refused as a decompression bomb" in str(refused.value)


def test_parquet_sizes_it_declares_are_checked_before_reading(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    import numpy as np
    import pyarrow as pa
    import pyarrow.parquet as pq

    monkeypatch.setattr(sources, "MIN_PARQUET_BYTES", 2_000_000)
    pages = tmp_path / "pages.parquet"  # plain pages: the metadata says 10 MB uncompressed
    pq.write_table(pa.table({"text": ["a" * 10_000] * 1_000}), pages, row_group_size=100,
                   compression="zstd", use_dictionary=False)  # fmt: skip
    assert pages.stat().st_size < 20_000
    with pytest.raises(DataSourceError, match=r"pages.parquet:row group \d+: the file declares"):
        read_file(pages)
    numbers = tmp_path / "numbers.parquet"  # a constant column: rows x 8 bytes
    pq.write_table(pa.table({"n": np.zeros(1_000_000, dtype=np.int64)}), numbers,
                   compression="zstd")  # fmt: skip
    with pytest.raises(DataSourceError, match=r"numbers.parquet:row group 0: the file declares"):
        read_file(numbers)


def test_nested_chat_rows_are_sized_before_they_are_decoded(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """messages[].content is a text leaf inside lists of structs: it is read as a dictionary
    too, and each row is sized from its messages."""
    import pyarrow as pa
    import pyarrow.parquet as pq

    monkeypatch.setattr(sources, "MIN_PARQUET_BYTES", 5_000_000)
    path = tmp_path / "chat.parquet"
    turn = [{"role": "user", "content": "y" * 100_000}] * 8
    pq.write_table(pa.table({"messages": [turn] * 20, "id": list(range(20))}), path,
                   compression="zstd")  # fmt: skip
    with pytest.raises(DataSourceError, match=r"chat.parquet:row group 0: the file decodes to"):
        read_file(path)
    monkeypatch.setattr(sources, "MIN_PARQUET_BYTES", 50_000_000)  # 16 MB: read, unchanged
    rows = read_file(path).rows
    assert [r.data for r in rows] == pq.read_table(path).to_pylist()
    assert rows[19].origin == f"{path}:row 19"


def test_a_parquet_row_over_the_row_bound_is_named(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    import pyarrow as pa
    import pyarrow.parquet as pq

    monkeypatch.setattr(sources, "MAX_FIELD_BYTES", 1000)
    path = tmp_path / "rows.parquet"
    texts = ["short"] * 5 + ["z" * 5000] + ["short"] * 5
    pq.write_table(pa.table({"text": texts}), path, row_group_size=4)
    with pytest.raises(DataSourceError) as refused:
        read_file(path)
    assert str(refused.value) == (
        f"{path}:row 5 (row group 1): the row decodes to 4.9 KiB, more than the 1000 bytes "
        "a row may hold"
    )


def test_parquet_rows_read_as_pyarrow_reads_them(tmp_path: Path) -> None:
    """Row groups, nulls, nested structs, maps, binary and timestamps: the bounded reader
    gives what pyarrow gives."""
    import pyarrow as pa
    import pyarrow.parquet as pq

    schema = pa.schema([
        ("messages", pa.list_(pa.struct([("role", pa.string()), ("content", pa.string())]))),
        ("meta", pa.map_(pa.string(), pa.string())), ("blob", pa.binary()),
        ("at", pa.timestamp("us")), ("score", pa.float64()),
    ])  # fmt: skip
    stamp = datetime(2026, 11, 24)
    rows = [{"messages": [{"role": "user", "content": f"q{i}"},
                          {"role": "assistant", "content": None if i % 3 else f"a{i}"}],
             "meta": [("k", str(i))], "blob": b"\x00" * (i % 4), "at": stamp, "score": i / 2}
            for i in range(1000)]  # fmt: skip
    path = tmp_path / "mixed.parquet"
    pq.write_table(pa.Table.from_pylist(rows, schema=schema), path, row_group_size=300)
    read = read_file(path).rows
    assert [r.data for r in read] == pq.read_table(path).to_pylist()
    assert [r.origin for r in read[298:302]] == [f"{path}:row {i}" for i in range(298, 302)]


def test_a_file_that_is_not_parquet_is_a_source_error(tmp_path: Path) -> None:
    path = tmp_path / "fake.parquet"
    path.write_text("not parquet")
    with pytest.raises(DataSourceError, match="not a readable parquet file"):
        read_file(path)


def test_the_email_scan_is_linear_on_long_tokens() -> None:
    # The unbounded pattern tried every start of a long run of address characters and
    # scanned to its end: quadratic (minutes for a base64 blob). A linear scan of 400 kB
    # takes milliseconds; the bound below is 100x that, far from flaky.
    blob = "QUJD" * 100_000 + "@"
    started = time.monotonic()
    assert pii_kinds(blob) == []
    assert time.monotonic() - started < 5.0
    assert pii_kinds("write to jane.doe+ml@example.co.uk today") == ["email"]
    assert pii_kinds("user@localhost or a@b") == []


def test_the_pii_scan_is_skipped_when_it_is_off() -> None:
    samples = [({"text": "mail jane@example.com"}, "f:1")]
    assert inspect(samples).pii == {"email": ["f:1"]}
    assert inspect(samples, scan_pii=False).pii == {}


def test_problem_is_still_located() -> None:
    assert str(Problem("f.jsonl:3", "bad")) == "f.jsonl:3: bad"


def test_a_key_given_twice_is_a_problem_not_a_lost_value(tmp_path: Path) -> None:
    """json keeps the last of two equal keys: the first value would vanish silently."""
    rows = tmp_path / "rows.jsonl"
    rows.write_text('{"text": "a"}\n{"text": "b", "text": "c"}\n')
    data = read_file(rows)
    assert [r.origin for r in data.rows] == [f"{rows}:1"]
    assert [str(p) for p in data.problems] == [f"{rows}:2: the key 'text' is given twice"]
    whole = tmp_path / "rows.json"
    whole.write_text('[{"text": "a", "text": "b"}]')
    with pytest.raises(DataSourceError, match="the key 'text' is given twice"):
        read_file(whole)


def test_a_csv_header_naming_a_column_twice_is_refused(tmp_path: Path) -> None:
    path = tmp_path / "rows.csv"
    path.write_text("instruction,output,output\nq,a1,a2\n")
    with pytest.raises(DataSourceError, match=r"rows\.csv:1: the header names 'output' more"):
        read_file(path)
    path.write_text("instruction,output,,\nq,a,,\n")  # empty trailing headers (Excel)
    assert len(read_file(path).rows) == 1


@pytest.mark.parametrize("chunk", [1, 3, 64])
def test_a_json_array_is_read_item_by_item_across_any_chunk_boundary(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, chunk: int
) -> None:
    """Each item is parsed when its text is there, never the whole file: the reader has
    consumed the first chunks, not the file, when the first row comes out."""
    monkeypatch.setattr(sources._JsonArray, "CHUNK", chunk)
    items: list[Any] = [{"q": "é\n" * i, "n": 10**i, "x": [1.5, None, True]} for i in range(40)]
    path = tmp_path / "rows.json"
    path.write_text(json.dumps([*items, 7], indent=1))
    data = read_file(path)
    assert [r.data for r in data.rows] == items
    assert [str(p) for p in data.problems] == [f"{path}:item 40: expected an object, got int"]
    with path.open() as handle:
        first = next(iter(sources._JsonArray(handle, str(path))))
        assert first == items[0] and handle.tell() < path.stat().st_size / 4


@pytest.mark.parametrize(
    ("text", "error"),
    [
        ('[{"a": 1},\n]', r":2: not valid JSON: Expecting value"),
        ('[\n{"a": 1}\n{"b": 2}]', r":3: not valid JSON: Expecting ',' delimiter"),
        ('[{"a": 1},\n{"b": 2}', r":2: not valid JSON: Expecting '\]'"),
        ('[{"a": 1}]\n\nx', r":3: not valid JSON: Extra data"),
        ('{"a": 1}', r"expected a list of objects"),
    ],
)
def test_a_broken_json_array_is_refused_at_its_line(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, text: str, error: str
) -> None:
    monkeypatch.setattr(sources._JsonArray, "CHUNK", 2)
    path = tmp_path / "broken.json"
    path.write_text(text)
    with pytest.raises(DataSourceError, match=f"broken.json{error}" if error[0] == ":" else error):
        read_file(path)
