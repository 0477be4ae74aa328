"""The install a user does: `make release` into the cluster's registry, then `helm install
oci://…/charts/finetune-operator --version X` with a pull Secret. The kubelet pulls the
operator's image and the trainer's (the chart's default, pinned by digest) from the registry;
`operator.allowedRegistries` names it, so a job with another registry's image fails with
ImageNotAllowed; a job whose pull Secret is wrong says why within seconds."""

from __future__ import annotations

import base64
import copy
import json
import os
import subprocess
import uuid
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from kubernetes import client

from fttestkit.cluster import Cluster, eventually, fresh_namespace
from fttestkit.finetunejobs import create_ftj, wait_phase
from fttestkit.paths import REPO
from fttestkit.release import Release
from tests.e2e.realnode import LOCAL_NODE, Bucket, containerd_images, normalized, tiny_cpu_job


def _events(cluster: Cluster, namespace: str, kind: str, name: str) -> list[tuple[str, str]]:
    found = client.CoreV1Api(cluster.api).list_namespaced_event(
        namespace, field_selector=f"involvedObject.kind={kind},involvedObject.name={name}"
    )
    return [(e.reason, e.message or "") for e in found.items]


def _pull_secret(cluster: Cluster, namespace: str, name: str, auths: dict[str, Any]) -> None:
    document = base64.b64encode(json.dumps({"auths": auths}).encode()).decode()
    client.CoreV1Api(cluster.api).create_namespaced_secret(namespace, {
        "metadata": {"name": name}, "type": "kubernetes.io/dockerconfigjson",
        "data": {".dockerconfigjson": document},
    })  # fmt: skip


def _renamed(job: dict[str, Any], name: str) -> dict[str, Any]:
    """The same job under another name, writing under its own output prefix."""
    other = copy.deepcopy(job)
    other["metadata"]["name"] = name
    other["spec"]["output"]["uri"] = other["spec"]["output"]["uri"].rsplit("/", 1)[0] + f"/{name}"
    return other


@pytest.fixture(scope="module")
def released(cluster: Cluster, node: str, images: dict[str, str]) -> dict[str, Any]:
    """`make release` of this tree into the cluster's registry, under a fresh path."""
    registry = f"{cluster.env['FTO_REGISTRY']}/e2e-{uuid.uuid4().hex[:6]}"
    version = f"0.0.0-e2e.{uuid.uuid4().hex[:6]}"
    out = Path(cluster.env["FTO_STATE"]) / f"release-{version}"
    env = {**os.environ, **cluster.env, "PATH": cluster.path, "FTO_RELEASE_OUT": str(out)}
    done = subprocess.run(
        ["make", "--no-print-directory", "release", f"VERSION={version}", f"REGISTRY={registry}"],
        cwd=REPO, env=env, capture_output=True, text=True, check=False, timeout=1200,
    )  # fmt: skip
    assert done.returncode == 0, (done.stdout + done.stderr)[-4000:]
    summary: dict[str, Any] = json.loads((out / "summary.json").read_text())
    assert f"release {version}" in done.stdout
    for image in summary["images"].values():  # the summary prints each digest
        assert image["digest"].startswith("sha256:") and image["digest"] in done.stdout
    assert summary["chart"]["digest"].startswith("sha256:")
    return {"registry": registry, "version": version, **summary}


@pytest.fixture
def installed(cluster: Cluster, released: dict[str, Any]) -> Iterator[Release]:
    registry, version = released["registry"], released["version"]
    auth = json.loads(Path(cluster.env["FTO_REGISTRY_AUTH"]).read_text())["auths"]
    suffix = uuid.uuid4().hex[:6]
    with (
        fresh_namespace(cluster, f"e2e-rel-system-{suffix}") as system,
        fresh_namespace(cluster, f"e2e-rel-jobs-{suffix}") as jobs,
    ):
        for namespace in (system, jobs):
            _pull_secret(cluster, namespace, "registry", auth)
        wrong = {k: {"auth": base64.b64encode(b"fto:wrong").decode()} for k in auth}
        _pull_secret(cluster, jobs, "registry-wrong", wrong)
        values: dict[str, Any] = {
            "imagePullSecrets": [{"name": "registry"}],
            "watchNamespaces": [jobs],
            "operator": {"allowedRegistries": [f"{registry}/"], "resyncSeconds": 10},
            **LOCAL_NODE,
        }
        release = Release(
            cluster, name=f"fto-rel-{suffix}", namespace=system, watched=jobs, values=values,
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


def test_released_artifacts_install_from_the_registry_and_the_kubelet_pulls_them(
    cluster: Cluster, released: dict[str, Any], installed: Release, bucket: Bucket, tmp_path: Path
) -> None:
    registry = released["registry"]
    operator_ref, trainer_ref = (f"{registry}/operator:{released['version']}",
                                 f"{registry}/trainer:{released['version']}")  # fmt: skip
    trainer = f"{registry}/trainer@{released['images'][trainer_ref]['digest']}"
    # The operator runs the released image, pulled by the kubelet (the release left no
    # registry name on the node: release.sh removes its tags after the push).
    pod = eventually(installed.pod, what="the operator's pod Running")
    (container,) = pod.spec.containers
    assert container.image == f"{registry}/operator@{released['images'][operator_ref]['digest']}"
    events = _events(cluster, installed.namespace, "Pod", pod.metadata.name)
    assert any(r == "Pulled" and registry in m for r, m in events), events
    assert installed.operator_env()["FTO_DEFAULT_IMAGE"] == trainer  # pinned by digest

    # A job on the chart's default trainer image, pulled from the registry with its Secret.
    assert normalized(trainer) not in containerd_images(cluster)
    job = tiny_cpu_job(installed, bucket, tmp_path, "from-registry", steps=2, save_steps=2,
                       log_every=1)  # fmt: skip
    job["spec"]["resources"]["imagePullSecrets"] = ["registry"]
    create_ftj(cluster, installed.watched, job)
    wait_phase(cluster, installed.watched, "from-registry", "Succeeded", timeout=420)
    core = client.CoreV1Api(cluster.api)
    selector = "finetune.dev/job-name=from-registry"
    pods = core.list_namespaced_pod(installed.watched, label_selector=selector).items
    pulled = [e for p in pods for e in _events(cluster, installed.watched, "Pod", p.metadata.name)]
    assert any(r == "Pulling" and registry in m for r, m in pulled), pulled

    # Another registry's image: refused before anything is created.
    foreign = _renamed(job, "foreign")
    foreign["spec"]["resources"]["image"] = "docker.io/someone/trainer:1"
    create_ftj(cluster, installed.watched, foreign)
    status = wait_phase(cluster, installed.watched, "foreign", "Failed", timeout=60)
    assert status["failureReason"] == "ImageNotAllowed", status

    # A wrong pull Secret: the job says so within seconds, in its own status.
    refused = _renamed(job, "wrong-secret")
    refused["spec"]["resources"]["imagePullSecrets"] = ["registry-wrong"]
    create_ftj(cluster, installed.watched, refused)

    def told() -> dict[str, Any] | None:
        found = client.CustomObjectsApi(cluster.api).get_namespaced_custom_object(
            "finetune.dev", "v1alpha1", installed.watched, "finetunejobs", "wrong-secret"
        )
        status = found.get("status") or {}
        running = next((c for c in status.get("conditions") or [] if c["type"] == "Running"), {})
        return status if running.get("reason") == "ImagePullBackOff" else None

    status = eventually(told, timeout=60, what="the wrong pull Secret in the job's status")
    running = next(c for c in status["conditions"] if c["type"] == "Running")
    assert "401" in running["message"] or "unauthorized" in running["message"].lower(), running
