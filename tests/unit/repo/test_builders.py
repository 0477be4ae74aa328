"""The pod and Job builders: what they build reads, to the operator's code, as what they say.

test_planner.py trusts them; a builder that drifted (a label, a field name, a phase) would
make its tests pass or fail for the wrong reason.
"""

from __future__ import annotations

from typing import Any

from ftapi import parse_job
from ftoperator.children import LABEL_ATTEMPT, LABEL_JOB, build_children
from ftoperator.config import Settings
from ftoperator.failures import Failure, attempt_failure, pod_failure
from fttestkit.builders import make_batch_job, make_job, make_pod


def test_the_built_job_and_pods_carry_the_names_and_labels_the_operator_gives_its_own() -> None:
    finetune = make_job("llama").set("metadata.namespace", "team-a").set("resources.nodes", 2)
    real = build_children(
        parse_job(finetune.obj()), attempt=2, settings=Settings(default_image="x")
    ).job
    built = make_batch_job(2, nodes=2).obj()
    for key in ("name", "namespace"):
        assert built["metadata"][key] == real["metadata"][key]
    assert built["metadata"]["labels"].items() <= real["metadata"]["labels"].items()
    assert {k: real["spec"][k] for k in built["spec"]} == built["spec"]
    labels = make_pod(1, attempt=2).obj()["metadata"]["labels"]
    template = real["spec"]["template"]["metadata"]["labels"]
    for key in (LABEL_JOB, LABEL_ATTEMPT):
        assert labels[key] == template[key]
    assert labels["batch.kubernetes.io/job-name"] == real["metadata"]["name"]
    assert labels["batch.kubernetes.io/job-completion-index"] == "1"


def test_pod_states_read_as_the_failures_they_stand_for() -> None:
    def reason(pod: dict[str, Any], lost: frozenset[str] = frozenset()) -> str | None:
        failure = pod_failure(pod, lost)
        return failure.reason if failure else None

    oom = pod_failure(make_pod(0).failed(137, "OOMKilled").obj())
    assert oom is not None and oom.reason == "OOMKilled"
    assert "pod llama-0-0-x0k9z" in oom.message and "exit code 137" in oom.message
    assert reason(make_pod(0).failed(1, "Error", "boom").obj()) == "ExitCode"
    assert reason(make_pod(0).disrupted("PreemptionByScheduler", "preempting").obj()) == (
        "Preempted"
    )
    assert reason(make_pod(0).failed().because("Evicted", "low on memory").obj()) == "Evicted"
    assert reason(make_pod(0).obj(), frozenset({"gpu-1"})) == "NodeLost"  # running on gpu-1
    assert reason(make_pod(0).on("gpu-2").obj(), frozenset({"gpu-1"})) is None
    unscheduled = make_pod(0).pending().unschedulable("0/3").obj()
    assert "nodeName" not in unscheduled["spec"]
    assert reason(unscheduled, frozenset({"gpu-1"})) is None
    assert reason(make_pod(0).succeeded().obj()) is None
    assert reason(make_pod(0).failed(0, "Completed").obj()) == "PodFailed"


def test_job_states_read_as_the_verdicts_they_stand_for() -> None:
    assert attempt_failure(make_batch_job(0).obj(), []) is None
    assert attempt_failure(make_batch_job(0).complete().obj(), []) is None
    assert attempt_failure(make_batch_job(0).failed("DeadlineExceeded", "late").obj(), []) == (
        Failure("DeadlineExceeded", "late")
    )
    running, suspended = make_batch_job(0, nodes=3).obj(), make_batch_job(0, suspend=True).obj()
    assert (running["status"]["active"], running["spec"]["suspend"]) == (3, False)
    assert "startTime" not in suspended["status"] and suspended["spec"]["suspend"] is True
    done = make_batch_job(0).complete(60).finished_at(60).obj()["status"]
    assert [c["type"] for c in done["conditions"]] == ["SuccessCriteriaMet", "Complete"]
    assert "active" not in done and done["completionTime"] == "2025-03-01T12:01:00Z"


def test_builders_hand_out_copies() -> None:
    """Tests change what they were given (World suspends its Jobs); a builder reused for
    another object must not see it."""
    pod = make_pod(0).failed(1)
    first = pod.obj()
    first["status"]["containerStatuses"][0]["state"]["terminated"]["exitCode"] = 0
    first["status"]["conditions"].append({"type": "Ready"})
    assert pod.obj()["status"]["containerStatuses"][0]["state"]["terminated"]["exitCode"] == 1
    assert pod.obj()["status"]["conditions"] == []
    job = make_batch_job(0).failed()
    job.obj()["status"]["conditions"][0]["status"] = "False"
    assert job.obj()["status"]["conditions"][0]["status"] == "True"
