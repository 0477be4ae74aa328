"""The operator (`python -m ftoperator`, a real process) against the real control plane:
FineTuneJobs become Indexed Jobs on the kwok GPU pool, kwok runs the pods to success or to
an injected failure, and the FineTuneJob's status, conditions and Events follow.

kwok failure injection (hack/kwok/pod-stages.yaml): `finetune.dev/kwok-fail` on the pod
template fails every attempt; annotating one running pod fails only that attempt.
"""

from __future__ import annotations

import re
import time
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import pytest
import yaml
from kubernetes import client

from ftapi import contract, parse_job
from ftapi.constants import GROUP, PLURAL, VERSION
from ftapi.progress import ProgressReport, RankReport
from ftapi.v1alpha1.status import RunWarning
from ftoperator.children import LABEL_ATTEMPT, LABEL_JOB
from fttestkit.builders import make_job
from fttestkit.cluster import Cluster, eventually, read_job
from fttestkit.finetunejobs import (
    create_ftj,
    find_ftj,
    job_events,
    read_ftj,
    report_progress,
    report_ranks,
    status_of,
    wait_events,
    wait_phase,
)
from fttestkit.operator import Operator
from fttestkit.process import http_ok

pytestmark = pytest.mark.integration
GPU_POOLS = {"a100-pool", "h100-pool"}


def _manifest(name: str, **changes: Any) -> dict[str, Any]:
    job = make_job(name).set("resources", {"gpusPerNode": 8, "nodes": 2})
    for path, value in changes.items():
        job.set(path.replace("__", "."), value)
    return job.obj()


_apply, _ftj, _status, _wait_phase = create_ftj, read_ftj, status_of, wait_phase


def _condition(status: dict[str, Any], type_: str) -> dict[str, Any]:
    return next(c for c in status.get("conditions", []) if c["type"] == type_)


def _pods(cluster: Cluster, ns: str, name: str, attempt: int | None = None) -> list[Any]:
    selector = f"{LABEL_JOB}={name}"
    if attempt is not None:
        selector += f",{LABEL_ATTEMPT}={attempt}"
    return list(
        client.CoreV1Api(cluster.api).list_namespaced_pod(ns, label_selector=selector).items
    )


def _events(cluster: Cluster, ns: str, name: str) -> list[tuple[str, str]]:
    return [(e.type, e.reason) for e in job_events(cluster, ns, name)]


def test_a_job_becomes_an_indexed_torchrun_job_on_the_gpu_pool_and_succeeds(
    cluster: Cluster, operator: Operator, ns: str
) -> None:
    name = "llama-lora"
    created = _apply(cluster, ns, _manifest(name))
    job = eventually(lambda: read_job(cluster, ns, f"{name}-0"), what="the attempt's Job")
    # The Job's shape: Indexed, one pod per node, torchrun with the rendezvous on pod 0.
    assert job.spec.completion_mode == "Indexed"
    assert job.spec.completions == job.spec.parallelism == 2
    assert job.spec.backoff_limit == 0
    owner = job.metadata.owner_references[0]
    assert (owner.kind, owner.uid, owner.controller) == (
        "FineTuneJob",
        created["metadata"]["uid"],
        True,
    )
    container = job.spec.template.spec.containers[0]
    assert container.args == contract.torchrun_command(
        nnodes=2, nproc_per_node=8, node_rank="$(JOB_COMPLETION_INDEX)",
        master_addr=f"{name}-0-0.{name}",
    )  # fmt: skip
    assert container.resources.limits["nvidia.com/gpu"] == "8"
    # The resolved config the pods mount is this very job, parsed back.
    config = client.CoreV1Api(cluster.api).read_namespaced_config_map(f"{name}-config", ns)
    resolved = parse_job(yaml.safe_load(config.data["job.yaml"]))
    assert resolved.metadata.uid == created["metadata"]["uid"]
    assert resolved.spec.resources.nodes == 2
    service = client.CoreV1Api(cluster.api).read_namespaced_service(name, ns)
    assert service.spec.cluster_ip == "None"
    # Scheduled on the GPU pools only (the GPU taint is tolerated, the CPU pool has no GPUs).
    pods = eventually(
        lambda: [p for p in _pods(cluster, ns, name) if p.spec.node_name] or None,
        what="scheduled pods",
    )  # fmt: skip
    nodes = client.CoreV1Api(cluster.api)
    for pod in pods:
        node = nodes.read_node(pod.spec.node_name)
        assert node.metadata.labels["cloud.google.com/gke-nodepool"] in GPU_POOLS
    status = _wait_phase(cluster, ns, name, "Succeeded", operator)
    assert status["modelUri"] == "s3://models/tiny/final"
    assert _condition(status, "Succeeded")["status"] == "True"
    assert all(c["observedGeneration"] == 1 for c in status["conditions"])
    assert status["startTime"] <= status["completionTime"]
    # kubectl wait works on the condition, and the Events tell the story.
    out = cluster.kubectl("wait", "-n", ns, f"ftj/{name}", "--for=condition=Succeeded",
                          "--timeout=5s")  # fmt: skip
    assert "condition met" in out

    def reasons() -> set[str]:
        return {reason for _, reason in _events(cluster, ns, name)}

    # "Created" only when the pods took longer than the first status's grace (controller.py).
    assert eventually(lambda: reasons() >= {"Running", "Succeeded"}, what="events")


@pytest.mark.parametrize(
    ("annotation", "reason"),
    [
        ({"finetune.dev/kwok-fail": "exit:1"}, "ExitCode"),
        ({"finetune.dev/kwok-disrupt": "preempt"}, "Preempted"),
        ({"finetune.dev/kwok-disrupt": "evict"}, "Evicted"),
    ],
    ids=["exit-1", "preempted", "evicted"],
)
def test_a_failed_pod_restarts_the_whole_attempt_which_then_succeeds(
    cluster: Cluster, operator: Operator, ns: str, annotation: dict[str, str], reason: str
) -> None:
    name = "flaky"
    # maxRestarts starts at 0 and is raised on the live job: the change takes effect.
    _apply(cluster, ns, _manifest(name, runPolicy={"maxRestarts": 0}, resources={
        "gpusPerNode": 8, "nodes": 2,
        "annotations": {"finetune.dev/kwok-run-duration": "8s"}}))  # fmt: skip
    pods = eventually(
        lambda: [p for p in _pods(cluster, ns, name, 0) if p.status.phase == "Running"] or None,
        what="attempt 0 running",
    )  # fmt: skip
    client.CustomObjectsApi(cluster.api).patch_namespaced_custom_object(
        GROUP, VERSION, ns, PLURAL, name, {"spec": {"runPolicy": {"maxRestarts": 1}}}
    )
    # One pod of the gang fails: the whole attempt goes, attempt 1 resumes and succeeds.
    client.CoreV1Api(cluster.api).patch_namespaced_pod(
        pods[0].metadata.name, ns, {"metadata": {"annotations": annotation}}
    )
    status = _wait_phase(cluster, ns, name, "Succeeded", operator, timeout=120)
    assert status["restarts"] == 1 and status["attempt"] == 1
    eventually(lambda: read_job(cluster, ns, f"{name}-0") is None, what="attempt 0 torn down")
    assert read_job(cluster, ns, f"{name}-1") is not None
    restarting = [
        e for e in wait_events(cluster, ns, name, "Restarting") if e.reason == "Restarting"
    ]
    assert len(restarting) == 1 and f"({reason})" in restarting[0].message


def test_deleting_a_running_job_removes_its_children(
    cluster: Cluster, operator: Operator, ns: str
) -> None:
    name = "unwanted"
    _apply(cluster, ns, _manifest(name, resources__annotations={
        "finetune.dev/kwok-run-duration": "300s"}))  # fmt: skip
    _wait_phase(cluster, ns, name, "Running", operator)
    client.CustomObjectsApi(cluster.api).delete_namespaced_custom_object(
        GROUP, VERSION, ns, PLURAL, name
    )
    core, batch = client.CoreV1Api(cluster.api), client.BatchV1Api(cluster.api)
    selector = f"{LABEL_JOB}={name}"

    def children() -> list[str]:
        found = [
            j.metadata.name for j in batch.list_namespaced_job(ns, label_selector=selector).items
        ]
        found += [
            c.metadata.name
            for c in core.list_namespaced_config_map(ns, label_selector=selector).items
        ]
        found += [
            p.metadata.name for p in core.list_namespaced_pod(ns, label_selector=selector).items
        ]
        return found

    eventually(lambda: not children(), timeout=90, what="children garbage-collected")
    time.sleep(3)  # and the operator does not recreate anything for a deleted job
    assert not children()


@pytest.mark.parametrize(
    ("fail", "reason", "detail"),
    [("exit:3", "ExitCode", "exited with code 3"), ("oom", "OOMKilled", "ran out of memory")],
    ids=["exit-code", "oom"],
)
def test_repeated_failure_fails_with_the_reason(
    cluster: Cluster, operator: Operator, ns: str, fail: str, reason: str, detail: str
) -> None:
    name = "broken"
    annotations = {"finetune.dev/kwok-fail": fail}
    manifest = _manifest(name, runPolicy={"maxRestarts": 1}, resources__annotations=annotations)
    _apply(cluster, ns, manifest)
    status = _wait_phase(cluster, ns, name, "Failed", operator, timeout=120)
    assert status["failureReason"] == reason
    assert detail in status["message"]
    assert status["restarts"] == 1
    failed = _condition(status, "Failed")
    assert (failed["status"], failed["reason"]) == ("True", reason)
    # The Event follows the status write (status first, then actions, then Events).
    eventually(lambda: ("Warning", reason) in _events(cluster, ns, name), what="the Event")
    # Terminal: never resurrected, even when its last Job is deleted.
    client.BatchV1Api(cluster.api).delete_namespaced_job(
        f"{name}-1", ns, propagation_policy="Background"
    )
    time.sleep(12)  # more than one resync
    assert read_job(cluster, ns, f"{name}-2") is None
    assert read_job(cluster, ns, f"{name}-1") is None
    assert _status(cluster, ns, name)["phase"] == "Failed"


@pytest.mark.parametrize(
    ("resources", "reason", "detail"),
    [
        ({"gpusPerNode": 16}, "Unschedulable", "nvidia.com/gpu"),
        ({"gpusPerNode": 1, "image": "registry.example/missing:1",
          "annotations": {"finetune.dev/kwok-image": "pull-backoff"}},
         "ImagePullBackOff", "registry.example/missing:1"),
    ],
    ids=["no-node-fits", "image-cannot-be-pulled"],
)  # fmt: skip
def test_a_job_that_cannot_start_says_why(
    cluster: Cluster, operator: Operator, ns: str, resources: dict[str, Any], reason: str,
    detail: str,
) -> None:  # fmt: skip
    name = "stuck"
    _apply(cluster, ns, _manifest(name, resources=resources))

    def blocked() -> dict[str, Any] | None:
        status = _status(cluster, ns, name)
        running = next((c for c in status.get("conditions", []) if c["type"] == "Running"), None)
        return status if running and running["reason"] == reason else None

    status = eventually(blocked, timeout=60, what=reason)
    assert status["phase"] == "Pending"
    assert detail in _condition(status, "Running")["message"]
    eventually(lambda: ("Warning", reason) in _events(cluster, ns, name), what="the Event")


def test_suspend_stops_the_pods_and_resume_finishes(
    cluster: Cluster, operator: Operator, ns: str
) -> None:
    name = "paused"
    _apply(cluster, ns, _manifest(name, scheduling={"suspend": True}))
    status = _wait_phase(cluster, ns, name, "Suspended", operator)
    assert _condition(status, "Suspended")["status"] == "True"
    job = eventually(lambda: read_job(cluster, ns, f"{name}-0"), what="Job")
    assert job.spec.suspend is True
    assert not _pods(cluster, ns, name)
    client.CustomObjectsApi(cluster.api).patch_namespaced_custom_object(
        GROUP, VERSION, ns, PLURAL, name, {"spec": {"scheduling": {"suspend": False}}}
    )
    status = _wait_phase(cluster, ns, name, "Succeeded", operator)
    assert _condition(status, "Suspended")["status"] == "False"


@pytest.mark.parametrize(
    ("resources", "deadline", "stuck"),
    [
        ({"annotations": {"finetune.dev/kwok-run-duration": "120s"}}, 3, False),
        ({"gpusPerNode": 16}, 5, True),  # more than any node has: stuck Pending
    ],
    ids=["running", "stuck-pending"],
)
def test_deadline_fails_the_job_and_stops_its_pods(
    cluster: Cluster, operator: Operator, ns: str, resources: dict[str, Any], deadline: int,
    stuck: bool,
) -> None:  # fmt: skip
    name = "slow"
    manifest = _manifest(name, runPolicy={"activeDeadlineSeconds": deadline})
    for field, value in resources.items():
        manifest["spec"]["resources"][field] = value
    _apply(cluster, ns, manifest)
    status = _wait_phase(cluster, ns, name, "Failed", operator, timeout=60)
    assert status["failureReason"] == "DeadlineExceeded"
    if stuck:
        assert "startTime" not in status  # it never ran
    eventually(lambda: read_job(cluster, ns, f"{name}-0") is None,
               what="the Job deleted")  # fmt: skip


def test_ttl_deletes_a_finished_job_and_its_children(
    cluster: Cluster, operator: Operator, ns: str
) -> None:
    name = "short-lived"
    _apply(cluster, ns, _manifest(name, runPolicy={"ttlSecondsAfterFinished": 2}))
    _wait_phase(cluster, ns, name, "Succeeded", operator)

    def gone() -> bool:
        return find_ftj(cluster, ns, name) is None

    eventually(gone, timeout=30, what="the FineTuneJob deleted by its TTL")
    # Garbage collection follows the owner references.
    core = client.CoreV1Api(cluster.api)
    selector = f"{LABEL_JOB}={name}"
    eventually(lambda: not core.list_namespaced_config_map(ns, label_selector=selector).items,
               timeout=60, what="children collected")  # fmt: skip


def test_trainer_progress_reaches_status_and_the_printer_columns(
    cluster: Cluster, operator: Operator, ns: str
) -> None:
    name = "reporting"
    _apply(cluster, ns, _manifest(name, resources__annotations={
        "finetune.dev/kwok-run-duration": "60s"}))  # fmt: skip
    _wait_phase(cluster, ns, name, "Running", operator)
    report = ProgressReport(
        attempt=0, stage="training", step=120, total_steps=1000, epoch=0.4,
        tokens_per_second=5321.0, eta_seconds=4320,
        metrics={"train_loss": 1.25, "eval_loss": 1.5, "learning_rate": 2e-4, "reward": 0.5,
                 "eval_bleu": 31.0},
        checkpoint={"latest": "s3://models/tiny/checkpoints/x/checkpoint-100", "step": 100,
                    "count": 2},
        updated_at=datetime.now(UTC),
    )  # fmt: skip
    report_progress(cluster, ns, name, report)
    status = eventually(
        lambda: (s := _status(cluster, ns, name)).get("progress", {}).get("step") == 120 and s,
        timeout=30, what="progress in status",
    )  # fmt: skip
    assert status["progress"]["summary"] == "120/1000 (12%)"
    assert status["progress"]["eta"] == "1h12m"
    assert status["metrics"]["trainLoss"] == 1.25
    assert status["metrics"]["additional"] == {"eval_bleu": 31.0}
    assert status["checkpoint"] == {"latest": "s3://models/tiny/checkpoints/x/checkpoint-100",
                                    "step": 100, "count": 2}  # fmt: skip
    table = cluster.kubectl("get", "ftj", name, "-n", ns)
    header, row = table.strip().splitlines()[:2]
    assert re.split(r"\s{2,}", header)[:6] == [
        "NAME",
        "PHASE",
        "MODEL",
        "METHOD",
        "PROGRESS",
        "LOSS",
    ]
    assert "Running" in row and "120/1000 (12%)" in row and "1.25" in row and "1h12m" in row


def test_ranks_reports_name_a_straggler_a_spike_and_a_quiet_rank(
    cluster: Cluster, operator: Operator, ns: str
) -> None:
    """What the ranks' own reports and rank 0's warnings become: a Straggler Warning Event
    naming the slow rank's pod and node once it was slow for windowSeconds, a LossSpike
    Event, per-rank series in a scrape; and a rank that went quiet ends the attempt as
    Stalled, named."""
    import urllib.request

    name, quiet = "straggling", "quiet-rank"
    long_run = {"finetune.dev/kwok-run-duration": "300s"}
    _apply(cluster, ns, _manifest(name, runPolicy={"stragglerDetection": {"windowSeconds": 10}},
                                  resources__annotations=long_run))  # fmt: skip
    _apply(cluster, ns, _manifest(quiet, runPolicy={"stallDetection": {"minimumSeconds": 10}},
                                  resources__annotations=long_run))  # fmt: skip
    _wait_phase(cluster, ns, name, "Running", operator)
    _wait_phase(cluster, ns, quiet, "Running", operator)
    began = datetime.now(UTC)
    spike = RunWarning(reason="LossSpike", step=12, message="step 12: training loss 44.5 is 7.3x")
    report_progress(cluster, ns, name, ProgressReport(
        attempt=0, stage="training", step=12, warnings=[spike], updated_at=began))  # fmt: skip
    pods = {p.metadata.labels["batch.kubernetes.io/job-completion-index"]: p
            for p in _pods(cluster, ns, name)}  # fmt: skip

    def ranks(now: datetime) -> list[RankReport]:
        return [RankReport(rank=r, pod=pods[str(r)].metadata.name,
                           node=pods[str(r)].spec.node_name, step=12, stepped_at=now,
                           step_seconds=2.0, compute_seconds=3.0 if r else 1.0, updated_at=now)
                for r in (0, 1)]  # fmt: skip

    report_ranks(cluster, ns, name, *ranks(began))

    def straggler() -> Any:
        found = [e for e in job_events(cluster, ns, name) if e.reason == "Straggler"]
        if not found:  # the ranks keep reporting, as live ones do
            report_ranks(cluster, ns, name, *ranks(datetime.now(UTC)))
        return found

    (event,) = eventually(straggler, timeout=60, interval=2, what="the Straggler event")
    assert event.type == "Warning"
    assert (f"rank 1 (pod {pods['1'].metadata.name} on node {pods['1'].spec.node_name}) "
            "computes 3x slower") in event.message  # fmt: skip
    status = _status(cluster, ns, name)
    assert [(s["rank"], s["warned"]) for s in status["stragglers"]] == [(1, True)]
    assert status["warnings"] == [{"reason": "LossSpike", "step": 12, "message": spike.message}]
    spikes = [e for e in job_events(cluster, ns, name) if e.reason == "LossSpike"]
    assert len(spikes) == 1 and spikes[0].type == "Warning" and spikes[0].message == spike.message
    text = urllib.request.urlopen(f"http://127.0.0.1:{operator.port}/metrics", timeout=5).read()
    assert re.search(rf'finetune_job_rank_compute_seconds{{[^}}]*name="{name}"[^}}]*rank="1"'
                     r"[^}]*} 3\.0", text.decode())  # fmt: skip
    assert "finetune_job_stragglers{" in text.decode()

    # The quiet job: rank 0 keeps reporting, rank 1 stopped 30 s ago.
    now = datetime.now(UTC)
    report_progress(cluster, ns, quiet, ProgressReport(attempt=0, stage="training", step=5,
                                                       updated_at=now))  # fmt: skip
    report_ranks(cluster, ns, quiet, RankReport(rank=0, step=5, updated_at=now),
                 RankReport(rank=1, pod="quiet-rank-0-1", step=4,
                            updated_at=now - timedelta(seconds=30)))  # fmt: skip
    restarted = eventually(lambda: (s := _status(cluster, ns, quiet)).get("restarts") and s,
                           timeout=30, what="the Stalled restart")  # fmt: skip
    assert restarted["restarts"] == 1
    messages = [e.message for e in wait_events(cluster, ns, quiet, "Restarting")
                if e.reason == "Restarting"]  # fmt: skip
    assert any("(Stalled): rank 1 (pod quiet-rank-0-1) silent for" in m for m in messages), messages


def _watch_events(operator: Operator) -> dict[str, float]:
    import urllib.request

    from prometheus_client.parser import text_string_to_metric_families

    url = f"http://127.0.0.1:{operator.port}/metrics?name[]=finetune_watch_events_total"
    text = urllib.request.urlopen(url, timeout=5).read().decode()
    return {s.labels["kind"]: s.value for f in text_string_to_metric_families(text)
            for s in f.samples if s.name == "finetune_watch_events_total"}  # fmt: skip


def test_the_watches_bring_only_the_operators_own_jobs_and_pods(
    cluster: Cluster, ns: str, tmp_path: Path
) -> None:
    """Jobs and pods are watched (informer.py) with a label selector the API server applies:
    a cluster's other workloads never reach the operator (a filter in the operator would
    decode each of their events first)."""
    batch, core = client.BatchV1Api(cluster.api), client.CoreV1Api(cluster.api)
    secure = {
        "runAsNonRoot": True,
        "runAsUser": 1000,
        "allowPrivilegeEscalation": False,
        "capabilities": {"drop": ["ALL"]},
        "seccompProfile": {"type": "RuntimeDefault"},
    }
    container = {"name": "c", "image": "registry.invalid/none:0", "securityContext": secure}

    def job(name: str, labels: dict[str, str]) -> dict[str, Any]:
        return {
            "metadata": {"name": name, "labels": labels},
            "spec": {
                "suspend": True,
                "template": {"spec": {"restartPolicy": "Never", "containers": [container]}},
            },
        }

    def pod(name: str, labels: dict[str, str]) -> dict[str, Any]:
        # Bound to no real node: no scheduler, no kubelet, only the events made here.
        return {
            "metadata": {"name": name, "labels": labels},
            "spec": {"nodeName": "fto-no-such-node", "containers": [container]},
        }

    watching = Operator(cluster, tmp_path / "operator.log", namespaces=(ns,))
    try:
        watching.wait_until(lambda: http_ok(f"http://127.0.0.1:{watching.port}/healthz"), 60,
                            "serving /healthz")  # fmt: skip
        before = _watch_events(watching)
        batch.create_namespaced_job(ns, job("outsider", {"app": "other"}))
        core.create_namespaced_pod(ns, pod("outsider", {"app": "other"}))
        for touch in range(5):  # 6 events each, were they delivered
            patch = {"metadata": {"labels": {"touch": str(touch)}}}
            batch.patch_namespaced_job("outsider", ns, patch)
            core.patch_namespaced_pod("outsider", ns, patch)
        # Then one of each with the label: on the same watch streams, after the outsiders'.
        ours = {LABEL_JOB: "no-such-finetunejob"}
        batch.create_namespaced_job(ns, job("ours", ours))
        core.create_namespaced_pod(ns, pod("ours", ours))

        def grew() -> dict[str, float] | None:
            now = _watch_events(watching)
            grown = {k: now.get(k, 0) - before.get(k, 0) for k in ("Job", "Pod")}
            return grown if all(grown.values()) else None

        grown = eventually(grew, timeout=30, what="the labelled Job's and pod's events")
        time.sleep(2)  # anything still on its way
        grown = {k: _watch_events(watching).get(k, 0) - before.get(k, 0) for k in grown}
        # The labelled ones' ADDED (a status update at most), none of the outsiders' six.
        assert all(1 <= n <= 2 for n in grown.values()), grown
    finally:
        watching.stop()


def test_metrics_and_health_endpoints(cluster: Cluster, operator: Operator, ns: str) -> None:
    import urllib.request

    # Its own job, so that it passes alone as after the others.
    _apply(cluster, ns, _manifest("counted"))
    _wait_phase(cluster, ns, "counted", "Running", operator)
    base = f"http://127.0.0.1:{operator.port}"
    assert urllib.request.urlopen(f"{base}/healthz", timeout=5).status == 200
    text = urllib.request.urlopen(f"{base}/metrics", timeout=5).read().decode()
    created = re.search(r"^finetune_jobs_created_total (\S+)$", text, flags=re.MULTILINE)
    assert created is not None and float(created.group(1)) >= 1, text[:2000]
    assert "finetune_reconcile_duration_seconds_count" in text
    # The collector's time (gc_policy.observe, registered by main before gc_policy.tune,
    # whose full collection at the start is the first it records).
    full = re.search(r'^finetune_operator_gc_seconds_total{generation="2"} (\S+)$', text,
                     flags=re.MULTILINE)  # fmt: skip
    assert full is not None and float(full.group(1)) > 0, text[:2000]


# Counted only when they happen: a healthy run has no failed pass to show.
EVENT_ONLY = {"finetune_reconcile_errors_total"}


def test_per_job_series_and_every_metric_the_dashboard_reads_are_in_a_real_scrape(
    cluster: Cluster, operator: Operator, ns: str
) -> None:
    import urllib.request

    from prometheus_client.parser import text_string_to_metric_families

    from tests.dashboard import metric_names, queries

    running, broken = "curve", "crashing"
    _apply(cluster, ns, _manifest(running, resources__annotations={
        "finetune.dev/kwok-run-duration": "60s"}))  # fmt: skip
    failing = {"finetune.dev/kwok-fail": "exit:3"}
    _apply(cluster, ns, _manifest(broken, runPolicy={"maxRestarts": 0},
                                  resources__annotations=failing))  # fmt: skip
    _wait_phase(cluster, ns, running, "Running", operator)
    report = ProgressReport(
        attempt=0, stage="training", step=30, total_steps=120, tokens_per_second=2048.0,
        eta_seconds=600, metrics={"train_loss": 2.5, "eval_loss": 2.75, "eval_accuracy": 0.4},
        updated_at=datetime.now(UTC),
    )  # fmt: skip
    report_progress(cluster, ns, running, report)
    _wait_phase(cluster, ns, broken, "Failed", operator, timeout=120)
    eventually(lambda: _status(cluster, ns, running).get("progress", {}).get("step") == 30,
               what="the report in status")  # fmt: skip

    url = f"http://127.0.0.1:{operator.port}/metrics"
    text = urllib.request.urlopen(url, timeout=5).read().decode()
    samples = [s for f in text_string_to_metric_families(text) for s in f.samples]

    def value(name: str, job: str, **extra: str) -> float:
        wanted = {"name": job, "namespace": ns, **extra}.items()
        found = [s.value for s in samples if s.name == name and wanted <= s.labels.items()]
        assert len(found) == 1, f"{name} of {job}: {found}"
        return float(found[0])

    assert value("finetune_job_phase", running, phase="Running") == 1
    assert value("finetune_job_phase", running, phase="Pending") == 0
    assert value("finetune_job_step", running) == 30
    assert value("finetune_job_progress_ratio", running) == pytest.approx(0.25)
    assert value("finetune_job_tokens_per_second", running) == 2048
    assert value("finetune_job_eta_seconds", running) == 600
    assert value("finetune_job_train_loss", running) == 2.5
    assert value("finetune_job_eval_loss", running) == 2.75
    assert value("finetune_job_metric", running, metric="eval_accuracy") == 0.4
    assert value("finetune_job_gpus", running) == 16
    assert value("finetune_job_gpu_seconds_total", running) > 0
    assert value("finetune_job_failed", broken, reason="ExitCode") == 1
    labels = next(s.labels for s in samples if s.name == "finetune_job_gpus"
                  and s.labels.get("name") == running)  # fmt: skip
    assert (labels["method"], labels["trainer"], labels["model"]) == ("lora", "sft",
                                                                      "org/base-model")  # fmt: skip
    # What the watches delivered, by kind: these jobs' own objects at least.
    watched = {
        s.labels["kind"]: s.value for s in samples if s.name == "finetune_watch_events_total"
    }
    assert all(watched.get(k, 0) >= 2 for k in ("FineTuneJob", "Job", "Pod")), watched
    assert watched.get("FineTuneJobProgress", 0) >= 1, watched  # the report written above

    sampled = {s.name for s in samples}
    declared = set(re.findall(r"^# TYPE (\S+)", text, flags=re.MULTILINE))
    read = {name for _, expr in queries() for name in metric_names(expr)}
    # A labelled counter nothing has incremented yet is declared (HELP/TYPE) without samples.
    missing = {n for n in read - sampled
               if not (n in EVENT_ONLY and {n, n.removesuffix("_total")} & declared)}  # fmt: skip
    assert not missing, f"the dashboard reads metrics this scrape lacks: {sorted(missing)}"

    # Deleting a job removes its series at the next scrape.
    client.CustomObjectsApi(cluster.api).delete_namespaced_custom_object(
        GROUP, VERSION, ns, PLURAL, broken
    )
    eventually(lambda: f'name="{broken}"' not in urllib.request.urlopen(url, timeout=5).read()
               .decode(), what="the deleted job's series gone")  # fmt: skip


@pytest.mark.serial  # a node other tests' pods run on goes NotReady
def test_a_lost_node_restarts_the_attempt_elsewhere(
    cluster: Cluster, operator: Operator, ns: str
) -> None:
    """The node under a running pod goes NotReady (its kubelet stops answering): the attempt
    is kept through the grace (`--node-lost-seconds`, 10 s for the tests' operator), then
    given up, NodeLost, and the next one runs on another node."""
    name = "stranded"
    run_for = {"finetune.dev/kwok-run-duration": "30s"}
    _apply(cluster, ns, _manifest(name, resources={"gpusPerNode": 8, "annotations": run_for}))
    pod = eventually(
        lambda: [p for p in _pods(cluster, ns, name, 0) if p.status.phase == "Running"] or None,
        what="attempt 0 running",
    )[0]  # fmt: skip
    core = client.CoreV1Api(cluster.api)
    lost = pod.spec.node_name
    core.patch_node(lost, {"metadata": {"annotations": {"finetune.dev/kwok-node": "not-ready"}}})
    try:
        eventually(lambda: not _node_ready(core, lost), what=f"{lost} NotReady")
        time.sleep(5)  # within the grace: the attempt runs on
        assert read_ftj(cluster, ns, name).get("status", {}).get("restarts", 0) == 0
        assert _pods(cluster, ns, name, 0)
        status = _wait_phase(cluster, ns, name, "Succeeded", operator, timeout=120)
    finally:
        core.patch_node(lost, {"metadata": {"annotations": {"finetune.dev/kwok-node": None}}})
    assert status["restarts"] == 1
    restarting = [
        e for e in wait_events(cluster, ns, name, "Restarting") if e.reason == "Restarting"
    ]
    assert "(NodeLost)" in restarting[0].message and lost in restarting[0].message
    (second,) = _pods(cluster, ns, name, 1)
    assert second.spec.node_name != lost
    eventually(lambda: _node_ready(core, lost), what=f"{lost} Ready again")


def _node_ready(core: client.CoreV1Api, name: str) -> bool:
    node = core.read_node(name)
    return any(c.type == "Ready" and c.status == "True" for c in node.status.conditions or [])


def test_a_steady_job_writes_nothing_and_a_finished_one_drops_in_flight_figures(
    cluster: Cluster, operator: Operator, ns: str
) -> None:
    name = "settling"
    _apply(cluster, ns, _manifest(name, resources__annotations={
        "finetune.dev/kwok-run-duration": "30s"}))  # fmt: skip
    _wait_phase(cluster, ns, name, "Running", operator)
    report = ProgressReport(
        attempt=0, stage="training", step=40, total_steps=100, tokens_per_second=812.0,
        eta_seconds=60, metrics={"train_loss": 1.5, "learning_rate": 1e-4, "grad_norm": 0.9},
        updated_at=datetime.now(UTC),
    )  # fmt: skip
    report_progress(cluster, ns, name, report)
    eventually(
        lambda: _status(cluster, ns, name).get("progress", {}).get("tokensPerSecond") == 812.0,
        what="the report in status",
    )
    # Steady: resync passes (every 10 s here) find nothing to change and write nothing.
    version = _ftj(cluster, ns, name)["metadata"]["resourceVersion"]
    time.sleep(12)
    steady = _ftj(cluster, ns, name)
    assert steady["status"]["phase"] == "Running"
    assert steady["metadata"]["resourceVersion"] == version, "a pass rewrote an unchanged status"
    status = _wait_phase(cluster, ns, name, "Succeeded", operator)
    assert "tokensPerSecond" not in status["progress"]
    assert {"learningRate", "gradNorm"}.isdisjoint(status["metrics"])
    assert status["metrics"]["trainLoss"] == 1.5
