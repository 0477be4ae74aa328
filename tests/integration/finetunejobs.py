"""FineTuneJobs on the test cluster: create one, read its status, wait for a phase."""

from __future__ import annotations

from typing import Any

from kubernetes import client

from ftapi.constants import GROUP, PLURAL, PROGRESS_PLURAL, VERSION
from ftapi.progress import REPORT_FIELD, ProgressReport
from tests.builders import JobBuilder, make_job
from tests.integration.conftest import Cluster, eventually
from tests.integration.operator_process import Operator

# A kwok pod that keeps running long enough for a test to act on the job while it trains.
LONG_RUN = {"finetune.dev/kwok-run-duration": "300s"}


def long_running_job(name: str) -> JobBuilder:
    """The minimal job on one GPU whose pod runs for 5 minutes."""
    return make_job(name).set("resources", {"gpusPerNode": 1, "annotations": LONG_RUN})


def apply_job(cluster: Cluster, ns: str, manifest: dict[str, Any]) -> dict[str, Any]:
    created: dict[str, Any] = client.CustomObjectsApi(cluster.api).create_namespaced_custom_object(
        GROUP, VERSION, ns, PLURAL, manifest
    )
    return created


def read_ftj(cluster: Cluster, ns: str, name: str) -> dict[str, Any]:
    found: dict[str, Any] = client.CustomObjectsApi(cluster.api).get_namespaced_custom_object(
        GROUP, VERSION, ns, PLURAL, name
    )
    return found


def status_of(cluster: Cluster, ns: str, name: str) -> dict[str, Any]:
    return dict(read_ftj(cluster, ns, name).get("status") or {})


def wait_phase(
    cluster: Cluster, ns: str, name: str, phase: str, operator: Operator, timeout: float = 90
) -> dict[str, Any]:
    """The status once the job is in `phase`; the status and operator log on a timeout."""
    try:
        return eventually(
            lambda: (s := status_of(cluster, ns, name)).get("phase") == phase and s,
            timeout=timeout, what=f"{name} {phase}",
        )  # fmt: skip
    except AssertionError as error:
        status = status_of(cluster, ns, name)
        raise AssertionError(f"{error}\nstatus: {status}\n{operator.log()}") from None


def report_progress(cluster: Cluster, namespace: str, name: str, report: ProgressReport) -> None:
    """Write a report to the job's FineTuneJobProgress, as the trainer's rank 0 does."""
    client.CustomObjectsApi(cluster.api).patch_namespaced_custom_object(
        GROUP, VERSION, namespace, PROGRESS_PLURAL, f"{name}-progress",
        {REPORT_FIELD: report.model_dump_json(exclude_none=True)},
    )  # fmt: skip
