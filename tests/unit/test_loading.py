"""Reading manifests from files: one FineTuneJob per file, errors located precisely."""

from __future__ import annotations

from pathlib import Path

import pytest
import yaml

from ftapi import InvalidSpecError, load_job, parse_job
from tests.builders import make_job


def _write(tmp_path: Path, *documents: object) -> Path:
    path = tmp_path / "job.yaml"
    path.write_text(yaml.safe_dump_all(documents))
    return path


def test_loads_a_manifest(tmp_path: Path) -> None:
    job = load_job(_write(tmp_path, make_job("demo").obj()))
    assert job.name == "demo"


def test_ignores_other_kinds_in_the_same_file(tmp_path: Path) -> None:
    secret = {"apiVersion": "v1", "kind": "Secret", "metadata": {"name": "s"}}
    assert load_job(_write(tmp_path, secret, make_job().obj())).name == "tiny"


def test_two_jobs_in_one_file_is_an_error(tmp_path: Path) -> None:
    with pytest.raises(InvalidSpecError, match="exactly one FineTuneJob"):
        load_job(_write(tmp_path, make_job("a").obj(), make_job("b").obj()))


def test_broken_yaml_names_the_file(tmp_path: Path) -> None:
    path = tmp_path / "bad.yaml"
    path.write_text("spec: [unclosed\n")
    with pytest.raises(InvalidSpecError) as caught:
        load_job(path)
    assert "bad.yaml" in str(caught.value) and "not valid YAML" in str(caught.value)


def test_wrong_api_version() -> None:
    with pytest.raises(InvalidSpecError, match=r"expected finetune\.dev/v1alpha1"):
        parse_job(make_job().set("apiVersion", "finetune.dev/v2").obj())


def test_list_items_are_located_by_index() -> None:
    manifest = make_job().set("resources.tolerations", [{"key": "a"}, {"effect": "Sometimes"}])
    with pytest.raises(InvalidSpecError) as caught:
        parse_job(manifest.obj())
    assert [e.path for e in caught.value.errors] == ["spec.resources.tolerations[1].effect"]


def test_every_problem_is_reported_at_once() -> None:
    manifest = make_job().set("training.epochs", 0).set("method.type", "magic").obj()
    with pytest.raises(InvalidSpecError) as caught:
        parse_job(manifest)
    assert {e.path for e in caught.value.errors} == {"spec.training.epochs", "spec.method.type"}


def test_paths_keep_fields_that_look_like_pydantic_tags() -> None:
    with pytest.raises(InvalidSpecError) as caught:
        parse_job(make_job().set("evaluation.strategy", "sometimes").obj())
    assert [e.path for e in caught.value.errors] == ["spec.evaluation.strategy"]


def test_a_key_given_twice_is_an_error_as_in_kubectl(tmp_path: Path) -> None:
    """PyYAML keeps the last of two equal keys: the first `training:` block would be lost."""
    path = tmp_path / "job.yaml"
    text = yaml.safe_dump(make_job().obj())
    path.write_text(text + "spec:\n  training: {epochs: 3}\n")
    with pytest.raises(InvalidSpecError, match="the key 'spec' is given twice"):
        load_job(path)


def test_merge_keys_may_be_overridden(tmp_path: Path) -> None:
    from ftapi.loading import load_yaml_documents

    (document,) = load_yaml_documents("base: &b {a: 1, b: 2}\nuse:\n  <<: *b\n  b: 3\n")
    assert document["use"] == {"a": 1, "b": 3}
