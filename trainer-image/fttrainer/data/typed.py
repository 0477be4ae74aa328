"""Samples as typed `datasets` columns for the trainers that take samples, not tokens
(DPO, GRPO), lossless and streamed.

`Dataset.from_list` gives every row one Arrow schema: turns gain each other's keys as nulls
and, worse, tool-call arguments and tool schemas of different functions are merged field by
field (`{"city": "Paris"}` next to `{"n": 3}` reads back as `{"city": "Paris", "n": None}`),
which the chat template then renders. Columns holding lists or objects (conversations,
tools, nested reward columns with objects) are stored as JSON instead and read back exactly
as they were; so are plain values Arrow cannot hold in one typed column. The columns' types
are decided over every sample, a batch at a time, then the samples are written a batch at a
time: memory holds one batch.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

Batches = Callable[[], Iterator[list[dict[str, Any]]]]  # a fresh pass over the samples


@dataclass
class _Column:
    objects: bool = False  # some value is an object, or a list holding one
    lists: bool = True  # every value is a list or missing
    kinds: set[str] = field(default_factory=set)  # of the plain values
    huge: bool = False  # an integer beyond 64 bits

    def add(self, value: Any) -> None:
        self.objects = self.objects or _holds_objects(value)
        self.lists = self.lists and isinstance(value, list | None)
        if isinstance(value, bool):
            self.kinds.add("bool")
        elif isinstance(value, int | float):
            self.kinds.add("number")
            self.huge = self.huge or (isinstance(value, int) and not -(2**63) <= value < 2**63)
        elif value is not None:
            self.kinds.add(type(value).__name__)

    @property
    def as_json(self) -> bool:
        return self.objects or self.huge or len(self.kinds) > 1


def typed_features(batches: Batches) -> Any:
    """The `datasets.Features` that hold these samples exactly (two passes)."""
    import pyarrow as pa
    from datasets import Features, Json, List

    columns: dict[str, _Column] = {}
    for batch in batches():
        for sample in batch:
            for key in sample:
                columns.setdefault(key, _Column())
        for key, column in columns.items():
            for sample in batch:
                column.add(sample.get(key))
    nested = {
        key: List(Json()) if column.lists else Json()
        for key, column in columns.items()
        if column.as_json
    }
    flat = [key for key in columns if key not in nested]
    schemas = (
        [
            pa.Table.from_pylist([{key: s.get(key) for key in flat} for s in batch]).schema
            for batch in batches()
        ]
        if flat
        else []
    )
    inferred = (
        Features.from_arrow_schema(pa.unify_schemas(schemas, promote_options="permissive"))
        if schemas
        else {}
    )
    return Features({key: nested.get(key) or inferred[key] for key in columns})


def write_typed(path: Path, batches: Batches) -> None:
    """The samples to an Arrow file `datasets.Dataset.from_file` maps, typed as
    `typed_features` says."""
    from datasets.arrow_writer import ArrowWriter

    features = typed_features(batches)
    with ArrowWriter(features=features, path=str(path)) as writer:
        for batch in batches():
            writer.write_batch({key: [s.get(key) for s in batch] for key in features})
        writer.finalize()


def as_dataset(samples: Iterable[dict[str, Any]]) -> Any:
    """A `datasets.Dataset` of a few samples, in memory, typed as `typed_features` says."""
    from datasets import Dataset

    listed = [dict(s) for s in samples]
    features = typed_features(lambda: iter([listed]))
    return Dataset.from_list(listed, features=features)


def _holds_objects(value: Any) -> bool:
    """An object, or a list with one: what Arrow would merge into one struct type (lists of
    plain values keep their Arrow type, so "5" stays a string)."""
    return isinstance(value, dict) or (
        isinstance(value, list) and any(isinstance(item, dict) for item in value)
    )
