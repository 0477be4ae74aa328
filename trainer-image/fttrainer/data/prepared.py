"""The prepared form of a job's data: Arrow files on the node's scratch, written once per
node and memory-mapped by every rank for training (nothing about a row stays in a Python
object longer than its batch). A pass over a whole file streams it instead (stream_arrow):
mapped pages stay in the reader's RSS.

    XDG_CACHE_HOME/finetune/data/
      samples-<key>/     data/prepare.py: read, converted, checked, cleaned and split
        train.arrow validation.arrow test.arrow   sample (JSON), origin, tool flags
        images/<sha256>                           each distinct image, as read (samples
                                                  name theirs by digest: data/images.py)
        report.json                               the data report
      tokens-<key>/      data/tokens.py: tokenized for one tokenizer and token settings
        train.arrow ...  SFT: input_ids, labels; DPO/GRPO: the sample's typed columns
        train.rows.npy ...                        the rows the token checks kept
        tokens.json                               the token report

The keys hash what decides the contents (node_cache.py makes the folders, under a lock, with
a completion marker written last), so a restarted attempt finds them and starts training
without reading a row.
"""

from __future__ import annotations

import json
from collections import Counter
from collections.abc import Iterable, Iterator, Sequence
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any, overload

from .cleaning import Findings
from .formats import Sample
from .images import ImageCounts

PARTS = ("train", "validation", "test")
FORMAT_VERSION = "1"
"""Part of every key: raised when what a prepared folder holds, or how it is made, changes."""
BATCH = 1024  # samples read, converted or written at a time
IMAGES = "images"  # the folder of a preparation's images, by digest


def samples_schema() -> Any:
    import pyarrow as pa

    return pa.schema(
        [
            ("sample", pa.large_string()),  # the sample as JSON: exact, whatever its shape
            ("origin", pa.string()),  # file:line
            ("tools", pa.bool_()),  # it carries tool definitions
            ("calls", pa.bool_()),  # its conversation calls tools
            ("trained_calls", pa.bool_()),  # its answers call tools
        ]
    )


def write_arrow(path: Path, schema: Any, batches: Iterable[Any]) -> int:
    """Record batches (or dicts of columns) to an Arrow stream file, the format
    `datasets.Dataset.from_file` maps; the number of rows written."""
    import pyarrow as pa

    rows = 0
    with pa.OSFile(str(path), "wb") as sink, pa.ipc.new_stream(sink, schema) as writer:
        for batch in batches:
            if isinstance(batch, dict):
                batch = pa.RecordBatch.from_pydict(batch, schema=schema)
            if batch.num_rows:
                writer.write_batch(batch)
                rows += batch.num_rows
    return rows


def read_arrow(path: Path) -> Any:
    """The table of an Arrow stream file, memory-mapped (no copy in this process)."""
    import pyarrow as pa

    with pa.memory_map(str(path)) as source:
        return pa.ipc.open_stream(source).read_all()


def stream_arrow(path: Path) -> Iterator[Any]:
    """The record batches of an Arrow stream file, read one at a time into memory: a pass
    over a file leaves none of its pages mapped into this process, as read_arrow would."""
    import pyarrow as pa

    with pa.OSFile(str(path)) as source:
        yield from pa.ipc.open_stream(source)


def stream_rows(path: Path, start: int, stop: int, size: int = BATCH) -> Iterator[Any]:
    """Rows [start, stop) of an Arrow stream file, `size` at a time, streamed as
    stream_arrow does (the batches before `start` are read and let go)."""
    offset = 0
    for batch in stream_arrow(path):
        end = offset + batch.num_rows
        low, high = max(start, offset), min(stop, end)
        for first in range(low, high, size):
            yield batch.slice(first - offset, min(size, high - first))
        offset = end
        if offset >= stop:
            return


def stream_taken(path: Path, positions: Any) -> Iterator[Any]:
    """The rows at `positions` (ascending) of an Arrow stream file, batch by batch, in one
    pass streamed as stream_arrow does."""
    import numpy as np

    offset = 0
    for batch in stream_arrow(path):
        end = offset + batch.num_rows
        low, high = np.searchsorted(positions, [offset, end])
        if high > low:
            yield batch.take(positions[low:high] - offset)
        offset = end


class Samples(Sequence[Sample]):
    """A part's samples, decoded from the mapped table as they are read: a sequence the
    evaluation iterates like a list. `rows`: the rows kept (token checks), else all."""

    def __init__(self, table: Any, rows: Any = None) -> None:
        self._table = table
        self._rows = rows

    def __len__(self) -> int:
        return self._table.num_rows if self._rows is None else len(self._rows)

    @overload
    def __getitem__(self, index: int) -> Sample: ...
    @overload
    def __getitem__(self, index: slice) -> list[Sample]: ...
    def __getitem__(self, index: int | slice) -> Sample | list[Sample]:
        if isinstance(index, slice):
            return [self[i] for i in range(len(self))[index]]
        if not -len(self) <= index < len(self):
            raise IndexError(index)
        row = index % len(self) if self._rows is None else int(self._rows[index])
        return dict(json.loads(self._table.column("sample")[row].as_py()))

    def __iter__(self) -> Iterator[Sample]:
        for batch in self.batches():
            yield from batch

    def batches(self, size: int = BATCH) -> Iterator[list[Sample]]:
        """The samples in order, `size` at a time."""
        column = self._table.column("sample")
        for start in range(0, len(self), size):
            if self._rows is None:
                texts = column.slice(start, size).to_pylist()
            else:
                texts = column.take(self._rows[start : start + size]).to_pylist()
            yield [json.loads(text) for text in texts]

    def origins(self) -> list[str]:
        column = self._table.column("origin")
        taken = column if self._rows is None else column.take(self._rows)
        return [str(origin) for origin in taken.to_pylist()]


@dataclass
class DataReport:
    sources: dict[str, int] = field(default_factory=dict)  # uri -> rows read
    digests: dict[str, str | None] = field(default_factory=dict)  # uri -> sha256 (output.oci)
    samples: int = 0
    findings: Findings = field(default_factory=Findings)
    dropped: dict[str, int] = field(default_factory=dict)  # reason -> samples dropped
    splits: dict[str, int] = field(default_factory=dict)  # train/validation/test -> samples
    images: ImageCounts | None = None  # the samples' images, when they have any

    def render(self) -> str:
        lines = ["data report:"]
        for uri, count in self.sources.items():
            lines.append(f"  {uri}: {count} rows")
        lines.append(f"  samples after conversion: {self.samples}")
        if self.images is not None:
            lines.append(f"  {self.images.render()}")
        f = self.findings
        for name, origins in (
            ("exact duplicates", f.duplicates),
            ("empty responses", f.empty),
            ("encoding problems (U+FFFD or control characters)", f.encoding),
            *((f"PII ({kind})", origins) for kind, origins in sorted(f.pii.items())),
        ):
            if origins:
                listed = ", ".join(origins[:5]) + (" ..." if len(origins) > 5 else "")
                lines.append(f"  {name}: {len(origins)} ({listed})")
        if f.labels:
            balance = ", ".join(f"{k}: {v}" for k, v in sorted(f.labels.items()))
            lines.append(f"  answer balance: {balance}")
        for reason, count in self.dropped.items():
            lines.append(f"  dropped ({reason}): {count}")
        lines.append("  split: " + ", ".join(f"{k} {v}" for k, v in self.splits.items()))
        return "\n".join(lines)

    def to_json(self) -> str:
        fields = asdict(self)
        fields["findings"]["labels"] = dict(self.findings.labels)  # asdict miscopies a Counter
        return json.dumps(fields)

    @classmethod
    def from_json(cls, text: str) -> DataReport:
        fields = json.loads(text)
        findings = fields.pop("findings")
        findings["labels"] = Counter(findings["labels"])
        images = fields.pop("images", None)
        if images is not None:
            images = ImageCounts(**{**images, "largest": tuple(images["largest"])})
        return cls(findings=Findings(**findings), images=images, **fields)


@dataclass
class PreparedData:
    """A job's prepared samples (a folder data/prepare.py made) and their report."""

    folder: Path
    report: DataReport
    reused: bool = False  # found complete on this node: no row was read now
    pinned: bool = True  # its key pins the data (not hf://): it may be kept and mirrored
    kept: dict[str, Any] = field(default_factory=dict)  # part -> rows kept by token checks
    _tables: dict[str, Any] = field(default_factory=dict, repr=False)

    @classmethod
    def open(cls, folder: Path, *, reused: bool = False, pinned: bool = True) -> PreparedData:
        report = DataReport.from_json((folder / "report.json").read_text())
        return cls(folder, report, reused, pinned)

    def image_path(self, digest: str) -> Path:
        """Where the image a sample names by `digest` is kept."""
        return self.folder / IMAGES / digest

    def image_digests(self) -> list[str]:
        """Every kept image's digest (the samples of all parts name only these)."""
        folder = self.folder / IMAGES
        return sorted(p.name for p in folder.iterdir()) if folder.is_dir() else []

    def table(self, part: str) -> Any:
        if part not in self._tables:
            self._tables[part] = read_arrow(self.folder / f"{part}.arrow")
        return self._tables[part]

    def samples(self, part: str) -> Samples:
        return Samples(self.table(part), self.kept.get(part))

    @property
    def train(self) -> Samples:
        return self.samples("train")

    @property
    def validation(self) -> Samples:
        return self.samples("validation")

    @property
    def test(self) -> Samples:
        return self.samples("test")
