"""How many status writes a job's start costs, on the real API server: a new job's first
status waits for its pods (--first-status-grace-seconds), so a job whose pods start in time
is written once, as Running, never as a Pending replaced a moment later; a job whose pods
cannot start is written at once with the reason; and an operator that dies before the first
status is written loses nothing (no second Job, the first attempt's settings kept)."""

from __future__ import annotations

import json
import threading
import time
from pathlib import Path
from typing import Any

import pytest
from kubernetes import client, watch

from ftapi.constants import CRD_NAME, GROUP, PLURAL, VERSION
from ftoperator.cache import as_written, slim
from ftoperator.controller import served_schema
from ftoperator.kube import Kube
from fttestkit.builders import make_job
from fttestkit.cluster import Cluster, eventually, read_job
from fttestkit.finetunejobs import (
    LONG_RUN,
    create_ftj,
    read_ftj,
    status_of,
    wait_events,
    wait_phase,
)
from fttestkit.operator import Operator

pytestmark = pytest.mark.integration


class StatusHistory:
    """Every status one FineTuneJob is stored with, from a watch started at its creation,
    and when (time.monotonic()) each one reached the test."""

    def __init__(self, cluster: Cluster, ns: str, name: str, version: str) -> None:
        self.statuses: list[dict[str, Any]] = []
        self.arrivals: list[float] = []
        self._watch = watch.Watch()
        custom = client.CustomObjectsApi(cluster.api)

        self._stopped = threading.Event()

        def run() -> None:
            try:
                for event in self._watch.stream(
                    custom.list_namespaced_custom_object, GROUP, VERSION, ns, PLURAL,
                    field_selector=f"metadata.name={name}", resource_version=version,
                    timeout_seconds=300,
                ):  # fmt: skip
                    status = event["object"].get("status")
                    if status and (not self.statuses or self.statuses[-1] != status):
                        self.statuses.append(status)
                        self.arrivals.append(time.monotonic())
            except Exception:
                if not self._stopped.is_set():  # a stream closed by stop() is expected
                    raise

        self._thread = threading.Thread(target=run, daemon=True)
        self._thread.start()

    def phases(self) -> list[str]:
        return [s.get("phase", "") for s in self.statuses]

    def stop(self) -> None:
        self._stopped.set()
        self._watch.stop()


def _conditions(status: dict[str, Any]) -> dict[str, tuple[str, str]]:
    return {c["type"]: (c["status"], c["reason"]) for c in status.get("conditions", [])}


def test_a_job_whose_pods_start_in_time_is_first_written_running(
    cluster: Cluster, crd: Any, namespace: str, tmp_path: Path
) -> None:
    # A grace far longer than a kwok pod needs to start (5 s by default), so the order of
    # events cannot depend on how loaded the machine is.
    operator = Operator(cluster, tmp_path / "operator.log", "--first-status-grace-seconds",
                        "60", "--default-image", "registry.test/trainer:1",
                        namespaces=(namespace,))  # fmt: skip
    try:
        name = "quick"
        created = create_ftj(cluster, namespace, make_job(name).set(
            "resources", {"gpusPerNode": 1, "annotations": LONG_RUN}).obj())  # fmt: skip
        history = StatusHistory(cluster, namespace, name, created["metadata"]["resourceVersion"])
        wait_phase(cluster, namespace, name, "Running", operator, timeout=90)
        first = eventually(lambda: history.statuses[:1], what="the first stored status")[0]
        assert history.phases()[0] == "Running", history.phases()
        assert _conditions(first) == {
            "Validated": ("True", "Valid"), "ResourcesCreated": ("True", "Created"),
            "Running": ("True", "PodsRunning"),
        }  # fmt: skip
        assert first["settings"]["image"] == "registry.test/trainer:1"
        assert first["attempt"] == 0 and first["observedGeneration"] == 1
        # One Event for the start, as one status write: "Running" (no "Created" before it).
        events = wait_events(cluster, namespace, name, "Running")
        assert [e.reason for e in events] == ["Running"], events

        # A job whose pod cannot be scheduled: the reason is news, written as soon as the
        # scheduler gives it, before the grace ends (a held status would arrive 60 s after the
        # operator's first look at the job, so after `created + 60`). How long the scheduler
        # takes to say so depends on the machine's load: the bound is the grace, not a guess.
        created_at = time.monotonic()
        stuck = create_ftj(cluster, namespace, make_job("stuck").set(
            "resources", {"gpusPerNode": 1, "nodeSelector": {"finetune.dev/pool": "none"}}
        ).obj())  # fmt: skip
        stuck_history = StatusHistory(cluster, namespace, "stuck",
                                      stuck["metadata"]["resourceVersion"])  # fmt: skip
        status = eventually(lambda: stuck_history.statuses[:1], timeout=90,
                            what="the stuck job's first status")[0]  # fmt: skip
        assert status["phase"] == "Pending", status
        assert _conditions(status)["Running"] == ("False", "Unschedulable")
        waited = stuck_history.arrivals[0] - created_at
        assert waited < 59, f"the reason was held back with the grace: {waited:.1f} s"
        history.stop()
        stuck_history.stop()
    finally:
        operator.stop()


def test_an_operator_killed_before_the_first_status_loses_nothing(
    cluster: Cluster, crd: Any, namespace: str, tmp_path: Path
) -> None:
    """Killed after creating the children, before the (held) first status: the next
    process, started with another default image, creates no second attempt and records the
    image the running Job has. A ResourceQuota of 0 pods holds the pods back meanwhile (the
    operator asks the Job controller why only after 5 s), so the kill lands inside the
    grace whatever the machine's load."""
    core = client.CoreV1Api(cluster.api)
    core.create_namespaced_resource_quota(namespace, {
        "metadata": {"name": "no-pods"}, "spec": {"hard": {"pods": "0"}}})  # fmt: skip
    log = tmp_path / "operator.log"
    first = Operator(cluster, log, "--first-status-grace-seconds", "60", "--default-image",
                     "registry.test/trainer:1", namespaces=(namespace,))  # fmt: skip
    name = "orphan"
    try:
        created = create_ftj(cluster, namespace, make_job(name).set(
            "resources", {"gpusPerNode": 1, "annotations": LONG_RUN}).obj())  # fmt: skip
        job = eventually(lambda: read_job(cluster, namespace, f"{name}-0"), timeout=60,
                         interval=0.1, what="the attempt's Job")  # fmt: skip
        first.kill()
        assert status_of(cluster, namespace, name) == {}  # held back: nothing stored yet
    finally:
        first.stop()
    core.delete_namespaced_resource_quota("no-pods", namespace)
    second = Operator(cluster, log, "--first-status-grace-seconds", "1", "--default-image",
                      "registry.test/trainer:2", namespaces=(namespace,))  # fmt: skip
    try:
        status = wait_phase(cluster, namespace, name, "Running", second, timeout=120)
        assert status["settings"]["image"] == "registry.test/trainer:1"
        assert status["attempt"] == 0 and status.get("restarts", 0) == 0
        again = read_job(cluster, namespace, f"{name}-0")
        assert again.metadata.uid == job.metadata.uid  # the same Job, not a new one
        assert read_job(cluster, namespace, f"{name}-1") is None
        assert again.metadata.owner_references[0].uid == created["metadata"]["uid"]
    finally:
        second.stop()


def test_a_status_write_answers_with_the_metadata_alone_and_the_patch_applied_is_whats_stored(
    cluster: Cluster, ns: str
) -> None:
    """Kube.patch_status asks for the metadata back (PartialObjectMetadata), not the object
    it just wrote; the controller keeps the patch applied to the status it was made against
    (cache.as_written) until the watch brings the stored object. Both must agree with the
    API server: a nested field deleted by null, a list replaced, a new resourceVersion."""
    created = create_ftj(cluster, ns, make_job("written").obj())
    kube = Kube(cluster.api)
    body = slim(created)
    crd = client.ApiextensionsV1Api(cluster.api).read_custom_resource_definition(CRD_NAME)
    schema = served_schema(cluster.api.sanitize_for_serialization(crd))
    assert schema is not None
    status_schema = schema["properties"]["status"]  # its defaults: restarts 0, ...
    for patch in (
        {"phase": "Running", "attempt": 0, "progress": {"step": 3, "tokensPerSecond": 9.5},
         "conditions": [{"type": "Running", "status": "True", "reason": "PodsRunning",
                         "lastTransitionTime": "2026-11-27T00:00:00Z", "message": "up"}]},
        {"phase": "Succeeded", "progress": {"tokensPerSecond": None}, "conditions": []},
    ):  # fmt: skip
        answer = kube.patch_status(ns, "written", patch)
        assert answer is not None
        assert "spec" not in answer and "status" not in answer  # metadata, not the object
        assert answer["name"] == "written" and answer["uid"] == created["metadata"]["uid"]
        body = as_written(body, patch, answer, status_schema)
        stored = read_ftj(cluster, ns, "written")
        assert body["status"] == stored["status"]
        assert body["metadata"]["resourceVersion"] == stored["metadata"]["resourceVersion"]
        assert body["spec"] == stored["spec"] and "managedFields" not in body["metadata"]
    assert body["status"]["phase"] == "Succeeded" and body["status"]["progress"] == {"step": 3}
    # The CRD's defaults were filled in as the API server fills them (none were sent).
    assert body["status"]["restarts"] == 0 and "restarts" not in json.dumps(patch)
    assert kube.patch_status(ns, "no-such-job", {"phase": "Running"}) is None
