"""Every example manifest, applied to the real control plane with the operator running:
its Job has the example's shape, its pods land only on nodes that fit (GPU pools for GPU
jobs, the pools the example selects), kwok runs them, and the FineTuneJob Succeeds.

The kwok cluster has A100, H100 and CPU pools; the examples that select other pools (a T4
pool, a spot pool) get kwok nodes made for them here, labelled and tainted like GKE's."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
import yaml
from kubernetes import client
from kubernetes.client.exceptions import ApiException

from ftapi import parse_job
from ftoperator.children import LABEL_JOB
from ftoperator.config import Settings, gpu_resource_of
from ftoperator.policy import local_paths
from fttestkit.cluster import Cluster, eventually, read_job
from fttestkit.finetunejobs import create_ftj, status_of
from fttestkit.operator import Operator
from fttestkit.paths import REPO

# serial: the extra pools' nodes come and go, and other tests' GPU pods could land there.
pytestmark = [pytest.mark.integration, pytest.mark.serial]
EXAMPLES = sorted((REPO / "examples").glob("*.yaml"))
EXTRA_NODES = {
    # name: (labels, taints, GPUs)
    "fto-t4-0": (
        {"cloud.google.com/gke-nodepool": "t4-pool",
         "cloud.google.com/gke-accelerator": "nvidia-tesla-t4"},
        [{"key": "nvidia.com/gpu", "value": "present", "effect": "NoSchedule"}], 4,
    ),
    "fto-spot-0": (
        {"cloud.google.com/gke-nodepool": "spot-pool", "cloud.google.com/gke-spot": "true",
         "cloud.google.com/gke-accelerator": "nvidia-l4"},
        [{"key": "nvidia.com/gpu", "value": "present", "effect": "NoSchedule"},
         {"key": "cloud.google.com/gke-spot", "value": "true", "effect": "NoSchedule"}], 8,
    ),
}  # fmt: skip


@pytest.fixture(scope="module")
def extra_pools(cluster: Cluster) -> Iterator[None]:
    core = client.CoreV1Api(cluster.api)
    for name, (labels, taints, gpus) in EXTRA_NODES.items():
        node = {
            "apiVersion": "v1",
            "kind": "Node",
            "metadata": {
                "name": name,
                "annotations": {"kwok.x-k8s.io/node": "fake"},
                "labels": {"type": "kwok", "kubernetes.io/hostname": name, **labels},
            },
            "spec": {"taints": taints},
            "status": {
                "capacity": {"cpu": "48", "memory": "192Gi", "pods": "110",
                             "nvidia.com/gpu": str(gpus)},
                "allocatable": {"cpu": "47", "memory": "180Gi", "pods": "110",
                                "nvidia.com/gpu": str(gpus)},
            },
        }  # fmt: skip
        try:
            core.create_node(node)
        except ApiException as error:
            if error.status != 409:
                raise
    for name in EXTRA_NODES:
        eventually(lambda n=name: _ready(core.read_node(n)), what=f"node {name} Ready")
    yield
    for name in EXTRA_NODES:
        core.delete_node(name)


def _ready(node: Any) -> bool:
    return any(c.type == "Ready" and c.status == "True" for c in node.status.conditions or [])


@pytest.mark.parametrize("path", EXAMPLES, ids=[p.stem for p in EXAMPLES])
def test_example_runs_on_the_cluster(
    cluster: Cluster, operator: Operator, ns: str, extra_pools: None, path: Path
) -> None:
    manifest = yaml.safe_load(path.read_text())
    job = parse_job(manifest)
    name = job.name
    resources = job.spec.resources
    create_ftj(cluster, ns, manifest)
    if local_paths(job):  # a local-run example (quickstart-cpu): refused, nothing created
        status = eventually(
            lambda: (s := status_of(cluster, ns, name)).get("phase") == "Failed" and s,
            what=f"{name} refused",
        )  # fmt: skip
        assert status["failureReason"] == "LocalPath", status
        assert "finetune run" in status["message"]
        assert read_job(cluster, ns, f"{name}-0") is None
        return
    batch, core = client.BatchV1Api(cluster.api), client.CoreV1Api(cluster.api)
    created = eventually(lambda: read_job(cluster, ns, f"{name}-0"), what=f"{name}'s Job")
    assert created.spec.completions == resources.nodes
    if job.spec.scheduling.queue_name:  # what Kueue does when it admits the workload
        assert created.spec.suspend is True
        batch.patch_namespaced_job(f"{name}-0", ns, {"spec": {"suspend": False}})
    pods = eventually(
        lambda: (found := core.list_namespaced_pod(ns, label_selector=f"{LABEL_JOB}={name}").items)
        and all(p.spec.node_name for p in found) and len(found) == resources.nodes and found,
        timeout=90, what=f"{name}'s pods scheduled",
    )  # fmt: skip
    for pod in pods:
        node = core.read_node(pod.spec.node_name)
        labels = node.metadata.labels
        gpus = int((node.status.allocatable or {}).get(gpu_resource_of(job, Settings()), "0"))
        if resources.gpus_per_node:
            assert gpus >= resources.gpus_per_node, f"{pod.spec.node_name} has {gpus} GPUs"
        else:
            assert gpus == 0, f"a CPU job landed on GPU node {pod.spec.node_name}"
        for key, value in resources.node_selector.items():
            assert labels.get(key) == value
    status = eventually(
        lambda: (s := status_of(cluster, ns, name)).get("phase") in ("Succeeded", "Failed") and s,
        timeout=120, what=f"{name} finished",
    )  # fmt: skip
    assert status["phase"] == "Succeeded", (status, operator.log())
    assert status["modelUri"].startswith(job.spec.output.uri.rstrip("/"))
