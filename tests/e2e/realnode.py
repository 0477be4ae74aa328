"""What the e2e tests run on the real node: the images in its containerd, pods placed on it,
the operator installed in the cluster by the chart (Release), FineTuneJobs of the trainer
image reading a tiny model and data from MinIO (Bucket), and what they left (pods, logs).
The fixtures that make these are in conftest.py."""

from __future__ import annotations

import base64
import copy
import json
import os
import subprocess
import uuid
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

from kubernetes import client

from fttestkit.cluster import Cluster, eventually, fresh_namespace
from fttestkit.finetunejobs import read_ftj
from fttestkit.paths import REPO
from fttestkit.realnode import (
    LOCAL_NODE,
    POD_RESOURCES,
    TRAINER_IMAGE,
    Bucket,
    cpu_job,
    qa_rows,
)
from fttestkit.release import Release
from fttrainer.tiny import save_tiny_model

OPERATOR_IMAGE = os.environ.get("OPERATOR_IMAGE", "finetune-operator:dev")


def node_possible() -> bool:
    """A real node can run here: as root, unless FTO_NODE=0 leaves it out (hack/node.sh)."""
    return os.geteuid() == 0 and os.environ.get("FTO_NODE") != "0"


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


def operator_release(cluster: Cluster, system: str, jobs: str, image: str) -> Release:
    """The chart with the built operator image, on the real node, watching `jobs`."""
    repository, _, tag = image.rpartition(":")
    values: dict[str, Any] = {
        "image": {"repository": repository, "tag": tag, "pullPolicy": "Never"},
        "watchNamespaces": [jobs],
        "operator": {"defaultImage": TRAINER_IMAGE, "resyncSeconds": 10, "logFormat": "text"},
        **LOCAL_NODE,
    }
    return Release(
        cluster, name=f"fto-{system.rsplit('-', 1)[-1]}", namespace=system, watched=jobs,
        values=values,
    )  # fmt: skip


def object_events(cluster: Cluster, namespace: str, kind: str, name: str) -> list[tuple[str, str]]:
    """(reason, message) of every Event about the object `kind`/`name`."""
    found = client.CoreV1Api(cluster.api).list_namespaced_event(
        namespace, field_selector=f"involvedObject.kind={kind},involvedObject.name={name}"
    )
    return [(e.reason, e.message or "") for e in found.items]


def pull_secret(cluster: Cluster, namespace: str, name: str, auths: dict[str, Any]) -> None:
    """A kubernetes.io/dockerconfigjson Secret holding `auths` (a config.json's "auths")."""
    document = base64.b64encode(json.dumps({"auths": auths}).encode()).decode()
    client.CoreV1Api(cluster.api).create_namespaced_secret(namespace, {
        "metadata": {"name": name}, "type": "kubernetes.io/dockerconfigjson",
        "data": {".dockerconfigjson": document},
    })  # fmt: skip


def registry_auths(cluster: Cluster) -> dict[str, Any]:
    """The cluster registry's credentials, as a config.json's "auths"."""
    config = json.loads(Path(cluster.env["FTO_REGISTRY_AUTH"]).read_text())
    auths: dict[str, Any] = config["auths"]
    return auths


@contextmanager
def registry_release(
    cluster: Cluster, registry: str, version: str, prefix: str
) -> Iterator[Release]:
    """The operator installed as a user installs it: `helm install oci://REGISTRY/charts/...
    --version VERSION` into fresh namespaces, each holding the pull Secret `registry`, with
    `operator.allowedRegistries` naming REGISTRY. Uninstalled afterwards; its log must hold
    no traceback."""
    suffix = uuid.uuid4().hex[:6]
    with (
        fresh_namespace(cluster, f"{prefix}-system-{suffix}") as system,
        fresh_namespace(cluster, f"{prefix}-jobs-{suffix}") as jobs,
    ):
        for namespace in (system, jobs):
            pull_secret(cluster, namespace, "registry", registry_auths(cluster))
        values: dict[str, Any] = {
            "imagePullSecrets": [{"name": "registry"}],
            "watchNamespaces": [jobs],
            "operator": {"allowedRegistries": [f"{registry}/"], "resyncSeconds": 10},
            **LOCAL_NODE,
        }
        release = Release(
            cluster, name=f"{prefix}-{suffix}", namespace=system, watched=jobs, values=values,
            chart=f"oci://{registry}/charts/finetune-operator",
            chart_args=("--version", version, "--ca-file", cluster.env["FTO_REGISTRY_CA"],
                        "--registry-config", cluster.env["FTO_REGISTRY_AUTH"]),
        )  # fmt: skip
        release.install_or_upgrade("install")
        try:
            yield release
        finally:
            log = release.logs()
            release.uninstall(check=False)
            assert "Traceback" not in log, log[-6000:]


def make_release(
    cluster: Cluster, registry: str, version: str, **env: str
) -> dict[str, Any]:  # fmt: skip
    """`make release VERSION=version REGISTRY=registry` (hack/release.sh, its environment
    extended by `env`): its summary.json, after checking that it printed every digest."""
    out = Path(cluster.env["FTO_STATE"]) / f"release-{version}-{uuid.uuid4().hex[:6]}"
    done = subprocess.run(
        ["make", "--no-print-directory", "release", f"VERSION={version}", f"REGISTRY={registry}"],
        cwd=REPO, capture_output=True, text=True, check=False, timeout=1200,
        env={**os.environ, **cluster.env, "PATH": cluster.path, "FTO_RELEASE_OUT": str(out), **env},
    )  # fmt: skip
    assert done.returncode == 0, (done.stdout + done.stderr)[-4000:]
    summary: dict[str, Any] = json.loads((out / "summary.json").read_text())
    assert f"release {version}" in done.stdout
    for image in summary["images"].values():  # the summary prints each digest
        assert image["digest"].startswith("sha256:") and image["digest"] in done.stdout
    assert summary["chart"]["digest"].startswith("sha256:")
    return {"registry": registry, "version": version, "log": done.stderr, **summary}


def pod_logs(release: Release, name: str) -> str:
    """What the job's pods said (for a failure message)."""
    return release.cluster.kubectl(
        "logs", "-n", release.watched, "-l", f"finetune.dev/job-name={name}", "--tail=60",
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
    secret = bucket.credentials_secret(release.watched, f"s3-{bucket.name}")
    return cpu_job(name, model, data_uri, bucket, secret, steps=steps, save_steps=save_steps,
                   log_every=log_every)  # fmt: skip


def renamed(job: dict[str, Any], name: str) -> dict[str, Any]:
    """The same FineTuneJob manifest under another name, writing under its own output
    prefix (beside the original's)."""
    other = copy.deepcopy(job)
    other["metadata"]["name"] = name
    other["spec"]["output"]["uri"] = other["spec"]["output"]["uri"].rsplit("/", 1)[0] + f"/{name}"
    return other


def job_pods(release: Release, name: str) -> list[dict[str, Any]]:
    """The FineTuneJob's pods (every attempt's), as `kubectl get -o json` items."""
    out = release.cluster.kubectl(
        "get", "pods", "-n", release.watched, "-l", f"finetune.dev/job-name={name}", "-o", "json"
    )
    return list(json.loads(out)["items"])


def training_pod(release: Release, name: str) -> dict[str, Any] | None:
    """The job's running pod once its log shows a logged loss (training under way), for
    `eventually`; fails at once when the job has ended."""
    status = read_ftj(release.cluster, release.watched, name).get("status") or {}
    assert status.get("phase") not in ("Failed", "Succeeded"), (
        f"{status}\n{pod_logs(release, name)}"
    )
    running = [p for p in job_pods(release, name) if p["status"].get("phase") == "Running"]
    if not running:
        return None
    log = release.cluster.kubectl(
        "logs", "-n", release.watched, running[0]["metadata"]["name"], check=False
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


class FinetuneCli:
    """`finetune` at a user's terminal against the local cluster: the cluster's kubeconfig,
    its S3 keys in the environment, a client config naming the jobs' namespace (and, given a
    bucket and its Secret, a staging location and the job defaults that put a submitted
    local manifest on the real node, as hack/quickstart-cluster.sh writes them)."""

    def __init__(
        self, release: Release, home: Path, *, bucket: Bucket | None = None, secret: str = ""
    ) -> None:
        self.release = release
        home.mkdir(parents=True, exist_ok=True)
        config = home / "client.yaml"
        env = release.cluster.env
        settings: dict[str, Any] = {
            "namespace": release.watched,
            "s3": {"endpoint": env["FTO_S3_ENDPOINT"], "region": env["AWS_REGION"],
                   "forcePathStyle": True},
        }  # fmt: skip
        if bucket is not None:
            settings["staging"] = f"s3://{bucket.name}/staging"
            settings["jobDefaults"] = {
                "output": {"s3": bucket.s3_spec(secret)},
                "resources": {**POD_RESOURCES, **LOCAL_NODE},
                "logging": {"statusIntervalSeconds": 2},
            }
        config.write_text(json.dumps(settings))
        self.env = {
            **{k: v for k, v in os.environ.items() if not k.startswith(("FINETUNE_", "AWS_"))},
            **env, "PATH": release.cluster.path, "HOME": str(home), "FINETUNE_CONFIG": str(config),
        }  # fmt: skip
        self.command = str(REPO / ".venv/bin/finetune")

    def run(self, *args: str, timeout: float = 120) -> subprocess.CompletedProcess[str]:
        return subprocess.run([self.command, *args], cwd=REPO, env=self.env, capture_output=True,
                              text=True, timeout=timeout, check=False)  # fmt: skip

    def start(self, *args: str) -> subprocess.Popen[str]:
        """A command left running (`finetune logs -f`)."""
        return subprocess.Popen([self.command, *args], cwd=REPO, env=self.env, text=True,
                                stdout=subprocess.PIPE, stderr=subprocess.PIPE)  # fmt: skip
