"""An upgrade's order on the real API server: the newer CRD first, the operator after.

The CRD of a newer release (this tree's, with spec.training.newKnob (default 1) and
spec.newBlock added: fttestkit.skew) is applied while a job waits suspended, as in a Kueue
queue; then the operator restarts as a rollout would. The API server now returns the job
with the newer fields defaulted, and this operator, older than that CRD, must neither fail
the job nor drop what a user set:
- the waiting job goes on when resumed (NewerFieldsIgnored, an Event);
- a job that sets newKnob waits with NeedsNewerOperator, nothing created;
- a progress report from a newer trainer (a field this operator lacks) still moves status.

serial: the newer CRD is the whole cluster's while the test runs.
"""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
import yaml
from kubernetes import client

from ftapi.constants import GROUP, PLURAL, PROGRESS_PLURAL, VERSION
from ftapi.progress import REPORT_FIELD
from ftoperator.children import LABEL_JOB
from fttestkit.cluster import Cluster, eventually, fresh_namespace, install_crds, unique
from fttestkit.finetunejobs import (
    create_ftj,
    long_running_job,
    status_of,
    wait_events,
    wait_phase,
)
from fttestkit.operator import Operator
from fttestkit.skew import newer_crd

pytestmark = [pytest.mark.integration, pytest.mark.serial]


@pytest.fixture
def skew_ns(cluster: Cluster, crd: dict[str, Any], request: pytest.FixtureRequest) -> Iterator[str]:
    with fresh_namespace(cluster, unique("skew-", request, 30, 8)) as name:
        yield name


@pytest.fixture
def crd_restored(cluster: Cluster) -> Iterator[None]:
    """The tree's CRD again after the test (it applies a newer one)."""
    yield None
    install_crds(cluster)


def _apply_newer_crd(cluster: Cluster) -> None:
    cluster.kubectl("apply", "--server-side", "--force-conflicts", "-f", "-",
                    input=yaml.safe_dump(newer_crd()))  # fmt: skip
    cluster.kubectl("wait", "--for=condition=Established", "--timeout=60s",
                    f"crd/{PLURAL}.{GROUP}")  # fmt: skip


def _condition(status: dict[str, Any], type_: str) -> dict[str, Any]:
    return next((c for c in status.get("conditions") or [] if c["type"] == type_), {})


def _wait_reason(cluster: Cluster, ns: str, name: str, type_: str, reason: str) -> dict[str, Any]:
    """The job's status once its `type_` condition has `reason`."""

    def reached() -> dict[str, Any] | None:
        status = status_of(cluster, ns, name)
        return status if _condition(status, type_).get("reason") == reason else None

    found: dict[str, Any] = eventually(reached, timeout=60, what=f"{name}: {reason}")
    return found


def test_an_operator_older_than_the_crd_runs_waiting_jobs_and_holds_newer_asks(
    cluster: Cluster, skew_ns: str, crd_restored: None, tmp_path: Path
) -> None:
    ns = skew_ns
    operator = Operator(cluster, tmp_path / "operator.log", namespaces=(ns,))
    custom = client.CustomObjectsApi(cluster.api)
    try:
        waiting = long_running_job("waiting").set("scheduling.suspend", True).obj()
        create_ftj(cluster, ns, waiting)
        wait_phase(cluster, ns, "waiting", "Suspended", operator)

        _apply_newer_crd(cluster)
        operator.restart()  # as a rollout would, after the CRD
        stored = custom.get_namespaced_custom_object(GROUP, VERSION, ns, PLURAL, "waiting")
        assert stored["spec"]["training"]["newKnob"] == 1  # the API server defaults it

        status = _wait_reason(cluster, ns, "waiting", "Validated", "NewerFieldsIgnored")
        assert status["phase"] == "Suspended"
        assert "spec.training.newKnob" in _condition(status, "Validated")["message"]
        wait_events(cluster, ns, "waiting", "NewerFieldsIgnored")

        custom.patch_namespaced_custom_object(
            GROUP, VERSION, ns, PLURAL, "waiting", {"spec": {"scheduling": {"suspend": False}}}
        )
        wait_phase(cluster, ns, "waiting", "Running", operator)

        # A report carrying a field this operator does not know still moves the status.
        report = ('{"attempt": 0, "stage": "training", "step": 5, "totalSteps": 10, '
                  '"gpuWatts": 700, "updatedAt": "2026-11-25T00:00:00Z"}')  # fmt: skip
        custom.patch_namespaced_custom_object(
            GROUP, VERSION, ns, PROGRESS_PLURAL, "waiting-progress", {REPORT_FIELD: report}
        )
        eventually(
            lambda: (status_of(cluster, ns, "waiting").get("progress") or {}).get("step") == 5,
            timeout=60, what="the newer trainer's report in status",
        )  # fmt: skip

        asks = long_running_job("asks").set("training.newKnob", 5).obj()
        create_ftj(cluster, ns, asks)

        status = _wait_reason(cluster, ns, "asks", "Running", "NeedsNewerOperator")
        assert status["phase"] == "Pending"
        assert "spec.training.newKnob" in status["message"]
        jobs = client.BatchV1Api(cluster.api).list_namespaced_job(
            ns, label_selector=f"{LABEL_JOB}=asks"
        )
        assert jobs.items == []  # nothing was created for it
        (asked,) = [e for e in wait_events(cluster, ns, "asks", "NeedsNewerOperator")
                    if e.reason == "NeedsNewerOperator"]  # fmt: skip
        assert asked.type == "Warning"
        assert "Traceback" not in operator.log()
    finally:
        operator.stop()
