"""Reading, checking, cleaning and splitting data: bad rows are located by file and line."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

from ftapi import parse_job
from fttestkit.builders import make_job
from fttrainer.data.cleaning import inspect, pii_kinds
from fttrainer.data.prepare import DataError, prepare_data, split_samples
from fttrainer.data.sources import DataSourceError, read_file


def _jsonl(path: Path, rows: list[object]) -> Path:
    path.write_text("".join((r if isinstance(r, str) else json.dumps(r)) + "\n" for r in rows))
    return path


def _qa(i: int) -> dict[str, str]:
    return {"question": f"q{i}", "answer": f"a{i}"}


def test_jsonl_problems_carry_file_and_line(tmp_path: Path) -> None:
    path = _jsonl(tmp_path / "d.jsonl", [_qa(1), "{not json", "[1, 2]", _qa(2)])
    raw = read_file(path)
    assert [r.origin for r in raw.rows] == [f"{path}:1", f"{path}:4"]
    assert [str(p) for p in raw.problems] == [
        f"{path}:2: invalid JSON: Expecting property name enclosed in double quotes (column 2)",
        f"{path}:3: expected a JSON object, got list",
    ]


def test_non_utf8_line_is_a_problem_not_a_crash(tmp_path: Path) -> None:
    path = tmp_path / "d.jsonl"
    path.write_bytes(b'{"text": "ok"}\n{"text": "\xff\xfe"}\n')
    raw = read_file(path)
    assert len(raw.rows) == 1
    assert raw.problems[0].origin.endswith(":2") and "not UTF-8" in raw.problems[0].message


@pytest.mark.parametrize(
    ("name", "content"),
    [
        ("d.csv", b"question,answer\nq1,a1\nq2,a2\nq3,caf\xe9\n"),
        ("d.json", b'[{"text": "a"},\n {"text": "b"},\n {"text": "c"},\n {"text": "caf\xe9"}]'),
    ],
)
def test_a_file_read_whole_that_is_not_utf8_names_the_line(
    tmp_path: Path, name: str, content: bytes
) -> None:
    """Latin-1 from Excel: the decoder fails on a chunk, the user needs the line."""
    path = tmp_path / name
    path.write_bytes(content)
    with pytest.raises(DataSourceError) as caught:
        read_file(path)
    assert str(caught.value).startswith(f"{path}:4: not UTF-8 (invalid continuation byte")


def test_csv_json_txt_and_parquet(tmp_path: Path) -> None:
    import pyarrow as pa
    import pyarrow.parquet as pq

    (tmp_path / "d.csv").write_text("question,answer\nq1,a1\nq2,a2\n")
    (tmp_path / "d.json").write_text(json.dumps({"data": [_qa(1)]}))
    (tmp_path / "d.txt").write_text("line one\n\nline two\n")
    pq.write_table(pa.Table.from_pylist([_qa(1), _qa(2)]), tmp_path / "d.parquet")
    assert [r.data for r in read_file(tmp_path / "d.csv").rows] == [_qa(1), _qa(2)]
    assert read_file(tmp_path / "d.csv").rows[1].origin.endswith("d.csv:3")
    assert [r.data for r in read_file(tmp_path / "d.json").rows] == [_qa(1)]
    assert [r.data["text"] for r in read_file(tmp_path / "d.txt").rows] == ["line one", "line two"]
    assert len(read_file(tmp_path / "d.parquet").rows) == 2


def test_unknown_type_missing_file_and_offline_hub(tmp_path: Path) -> None:
    with pytest.raises(DataSourceError, match="unsupported file type"):
        read_file(tmp_path / "d.xml")
    with pytest.raises(DataSourceError, match="no such file"):
        read_file(tmp_path / "missing.jsonl")


def test_unreachable_hub_gives_a_clear_error() -> None:
    # In a subprocess so HF_HUB_OFFLINE is set before `datasets` reads it (fails fast).
    code = (
        "from fttrainer.data.sources import read_source, DataSourceError\n"
        "try:\n    read_source('hf://no-such-org/no-such-dataset')\n"
        "except DataSourceError as e:\n    print(e)\n"
    )
    result = subprocess.run(
        [sys.executable, "-c", code], env={**os.environ, "HF_HUB_OFFLINE": "1"},
        capture_output=True, text=True, check=True,
    )  # fmt: skip
    assert "hf://no-such-org/no-such-dataset: cannot load split 'train'" in result.stdout
    assert "Without network access to the Hub" in result.stdout


@pytest.mark.parametrize(
    ("text", "kinds"),
    [
        ("mail me at jane.doe@example.com", ["email"]),
        ("call +44 20 7946 0958 now", ["phone"]),
        ("card 4111 1111 1111 1111 ok", ["card"]),
        ("order 4111 1111 1111 1112 (fails Luhn)", []),
        ("2 + 2 = 4, version 1.2.3", []),
    ],
)
def test_pii_kinds(text: str, kinds: list[str]) -> None:
    assert pii_kinds(text) == kinds


def test_inspect_counts_duplicates_empties_and_labels() -> None:
    samples = [
        ({"messages": [{"role": "user", "content": "q"}, {"role": "assistant", "content": "A"}],
          "answer_letter": "A"}, "f:1"),
        ({"messages": [{"role": "user", "content": "q"}, {"role": "assistant", "content": "A"}],
          "answer_letter": "A"}, "f:2"),
        ({"messages": [{"role": "user", "content": "q"}, {"role": "assistant", "content": " "}],
          "answer_letter": "B"}, "f:3"),
        ({"text": "bad \ufffd byte"}, "f:4"),
    ]  # fmt: skip
    findings = inspect(samples)
    assert findings.duplicates == ["f:2"]
    assert findings.empty == ["f:3"]
    assert findings.encoding == ["f:4"]
    assert dict(findings.labels) == {"A": 2, "B": 1}


def test_prepare_reports_every_bad_row_then_fails(tmp_path: Path) -> None:
    path = _jsonl(tmp_path / "d.jsonl", [_qa(1), {"question": "no answer"}, "oops", _qa(2)])
    job = make_job().set("dataset", {"train": {"uri": str(path)}, "format": "qa"}).obj()
    with pytest.raises(DataError) as caught:
        prepare_data(parse_job(job).spec)
    assert [p.origin for p in caught.value.problems] == [f"{path}:3", f"{path}:2"]
    assert "column 'answer' is missing" in str(caught.value)


def test_prepare_cleans_and_splits(tmp_path: Path) -> None:
    rows = [_qa(i) for i in range(20)] + [_qa(0), {"question": "q", "answer": ""}]
    path = _jsonl(tmp_path / "d.jsonl", rows)
    dataset = {"train": {"uri": str(path)}, "format": "qa", "cleaning": {"deduplicate": True},
               "split": {"train": 0.8, "validation": 0.2, "seed": 1}}  # fmt: skip
    prepared = prepare_data(parse_job(make_job().set("dataset", dataset).obj()).spec)
    assert prepared.report.dropped == {"duplicate": 1, "empty response": 1}
    assert (len(prepared.train), len(prepared.validation)) == (16, 4)
    assert "exact duplicates: 1" in prepared.report.render()


def test_pii_fail_policy(tmp_path: Path) -> None:
    path = _jsonl(tmp_path / "d.jsonl", [{"question": "mail a@b.io", "answer": "ok"}])
    dataset = {"train": {"uri": str(path)}, "format": "qa", "cleaning": {"pii": "fail"}}
    with pytest.raises(DataError, match=r"d.jsonl:1: contains email"):
        prepare_data(parse_job(make_job().set("dataset", dataset).obj()).spec)


def test_split_is_deterministic_and_complete() -> None:
    spec = parse_job(
        make_job()
        .set("dataset.split", {"train": 0.7, "validation": 0.2, "test": 0.1, "seed": 3})
        .obj()
    ).spec
    samples = [{"text": str(i)} for i in range(50)]
    first = split_samples(samples, spec)
    assert first == split_samples(samples, spec)
    assert [len(part) for part in first] == [35, 10, 5]
    assert sorted(s["text"] for part in first for s in part) == sorted(s["text"] for s in samples)


def test_an_s3_endpoint_that_keeps_failing_is_no_bad_row_and_may_be_restarted(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """A pod that could not connect to its S3 server was once failed for good (InvalidInput,
    "1 bad row"): a connection failure is retried, then ends as a failure a restart may cure.
    A real client against a port nothing listens on: connection refused, every time."""
    import boto3
    from botocore.config import Config

    from fttestkit.ports import free_port
    from fttrainer.data import sources

    client = boto3.client(
        "s3", endpoint_url=f"http://127.0.0.1:{free_port()}", region_name="us-east-1",
        aws_access_key_id="k", aws_secret_access_key="s",
        config=Config(retries={"total_max_attempts": 1}, connect_timeout=1),
    )  # fmt: skip
    monkeypatch.setattr(sources, "DOWNLOAD_DEADLINE", 2.0)
    with pytest.raises(sources.DataUnavailableError, match="a restart tries again") as raised:
        sources.read_source("s3://data/train.jsonl", s3_client=client)
    assert not isinstance(raised.value, DataSourceError)  # not the InvalidInput verdict
    assert "s3://data/train.jsonl: cannot download" in str(raised.value)


def test_prepared_files_are_streamed_not_mapped_where_a_pass_reads_them_whole(
    tmp_path: Path,
) -> None:
    """A mapped file's pages stay resident in the process that read them (RSS that grows
    with the rows): the passes over a whole file stream it instead, and read the same rows."""
    import numpy as np
    import pyarrow as pa

    from fttrainer.data.prepared import read_arrow, stream_rows, stream_taken, write_arrow

    path = tmp_path / "part.arrow"
    schema = pa.schema([("n", pa.int64())])
    write_arrow(path, schema, ({"n": list(range(i, i + 7))} for i in range(0, 70, 7)))

    def mapped() -> bool:
        return str(path) in Path("/proc/self/maps").read_text()

    rows = stream_rows(path, 5, 40, size=4)
    first = next(rows)
    assert first.to_pydict() == {"n": [5, 6]} and not mapped()
    assert [n for b in [first, *rows] for n in b.column("n").to_pylist()] == list(range(5, 40))
    assert max(len(b) for b in stream_rows(path, 0, 70, size=4)) == 4
    positions = np.array([0, 6, 7, 8, 41, 69])
    taken = stream_taken(path, positions)
    assert next(taken).column("n").to_pylist() == [0, 6] and not mapped()
    assert [n for b in taken for n in b.column("n").to_pylist()] == [7, 8, 41, 69]
    table = read_arrow(path)  # the control: a table for random access is mapped
    assert mapped() and table.num_rows == 70
