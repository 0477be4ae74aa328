"""Version skew (ftapi.skew): what this code makes of objects a newer release wrote."""

from __future__ import annotations

import json

import pytest

from ftapi.contract import ANNOTATION_CONTRACT, ANNOTATION_WRITTEN_BY, CONTRACT
from ftapi.loading import InvalidSpecError
from ftapi.progress import UnreadableReport, read_rank_report, read_report
from ftapi.skew import (
    contract_refusal,
    newer_fields,
    older_reader_hint,
    parse_lenient,
    parse_stored_job,
)
from ftapi.v1alpha1 import FineTuneJobStatus
from fttestkit.builders import make_job
from fttestkit.skew import newer_schema, with_fields, with_newer_defaults

REPORT = {"attempt": 0, "stage": "training", "step": 3, "updatedAt": "2026-11-25T00:00:00Z"}


def test_a_stored_job_with_newer_fields_parses_and_says_where_they_are() -> None:
    stored = with_newer_defaults(make_job("a").obj())
    job, unknown = parse_stored_job(stored)
    assert sorted(unknown) == [("spec", "newBlock"), ("spec", "training", "newKnob")]
    assert job.spec.training.epochs == 1  # the rest is read as always
    # The same manifest given to the CLI is still an error (a user's typo there).
    from ftapi import parse_job

    with pytest.raises(InvalidSpecError, match=r"spec\.training\.newKnob: unknown field"):
        parse_job(stored)


def test_a_newer_field_beside_an_invalid_value_is_still_invalid() -> None:
    stored = with_fields(with_newer_defaults(make_job("a").obj()), {"spec.training.epochs": -1})
    with pytest.raises(InvalidSpecError) as raised:
        parse_stored_job(stored)
    assert "spec.training.epochs: must be > 0.0 (got -1)" in [str(e) for e in raised.value.errors]


@pytest.mark.parametrize(
    ("values", "at_default", "set_"),
    [
        ({}, ["spec.training.newKnob", "spec.newBlock"], []),
        ({"spec.training.newKnob": 5}, ["spec.newBlock"], ["spec.training.newKnob"]),
        ({"spec.newBlock": {"level": 4}}, ["spec.training.newKnob"], ["spec.newBlock"]),
    ],
)
def test_newer_fields_holding_the_crds_default_are_told_apart_from_set_ones(
    values: dict[str, object], at_default: list[str], set_: list[str]
) -> None:
    stored = with_fields(with_newer_defaults(make_job("a").obj()), values)
    _, unknown = parse_stored_job(stored)
    newer = newer_fields(stored, unknown, newer_schema())
    assert sorted(newer.at_default) == sorted(at_default)
    assert sorted(newer.set) == sorted(set_)


def test_without_the_crd_every_newer_field_counts_as_set() -> None:
    stored = with_newer_defaults(make_job("a").obj())
    _, unknown = parse_stored_job(stored)
    newer = newer_fields(stored, unknown, None)
    assert newer.at_default == () and len(newer.set) == 2


def test_a_status_written_by_a_newer_operator_is_read_without_its_new_fields() -> None:
    status, ignored = parse_lenient(
        FineTuneJobStatus, {"phase": "Running", "attempt": 2, "newerSummary": {"x": 1}}
    )
    assert (status.phase, status.attempt) == ("Running", 2)
    assert ignored == [("newerSummary",)]


def test_a_report_from_a_newer_trainer_is_read_without_its_new_fields() -> None:
    assert read_report(json.dumps(REPORT)).contract == CONTRACT  # an older trainer's
    report = read_report(json.dumps({**REPORT, "gpuWatts": 700, "metrics": {"train_loss": 1.5}}))
    assert (report.step, report.metrics) == (3, {"train_loss": 1.5})
    rank = read_rank_report(json.dumps({"rank": 1, "updatedAt": REPORT["updatedAt"], "x": 1}))
    assert rank.rank == 1


@pytest.mark.parametrize(
    ("text", "said"),
    [
        ("{not json", "not JSON"),
        (json.dumps({**REPORT, "step": -4}), "step: must be >= 0"),
        (json.dumps({**REPORT, "contract": CONTRACT + 1}), f"contract {CONTRACT + 1}"),
    ],
)
def test_a_report_the_operator_cannot_read_says_why(text: str, said: str) -> None:
    with pytest.raises(UnreadableReport, match=said):
        read_report(text)


def _written(contract: str = str(CONTRACT)) -> dict[str, object]:
    return with_fields(
        make_job("a").obj(),
        {"metadata.annotations": {ANNOTATION_CONTRACT: contract,
                                  ANNOTATION_WRITTEN_BY: "finetune-operator 9.9.9"}},
    )  # fmt: skip


def test_a_trainer_refuses_a_config_of_another_contract_naming_both_sides() -> None:
    assert contract_refusal(_written(), "finetune-trainer 0.1.0") is None
    refusal = contract_refusal(_written(str(CONTRACT + 1)), "finetune-trainer 0.1.0")
    assert refusal is not None
    assert "finetune-operator 9.9.9" in refusal.message
    assert "finetune-trainer 0.1.0" in refusal.message


def test_an_older_trainer_names_the_newer_operator_when_a_field_is_unknown() -> None:
    from ftapi.loading import FieldError

    unknown = [FieldError("spec.training.newKnob", "unknown field")]
    hint = older_reader_hint(_written(), unknown, "finetune-trainer 0.1.0")
    assert hint is not None and "finetune-operator 9.9.9" in hint
    # A user's own manifest (no writer) gets no such hint: the field is their mistake.
    assert older_reader_hint(make_job("a").obj(), unknown, "finetune-trainer 0.1.0") is None
    other = [FieldError("spec.training.epochs", "must be > 0")]
    assert older_reader_hint(_written(), other, "finetune-trainer 0.1.0") is None


def test_read_status_leaves_out_what_it_cannot_read_and_says_which() -> None:
    from ftapi.skew import read_status

    condition = {"type": "Running", "status": "True", "reason": "Has Spaces",
                 "lastTransitionTime": "2026-11-25T00:00:00Z"}  # fmt: skip
    stored = {"phase": "Draining", "restarts": 2, "newer": {"a": 1},
              "progress": {"step": 5, "newerRate": 1.0}, "conditions": [condition]}  # fmt: skip
    status, left_out, unreadable = read_status(stored)
    assert status.restarts == 2 and status.progress is not None and status.progress.step == 5
    # Unknown fields where they are; a bad value takes its top-level field (a list whole).
    assert sorted(left_out) == [("conditions",), ("newer",), ("phase",), ("progress", "newerRate")]
    assert [e.path for e in unreadable] == ["status.phase", "status.conditions[0].reason"]
    assert "'Draining'" in str(unreadable[0])
    # Only newer fields: nothing unreadable.
    assert read_status({"phase": "Running", "newer": 1})[2] == []
