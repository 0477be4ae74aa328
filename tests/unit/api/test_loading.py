"""Reading manifests from files: one FineTuneJob per file, errors located precisely."""

from __future__ import annotations

from pathlib import Path

import pytest
import yaml

from ftapi import InvalidSpecError, load_job, parse_job
from fttestkit.builders import make_job


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


def test_aliases_that_expand_past_a_million_values_are_refused_at_once(tmp_path: Path) -> None:
    """Nine aliases of nine, nine levels deep: 400 bytes that expand to 387 million strings.
    `finetune validate` spent over a minute on it (then was killed); now it is refused while
    the YAML is read, before anything is built from it."""
    import time

    levels = ['  l0: &l0 ["lol", "lol", "lol", "lol", "lol", "lol", "lol", "lol", "lol"]']
    levels += [f"  l{i}: &l{i} [{', '.join([f'*l{i - 1}'] * 9)}]" for i in range(1, 9)]
    path = tmp_path / "laughs.yaml"
    path.write_text(yaml.safe_dump(make_job().obj()) + "laughs:\n" + "\n".join(levels) + "\n")
    started = time.monotonic()
    with pytest.raises(InvalidSpecError) as caught:
        load_job(path)
    assert time.monotonic() - started < 5
    assert "laughs.yaml" in str(caught.value)
    assert "more than 1,000,000 values once its aliases (*name) are expanded" in str(caught.value)


def test_a_recursive_alias_is_refused_and_ordinary_anchors_are_read() -> None:
    from ftapi.loading import load_yaml_documents

    with pytest.raises(yaml.YAMLError, match="a recursive alias"):
        load_yaml_documents("spec:\n  x: &a [1, *a]\n")
    (document,) = load_yaml_documents("a: &a [1, 2]\nb: [*a, *a]\nc: *a\n")
    assert document == {"a": [1, 2], "b": [[1, 2], [1, 2]], "c": [1, 2]}


@pytest.mark.parametrize(
    ("text", "value"),
    [("1e-4", 1e-4), ("2E+3", 2000.0), ("-5e-6", -5e-6), ("1.5e-4", 1.5e-4), ("3", 3),
     ("08", 8.0), ("1:30", "1:30"), ("2024-05-01", "2024-05-01"),
     ("2024-05-01T10:00:00Z", "2024-05-01T10:00:00Z"), ("yes", True)],
)  # fmt: skip
def test_scalars_are_read_as_kubectl_reads_them(text: str, value: object) -> None:
    """PyYAML (YAML 1.1) wants a dot in a float: `1e-4` would be a string, and strict
    validation would then refuse `learningRate: 1e-4`, which kubectl sends as a number.
    Base-60 `1:30` and dates are strings to kubectl (go-yaml v2), not 90 and a date."""
    from ftapi.loading import load_yaml_documents

    (document,) = load_yaml_documents(f"x: {text}\n")
    assert document["x"] == value and type(document["x"]) is type(value)


def test_a_learning_rate_without_a_dot_is_a_number(tmp_path: Path) -> None:
    path = tmp_path / "job.yaml"
    path.write_text(yaml.safe_dump(make_job().obj()).replace("spec:\n", "spec:\n  training:\n"
                    "    learningRate: 1e-4\n", 1))  # fmt: skip
    assert load_job(path).spec.training.learning_rate == 1e-4


@pytest.mark.parametrize("value", [float("inf"), float("-inf"), float("nan")])
def test_non_finite_numbers_are_refused(value: float) -> None:
    """JSON cannot carry them to the API server; a local run must not take them either."""
    with pytest.raises(InvalidSpecError) as caught:
        parse_job(make_job().set("training.weightDecay", value).obj())
    assert [e.path for e in caught.value.errors] == ["spec.training.weightDecay"]


def test_an_unquoted_date_is_a_string_as_kubectl_sends_it() -> None:
    import datetime

    job = parse_job(make_job().set("model.revision", datetime.date(2024, 5, 1)).obj())
    assert job.spec.model.revision == "2024-05-01"
