"""The test clusters' way into the trainer's fault hooks: a job's finetune.dev/test-faults
annotation reaches its pods as FINETUNE_FAULT_* only when the operator was started with
FTO_TEST_FAULTS=true; such an operator refuses an annotation it cannot read, and one without
the variable (every production operator: the chart cannot set it) ignores it."""

from __future__ import annotations

import json
from typing import Any

import pytest

from ftapi import parse_job
from ftoperator.children import build_children
from ftoperator.config import Settings, parse_options
from ftoperator.policy import policy_violation
from fttestkit.builders import make_job

ANNOTATION = "finetune.dev/test-faults"
FAULTS = {"FINETUNE_FAULT_RANK": "1", "FINETUNE_FAULT_SLEEP": "every:0.3,40:600"}


def _job(annotation: str | None) -> Any:
    job = make_job("llama").set("metadata.namespace", "team-a")
    if annotation is not None:
        job.set("metadata.annotations", {ANNOTATION: annotation})
    return parse_job(job.obj())


def _env(job: Any, settings: Settings) -> dict[str, str]:
    children = build_children(job, attempt=0, settings=settings)
    container = children.job["spec"]["template"]["spec"]["containers"][0]
    return {e["name"]: e.get("value", "") for e in container["env"]}


def test_only_an_operator_started_for_tests_copies_the_faults_into_the_pods() -> None:
    job = _job(json.dumps(FAULTS))
    on = parse_options([], env={"FTO_TEST_FAULTS": "true"}).settings
    assert on.test_faults is True
    env = _env(job, on)
    assert {k: env[k] for k in FAULTS} == FAULTS
    assert policy_violation(job, on) is None

    off = parse_options([], env={}).settings
    assert off.test_faults is False
    assert not [name for name in _env(job, off) if name.startswith("FINETUNE_FAULT_")]
    assert policy_violation(job, off) is None  # an annotation it does not know: left alone
    # Not a flag: the chart (which sets only flags' variables) cannot turn it on.
    with pytest.raises(SystemExit):
        parse_options(["--test-faults"], env={})


@pytest.mark.parametrize(
    ("annotation", "says"),
    [
        ("not json", "is not JSON"),
        ('["FINETUNE_FAULT_RANK"]', "must be a JSON object"),
        ('{"FINETUNE_FAULT_RANK": 1}', "FINETUNE_FAULT_RANK must be strings"),
        ('{"AWS_ENDPOINT_URL": "http://elsewhere"}', "AWS_ENDPOINT_URL not FINETUNE_FAULT_*"),
        ('{"FINETUNE_ATTEMPT": "3"}', "FINETUNE_ATTEMPT not FINETUNE_FAULT_*"),
    ],
)
def test_an_unreadable_annotation_is_refused_with_its_reason(annotation: str, says: str) -> None:
    on = Settings(test_faults=True)
    refused = policy_violation(_job(annotation), on)
    assert refused is not None and refused[0] == "InvalidTestFaults", refused
    assert says in refused[1], refused


def test_no_annotation_means_no_faults() -> None:
    env = _env(_job(None), Settings(test_faults=True))
    assert not [name for name in env if name.startswith("FINETUNE_FAULT_")]
