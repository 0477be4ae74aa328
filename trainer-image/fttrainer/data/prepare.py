"""Load → convert → check → clean → split: the data a trainer gets, and the report of it.

prepared = prepare_data(spec)           # raises DataError listing every bad row
prepared.report.render()                # what `finetune validate` prints
"""

from __future__ import annotations

import random
from dataclasses import dataclass, field
from typing import Any, TypeVar

from ftapi.v1alpha1 import FineTuneJobSpec

from .cleaning import Findings, inspect
from .formats import FormatContext, RowError, Sample, convert_row
from .sources import DataSourceError, Problem, read_source

MAX_LISTED = 20  # origins shown per finding in the report
T = TypeVar("T")


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


@dataclass
class DataReport:
    sources: dict[str, int] = field(default_factory=dict)  # uri -> rows read
    digests: dict[str, str | None] = field(default_factory=dict)  # uri -> sha256 (output.oci)
    samples: int = 0
    findings: Findings = field(default_factory=Findings)
    dropped: dict[str, int] = field(default_factory=dict)  # reason -> samples dropped
    splits: dict[str, int] = field(default_factory=dict)  # train/validation/test -> samples

    def render(self) -> str:
        lines = ["data report:"]
        for uri, count in self.sources.items():
            lines.append(f"  {uri}: {count} rows")
        lines.append(f"  samples after conversion: {self.samples}")
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


Located = tuple[Sample, str]  # a sample and where it came from (file:line)


@dataclass
class PreparedData:
    parts: dict[str, list[Located]]  # train / validation / test
    report: DataReport

    @property
    def train(self) -> list[Sample]:
        return [sample for sample, _ in self.parts["train"]]

    @property
    def validation(self) -> list[Sample]:
        return [sample for sample, _ in self.parts["validation"]]

    @property
    def test(self) -> list[Sample]:
        return [sample for sample, _ in self.parts["test"]]


def prepare_data(spec: FineTuneJobSpec, *, s3_client: Any = None) -> PreparedData:
    dataset = spec.dataset
    sources = [s for s in (dataset.train, dataset.validation, dataset.test) if s]
    if s3_client is None and any(s.uri.startswith("s3://") for s in sources):
        from fttrainer.storage import s3_client as storage_client

        s3_client = storage_client(spec.output.s3)
    grpo = spec.trainer.grpo if spec.trainer.type == "grpo" else None
    required = tuple(
        (reward.column, f"the {reward.name or reward.type} reward")
        for reward in (grpo.rewards if grpo else [])
        if reward.column
    )
    context = FormatContext.from_spec(dataset, required)
    report = DataReport()
    problems: list[Problem] = []
    parts: dict[str, list[tuple[Sample, str]]] = {}
    for part, source in (("train", dataset.train), ("validation", dataset.validation),
                         ("test", dataset.test)):  # fmt: skip
        if source is None:
            continue
        try:
            raw = read_source(source.uri, split=source.split, s3_client=s3_client,
                              digest=spec.output.oci is not None)  # fmt: skip
        except DataSourceError as exc:
            problems.append(Problem(source.uri, str(exc).removeprefix(f"{source.uri}: ")))
            continue
        report.sources[source.uri] = len(raw.rows) + len(raw.problems)
        report.digests[source.uri] = raw.sha256
        problems.extend(raw.problems)
        converted: list[Located] = []
        for row in raw.rows:
            try:
                converted.extend(
                    (s, row.origin) for s in convert_row(dataset.format, row.data, context)
                )
            except RowError as exc:
                problems.append(Problem(row.origin, str(exc)))
        parts[part] = converted
    all_samples = [pair for pairs in parts.values() for pair in pairs]
    report.samples = len(all_samples)
    report.findings = inspect(all_samples, scan_pii=dataset.cleaning.pii != "off")
    if problems:
        raise DataError(problems, report)
    if dataset.cleaning.pii == "fail" and report.findings.pii:
        located = [
            Problem(o, f"contains {kind}") for kind, os in report.findings.pii.items() for o in os
        ]
        raise DataError(located, report)
    drop = _drop_set(report, spec)
    kept = {part: [p for p in pairs if p[1] not in drop] for part, pairs in parts.items()}
    train, validation, test = split_samples(kept.get("train", []), spec)
    validation += kept.get("validation", [])
    test += kept.get("test", [])
    if not train:
        raise DataError([Problem(dataset.train.uri, "no training samples left")], report)
    report.splits = {"train": len(train), "validation": len(validation), "test": len(test)}
    return PreparedData({"train": train, "validation": validation, "test": test}, report)


def split_samples(samples: list[T], spec: FineTuneJobSpec) -> tuple[list[T], list[T], list[T]]:
    """Deterministic split by ratio and seed: the same rows land in the same part each run."""
    split = spec.effective_split()
    order = list(range(len(samples)))
    random.Random(split.seed).shuffle(order)
    n_validation = round(len(samples) * split.validation)
    n_test = round(len(samples) * split.test)
    if split.validation > 0 and n_validation == 0 and len(samples) > 1:
        n_validation = 1
    validation = [samples[i] for i in order[:n_validation]]
    test = [samples[i] for i in order[n_validation : n_validation + n_test]]
    train = [samples[i] for i in sorted(order[n_validation + n_test :])]
    return train, validation, test


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


def as_dataset(samples: list[Sample]) -> Any:
    """A `datasets.Dataset` of samples, lossless. `Dataset.from_list` gives every row one
    Arrow schema: turns gain each other's keys as nulls and, worse, tool-call arguments and
    tool schemas of different functions are merged field by field (`{"city": "Paris"}`
    next to `{"n": 3}` reads back as `{"city": "Paris", "n": None}`), which the chat
    template then renders. Columns holding lists or objects (conversations, tools, nested
    reward columns with objects) are stored as JSON instead and read back exactly as they
    were."""
    from datasets import Dataset, Features, Json, List

    columns = list(dict.fromkeys(key for sample in samples for key in sample))
    nested = {
        key: List(Json()) if all(isinstance(s.get(key), list | None) for s in samples) else Json()
        for key in columns
        if any(_holds_objects(s.get(key)) for s in samples) or _no_arrow_type(key, samples)
    }
    flat = [key for key in columns if key not in nested]
    inferred = (
        Dataset.from_list([{key: s.get(key) for key in flat} for s in samples]).features
        if flat
        else {}
    )
    features = Features({key: nested.get(key) or inferred[key] for key in columns})
    return Dataset.from_list(samples, features=features)


def _no_arrow_type(key: str, samples: list[dict[str, Any]]) -> bool:
    """Plain values Arrow cannot hold in one typed column: strings next to numbers (a
    reward's `answer` of 4 on one row and "1/2" on the next) or integers beyond 64 bits."""
    kinds = set()
    for sample in samples:
        value = sample.get(key)
        if isinstance(value, bool):
            kinds.add("bool")
        elif isinstance(value, int | float):
            kinds.add("number")
            if isinstance(value, int) and not -(2**63) <= value < 2**63:
                return True
        elif value is not None:
            kinds.add(type(value).__name__)
    return len(kinds) > 1


def _holds_objects(value: Any) -> bool:
    """An object, or a list with one: what Arrow would merge into one struct type (lists of
    plain values keep their Arrow type, so "5" stays a string)."""
    return isinstance(value, dict) or (
        isinstance(value, list) and any(isinstance(item, dict) for item in value)
    )
