"""Proof that the local cluster is real: the scheduler honours GPU taints and requests, the
Job controller completes Jobs, kwok's injected failures look like a kubelet's, etcd keeps
state across an apiserver restart, and the S3 server speaks S3 (multipart included)."""

from __future__ import annotations

import hashlib
import json
import os
import re
import subprocess
import uuid
from collections.abc import Iterator
from typing import Any

import boto3
import pytest
from boto3.s3.transfer import TransferConfig
from botocore.config import Config
from kubernetes import client

from fttestkit.cluster import Cluster, eventually
from fttestkit.paths import HACK

pytestmark = pytest.mark.integration
GPU = "nvidia.com/gpu"
GPU_TOLERATION = {"key": GPU, "operator": "Exists", "effect": "NoSchedule"}


def _job(name: str, *, gpus: int = 0, tolerate: bool = False,
         annotations: dict[str, str] | None = None) -> dict[str, Any]:  # fmt: skip
    container: dict[str, Any] = {"name": "main", "image": "trainer:test"}
    if gpus:
        container["resources"] = {"limits": {GPU: str(gpus)}}
    return {
        "apiVersion": "batch/v1",
        "kind": "Job",
        "metadata": {"name": name},
        "spec": {
            "backoffLimit": 0,
            "template": {
                "metadata": {"annotations": annotations or {}},
                "spec": {
                    "restartPolicy": "Never",
                    "containers": [container],
                    "tolerations": [GPU_TOLERATION] if tolerate else [],
                },
            },
        },
    }


def _job_condition(cluster: Cluster, namespace: str, name: str, kind: str) -> bool:
    job = client.BatchV1Api(cluster.api).read_namespaced_job_status(name, namespace)
    return any(c.type == kind and c.status == "True" for c in job.status.conditions or [])


def _pods(cluster: Cluster, namespace: str, job: str) -> list[client.V1Pod]:
    return list(
        client.CoreV1Api(cluster.api)
        .list_namespaced_pod(namespace, label_selector=f"job-name={job}")
        .items
    )


def test_pinned_kubernetes_version(cluster: Cluster) -> None:
    pinned = (HACK / "versions.env").read_text()
    pins = dict(re.findall(r"^(KUBERNETES\w*_VERSION)=(\S+)$", pinned, re.M))
    # hack/test-kube-oldest.sh runs this file on the oldest supported control plane.
    oldest = os.environ.get("FTO_KUBERNETES") == "oldest"
    server = pins["KUBERNETES_OLDEST_VERSION" if oldest else "KUBERNETES_VERSION"]
    versions = json.loads(cluster.kubectl("version", "-o", "json"))
    # kubectl is the control plane's (its skew policy: one minor either way).
    assert versions["clientVersion"]["gitVersion"] == server
    assert versions["serverVersion"]["gitVersion"] == server
    assert cluster.env["FTO_KUBERNETES_VERSION"] == server


def test_gpu_pools_are_tainted_and_labelled(cluster: Cluster) -> None:
    nodes = client.CoreV1Api(cluster.api).list_node().items
    gpu_nodes = [n for n in nodes if int(n.status.capacity.get(GPU, "0")) > 0]
    cpu_nodes = [n for n in nodes if int(n.status.capacity.get(GPU, "0")) == 0]
    assert len(gpu_nodes) >= 4 and cpu_nodes
    pools = {n.metadata.labels.get("cloud.google.com/gke-nodepool") for n in gpu_nodes}
    assert len(pools) >= 2
    for node in gpu_nodes:
        assert any(t.key == GPU and t.effect == "NoSchedule" for t in node.spec.taints or [])
        ready = [c for c in node.status.conditions if c.type == "Ready"]
        assert ready[0].status == "True"


def test_gpu_job_lands_on_a_gpu_node_and_completes(cluster: Cluster, namespace: str) -> None:
    batch = client.BatchV1Api(cluster.api)
    batch.create_namespaced_job(namespace, _job("gpu", gpus=2, tolerate=True))
    eventually(lambda: _job_condition(cluster, namespace, "gpu", "Complete"), what="Complete")
    (pod,) = _pods(cluster, namespace, "gpu")
    node = client.CoreV1Api(cluster.api).read_node(pod.spec.node_name)
    assert int(node.status.capacity[GPU]) >= 2
    assert pod.status.phase == "Succeeded"


def test_gpu_pod_without_toleration_is_unschedulable(cluster: Cluster, namespace: str) -> None:
    client.BatchV1Api(cluster.api).create_namespaced_job(namespace, _job("notol", gpus=1))

    def unschedulable() -> str:
        for pod in _pods(cluster, namespace, "notol"):
            for cond in pod.status.conditions or []:
                if cond.type == "PodScheduled" and cond.reason == "Unschedulable":
                    return str(cond.message)
        return ""

    message = eventually(unschedulable, what="Unschedulable")
    assert "untolerated taint" in message and "Insufficient nvidia.com/gpu" in message


def test_cpu_job_needs_no_toleration(cluster: Cluster, namespace: str) -> None:
    client.BatchV1Api(cluster.api).create_namespaced_job(namespace, _job("cpu"))
    eventually(lambda: _job_condition(cluster, namespace, "cpu", "Complete"), what="Complete")
    (pod,) = _pods(cluster, namespace, "cpu")
    node = client.CoreV1Api(cluster.api).read_node(pod.spec.node_name)
    assert GPU not in node.status.capacity


@pytest.mark.parametrize(
    ("injected", "reason", "exit_code"),
    [("oom", "OOMKilled", 137), ("exit:3", "Error", 3)],
)
def test_injected_container_failure(
    cluster: Cluster, namespace: str, injected: str, reason: str, exit_code: int
) -> None:
    job = _job("failing", gpus=1, tolerate=True, annotations={"finetune.dev/kwok-fail": injected})
    client.BatchV1Api(cluster.api).create_namespaced_job(namespace, job)
    eventually(lambda: _job_condition(cluster, namespace, "failing", "Failed"), what="Failed")
    (pod,) = _pods(cluster, namespace, "failing")
    terminated = pod.status.container_statuses[0].state.terminated
    assert (pod.status.phase, terminated.reason, terminated.exit_code) == (
        "Failed",
        reason,
        exit_code,
    )


def test_injected_preemption(cluster: Cluster, namespace: str) -> None:
    annotations = {"finetune.dev/kwok-run-duration": "10m"}
    job = _job("spot", gpus=1, tolerate=True, annotations=annotations)
    client.BatchV1Api(cluster.api).create_namespaced_job(namespace, job)
    core = client.CoreV1Api(cluster.api)
    pod = eventually(
        lambda: next((p for p in _pods(cluster, namespace, "spot") if p.status.phase == "Running"),
                     None),
        what="a running pod",
    )  # fmt: skip
    core.patch_namespaced_pod(
        pod.metadata.name, namespace,
        {"metadata": {"annotations": {"finetune.dev/kwok-disrupt": "preempt"}}},
    )  # fmt: skip

    def disrupted() -> list[Any]:
        current = core.read_namespaced_pod_status(pod.metadata.name, namespace)
        return (
            [c for c in current.status.conditions or [] if c.type == "DisruptionTarget"]
            if (current.status.phase == "Failed")
            else []
        )

    (condition,) = eventually(disrupted, what="DisruptionTarget")
    assert condition.reason == "PreemptionByScheduler"
    eventually(lambda: _job_condition(cluster, namespace, "spot", "Failed"), what="Job Failed")


@pytest.mark.serial  # the API server goes away for every test meanwhile
def test_objects_survive_an_apiserver_restart(cluster: Cluster, namespace: str) -> None:
    core = client.CoreV1Api(cluster.api)
    body = client.V1ConfigMap(metadata=client.V1ObjectMeta(name="kept"), data={"k": "v"})
    core.create_namespaced_config_map(namespace, body)
    restarted = subprocess.run(
        [str(HACK / "cluster-up.sh"), "restart-apiserver"],
        capture_output=True,
        text=True,
        check=False,
    )
    assert restarted.returncode == 0, restarted.stderr

    def read_back() -> dict[str, str] | None:
        try:
            return core.read_namespaced_config_map("kept", namespace).data
        except Exception:  # the apiserver is still starting
            return None

    assert eventually(read_back, what="the ConfigMap after the restart") == {"k": "v"}


@pytest.fixture
def bucket(cluster: Cluster) -> Iterator[tuple[Any, str]]:
    s3 = boto3.client(
        "s3",
        endpoint_url=cluster.env["FTO_S3_ENDPOINT"],
        aws_access_key_id=cluster.env["AWS_ACCESS_KEY_ID"],
        aws_secret_access_key=cluster.env["AWS_SECRET_ACCESS_KEY"],
        region_name=cluster.env["AWS_REGION"],
        config=Config(s3={"addressing_style": "path"}),
    )
    name = f"smoke-{uuid.uuid4().hex[:12]}"
    s3.create_bucket(Bucket=name)
    yield s3, name
    for item in s3.list_objects_v2(Bucket=name).get("Contents", []):
        s3.delete_object(Bucket=name, Key=item["Key"])
    s3.delete_bucket(Bucket=name)


def test_s3_round_trip(bucket: tuple[Any, str]) -> None:
    s3, name = bucket
    s3.put_object(Bucket=name, Key="a/b.txt", Body=b"hello")
    assert s3.get_object(Bucket=name, Key="a/b.txt")["Body"].read() == b"hello"
    listed = s3.list_objects_v2(Bucket=name, Prefix="a/")["Contents"]
    assert [o["Key"] for o in listed] == ["a/b.txt"]


def test_s3_multipart_upload(bucket: tuple[Any, str], tmp_path: Any) -> None:
    s3, name = bucket
    payload = os.urandom(13 * 1024 * 1024)
    source = tmp_path / "big.bin"
    source.write_bytes(payload)
    config = TransferConfig(
        multipart_threshold=5 * 1024 * 1024, multipart_chunksize=5 * 1024 * 1024
    )
    s3.upload_file(str(source), name, "big.bin", Config=config)
    head = s3.head_object(Bucket=name, Key="big.bin")
    assert head["ContentLength"] == len(payload)
    assert head["ETag"].strip('"').endswith("-3")  # three parts: it really was multipart
    body = s3.get_object(Bucket=name, Key="big.bin")["Body"].read()
    assert hashlib.sha256(body).digest() == hashlib.sha256(payload).digest()
