"""What a custom-resource create costs by itself, and the CRD variants that take that cost
apart (bench/create_cost.py; the create-cost step of bench/operator_load.py).

A variant is a copy of a CRD under a group of its own (`<variant>.cost.finetune.dev`), so
that every variant is served beside the installed CRD and no controller, webhook or
admission policy of the real group sees its objects. Each drops one thing the API server
does on every create: the CEL rules (`x-kubernetes-validations`), the defaults, the
descriptions (which only make the schema bigger), or the whole schema (`open`: spec and
status keep unknown fields, nothing is validated, defaulted or pruned). `copy` drops
nothing: the control, the same CRD under the other group.
"""

from __future__ import annotations

import copy
import time
from collections.abc import Callable, Iterator
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from typing import Any

from fttestkit.bench_report import percentile

COST_GROUP = "cost.finetune.dev"  # variants are served as <variant>.cost.finetune.dev
CEL = "x-kubernetes-validations"
# What each variant drops: schema keywords removed everywhere ("open": the whole schema).
DROPPED: dict[str, tuple[str, ...]] = {
    "copy": (),
    "no-cel": (CEL,),
    "no-cel-defaults": (CEL, "default"),
    "no-descriptions": ("description",),
    "open": ("the schema",),
}
# Schema keywords whose values are schemas, or lists or maps of them: the walk goes into
# these and nowhere else, so a property *named* "default" or "description" stays.
_ONE_SCHEMA = ("items", "additionalProperties", "not")
_SCHEMA_LISTS = ("allOf", "anyOf", "oneOf")


def subschemas(schema: dict[str, Any]) -> Iterator[dict[str, Any]]:
    """The schemas directly inside `schema` (its properties, items, ...)."""
    yield from schema.get("properties", {}).values()
    for key in _ONE_SCHEMA:
        if isinstance(schema.get(key), dict):
            yield schema[key]
    for key in _SCHEMA_LISTS:
        yield from schema.get(key, [])


def without_keyword(schema: dict[str, Any], keyword: str) -> dict[str, Any]:
    """A copy of `schema` with `keyword` removed from it and from every schema inside it."""
    out = copy.deepcopy(schema)
    pending = [out]
    while pending:
        node = pending.pop()
        node.pop(keyword, None)
        pending.extend(subschemas(node))
    return out


def count_keyword(schema: dict[str, Any], keyword: str) -> int:
    """How many schemas in `schema` (itself included) carry `keyword`; CEL rules are counted
    one by one."""
    total, pending = 0, [schema]
    while pending:
        node = pending.pop()
        if keyword in node:
            value = node[keyword]
            total += len(value) if keyword == CEL else 1
        pending.extend(subschemas(node))
    return total


def open_schema(schema: dict[str, Any]) -> dict[str, Any]:
    """The top level kept (apiVersion, kind, metadata), spec and status unchecked."""
    out = copy.deepcopy(schema)
    loose = {"type": "object", "x-kubernetes-preserve-unknown-fields": True}
    for name in ("spec", "status"):
        if name in out.get("properties", {}):
            out["properties"][name] = dict(loose)
    out.pop(CEL, None)
    return out


def variant_crd(crd: dict[str, Any], variant: str) -> dict[str, Any]:
    """`crd` served as `<variant>.cost.finetune.dev`, less what `variant` drops (DROPPED);
    every version's schema changed alike."""
    if variant not in DROPPED:
        raise ValueError(f"unknown variant {variant!r}: one of {', '.join(DROPPED)}")
    out = copy.deepcopy(crd)
    group = f"{variant}.{COST_GROUP}"
    spec = out["spec"]
    spec["group"] = group
    spec.pop("conversion", None)  # a conversion webhook belongs to the real group
    out["metadata"] = {"name": f"{spec['names']['plural']}.{group}",
                       "labels": {"finetune.dev/bench": "true"}}  # fmt: skip
    out.pop("status", None)
    for version in spec["versions"]:
        schema = version["schema"]["openAPIV3Schema"]
        if variant == "open":
            schema = open_schema(schema)
        for keyword in DROPPED[variant] if variant != "open" else ():
            schema = without_keyword(schema, keyword)
        version["schema"]["openAPIV3Schema"] = schema
    return out


def served_as(body: dict[str, Any], group: str) -> dict[str, Any]:
    """`body` with its apiVersion's group replaced by `group`."""
    version = body["apiVersion"].split("/", 1)[1]
    return {**body, "apiVersion": f"{group}/{version}"}


@dataclass(frozen=True)
class Calls:
    """One batch of creates: each call's milliseconds and the batch's creates per second."""

    ms: list[float]
    per_s: float

    @property
    def p50(self) -> float | None:
        return percentile(self.ms, 50)

    @property
    def p99(self) -> float | None:
        return percentile(self.ms, 99)


def timed_creates(create: Callable[[int], object], count: int, threads: int) -> Calls:
    """`create(0)` .. `create(count - 1)` from `threads` threads, each call timed."""
    calls: list[float] = []

    def one(index: int) -> None:
        started = time.perf_counter()
        create(index)
        calls.append((time.perf_counter() - started) * 1000)

    started = time.perf_counter()
    with ThreadPoolExecutor(max_workers=threads) as pool:
        list(pool.map(one, range(count)))
    return Calls(calls, count / (time.perf_counter() - started))
