"""The committed CRD is what the models generate, and it is a valid structural schema."""

from __future__ import annotations

import re
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
import yaml
from pydantic.alias_generators import to_camel

from ftapi import API_VERSION, KIND, FineTuneJob
from ftapi.crd import (
    CRD_FILE,
    CREATE_ONLY,
    PROGRESS_CRD_FILE,
    _checked_at_create_only,
    build_crd,
    build_openapi_schema,
    main,
    render_crd,
)
from ftapi.progress import MAX_REPORT_LENGTH
from ftapi.reference import render_reference
from ftapi.v1alpha1 import FineTuneJobSpec, TrainingSpec
from fttestkit.builders import make_job
from fttestkit.paths import REPO


@pytest.fixture(scope="module")
def schema() -> dict[str, Any]:
    return build_openapi_schema()


def test_committed_crd_is_up_to_date(repo: Path) -> None:
    committed = (repo / "crds" / CRD_FILE).read_text()
    assert committed == render_crd(), "crds/ is stale: run `make crds` and commit the result"
    progress = (repo / "crds" / PROGRESS_CRD_FILE).read_text()
    assert progress == render_crd("progress"), "crds/ is stale: run `make crds`"


def test_the_progress_crd_bounds_its_one_field() -> None:
    crd = yaml.safe_load(render_crd("progress"))
    assert crd["metadata"]["name"] == "finetunejobprogresses.finetune.dev"
    (version,) = crd["spec"]["versions"]
    schema = version["schema"]["openAPIV3Schema"]
    assert schema["properties"]["report"]["maxLength"] == MAX_REPORT_LENGTH
    assert "x-kubernetes-preserve-unknown-fields" not in schema  # unknown fields are pruned
    assert main(["--kind", "progress", "--check", str(REPO / "crds" / PROGRESS_CRD_FILE)]) == 0


def test_check_mode_fails_on_a_stale_file(tmp_path: Path) -> None:
    stale = tmp_path / "crd.yaml"
    stale.write_text(render_crd().replace("ftj", "ftx"))
    assert main(["--check", str(stale)]) == 1
    stale.write_text(render_crd())
    assert main(["--check", str(stale)]) == 0


def test_crd_identity() -> None:
    crd = build_crd()
    names = crd["spec"]["names"]
    assert crd["metadata"]["name"] == "finetunejobs.finetune.dev"
    assert (names["kind"], names["plural"], names["shortNames"]) == (
        "FineTuneJob",
        "finetunejobs",
        ["ftj"],
    )
    (version,) = crd["spec"]["versions"]
    assert version["name"] == "v1alpha1" and version["storage"] and version["served"]
    assert version["subresources"] == {"status": {}}


def test_schema_is_structural(schema: dict[str, Any]) -> None:
    """The API server's structural-schema rules, checked up front for fast feedback."""
    for path, node in _walk(schema):
        assert "$ref" not in node and "allOf" not in node and "oneOf" not in node, path
        assert "title" not in node and "const" not in node and "uniqueItems" not in node, path
        if "anyOf" in node:
            assert node.get("x-kubernetes-int-or-string"), f"{path}: anyOf only for int-or-string"
        else:
            assert node.get("type") in {
                "object",
                "array",
                "string",
                "integer",
                "number",
                "boolean",
            }, path
        if "properties" in node:
            assert "additionalProperties" not in node, path
        for exclusive, bound in (("exclusiveMinimum", "minimum"), ("exclusiveMaximum", "maximum")):
            if exclusive in node:
                assert node[exclusive] is True, f"{path}: {exclusive} must be a boolean (v3.0)"
                # kube-apiserver 1.36 compares integer-valued defaults (0.0 arrives as 0) with
                # a truncated fractional exclusive bound and rejects the CRD.
                assert float(node[bound]).is_integer(), f"{path}: fractional exclusive bound"
        if "default" in node:
            assert None not in _values(node["default"]), f"{path}: null inside a default"


def test_every_field_is_described_for_kubectl_explain(schema: dict[str, Any]) -> None:
    undocumented = [
        path
        for path, node in _walk(schema["properties"]["spec"], "spec")
        if not path.endswith(("[]", "{}")) and not node.get("description")
    ]
    assert undocumented == []


def test_printer_columns_point_at_real_fields(schema: dict[str, Any]) -> None:
    columns = build_crd()["spec"]["versions"][0]["additionalPrinterColumns"]
    assert [c["name"] for c in columns if not c.get("priority")] == [
        "Phase", "Model", "Method", "Progress", "Loss", "ETA", "Age",
    ]  # fmt: skip
    assert [c["name"] for c in columns if c.get("priority") == 1] == ["Nodes", "GPUs", "Restarts"]
    for column in columns:
        if column["jsonPath"].startswith(".metadata."):
            continue
        node = _lookup(schema, column["jsonPath"])
        expected = {"string": "string", "number": "number", "integer": "integer"}[column["type"]]
        assert node["type"] == expected, column


def test_rule_field_paths_exist(schema: dict[str, Any]) -> None:
    checked = 0
    for _, node in _walk(schema):
        for rule in node.get("x-kubernetes-validations", []):
            if "fieldPath" in rule:
                _lookup(node, rule["fieldPath"])
                checked += 1
    assert checked > 30


def test_lists_and_strings_used_by_cel_are_bounded(schema: dict[str, Any]) -> None:
    """The API server refuses CEL rules whose cost it cannot bound."""
    spec = schema["properties"]["spec"]
    for path, node in _walk(spec, "spec"):
        if node.get("type") == "array":
            assert "maxItems" in node, f"{path}: unbounded list"


def test_scalar_defaults_match_the_models(schema: dict[str, Any]) -> None:
    training = schema["properties"]["spec"]["properties"]["training"]["properties"]
    for name, field in TrainingSpec.model_fields.items():
        alias = field.alias or name
        if field.default is not None and not isinstance(field.default, (dict, list)):
            assert training[alias]["default"] == field.default, alias
    assert schema["properties"]["spec"]["properties"]["method"]["default"] == {"type": "lora"}
    resources = schema["properties"]["spec"]["properties"]["resources"]["default"]
    assert resources["gpusPerNode"] == 1 and resources["env"] == []
    assert _lookup(schema, ".spec.model.trustRemoteCode")["default"] is False


def test_crd_file_is_valid_yaml_with_header(repo: Path) -> None:
    text = (repo / "crds" / CRD_FILE).read_text()
    assert text.startswith("# Generated by `make crds`")
    assert yaml.safe_load(text)["kind"] == "CustomResourceDefinition"


def test_status_round_trips_through_the_model() -> None:
    manifest = {
        "metadata": {"name": "x"},
        "spec": make_job().obj()["spec"],
        "status": {
            "phase": "Running",
            "conditions": [{"type": "Running", "status": "True", "reason": "PodsRunning",
                            "lastTransitionTime": "2026-11-21T10:00:00Z", "observedGeneration": 1}],
            "progress": {"step": 120, "totalSteps": 1000, "summary": "120/1000 (12%)", "eta": "1h"},
            "metrics": {"trainLoss": 1.25, "additional": {"test_accuracy": 0.5}},
        },
    }  # fmt: skip
    status = FineTuneJob.model_validate(manifest).status
    assert status is not None
    dumped = status.to_dict()
    assert dumped["conditions"][0]["lastTransitionTime"] == "2026-11-21T10:00:00Z"
    assert dumped["progress"]["totalSteps"] == 1000
    assert dumped["metrics"]["additional"] == {"test_accuracy": 0.5}


def _values(value: Any) -> list[Any]:
    if isinstance(value, dict):
        return [x for v in value.values() for x in [v, *_values(v)]]
    if isinstance(value, list):
        return [x for v in value for x in [v, *_values(v)]]
    return []


def _walk(node: dict[str, Any], path: str = "") -> Iterator[tuple[str, dict[str, Any]]]:
    yield path, node
    for name, child in node.get("properties", {}).items():
        yield from _walk(child, f"{path}.{name}" if path else name)
    if isinstance(node.get("items"), dict):
        yield from _walk(node["items"], f"{path}[]")
    if isinstance(node.get("additionalProperties"), dict):
        yield from _walk(node["additionalProperties"], f"{path}{{}}")


def _lookup(node: dict[str, Any], json_path: str) -> dict[str, Any]:
    for part in json_path.strip(".").split("."):
        node = node["properties"][part]
    return node


def test_api_reference_is_up_to_date(repo: Path) -> None:
    committed = (repo / "docs" / "api-reference.md").read_text()
    assert committed == render_reference(), "docs/api-reference.md is stale: run `make crds`"


def test_api_identity_constants_match_the_model() -> None:
    job = FineTuneJob.model_validate(make_job().obj())
    assert (job.api_version, job.kind) == (API_VERSION, KIND)


def test_rules_that_cannot_fail_on_an_update_run_at_create_only(schema: dict[str, Any]) -> None:
    """Every write runs every rule of the object, status writes too: a rule that reads only
    fields `self == oldSelf` keeps is guarded to run at create only (crd.CREATE_ONLY). A rule
    reading a mutable field, an atomic list's item rules (no oldSelf there) and the
    immutability rules themselves run on every write."""
    spec = schema["properties"]["spec"]
    immutable = {to_camel(name) for name in FineTuneJobSpec.immutable}
    guarded = unguarded = 0
    for path, node, correlated in _correlated(spec, "spec"):
        for rule in node.get("x-kubernetes-validations", []):
            top = path.split(".")[1] if "." in path else ""
            expected = (
                rule["rule"] != "self == oldSelf"
                and correlated
                and (top in immutable or (path == "spec" and not re.search(
                    r"self\.(scheduling|runPolicy)", rule["rule"])))
            )  # fmt: skip
            if expected:
                assert rule["rule"].startswith(CREATE_ONLY + "("), (path, rule)
                assert rule["optionalOldSelf"] is True
                guarded += 1
            else:
                assert not rule["rule"].startswith(CREATE_ONLY), (path, rule)
                assert "optionalOldSelf" not in rule
                unguarded += 1
    assert guarded > 60 and unguarded >= len(immutable), (guarded, unguarded)
    for scheduled in ("scheduling", "runPolicy"):
        for _, node in _walk(spec["properties"][scheduled]):
            assert not any("optionalOldSelf" in r for r in node.get("x-kubernetes-validations", []))


def _correlated(
    node: dict[str, Any], path: str, correlated: bool = True
) -> Iterator[tuple[str, dict[str, Any], bool]]:
    """_walk, and whether the API server has an oldSelf there: not below an atomic list."""
    yield path, node, correlated
    for name, child in node.get("properties", {}).items():
        yield from _correlated(child, f"{path}.{name}", correlated)
    if isinstance(node.get("items"), dict):
        keyed = node.get("x-kubernetes-list-type") == "map"
        yield from _correlated(node["items"], f"{path}[]", correlated and keyed)
    if isinstance(node.get("additionalProperties"), dict):
        yield from _correlated(node["additionalProperties"], f"{path}{{}}", correlated)


def test_a_spec_rule_reading_a_mutable_field_is_not_guarded() -> None:
    spec = {
        "x-kubernetes-validations": [
            {"rule": "self.scheduling.suspend || self.trainer.type == 'sft'", "message": "m"},
            {"rule": "self.trainer.type == 'sft'", "message": "m"},
        ],
        "properties": {"trainer": {"type": "object"}, "scheduling": {"type": "object"}},
    }
    _checked_at_create_only(spec, ("trainer",))
    first, second = spec["x-kubernetes-validations"]
    assert "optionalOldSelf" not in first
    assert second == {"rule": f"{CREATE_ONLY}(self.trainer.type == 'sft')", "message": "m",
                      "optionalOldSelf": True}  # fmt: skip
