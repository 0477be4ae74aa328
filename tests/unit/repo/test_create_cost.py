"""The CRD variants bench/create_cost.py measures (fttestkit/create_cost.py): each drops
exactly what it names, from every schema inside the CRD and nowhere else, and is served
under a group of its own."""

from __future__ import annotations

from typing import Any

import pytest
import yaml

from fttestkit.create_cost import (
    CEL,
    DROPPED,
    count_keyword,
    served_as,
    timed_creates,
    variant_crd,
)
from fttestkit.paths import REPO

CRD = yaml.safe_load((REPO / "crds/finetune.dev_finetunejobs.yaml").read_text())


def _schema(crd: dict[str, Any]) -> dict[str, Any]:
    schema: dict[str, Any] = crd["spec"]["versions"][0]["schema"]["openAPIV3Schema"]
    return schema


def _tiny() -> dict[str, Any]:
    """A CRD whose schema has a property named like each keyword a variant drops."""
    return {
        "apiVersion": "apiextensions.k8s.io/v1",
        "kind": "CustomResourceDefinition",
        "metadata": {"name": "things.example.dev", "annotations": {"a": "b"}},
        "spec": {
            "group": "example.dev",
            "names": {"plural": "things", "kind": "Thing"},
            "conversion": {"strategy": "Webhook"},
            "versions": [{"name": "v1", "schema": {"openAPIV3Schema": {
                "type": "object", "description": "top",
                "properties": {"spec": {
                    "type": "object", "description": "the spec",
                    CEL: [{"rule": "true"}, {"rule": "1 == 1"}],
                    "properties": {
                        "description": {"type": "string", "default": "x"},
                        "default": {"type": "array", "items": {
                            "type": "object", "description": "an item",
                            CEL: [{"rule": "true"}],
                            "properties": {"n": {"type": "integer", "default": 1}}}},
                        "either": {"anyOf": [{"type": "string", "description": "s"}]},
                    }}},
            }}}],
        },
    }  # fmt: skip


@pytest.mark.parametrize("variant", [v for v in DROPPED if v != "open"])
def test_a_variant_drops_its_keywords_everywhere_and_keeps_the_properties(variant: str) -> None:
    crd = _tiny()
    out = variant_crd(crd, variant)
    schema, before = _schema(out), _schema(crd)
    for keyword in DROPPED[variant]:
        assert count_keyword(before, keyword) > 0
        assert count_keyword(schema, keyword) == 0
    for keyword in {CEL, "default", "description"} - set(DROPPED[variant]):
        assert count_keyword(schema, keyword) == count_keyword(before, keyword)
    # Properties named "description" and "default" are fields, not keywords: they stay.
    assert set(schema["properties"]["spec"]["properties"]) == {"description", "default", "either"}
    assert crd == _tiny()  # the input is not changed


def test_counts_count_every_cel_rule_and_every_schema() -> None:
    schema = _schema(_tiny())
    assert count_keyword(schema, CEL) == 3
    assert count_keyword(schema, "default") == 2
    assert count_keyword(schema, "description") == 4


def test_a_variant_is_served_under_its_own_group_without_the_real_groups_webhook() -> None:
    out = variant_crd(_tiny(), "no-cel")
    assert out["spec"]["group"] == "no-cel.cost.finetune.dev"
    assert out["metadata"]["name"] == "things.no-cel.cost.finetune.dev"
    assert "conversion" not in out["spec"]
    assert out["metadata"]["labels"] == {"finetune.dev/bench": "true"}
    body = served_as({"apiVersion": "example.dev/v1", "kind": "Thing"}, out["spec"]["group"])
    assert body["apiVersion"] == "no-cel.cost.finetune.dev/v1"


def test_the_open_variant_checks_nothing_under_spec_or_status() -> None:
    schema = _schema(variant_crd(CRD, "open"))
    for name in ("spec", "status"):
        assert schema["properties"][name] == {
            "type": "object", "x-kubernetes-preserve-unknown-fields": True,
        }  # fmt: skip
    assert count_keyword(schema, CEL) == count_keyword(schema, "default") == 0


def test_the_real_crd_has_what_the_variants_take_away() -> None:
    """The figures docs/benchmarks.md quotes beside the results."""
    schema = _schema(CRD)
    assert count_keyword(schema, CEL) > 100
    assert count_keyword(schema, "default") > 100
    assert count_keyword(_schema(variant_crd(CRD, "no-cel-defaults")), "default") == 0


def test_unknown_variants_are_refused() -> None:
    with pytest.raises(ValueError, match="unknown variant 'no-schema'"):
        variant_crd(CRD, "no-schema")


def test_timed_creates_times_every_call_from_the_threads_given() -> None:
    seen: list[int] = []
    calls = timed_creates(seen.append, 7, 3)
    assert sorted(seen) == list(range(7))
    assert len(calls.ms) == 7 and calls.per_s > 0
    assert calls.p50 is not None and calls.p99 is not None and calls.p50 <= calls.p99
