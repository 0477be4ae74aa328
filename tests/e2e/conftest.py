"""The end-to-end tier: the images built from our Dockerfiles, run by a real kubelet.

The local cluster (hack/cluster-up.sh) has one real node beside kwok's fake ones: kubelet,
containerd, runc, a CNI bridge, kube-proxy and CoreDNS (hack/node.sh). The node carries the
taint finetune.dev/local-node and the label finetune.dev/pool=local, so the integration tier's
pods never land on it and these tests' pods always do (LOCAL_NODE below). The images are
built into the node's containerd by hack/images.sh (`make images`), so nothing is pulled.

The operator runs in the cluster, installed by the Helm chart (`operator_release`), under the
chart's ServiceAccount and RBAC; FineTuneJobs run as real pods of the trainer image, reading
a tiny model and data from MinIO and writing checkpoints and the final model back.

Without a real node (not root, or FTO_NODE=0) the tier is skipped with that reason (skipif
at collection); `make test` sets FTO_E2E_REQUIRED=1, which turns that skip into a failure.
"""

from __future__ import annotations

import json
import os
import subprocess
import uuid
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from kubernetes import client

from ftapi.constants import GROUP, PLURAL, VERSION
from fttrainer.tiny import save_tiny_model
from tests.integration.conftest import (  # noqa: F401  (the crd fixture is shared)
    REPO,
    Cluster,
    crd,
    eventually,
    fresh_namespace,
    running_cluster,
)

TRAINER_IMAGE = os.environ.get("TRAINER_IMAGE", "finetune-trainer:dev")
OPERATOR_IMAGE = os.environ.get("OPERATOR_IMAGE", "finetune-operator:dev")
# What puts a pod on the real node (hack/node.sh's taint and label).
LOCAL_NODE: dict[str, Any] = {
    "nodeSelector": {"finetune.dev/pool": "local"},
    "tolerations": [
        {"key": "finetune.dev/local-node", "operator": "Exists", "effect": "NoSchedule"}
    ],
}
# A trainer pod's share of the 2-CPU node: two of them (nodes: 2) and the operators'
# 100m each must fit at once.
POD_RESOURCES = {"cpu": "800m", "memory": "3Gi", "sharedMemory": "256Mi"}


def node_possible() -> bool:
    """A real node can run here: as root, unless FTO_NODE=0 leaves it out (hack/node.sh)."""
    return os.geteuid() == 0 and os.environ.get("FTO_NODE") != "0"


def pytest_collection_modifyitems(items: list[pytest.Item]) -> None:
    here = Path(__file__).parent
    # FTO_E2E_REQUIRED=1 (`make test`, `make e2e`): no skip; the `node` fixture fails instead.
    skip = pytest.mark.skipif(
        not node_possible() and os.environ.get("FTO_E2E_REQUIRED") != "1",
        reason="no real node here: it needs root, and FTO_NODE=0 leaves it out (hack/node.sh)",
    )
    for item in items:
        if item.path.parent == here:
            item.add_marker(pytest.mark.e2e)
            item.add_marker(skip)


@pytest.fixture(scope="session")
def cluster() -> Iterator[Cluster]:
    """The local cluster with its real node (FTO_NODE=1 unless the environment says; it
    needs root: without, the cluster has no node and the `node` fixture skips)."""
    with running_cluster(node="1" if node_possible() else "0") as running:
        yield running


@pytest.fixture(scope="session")
def node(cluster: Cluster) -> str:
    """The real node's name. Where none can run the tests are skipped at collection; a
    cluster that should have one and has none is a failure."""
    name = cluster.env.get("FTO_NODE_NAME", "")
    if not name:
        pytest.fail("no real node in the local cluster (hack/cluster-up.sh runs one as root)")
    return name


def ctr(cluster: Cluster, *args: str) -> str:
    """`ctr` against the node's containerd, in the kubelet's namespace (k8s.io)."""
    return subprocess.run(
        ["ctr", "--address", cluster.env["FTO_CONTAINERD_ADDR"], "-n", "k8s.io", *args],
        env={**os.environ, "PATH": cluster.path}, capture_output=True, text=True, check=True,
    ).stdout  # fmt: skip


def containerd_images(cluster: Cluster) -> set[str]:
    return set(ctr(cluster, "images", "ls", "-q").split())


def normalized(image: str) -> str:
    """containerd's (and the kubelet's) name for an image reference."""
    if "/" not in image:
        image = f"library/{image}"
    first = image.split("/")[0]
    if "." not in first and ":" not in first and first != "localhost":
        image = f"docker.io/{image}"
    return image


@pytest.fixture(scope="session")
def images(cluster: Cluster, node: str) -> dict[str, str]:
    """The trainer and operator images, in the node's containerd (hack/images.sh builds them
    there when missing: minutes the first time)."""
    wanted = {"trainer": TRAINER_IMAGE, "operator": OPERATOR_IMAGE}
    if not {normalized(i) for i in wanted.values()} <= containerd_images(cluster):
        built = subprocess.run(
            [str(REPO / "hack" / "images.sh")], capture_output=True, text=True, check=False,
            env={**os.environ, "TRAINER_IMAGE": TRAINER_IMAGE, "OPERATOR_IMAGE": OPERATOR_IMAGE},
        )  # fmt: skip
        assert built.returncode == 0, built.stdout[-3000:] + built.stderr[-3000:]
    return wanted


@pytest.fixture
def e2e_namespace(cluster: Cluster, request: pytest.FixtureRequest) -> Iterator[str]:
    with fresh_namespace(cluster, f"e2e-{uuid.uuid4().hex[:10]}") as name:
        yield name


class Bucket:
    """A fresh MinIO bucket and the Secret that lets a namespace's pods use it."""

    def __init__(self, cluster: Cluster, name: str) -> None:
        self.cluster = cluster
        self.name = name
        self.s3 = cluster.s3()
        self.s3.create_bucket(Bucket=name)

    def put_dir(self, local: Path, prefix: str) -> str:
        for path in sorted(local.rglob("*")):
            if path.is_file():
                key = f"{prefix}/{path.relative_to(local).as_posix()}"
                self.s3.upload_file(str(path), self.name, key)
        return f"s3://{self.name}/{prefix}"

    def put_text(self, key: str, text: str) -> str:
        self.s3.put_object(Bucket=self.name, Key=key, Body=text.encode())
        return f"s3://{self.name}/{key}"

    def keys(self, prefix: str) -> set[str]:
        pages = self.s3.get_paginator("list_objects_v2").paginate(Bucket=self.name, Prefix=prefix)
        return {o["Key"] for page in pages for o in page.get("Contents", [])}

    def get_json(self, key: str) -> Any:
        return json.loads(self.s3.get_object(Bucket=self.name, Key=key)["Body"].read())

    def credentials_secret(self, namespace: str, name: str = "s3-credentials") -> str:
        client.CoreV1Api(self.cluster.api).create_namespaced_secret(namespace, {
            "metadata": {"name": name},
            "stringData": {"AWS_ACCESS_KEY_ID": self.cluster.env["AWS_ACCESS_KEY_ID"],
                           "AWS_SECRET_ACCESS_KEY": self.cluster.env["AWS_SECRET_ACCESS_KEY"]},
        })  # fmt: skip
        return name

    def s3_spec(self, secret: str) -> dict[str, Any]:
        """output.s3 for a pod: the bridge address the pods reach MinIO on."""
        return {
            "endpoint": self.cluster.env["FTO_S3_ENDPOINT"], "forcePathStyle": True,
            "region": self.cluster.env["AWS_REGION"], "credentialsSecretRef": {"name": secret},
        }  # fmt: skip


@pytest.fixture
def bucket(cluster: Cluster) -> Bucket:
    return Bucket(cluster, f"e2e-{uuid.uuid4().hex[:12]}")


def finetunejob(cluster: Cluster, namespace: str, name: str) -> dict[str, Any]:
    return dict(
        client.CustomObjectsApi(cluster.api).get_namespaced_custom_object(
            GROUP, VERSION, namespace, PLURAL, name
        )
    )


def create_finetunejob(cluster: Cluster, namespace: str, manifest: dict[str, Any]) -> None:
    client.CustomObjectsApi(cluster.api).create_namespaced_custom_object(
        GROUP, VERSION, namespace, PLURAL, manifest
    )


def phase_is(cluster: Cluster, namespace: str, name: str, *phases: str) -> Any:
    """The FineTuneJob's status once its phase is one of `phases` (for `eventually`)."""
    status = finetunejob(cluster, namespace, name).get("status") or {}
    return status if status.get("phase") in phases else None


class Release:
    """The chart installed with the built operator image: one release for the tier, watching
    one namespace (`jobs`) where the tests' FineTuneJobs run."""

    def __init__(self, cluster: Cluster, system: str, jobs: str, image: str) -> None:
        self.cluster = cluster
        self.name = f"fto-{system.rsplit('-', 1)[-1]}"
        self.namespace = system
        self.jobs = jobs
        self.fullname = f"{self.name}-finetune-operator"
        repository, _, tag = image.rpartition(":")
        self.values: dict[str, Any] = {
            "image": {"repository": repository, "tag": tag, "pullPolicy": "Never"},
            "watchNamespaces": [jobs],
            "operator": {"defaultImage": TRAINER_IMAGE, "resyncSeconds": 10, "logFormat": "text"},
            **LOCAL_NODE,
        }

    def helm(self, *args: str, check: bool = True) -> str:
        from tests.helm.chart import helm

        env = {**os.environ, **self.cluster.env, "PATH": self.cluster.path}
        return helm(*args, "--namespace", self.namespace, values=self.values, env=env, check=check)

    def pod(self) -> Any:
        """The operator's running pod (the newest)."""
        pods = (
            client.CoreV1Api(self.cluster.api)
            .list_namespaced_pod(
                self.namespace, label_selector=f"app.kubernetes.io/instance={self.name}"
            )
            .items
        )
        running = [p for p in pods if p.status.phase == "Running"]
        return max(running, key=lambda p: p.metadata.creation_timestamp) if running else None

    def logs(self) -> str:
        return self.cluster.kubectl(
            "logs", "-n", self.namespace, f"deployment/{self.fullname}", "--tail=-1", check=False
        )


@pytest.fixture(scope="session")
def operator_release(
    cluster: Cluster,
    crd: dict[str, Any],  # noqa: F811
    images: dict[str, str],
) -> Iterator[Release]:
    suffix = uuid.uuid4().hex[:8]
    with (
        fresh_namespace(cluster, f"e2e-system-{suffix}") as system,
        fresh_namespace(cluster, f"e2e-jobs-{suffix}") as jobs,
    ):
        release = Release(cluster, system, jobs, images["operator"])
        from tests.helm.chart import CHART

        release.helm("install", release.name, str(CHART), "--wait", "--timeout", "180s")
        try:
            yield release
        finally:
            log = release.logs()
            print(f"--- operator log (in-cluster) ---\n{log[-5000:]}")
            release.helm("uninstall", release.name, "--wait", "--timeout", "120s", check=False)
            assert "Traceback" not in log, log[log.index("Traceback") - 2000 :][:6000]


def qa_rows(count: int) -> str:
    rows = [
        {"question": f"What is {i} plus {i}?", "answer": f"It is {2 * i}."} for i in range(count)
    ]
    return "".join(json.dumps(row) + "\n" for row in rows)


def cpu_job(
    name: str, model: str, data: str, bucket: Bucket, secret: str, *, steps: int,
    save_steps: int, log_every: int,
) -> dict[str, Any]:  # fmt: skip
    """A LoRA FineTuneJob of the tiny model on the real node's CPU, in and out of MinIO."""
    return {
        "apiVersion": "finetune.dev/v1alpha1", "kind": "FineTuneJob",
        "metadata": {"name": name},
        "spec": {
            "model": {"name": model},
            "dataset": {"train": {"uri": data}, "format": "qa", "maxSeqLength": 64},
            "method": {"type": "lora", "lora": {"r": 8, "alpha": 16}},
            "training": {"maxSteps": steps, "batchSize": 4, "learningRate": 1e-2,
                         "device": "cpu", "seed": 7},
            "evaluation": {"strategy": "no"},
            # Reports every 2 s (not 15): a run of seconds shows its progress half-way.
            "logging": {"steps": log_every, "statusIntervalSeconds": 2},
            "output": {"uri": f"s3://{bucket.name}/{name}", "saveSteps": save_steps,
                       "s3": bucket.s3_spec(secret)},
            "resources": {"gpusPerNode": 0, **POD_RESOURCES, **LOCAL_NODE},
        },
    }  # fmt: skip


def pod_logs(release: Release, name: str) -> str:
    """What the job's pods said (for a failure message)."""
    return release.cluster.kubectl(
        "logs", "-n", release.jobs, "-l", f"finetune.dev/job-name={name}", "--tail=60",
        "--prefix", check=False,
    )[-6000:]  # fmt: skip


def tiny_cpu_job(
    release: Release, bucket: Bucket, tmp_path: Path, name: str, *, data: str | None = None,
    steps: int, save_steps: int, log_every: int,
) -> dict[str, Any]:  # fmt: skip
    """The tiny model and the data (`data`, else 64 QA rows) in the bucket, its Secret in the
    jobs' namespace, and cpu_job's manifest over them (not created yet)."""
    model = bucket.put_dir(save_tiny_model("llama", tmp_path / "tiny-llama"), "models/tiny")
    data_uri = bucket.put_text("data/qa.jsonl", qa_rows(64) if data is None else data)
    secret = bucket.credentials_secret(release.jobs, f"s3-{bucket.name}")
    return cpu_job(name, model, data_uri, bucket, secret, steps=steps, save_steps=save_steps,
                   log_every=log_every)  # fmt: skip


def job_pods(release: Release, name: str) -> list[dict[str, Any]]:
    """The FineTuneJob's pods (every attempt's), as `kubectl get -o json` items."""
    out = release.cluster.kubectl(
        "get", "pods", "-n", release.jobs, "-l", f"finetune.dev/job-name={name}", "-o", "json"
    )
    return list(json.loads(out)["items"])


def training_pod(release: Release, name: str) -> dict[str, Any] | None:
    """The job's running pod once its log shows a logged loss (training under way), for
    `eventually`; fails at once when the job has ended."""
    status = finetunejob(release.cluster, release.jobs, name).get("status") or {}
    assert status.get("phase") not in ("Failed", "Succeeded"), (
        f"{status}\n{pod_logs(release, name)}"
    )
    running = [p for p in job_pods(release, name) if p["status"].get("phase") == "Running"]
    if not running:
        return None
    log = release.cluster.kubectl(
        "logs", "-n", release.jobs, running[0]["metadata"]["name"], check=False
    )
    return running[0] if "{'loss'" in log else None


def run_pod(cluster: Cluster, namespace: str, pod: dict[str, Any]) -> tuple[Any, str]:
    """Create the pod, wait for it to end: (the pod as it ended, its log)."""
    core = client.CoreV1Api(cluster.api)
    name = pod["metadata"]["name"]
    core.create_namespaced_pod(namespace, pod)

    def ended() -> Any:
        found = core.read_namespaced_pod(name, namespace)
        return found if found.status.phase in ("Succeeded", "Failed") else None

    done = eventually(ended, timeout=120, what=f"pod {name} to end")
    return done, core.read_namespaced_pod_log(name, namespace)
