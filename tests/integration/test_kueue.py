"""FineTuneJobs queued by a real Kueue (testkit/fttestkit/kueue.py) against a
ClusterQueue's GPU quota on the kwok H100 pool: jobs beyond the quota wait Queued with
Kueue's reason in their status, a finished job frees its quota for the next, a two-node job
is admitted whole or not at all, and a higher-priority job preempts a lower one, which runs
again when readmitted. Kueue decides; the operator creates each attempt's Job suspended and
reports what Kueue says (its Workload's conditions).

The quota is the H100 pool's 16 GPUs (2 nodes x 8): Kueue's flavor puts admitted pods there
(its node labels land in the Job's pod template), which the tests check too. Pods run for as
long as their `finetune.dev/kwok-run-duration` annotation says (hack/kwok/pod-stages.yaml).
"""

from __future__ import annotations

import uuid
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from kubernetes import client

from ftoperator.children import LABEL_JOB
from fttestkit.builders import make_job
from fttestkit.cluster import Cluster, eventually, fresh_namespace
from fttestkit.finetunejobs import create_ftj, status_of, wait_phase
from fttestkit.kueue import API, Kueue
from fttestkit.operator import NAMESPACE_PREFIX, Operator

pytestmark = [pytest.mark.integration, pytest.mark.serial, pytest.mark.platform]
FLAVOR, CLUSTER_QUEUE = "fto-tests-h100", "fto-tests-gpu"
LOW, HIGH = "fto-tests-low", "fto-tests-high"


@pytest.fixture(scope="module")
def kueue(cluster: Cluster, tmp_path_factory: pytest.TempPathFactory) -> Iterator[Kueue]:
    running = Kueue(cluster, tmp_path_factory.mktemp("kueue"))
    try:
        _apply(cluster, [
            {"apiVersion": API, "kind": "ResourceFlavor", "metadata": {"name": FLAVOR},
             "spec": {"nodeLabels": {"finetune.dev/pool": "h100"}}},
            {"apiVersion": API, "kind": "ClusterQueue", "metadata": {"name": CLUSTER_QUEUE},
             "spec": {"namespaceSelector": {},
                      "preemption": {"withinClusterQueue": "LowerPriority"},
                      "resourceGroups": [{"coveredResources": ["nvidia.com/gpu"], "flavors": [
                          {"name": FLAVOR,
                           "resources": [{"name": "nvidia.com/gpu", "nominalQuota": 16}]}]}]}},
            {"apiVersion": "scheduling.k8s.io/v1", "kind": "PriorityClass",
             "metadata": {"name": LOW}, "value": 10},
            {"apiVersion": "scheduling.k8s.io/v1", "kind": "PriorityClass",
             "metadata": {"name": HIGH}, "value": 1000},
        ])  # fmt: skip
        yield running
    finally:
        for kind, name in (("clusterqueue", CLUSTER_QUEUE), ("resourceflavor", FLAVOR),
                           ("priorityclass", LOW), ("priorityclass", HIGH)):  # fmt: skip
            cluster.kubectl("delete", kind, name, "--ignore-not-found", "--wait=false",
                            check=False)  # fmt: skip
        running.stop()
        print(running.log()[-3000:])


def _apply(cluster: Cluster, objects: list[dict[str, Any]]) -> None:
    import yaml

    cluster.kubectl("apply", "--server-side", "-f", "-", input=yaml.safe_dump_all(objects))


@pytest.fixture
def queues(cluster: Cluster, kueue: Kueue, ns: str) -> Iterator[tuple[str, str]]:
    """Two namespaces the operator watches, each with a LocalQueue on the ClusterQueue."""
    other = f"{NAMESPACE_PREFIX}kueue-b-{uuid.uuid4().hex[:8]}"
    with fresh_namespace(cluster, other):
        for namespace, queue in ((ns, "team-a"), (other, "team-b")):
            _apply(cluster, [{"apiVersion": API, "kind": "LocalQueue",
                              "metadata": {"name": queue, "namespace": namespace},
                              "spec": {"clusterQueue": CLUSTER_QUEUE}}])  # fmt: skip
        yield ns, other


def _job(name: str, queue: str, *, nodes: int, seconds: int, priority: str = LOW) -> dict[str, Any]:
    return (
        make_job(name)
        .set("scheduling", {"queueName": queue})
        .set("resources", {"gpusPerNode": 8, "nodes": nodes, "priorityClassName": priority,
                           "annotations": {"finetune.dev/kwok-run-duration": f"{seconds}s"}})
        .obj()
    )  # fmt: skip


def _pods(cluster: Cluster, ns: str, name: str) -> list[Any]:
    return list(
        client.CoreV1Api(cluster.api)
        .list_namespaced_pod(ns, label_selector=f"{LABEL_JOB}={name}")
        .items
    )


def _running_condition(status: dict[str, Any]) -> dict[str, Any]:
    return next(c for c in status.get("conditions", []) if c["type"] == "Running")


def _queued_with_kueues_reason(cluster: Cluster, ns: str, name: str) -> dict[str, Any]:
    status = status_of(cluster, ns, name)
    queued = status.get("phase") == "Queued" and "insufficient" in status.get("message", "")
    return status if queued else {}


def test_the_quota_holds_jobs_back_admits_a_gang_whole_and_frees_when_one_ends(
    cluster: Cluster, operator: Operator, queues: tuple[str, str]
) -> None:
    team_a, team_b = queues
    create_ftj(cluster, team_a, _job("first", "team-a", nodes=1, seconds=25))
    wait_phase(cluster, team_a, "first", "Running", operator)
    # 8 of the 16 GPUs are taken: a two-node job (16) must wait, with none of its pods.
    create_ftj(cluster, team_b, _job("gang", "team-b", nodes=2, seconds=3))
    status = eventually(
        lambda: _queued_with_kueues_reason(cluster, team_b, "gang"),
        timeout=60, what=f"gang Queued with Kueue's reason\n{operator.log()}",
    )  # fmt: skip
    assert "waiting for Kueue to admit it (queue team-b): Kueue: " in status["message"], status
    assert _running_condition(status)["reason"] == "Queued"
    assert _pods(cluster, team_b, "gang") == []  # nothing half-started
    assert status_of(cluster, team_a, "first")["phase"] == "Running"
    # The first job ends: its quota goes to the gang, both pods at once, on Kueue's flavor.
    wait_phase(cluster, team_a, "first", "Succeeded", operator, timeout=90)
    wait_phase(cluster, team_b, "gang", "Running", operator, timeout=90)
    pods = _pods(cluster, team_b, "gang")
    assert len(pods) == 2
    assert {pod.spec.node_selector.get("finetune.dev/pool") for pod in pods} == {"h100"}
    done = wait_phase(cluster, team_b, "gang", "Succeeded", operator, timeout=90)
    assert done.get("restarts", 0) == 0 and done["attempt"] == 0


def test_a_higher_priority_job_preempts_and_the_preempted_one_runs_again_when_readmitted(
    cluster: Cluster, operator: Operator, queues: tuple[str, str]
) -> None:
    team_a, team_b = queues
    create_ftj(cluster, team_a, _job("low", "team-a", nodes=2, seconds=30))
    wait_phase(cluster, team_a, "low", "Running", operator)
    create_ftj(cluster, team_b, _job("high", "team-b", nodes=1, seconds=15, priority=HIGH))

    def preempted() -> dict[str, Any]:
        status = status_of(cluster, team_a, "low")
        condition = _running_condition(status) if status.get("conditions") else {}
        return status if condition.get("reason") == "Preempted" else {}

    status = eventually(preempted, timeout=60, what=f"low preempted\n{operator.log()}")
    assert status["phase"] == "Queued"
    assert "preempted by Kueue" in status["message"], status
    # A preemption is not a failure: same attempt, no restart spent.
    assert status["attempt"] == 0 and status.get("restarts", 0) == 0
    wait_phase(cluster, team_b, "high", "Running", operator, timeout=60)
    wait_phase(cluster, team_b, "high", "Succeeded", operator, timeout=60)
    # Readmitted once the quota is free: it runs again, still attempt 0, then finishes.
    wait_phase(cluster, team_a, "low", "Running", operator, timeout=90)
    done = wait_phase(cluster, team_a, "low", "Succeeded", operator, timeout=120)
    assert done["attempt"] == 0 and done.get("restarts", 0) == 0


def test_the_kueue_adapter_refuses_nothing_it_does_not_serve(tmp_path: Path) -> None:
    """Only the webhooks Kueue serves with the Job integration alone are registered: a
    webhook left in for the pod integration would refuse every pod of the cluster."""
    from fttestkit.kueue import kueue_dir, webhook_configurations

    manifests = (kueue_dir() / "config/manifests.yaml").read_text()
    configurations = webhook_configurations(manifests, "https://127.0.0.1:1", "Y2E=")
    paths = {h["clientConfig"]["url"] for c in configurations for h in c["webhooks"]}
    assert "https://127.0.0.1:1/mutate-batch-v1-job" in paths
    assert not any("--v1-pod" in p or "deployment" in p for p in paths), paths
