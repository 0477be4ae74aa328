"""Every cross-field rule rejects a bad manifest with a message naming the field, and its CEL
form (what the API server runs) agrees with its Python form (what pydantic runs)."""

from __future__ import annotations

import json
from collections.abc import Iterator
from functools import cache
from pathlib import Path
from typing import Any, get_args

import celpy
import pytest
import yaml
from pydantic import BaseModel

from ftapi import FineTuneJob, InvalidSpecError, parse_job
from ftapi.v1alpha1 import ApiModel, Rule
from ftapi.v1alpha1._base import SKIP_RULES
from fttestkit.builders import JobBuilder, make_job
from tests.cases import FIELD_CASES, RULE_CASES


@pytest.mark.parametrize(
    ("manifest", "path", "phrase"),
    list(RULE_CASES.values()) + list(FIELD_CASES.values()),
    ids=list(RULE_CASES) + list(FIELD_CASES),
)
def test_bad_manifest_is_rejected_naming_the_field(
    manifest: dict[str, Any], path: str, phrase: str
) -> None:
    with pytest.raises(InvalidSpecError) as caught:
        parse_job(manifest)
    named = [e for e in caught.value.errors if e.path == path]
    assert named, f"no error names {path!r}: {caught.value.errors}"
    assert any(phrase in e.message for e in named), named


@pytest.mark.parametrize("manifest", [c[0] for c in RULE_CASES.values()], ids=list(RULE_CASES))
def test_cel_and_python_agree_on_bad_manifests(manifest: dict[str, Any]) -> None:
    job = FineTuneJob.model_validate(manifest, context={SKIP_RULES: True})
    broken = _compare_cel_with_python(job)
    assert broken, "the manifest breaks no rule in either form"


def test_cel_and_python_agree_on_every_example(repo: Path) -> None:
    for path in sorted((repo / "examples").glob("*.yaml")):
        job = FineTuneJob.model_validate(yaml.safe_load(path.read_text()))
        assert _compare_cel_with_python(job) == [], path.name


def test_every_rule_has_a_case_that_breaks_it() -> None:
    broken: set[Rule] = set()
    for manifest, _, _ in RULE_CASES.values():
        job = FineTuneJob.model_validate(manifest, context={SKIP_RULES: True})
        broken.update(rule for _, rule in _compare_cel_with_python(job))
    missing = [rule.message for rule in _all_rules() if rule not in broken]
    assert not missing, f"rules no case exercises: {missing}"


# CEL's verdict on (rule, object as JSON): the cases share most of their objects (one field
# changed in a valid job), and celpy's interpreter is this module's cost (25,000 evaluations
# of 12,000 distinct pairs, about a minute of CPU); a verdict depends on nothing else.
_CEL_VERDICTS: dict[tuple[str, str], bool] = {}


def _compare_cel_with_python(job: FineTuneJob) -> list[tuple[str, Rule]]:
    """Evaluate every rule of every object in the job both ways; return the broken ones."""
    broken = []
    for where, obj in _objects(job, "job"):
        document = obj.to_dict()
        key = json.dumps(document, sort_keys=True)
        activation = None
        for rule in type(obj).rules:
            by_cel = _CEL_VERDICTS.get((rule.cel, key))
            if by_cel is None:
                activation = activation or {"self": celpy.json_to_cel(document)}
                by_cel = bool(_program(rule.cel).evaluate(activation))
                _CEL_VERDICTS[(rule.cel, key)] = by_cel
            by_python = rule.check(obj)
            assert by_cel == by_python, f"{where}: CEL says {by_cel}, Python {by_python}: {rule}"
            if not by_python:
                broken.append((where, rule))
    return broken


def _objects(obj: BaseModel, where: str) -> Iterator[tuple[str, ApiModel]]:
    if isinstance(obj, ApiModel):
        yield where, obj
    for name in type(obj).model_fields:
        value = getattr(obj, name)
        items = value if isinstance(value, list) else [value]
        for i, item in enumerate(items):
            if isinstance(item, BaseModel):
                yield from _objects(item, f"{where}.{name}[{i}]")


@cache
def _program(expression: str) -> celpy.Runner:
    env = celpy.Environment()
    return env.program(env.compile(expression))


def _all_rules() -> list[Rule]:
    seen: list[Rule] = []
    stack: list[type[BaseModel]] = [FineTuneJob]
    visited: set[type[BaseModel]] = set()
    while stack:
        cls = stack.pop()
        if cls in visited:
            continue
        visited.add(cls)
        if issubclass(cls, ApiModel):
            seen.extend(cls.rules)
        for field in cls.model_fields.values():
            stack.extend(_model_types(field.annotation))
    return seen


def _model_types(annotation: Any) -> Iterator[type[BaseModel]]:
    if isinstance(annotation, type) and issubclass(annotation, BaseModel):
        yield annotation
        return
    for arg in get_args(annotation):
        yield from _model_types(arg)


def test_builder_default_is_valid() -> None:
    assert parse_job(JobBuilder().obj()).spec.method.type == "lora"


@pytest.mark.parametrize(
    ("affinity", "phrase"),
    [
        ({"nodeAfinity": {}}, "unknown field(s) nodeAfinity"),
        ({"nodeAffinity": "x"}, "nodeAffinity: expected an object"),
        ({"nodeAffinity": {"requiredDuringSchedulingIgnoredDuringExecution": {
            "nodeSelectorTerms": "abc"}}}, "expected an object with a nodeSelectorTerms list"),
        ({"nodeAffinity": {"preferredDuringSchedulingIgnoredDuringExecution": [1]}},
         "expected an object with a preference"),
        ({"nodeAffinity": {"requiredDuringSchedulingIgnoredDuringExecution": {
            "nodeSelectorTerms": [{"matchExpressions": [{"operator": "In"}]}]}}},
         "matchExpressions: expected a list of objects with a key"),
    ],
)  # fmt: skip
def test_a_malformed_affinity_is_refused_naming_the_problem(
    affinity: dict[str, Any], phrase: str
) -> None:
    """The API server keeps affinity as it is (preserve-unknown-fields); the operator's
    validation refuses a wrong shape with the job (an InvalidSpec status) instead of failing
    on it while it checks the node-selector policy, or the API server pruning a typo."""
    with pytest.raises(InvalidSpecError) as caught:
        parse_job(JobBuilder().set("resources.affinity", affinity).obj())
    assert any(
        e.path == "spec.resources.affinity" and phrase in e.message for e in caught.value.errors
    ), caught.value.errors


def test_a_well_formed_affinity_is_accepted() -> None:
    affinity = {
        "nodeAffinity": {
            "requiredDuringSchedulingIgnoredDuringExecution": {"nodeSelectorTerms": [
                {"matchExpressions": [{"key": "pool", "operator": "In", "values": ["a100"]}]}]},
            "preferredDuringSchedulingIgnoredDuringExecution": [
                {"weight": 1, "preference": {"matchFields": [
                    {"key": "metadata.name", "operator": "NotIn", "values": ["n1"]}]}}],
        },
        "podAntiAffinity": {"preferredDuringSchedulingIgnoredDuringExecution": []},
    }  # fmt: skip
    job = parse_job(JobBuilder().set("resources.affinity", affinity).obj())
    assert job.spec.resources.affinity == affinity


def test_a_spectrum_pattern_that_does_not_compile_is_refused() -> None:
    manifest = JobBuilder().set(
        "method", {"type": "spectrum", "spectrum": {"targetParameters": ["q_proj", "(["]}}
    )
    with pytest.raises(InvalidSpecError) as caught:
        parse_job(manifest.obj())
    assert any("[1] '([': not a valid regular expression" in e.message
               for e in caught.value.errors), caught.value.errors  # fmt: skip


def test_well_formed_oci_references_pass_both_layers_and_the_merged_tag_follows_the_tag() -> None:
    from ftapi.v1alpha1.registry import merged_reference

    digest = "sha256:" + "0" * 64
    job = (make_job().set("model.name", f"oci://registry.internal:5000/base/llama-3__8b:v1@{digest}")
           .set("model.tokenizer", "oci://r.example/tok")
           .set("model.registry", {"plainHttp": True})
           .set("output.oci", {"reference": "oci://10.0.0.1:5000/t.a/tuned:run_7.1"}))  # fmt: skip
    parsed = FineTuneJob.model_validate(job.obj())
    assert _compare_cel_with_python(parsed) == []
    assert merged_reference("oci://r:5000/a/m:v1") == "oci://r:5000/a/m:v1-merged"
    assert merged_reference("oci://r.example/m") == "oci://r.example/m:latest-merged"
