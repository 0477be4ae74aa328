"""The operator's side of version skew: stored jobs with fields newer than itself, and
progress reports it cannot read (ftapi.skew, planner.held_for_newer_operator)."""

from __future__ import annotations

import json
from typing import Any, cast

import yaml

from ftapi import parse_job
from ftapi.contract import ANNOTATION_CONTRACT, ANNOTATION_WRITTEN_BY, CONTRACT
from ftoperator.children import build_children
from ftoperator.config import OPERATOR, Settings
from ftoperator.controller import Controller
from ftoperator.kube import Kube
from ftoperator.planner import CreateAttempt, DeleteJob, Plan
from fttestkit.builders import make_batch_job, make_job
from fttestkit.skew import newer_crd, with_fields, with_newer_defaults

KEY = ("ns", "new")
UID = "ftj-uid"


def _controller() -> Controller:
    controller = Controller(cast(Kube, None), Settings())  # plan() never calls the API
    controller.observe_crd(newer_crd())
    return controller


def _stored(
    values: dict[str, Any] | None = None, status: dict[str, Any] | None = None
) -> dict[str, Any]:
    body = with_newer_defaults(make_job("new").obj())
    body = with_fields(body, {"metadata.namespace": "ns", "metadata.generation": 1,
                              "metadata.uid": UID, **(values or {})})  # fmt: skip
    if status is not None:
        body["status"] = status
    return body


def _condition(plan: Plan, type_: str) -> tuple[str, str, str]:
    found = next(c for c in plan.status.conditions if c.type == type_)
    return found.status, found.reason, found.message


def test_newer_fields_at_their_default_are_ignored_and_said_once() -> None:
    controller = _controller()
    job, plan = controller.plan(KEY, _stored())
    assert job is not None
    assert CreateAttempt(0) in plan.actions  # the job starts as it would have before
    status, reason, message = _condition(plan, "Validated")
    assert (status, reason) == ("True", "NewerFieldsIgnored")
    assert "spec.training.newKnob" in message and "spec.newBlock" in message
    assert OPERATOR in message
    assert [e.type for e in plan.events if e.reason == "NewerFieldsIgnored"] == ["Normal"]
    # The next pass (status written) does not repeat the Event.
    written = plan.status.model_dump(mode="json", by_alias=True, exclude_none=True)
    _, again = controller.plan(KEY, _stored(status=written))
    assert not [e for e in again.events if e.reason == "NewerFieldsIgnored"]


def test_a_set_newer_field_holds_the_job_without_failing_it() -> None:
    controller = _controller()
    job, plan = controller.plan(KEY, _stored({"spec.training.newKnob": 5}))
    assert job is not None
    assert plan.actions == []  # nothing created
    assert plan.status.phase == "Pending"
    status, reason, message = _condition(plan, "Running")
    assert (status, reason) == ("False", "NeedsNewerOperator")
    assert "spec.training.newKnob" in message and "spec.newBlock" not in message
    assert [e.type for e in plan.events if e.reason == "NeedsNewerOperator"] == ["Warning"]
    written = plan.status.model_dump(mode="json", by_alias=True, exclude_none=True)
    _, again = controller.plan(KEY, _stored({"spec.training.newKnob": 5}, status=written))
    assert again.actions == [] and not [e for e in again.events if e.type == "Warning"]
    # A newer operator (one that knows the field) would start it: here, with the field
    # removed from the spec, this one does.
    _, removed = controller.plan(KEY, _stored(status=written))
    assert CreateAttempt(0) in removed.actions


def _owned_job(controller: Controller, *, failed: bool = False) -> None:
    batch_job = make_batch_job(0, owner="new", namespace="ns")
    running = (batch_job.failed() if failed else batch_job).obj()
    running["metadata"]["ownerReferences"] = [{"uid": UID, "controller": True}]
    controller.cache.observe_child("Job", KEY, running["metadata"]["name"], running)


def test_an_attempt_already_running_goes_on() -> None:
    controller = _controller()
    _owned_job(controller)
    status = {"phase": "Running", "attempt": 0}
    job, plan = controller.plan(KEY, _stored({"spec.training.newKnob": 5}, status=status))
    assert job is not None and plan.actions == []  # its Job is left alone
    assert _condition(plan, "Running")[1] != "NeedsNewerOperator"  # not held
    _, reason, message = _condition(plan, "Validated")
    assert reason == "NewerFieldsIgnored" and "the running attempt goes on" in message


def test_a_restart_under_a_set_newer_field_tears_the_attempt_down_and_waits() -> None:
    controller = _controller()
    _owned_job(controller, failed=True)
    status = {"phase": "Running", "attempt": 0}
    _, plan = controller.plan(KEY, _stored({"spec.training.newKnob": 5}, status=status))
    assert not any(isinstance(a, CreateAttempt) for a in plan.actions)
    assert any(isinstance(a, DeleteJob) for a in plan.actions)  # the failed attempt goes
    assert (plan.status.phase, plan.status.attempt, plan.status.restarts) == ("Pending", 1, 1)
    assert _condition(plan, "Running")[1] == "NeedsNewerOperator"
    assert "goes on" not in (plan.status.message or "")
    assert [e.reason for e in plan.events].count("NeedsNewerOperator") == 1


def test_before_the_crd_is_read_nothing_changes_and_the_job_is_looked_at_again() -> None:
    controller = Controller(cast(Kube, None), Settings())  # no CRD event yet
    status = {"phase": "Suspended", "attempt": 0}
    _, plan = controller.plan(KEY, _stored(status=status))
    assert plan.actions == [] and plan.events == []
    assert plan.status.phase == "Suspended" and plan.requeue_after is not None


def test_a_rollback_writes_a_newer_operators_status_fields_back_as_they_were() -> None:
    from ftapi.skew import kept

    stored = {"phase": "Running", "attempt": 0, "newerSummary": {"x": 1}}
    controller = _controller()
    controller.plan(KEY, _stored(status=stored))
    assert controller._jobs[KEY].unknown_status == [("newerSummary",)]
    assert kept({"phase": "Running"}, stored, [("newerSummary",)])["newerSummary"] == {"x": 1}


def test_a_status_value_from_a_newer_operator_leaves_the_job_alone_and_is_said_once() -> None:
    from ftapi.skew import kept

    # A newer operator's phase (after a rollback), on a job whose attempt Job is gone: read
    # as "Pending", this operator would start a new attempt; it must not act at all.
    stored = {"phase": "Draining", "attempt": 1, "restarts": 1, "message": "draining node x"}
    controller = _controller()
    job, plan = controller.plan(KEY, _stored(status=stored))
    assert job is not None
    assert plan.actions == []
    (event,) = plan.events
    assert (event.type, event.reason) == ("Warning", "NeedsNewerOperator")
    assert "status.phase" in event.message and "'Draining'" in event.message
    assert OPERATOR in event.message
    # What _execute writes back is what was stored: nothing of the newer status is lost.
    after = plan.status.model_dump(mode="json", by_alias=True, exclude_none=True)
    assert kept(after, stored, controller._jobs[KEY].unknown_status)["phase"] == "Draining"
    assert plan.status.attempt == 1 and plan.status.restarts == 1
    # Said once, not at every pass; a readable status ends the hold.
    _, again = controller.plan(KEY, _stored(status=stored))
    assert again.actions == [] and again.events == []
    _, readable = controller.plan(KEY, _stored(status={**stored, "phase": "Running"}))
    assert controller._jobs[KEY].told_unreadable is None
    assert "NeedsNewerOperator" not in [e.reason for e in readable.events]


def test_an_unreadable_report_is_named_in_a_condition_and_the_last_readable_one_stays() -> None:
    controller = _controller()
    body = with_fields(make_job("new").obj(), {"metadata.namespace": "ns", "metadata.uid": UID,
                                                "metadata.generation": 1})  # fmt: skip
    controller.cache.observe_job(KEY, body)
    good = {"attempt": 0, "stage": "training", "step": 7, "updatedAt": "2026-11-25T00:00:00Z"}
    controller.cache.observe_progress(KEY, json.dumps(good), UID)
    controller.cache.observe_progress(KEY, json.dumps({**good, "contract": CONTRACT + 1}), UID)
    assert controller.cache.progress_of(KEY) is not None
    status = {"phase": "Running", "attempt": 0}
    _, plan = controller.plan(KEY, {**body, "status": status})
    state, reason, message = _condition(plan, "ProgressReadable")
    assert (state, reason) == ("False", "ProgressUnreadable")
    assert f"contract {CONTRACT + 1}" in message
    assert plan.status.progress is not None and plan.status.progress.step == 7
    assert [e.reason for e in plan.events].count("ProgressUnreadable") == 1
    # Readable again: the condition says so.
    controller.cache.observe_progress(KEY, json.dumps({**good, "step": 8}), UID)
    written = plan.status.model_dump(mode="json", by_alias=True, exclude_none=True)
    _, later = controller.plan(KEY, {**body, "status": written})
    assert _condition(later, "ProgressReadable")[:2] == ("True", "Readable")


def test_the_config_map_holds_only_what_differs_from_the_defaults_and_who_wrote_it() -> None:
    job = parse_job(make_job("new").set("training.epochs", 2).obj())
    config = yaml.safe_load(
        build_children(job, attempt=0, settings=Settings()).config["data"]["job.yaml"]
    )
    assert config["metadata"]["annotations"] == {ANNOTATION_CONTRACT: str(CONTRACT),
                                                 ANNOTATION_WRITTEN_BY: OPERATOR}  # fmt: skip
    assert config["spec"]["training"] == {"epochs": 2}  # no default spelled out
    assert "runPolicy" not in config["spec"]
    # The trainer reads it back to the very same spec.
    assert parse_job(config).spec == job.spec
