"""The progress channel on the real API server: the trainer pod's own credentials (the
ServiceAccount, Role and RoleBinding that build_children() renders) let it write its
FineTuneJobProgress object, and nothing else.

There is no kubelet here: the test plays the pod, with a token from the TokenRequest API
(what the kubelet mounts) and the environment the operator gives the trainer container.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

import pytest
from kubernetes import client, utils

from ftapi import parse_job
from ftapi.constants import GROUP, PROGRESS_PLURAL, VERSION
from ftapi.progress import (
    ENV_NAMESPACE,
    ENV_NODE_NAME,
    ENV_POD_NAME,
    RANKS_FIELD,
    REPORT_FIELD,
    ProgressReport,
    RankReport,
)
from ftoperator.children import Children, build_children
from ftoperator.config import Settings
from fttestkit.builders import make_job
from fttestkit.cluster import Cluster, eventually
from fttestkit.kubeconfig import write_pod_identity
from fttrainer.reporting.progress import KubeError, KubeTarget, ProgressObjectSink, ProgressReporter
from fttrainer.supervision.ranks import RankReporter

pytestmark = pytest.mark.integration
ATTEMPT = 2


@dataclass(frozen=True)
class Pod:
    """What a trainer pod of the job has: its environment and its service account files."""

    children: Children
    environ: dict[str, str]
    account_dir: Path

    @property
    def progress(self) -> str:
        """The progress object's name."""
        return str(self.children.progress["metadata"]["name"])

    @property
    def target(self) -> KubeTarget:
        return KubeTarget.from_cluster(self.environ, self.account_dir)


def _container_env(children: Children, namespace: str) -> dict[str, str]:
    """The trainer container's plain env values as the operator renders them (the
    namespace is a fieldRef, resolved by the kubelet in a real pod)."""
    (container,) = children.job["spec"]["template"]["spec"]["containers"]
    env = {e["name"]: e["value"] for e in container["env"] if "value" in e}
    env[ENV_NAMESPACE] = namespace
    return env


@pytest.fixture
def pod(cluster: Cluster, crd: Any, namespace: str, tmp_path: Path) -> Pod:
    job = parse_job(make_job("chat-tune").set("metadata.namespace", namespace).obj())
    children = build_children(job, attempt=ATTEMPT, settings=Settings())
    assert children.service_account is not None
    _custom(cluster).create_namespaced_custom_object(
        GROUP, VERSION, namespace, PROGRESS_PLURAL, children.progress
    )
    for obj in (children.service_account, children.role, children.role_binding):
        utils.create_from_dict(cluster.api, obj)
    account = children.service_account["metadata"]["name"]
    # What the kubelet mounts at /var/run/secrets/kubernetes.io/serviceaccount.
    write_pod_identity(cluster, account, namespace, tmp_path, seconds=600)
    server = urlsplit(cluster.api.configuration.host)
    environ = {
        **_container_env(children, namespace),
        "KUBERNETES_SERVICE_HOST": str(server.hostname),
        "KUBERNETES_SERVICE_PORT": str(server.port),
    }
    pod = Pod(children, environ, tmp_path)
    # RBAC is enforced from the authorizer's cache: wait until the binding is seen.
    eventually(lambda: _allowed(pod.target, "GET", _object(pod)), what="the trainer's Role")
    return pod


def _custom(cluster: Cluster) -> client.CustomObjectsApi:
    return client.CustomObjectsApi(cluster.api)


def _object(pod: Pod, name: str | None = None) -> str:
    namespace = pod.environ[ENV_NAMESPACE]
    return f"/apis/{GROUP}/{VERSION}/namespaces/{namespace}/{PROGRESS_PLURAL}/" + (
        name or pod.progress
    )


def _allowed(target: KubeTarget, method: str, path: str, body: Any = None) -> bool:
    try:
        target.request(method, path, body)
    except KubeError as error:
        if error.status != 403:
            raise
        return False
    return True


def _read(cluster: Cluster, namespace: str, name: str) -> dict[str, Any]:
    found: dict[str, Any] = _custom(cluster).get_namespaced_custom_object(
        GROUP, VERSION, namespace, PROGRESS_PLURAL, name
    )
    return found


def _read_progress(cluster: Cluster, namespace: str, name: str) -> ProgressReport:
    return ProgressReport.model_validate_json(_read(cluster, namespace, name)[REPORT_FIELD])


def test_the_trainer_reports_to_its_own_progress_object_with_its_own_token(
    cluster: Cluster, namespace: str, pod: Pod
) -> None:
    # The reporter configures itself as in a pod: the operator's env + the mounted files.
    reporter = ProgressReporter.from_env({**pod.environ, "RANK": "0"}, account_dir=pod.account_dir)
    assert reporter.enabled and reporter.attempt == ATTEMPT
    name = pod.progress

    reporter.training_started(step=0, total_steps=100, epoch=0.0)
    assert reporter.flush(10)
    started = _read_progress(cluster, namespace, name)
    assert (started.stage, started.step, started.total_steps, started.attempt) == (
        "training", 0, 100, ATTEMPT,
    )  # fmt: skip

    reporter.logged({"loss": 1.25, "learning_rate": 1e-4}, step=40, epoch=0.4)
    reporter.checkpointed(uri="s3://models/chat-tune/checkpoints/u/checkpoint-40", step=40, count=1)
    reporter.report_stage("saving")
    reporter.finish(model_uri="s3://models/chat-tune/final")
    assert reporter.failures == 0, "a report was refused"
    done = _read_progress(cluster, namespace, name)
    assert (done.stage, done.step, done.model_uri) == ("done", 40, "s3://models/chat-tune/final")
    assert done.metrics == {"train_loss": 1.25, "learning_rate": 1e-4}
    assert done.checkpoint is not None and done.checkpoint.step == 40
    # The merge patch touched only its field: labels and ownership stay the operator's.
    stored = _read(cluster, namespace, name)
    assert set(stored) == {"apiVersion", "kind", "metadata", REPORT_FIELD}
    assert stored["metadata"]["labels"] == pod.children.progress["metadata"]["labels"]


def test_every_rank_writes_its_own_report_beside_rank_0s(
    cluster: Cluster, namespace: str, pod: Pod
) -> None:
    """Each rank patches ranks.<rank> of the same object with the pod's token; the merge
    patches leave each other's keys and rank 0's report alone, and the CRD keeps them (an
    undeclared field would be pruned silently)."""
    progress = ProgressReporter.from_env({**pod.environ, "RANK": "0"}, account_dir=pod.account_dir)
    progress.training_started(step=0, total_steps=10)
    assert progress.flush(10)
    reporters = [
        RankReporter.from_env({**pod.environ, "RANK": str(rank), ENV_POD_NAME: f"chat-tune-{rank}",
                               ENV_NODE_NAME: "gpu-a"}, account_dir=pod.account_dir)
        for rank in (0, 1)
    ]  # fmt: skip
    for number, reporter in enumerate(reporters):
        assert reporter.enabled and reporter.rank == number and reporter.attempt == ATTEMPT
        reporter.started()
        reporter.stepped(3, step_seconds=1.5, compute_seconds=0.4 * (number + 1))
        reporter.finish()
        assert reporter._sender is not None and reporter._sender.failures == 0
    stored = _read(cluster, namespace, pod.progress)
    assert sorted(stored[RANKS_FIELD]) == ["0", "1"]
    ranks = {k: RankReport.model_validate_json(v) for k, v in stored[RANKS_FIELD].items()}
    assert (ranks["1"].rank, ranks["1"].pod, ranks["1"].node, ranks["1"].done) == (
        1, "chat-tune-1", "gpu-a", True)  # fmt: skip
    assert ranks["1"].compute_seconds == pytest.approx(0.8)
    assert _read_progress(cluster, namespace, pod.progress).stage == "training"


def test_the_trainers_token_can_do_nothing_else(cluster: Cluster, namespace: str, pod: Pod) -> None:
    core = client.CoreV1Api(cluster.api)
    other = {**pod.children.progress, "metadata": {"name": "other"}, REPORT_FIELD: "keep"}
    _custom(cluster).create_namespaced_custom_object(
        GROUP, VERSION, namespace, PROGRESS_PLURAL, other
    )
    core.create_namespaced_config_map(
        namespace, {"metadata": {"name": "a-config"}, "data": {"keep": "me"}}
    )
    core.create_namespaced_secret(
        namespace, {"metadata": {"name": "s3-credentials"}, "stringData": {"key": "v"}}
    )
    target, ns = pod.target, namespace
    own = _object(pod)
    report = ProgressReporter(None).report()

    # Its own object: the token authenticates, and patching it is allowed.
    ProgressObjectSink(target, ns, pod.progress).send(report)

    # Another progress object of the same namespace: refused by the server (403), unchanged.
    with pytest.raises(KubeError) as refused:
        ProgressObjectSink(target, ns, "other").send(report)
    assert refused.value.status == 403
    assert _read(cluster, ns, "other")[REPORT_FIELD] == "keep"
    jobs = f"/apis/{GROUP}/{VERSION}/namespaces/{ns}"

    denied = {
        "read a Secret": ("GET", f"/api/v1/namespaces/{ns}/secrets/s3-credentials"),
        "list Secrets": ("GET", f"/api/v1/namespaces/{ns}/secrets"),
        "list ConfigMaps": ("GET", f"/api/v1/namespaces/{ns}/configmaps"),
        "read a ConfigMap": ("GET", f"/api/v1/namespaces/{ns}/configmaps/a-config"),
        "create a ConfigMap": ("POST", f"/api/v1/namespaces/{ns}/configmaps"),
        "list progress objects": ("GET", f"{jobs}/{PROGRESS_PLURAL}"),
        "read another progress object": ("GET", _object(pod, "other")),
        "delete its own progress object": ("DELETE", own),
        "create a progress object": ("POST", f"{jobs}/{PROGRESS_PLURAL}"),
        "list pods": ("GET", f"/api/v1/namespaces/{ns}/pods"),
        "read FineTuneJobs": ("GET", f"{jobs}/finetunejobs"),
    }
    body = {"metadata": {"name": "new"}}
    allowed = [
        what
        for what, (method, path) in denied.items()
        if _allowed(target, method, path, body if method == "POST" else None)
    ]
    assert allowed == []
    assert json.loads(_read(cluster, ns, pod.progress)[REPORT_FIELD])["stage"] == "starting"
