"""The install a user does: `make release` into the cluster's registry, then `helm install
oci://…/charts/finetune-operator --version X` with a pull Secret. The kubelet pulls the
operator's image and the trainer's (the chart's default, pinned by digest) from the registry;
`operator.allowedRegistries` names it, so a job with another registry's image fails with
ImageNotAllowed; a job whose pull Secret is wrong says why within seconds."""

from __future__ import annotations

import base64
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from kubernetes import client

from fttestkit.cluster import Cluster, eventually
from fttestkit.finetunejobs import create_ftj, wait_phase
from fttestkit.release import Release
from tests.e2e.realnode import (
    Bucket,
    containerd_images,
    normalized,
    object_events,
    pull_secret,
    registry_auths,
    registry_release,
    renamed,
    tiny_cpu_job,
)


@pytest.fixture
def installed(cluster: Cluster, released: dict[str, Any]) -> Iterator[Release]:
    registry, version = released["registry"], released["version"]
    with registry_release(cluster, registry, version, "e2e-rel") as release:
        wrong = {
            k: {"auth": base64.b64encode(b"fto:wrong").decode()} for k in registry_auths(cluster)
        }
        pull_secret(cluster, release.watched, "registry-wrong", wrong)
        yield release


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
    events = object_events(cluster, installed.namespace, "Pod", pod.metadata.name)
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
    pulled = [
        e for p in pods for e in object_events(cluster, installed.watched, "Pod", p.metadata.name)
    ]
    assert any(r == "Pulling" and registry in m for r, m in pulled), pulled

    # Another registry's image: refused before anything is created.
    foreign = renamed(job, "foreign")
    foreign["spec"]["resources"]["image"] = "docker.io/someone/trainer:1"
    create_ftj(cluster, installed.watched, foreign)
    status = wait_phase(cluster, installed.watched, "foreign", "Failed", timeout=60)
    assert status["failureReason"] == "ImageNotAllowed", status

    # A wrong pull Secret: the job says so within seconds, in its own status.
    refused = renamed(job, "wrong-secret")
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
