"""Every place a FineTuneJob names something to read: pure, shared by the operator (which
refuses local paths a pod cannot see) and the client (which uploads them on submit).

Fields are spoken as a user writes them in the manifest (camelCase, `[i]` for list items),
so a message and a rewrite address the same key.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Literal

from ftapi.v1alpha1 import FineTuneJob

Kind = Literal["data", "model", "code"]


@dataclass(frozen=True)
class Location:
    """One field naming something the trainer reads: `value` is what the manifest says (a
    URI, a path, a hub id; for a python reward `file.py:name`, only the file part)."""

    field: str
    value: str
    kind: Kind
    suffix: str = ""
    """What follows `value` in the field (a python reward's `:name`)."""


def data_locations(job: FineTuneJob) -> list[tuple[str, str | None]]:
    """(spec field, URI) of the data the job reads: its splits, prompts and benchmarks."""
    spec = job.spec
    data = [
        ("train", spec.dataset.train),
        ("validation", spec.dataset.validation),
        ("test", spec.dataset.test),
    ]
    named: list[tuple[str, str | None]] = [
        (f"spec.dataset.{split}.uri", s.uri) for split, s in data if s is not None
    ]
    named += [("spec.evaluation.promptsUri", spec.evaluation.prompts_uri)]
    named += [
        (f"spec.evaluation.benchmarks[{i}].uri", b.uri)
        for i, b in enumerate(spec.evaluation.benchmarks)
    ]
    return named


def read_locations(job: FineTuneJob) -> list[Location]:
    """Every field naming something the trainer reads, set or not skipped: data, the model,
    its tokenizer, an adapter, harness tasks, python reward files."""
    spec = job.spec
    found = [Location(field, uri, "data") for field, uri in data_locations(job) if uri]
    found.append(Location("spec.model.name", spec.model.name, "model"))
    if spec.model.tokenizer:
        found.append(Location("spec.model.tokenizer", spec.model.tokenizer, "model"))
    if spec.method.adapter is not None:
        found.append(Location("spec.method.adapter.uri", spec.method.adapter.uri, "model"))
    harness = spec.evaluation.harness
    if harness is not None and harness.include_path:
        found.append(Location("spec.evaluation.harness.includePath", harness.include_path, "data"))
    grpo = spec.trainer.grpo
    for i, reward in enumerate(grpo.rewards if grpo is not None else []):
        if reward.type == "python" and reward.function:
            target, _, name = reward.function.rpartition(":")
            if target.endswith(".py"):
                found.append(
                    Location(f"spec.trainer.grpo.rewards[{i}].function", target, "code", f":{name}")
                )
    return found
