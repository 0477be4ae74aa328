"""Kueue preempts a training job on the real node and readmits it later: the kubelet's
SIGTERM (Kueue suspends the Job, the Job controller stops its pod) makes the trainer save a
checkpoint, and when the quota is free again the same attempt resumes from that step.

Real Kueue (testkit/fttestkit/kueue.py) with a ClusterQueue over the local node's
CPU: one training pod fits its quota. The operator runs in-cluster under the chart's RBAC.
"""

from __future__ import annotations

import copy
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from fttestkit.cluster import Cluster, eventually
from fttestkit.finetunejobs import create_ftj, phase_is, read_ftj
from fttestkit.kueue import API, Kueue
from fttestkit.release import Release
from tests.e2e.realnode import Bucket, pod_logs, tiny_cpu_job, training_pod

FLAVOR, CLUSTER_QUEUE, QUEUE = "fto-e2e-local", "fto-e2e-cpu", "e2e-training"
LOW, HIGH = "fto-e2e-low", "fto-e2e-high"
STEPS = 400


@pytest.fixture
def queue(
    cluster: Cluster, operator_release: Release, tmp_path_factory: pytest.TempPathFactory
) -> Iterator[str]:
    kueue = Kueue(cluster, tmp_path_factory.mktemp("kueue"))
    import yaml

    quota = [{"name": "cpu", "nominalQuota": "1"}, {"name": "memory", "nominalQuota": "4Gi"}]
    objects: list[dict[str, Any]] = [
        {"apiVersion": API, "kind": "ResourceFlavor", "metadata": {"name": FLAVOR},
         "spec": {"nodeLabels": {"finetune.dev/pool": "local"}}},
        # One training pod's CPU and memory (tests/e2e/realnode.py POD_RESOURCES).
        {"apiVersion": API, "kind": "ClusterQueue", "metadata": {"name": CLUSTER_QUEUE},
         "spec": {"namespaceSelector": {},
                  "preemption": {"withinClusterQueue": "LowerPriority"},
                  "resourceGroups": [{"coveredResources": ["cpu", "memory"], "flavors": [
                      {"name": FLAVOR, "resources": quota}]}]}},
        {"apiVersion": API, "kind": "LocalQueue",
         "metadata": {"name": QUEUE, "namespace": operator_release.watched},
         "spec": {"clusterQueue": CLUSTER_QUEUE}},
        {"apiVersion": "scheduling.k8s.io/v1", "kind": "PriorityClass",
         "metadata": {"name": LOW}, "value": 10},
        {"apiVersion": "scheduling.k8s.io/v1", "kind": "PriorityClass",
         "metadata": {"name": HIGH}, "value": 1000},
    ]  # fmt: skip
    try:
        cluster.kubectl("apply", "--server-side", "-f", "-", input=yaml.safe_dump_all(objects))
        yield QUEUE
    finally:
        for obj in reversed(objects):
            namespace = obj["metadata"].get("namespace")
            cluster.kubectl("delete", obj["kind"].lower(), obj["metadata"]["name"],
                            *(["-n", namespace] if namespace else []), "--ignore-not-found",
                            "--wait=false", check=False)  # fmt: skip
        kueue.stop()
        print(kueue.log()[-3000:])


def test_kueue_preempts_a_training_pod_and_the_readmitted_job_resumes_from_its_checkpoint(
    operator_release: Release, bucket: Bucket, queue: str, tmp_path: Path
) -> None:
    cluster, ns = operator_release.cluster, operator_release.watched
    low = tiny_cpu_job(operator_release, bucket, tmp_path, "low", steps=STEPS,
                       save_steps=100_000, log_every=10)  # fmt: skip
    low["spec"]["logging"]["firstStep"] = False  # its first logged loss is step 10's
    low["spec"]["scheduling"] = {"queueName": queue}
    low["spec"]["resources"]["priorityClassName"] = LOW
    create_ftj(cluster, ns, low)
    eventually(lambda: training_pod(operator_release, "low"), timeout=300, interval=0.5,
               what="low's first loss")  # fmt: skip

    high = copy.deepcopy(low)  # the same model, data and credentials
    high["metadata"]["name"] = "high"
    high["spec"]["training"]["maxSteps"] = 20
    high["spec"]["output"]["uri"] = f"s3://{bucket.name}/high"
    high["spec"]["resources"]["priorityClassName"] = HIGH
    create_ftj(cluster, ns, high)

    def preempted() -> dict[str, Any]:
        status = read_ftj(cluster, ns, "low").get("status") or {}
        running = [c for c in status.get("conditions", []) if c["type"] == "Running"]
        return status if running and running[0]["reason"] == "Preempted" else {}

    status = eventually(preempted, timeout=120, what=f"low preempted\n{operator_release.logs()}")
    assert status["phase"] == "Queued" and "preempted by Kueue" in status["message"], status

    done = eventually(lambda: phase_is(cluster, ns, "high", "Succeeded", "Failed"),
                      timeout=300, interval=1.0, what="high to finish")  # fmt: skip
    assert done["phase"] == "Succeeded", pod_logs(operator_release, "high")
    final = eventually(lambda: phase_is(cluster, ns, "low", "Succeeded", "Failed"),
                       timeout=480, interval=1.0, what="low to finish")  # fmt: skip
    assert final["phase"] == "Succeeded", pod_logs(operator_release, "low")
    # Kueue suspended and readmitted the same Job: one attempt, no restart spent.
    assert final["attempt"] == 0 and final.get("restarts", 0) == 0, final
    result = bucket.get_json("low/result.json")
    # Resumed from the checkpoint its SIGTERM saved (no periodic one exists): past step 10.
    assert result["resumed_from_step"] is not None and result["resumed_from_step"] >= 10, result
    assert bucket.get_json("low/final_metrics.json")["global_step"] == STEPS
