"""FineTuneJobs on the test cluster: the one client every tier uses to create one, read it
and its status, wait for a phase, and write a progress report as the trainer does."""

from __future__ import annotations

from typing import Any, Protocol

from kubernetes import client

from ftapi.constants import GROUP, PLURAL, PROGRESS_PLURAL, VERSION
from ftapi.progress import RANKS_FIELD, REPORT_FIELD, ProgressReport, RankReport
from fttestkit.builders import JobBuilder, make_job
from fttestkit.cluster import Cluster, eventually

# A kwok pod that keeps running long enough for a test to act on the job while it trains.
LONG_RUN = {"finetune.dev/kwok-run-duration": "300s"}


def long_running_job(name: str) -> JobBuilder:
    """The minimal job on one GPU whose pod runs for 5 minutes."""
    return make_job(name).set("resources", {"gpusPerNode": 1, "annotations": LONG_RUN})


def create_ftj(cluster: Cluster, ns: str, manifest: dict[str, Any]) -> dict[str, Any]:
    created: Any = client.CustomObjectsApi(cluster.api).create_namespaced_custom_object(
        GROUP, VERSION, ns, PLURAL, manifest
    )
    return dict(created)


def read_ftj(cluster: Cluster, ns: str, name: str) -> dict[str, Any]:
    found: Any = client.CustomObjectsApi(cluster.api).get_namespaced_custom_object(
        GROUP, VERSION, ns, PLURAL, name
    )
    return dict(found)


def find_ftj(cluster: Cluster, ns: str, name: str) -> dict[str, Any] | None:
    """The FineTuneJob, or None when there is none of that name."""
    try:
        return read_ftj(cluster, ns, name)
    except client.exceptions.ApiException as error:
        if error.status == 404:
            return None
        raise


def status_of(cluster: Cluster, ns: str, name: str) -> dict[str, Any]:
    return dict((find_ftj(cluster, ns, name) or {}).get("status") or {})


def phase_is(cluster: Cluster, ns: str, name: str, *phases: str) -> dict[str, Any] | None:
    """The status once the phase is one of `phases`, else None (for `eventually`)."""
    status = status_of(cluster, ns, name)
    return status if status.get("phase") in phases else None


def job_events(cluster: Cluster, ns: str, name: str) -> list[Any]:
    """The core/v1 Events about the FineTuneJob `name`, oldest first as the API lists them."""
    found = client.CoreV1Api(cluster.api).list_namespaced_event(
        ns, field_selector=f"involvedObject.name={name},involvedObject.kind=FineTuneJob"
    )
    return list(found.items)


def wait_events(
    cluster: Cluster, ns: str, name: str, reason: str, timeout: float = 30
) -> list[Any]:  # fmt: skip
    """The job's Events once one has `reason`. The operator posts a pass's Events after its
    status write and its actions, so a status a test has seen may not have its Event yet."""

    def told() -> list[Any] | None:
        found = job_events(cluster, ns, name)
        return found if any(e.reason == reason for e in found) else None

    return eventually(told, timeout=timeout, what=f"a {reason} Event about {name}")


class HasLog(Protocol):
    def log(self) -> str: ...


def wait_phase(
    cluster: Cluster, ns: str, name: str, phase: str, operator: HasLog | None = None,
    timeout: float = 90,
) -> dict[str, Any]:  # fmt: skip
    """The status once the job is in `phase`; on a timeout, the status and the end of the
    operator's log."""
    try:
        return eventually(
            lambda: phase_is(cluster, ns, name, phase), timeout=timeout, what=f"{name} {phase}"
        )
    except AssertionError as error:
        status = status_of(cluster, ns, name)
        log = operator.log()[-4000:] if operator is not None else ""
        raise AssertionError(f"{error}\nstatus: {status}\n{log}") from None


def report_progress(cluster: Cluster, namespace: str, name: str, report: ProgressReport) -> None:
    """Write a report to the job's FineTuneJobProgress, as the trainer's rank 0 does."""
    client.CustomObjectsApi(cluster.api).patch_namespaced_custom_object(
        GROUP, VERSION, namespace, PROGRESS_PLURAL, f"{name}-progress",
        {REPORT_FIELD: report.model_dump_json(exclude_none=True)},
    )  # fmt: skip


def report_ranks(cluster: Cluster, namespace: str, name: str, *reports: RankReport) -> None:
    """Write ranks' own reports to the job's FineTuneJobProgress, as each rank does."""
    ranks = {str(r.rank): r.model_dump_json(by_alias=True, exclude_none=True) for r in reports}
    client.CustomObjectsApi(cluster.api).patch_namespaced_custom_object(
        GROUP, VERSION, namespace, PROGRESS_PLURAL, f"{name}-progress", {RANKS_FIELD: ranks},
    )  # fmt: skip
