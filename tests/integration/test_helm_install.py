"""The Helm chart on the real control plane: install, run, upgrade, uninstall.

There is no container runtime: kwok fakes the operator's pod (its image is never pulled), so
the operator itself runs here as a process, configured exactly as the chart configures the
container: the env of the installed Deployment (FTO_* values, POD_NAME, POD_NAMESPACE) and the
chart's ServiceAccount (a TokenRequest token in a kubeconfig with the cluster's CA and server).
Only the metrics address differs (127.0.0.1 and a free port instead of 0.0.0.0:8080). So a
permission the chart forgot shows up as a 403 in the operator's log and a job that never
finishes; the test asserts neither happens.

The namespaces are named fth-* so that the op-* operators of other test modules leave them
alone. The CRD is shared with every other test and is never deleted here."""

from __future__ import annotations

import json
import os
import re
import sys
import uuid
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
import yaml
from kubernetes import client
from kubernetes.client.exceptions import ApiException

from ftapi.constants import GROUP, PLURAL, VERSION
from ftoperator.children import LABEL_JOB
from fttestkit.cluster import Cluster, eventually
from fttestkit.finetunejobs import create_ftj, find_ftj, wait_events, wait_phase
from fttestkit.paths import REPO
from fttestkit.ports import free_port
from fttestkit.process import ManagedProcess, http_ok
from fttestkit.release import Release

pytestmark = pytest.mark.integration
CRD_NAME = "finetunejobs.finetune.dev"
EXAMPLE = REPO / "examples" / "quickstart-cpu.yaml"
PERMISSION_PROBLEM = re.compile(r"forbidden|unauthorized|not enough permissions|\(40[13]\)", re.I)


def _new_release(cluster: Cluster) -> Release:
    """A release watching one namespace of its own (names never repeat)."""
    suffix = uuid.uuid4().hex[:8]
    watched = f"fth-jobs-{suffix}"  # where FineTuneJobs run
    values: dict[str, Any] = {
        "watchNamespaces": [watched],
        # Never pulled: kwok fakes the pod.
        "image": {"repository": "registry.invalid/finetune-operator", "tag": "test"},
        "operator": {
            "defaultImage": "registry.invalid/ml/trainer:1.0",
            "allowedRegistries": ["registry.invalid/ml/"],
            "logFormat": "json",
            "resyncSeconds": 10,
        },
    }
    return Release(
        cluster, name=f"fto-{suffix}", namespace=f"fth-system-{suffix}", watched=watched,
        values=values,
    )  # fmt: skip


class LocalOperator(ManagedProcess):
    """`python -m ftoperator` with nothing but the chart's env and ServiceAccount: no flags."""

    def __init__(self, release: Release, kubeconfig: Path, log: Path) -> None:
        super().__init__("operator", log)
        self.release = release
        self.kubeconfig = kubeconfig
        self.port = 0
        self.chart_env: dict[str, str] = {}

    def start_as_deployed(self) -> None:
        self.chart_env = self.release.operator_env()
        self.port = free_port()
        inherited = {k: v for k, v in os.environ.items()
                     if not k.startswith(("FTO_", "KUBE", "POD_"))}  # fmt: skip
        env = {
            **inherited, **self.chart_env,
            "FTO_METRICS_BIND": "127.0.0.1", "FTO_METRICS_PORT": str(self.port),
            "KUBECONFIG": str(self.kubeconfig), "PYTHONUNBUFFERED": "1",
        }  # fmt: skip
        self.start(
            [sys.executable, "-m", "ftoperator"], env=env, cwd=REPO,
            ready=lambda: http_ok(f"http://127.0.0.1:{self.port}/readyz"), timeout=60,
        )  # fmt: skip

    def log(self, *, since_start: bool = False, tail: int | None = None) -> str:
        """The whole log by default: tests read every JSON line of it."""
        return super().log(since_start=since_start, tail=tail)

    def permission_problems(self) -> list[str]:
        return [line for line in self.log().splitlines() if PERMISSION_PROBLEM.search(line)]


def _release(cluster: Cluster) -> Iterator[Release]:
    made = _new_release(cluster)
    core = client.CoreV1Api(cluster.api)
    for namespace in (made.namespace, made.watched):
        core.create_namespace(client.V1Namespace(metadata=client.V1ObjectMeta(name=namespace)))
        eventually(
            lambda n=namespace: core.list_namespaced_service_account(
                n, field_selector="metadata.name=default"
            ).items,
            what=f"the default ServiceAccount of {namespace}",
        )  # fmt: skip
    yield made
    if made.installed:
        made.uninstall(check=False)
    for namespace in (made.namespace, made.watched):
        core.delete_namespace(namespace, propagation_policy="Background")


@pytest.fixture(scope="module")
def release(cluster: Cluster) -> Iterator[Release]:
    yield from _release(cluster)


@pytest.fixture
def cluster_wide(cluster: Cluster) -> Iterator[Release]:
    """A second release, with the defaults: every namespace (nothing runs it: see below)."""
    for made in _release(cluster):
        made.values["watchNamespaces"] = []
        yield made


@pytest.fixture(scope="module")
def local_operator(
    release: Release, tmp_path_factory: pytest.TempPathFactory
) -> Iterator[LocalOperator]:
    if not release.installed:
        release.install_or_upgrade("install")
    tmp = tmp_path_factory.mktemp("helm")
    kubeconfig = release.service_account_kubeconfig(tmp / "operator-kubeconfig")
    running = LocalOperator(release, kubeconfig, tmp / "operator.log")
    running.start_as_deployed()
    yield running
    running.stop()
    print(running.log()[-4000:])


# --- helpers --------------------------------------------------------------------------------


def _example(name: str, run_duration: str | None = None) -> dict[str, Any]:
    manifest: dict[str, Any] = yaml.safe_load(EXAMPLE.read_text())
    manifest["metadata"]["name"] = name
    # The quickstart is a local run; in a cluster the model, data and results live in S3
    # (the operator refuses local paths: LocalPath). kwok plays the pods, nothing is read
    # or written.
    manifest["spec"]["model"]["name"] = "s3://models/tiny-llama"
    manifest["spec"]["dataset"]["train"]["uri"] = "s3://data/quickstart.jsonl"
    manifest["spec"]["output"]["uri"] = f"s3://models/{name}"
    if run_duration:
        resources = manifest["spec"].setdefault("resources", {})
        resources["annotations"] = {"finetune.dev/kwok-run-duration": run_duration}
    return manifest


def _job_image(cluster: Cluster, namespace: str, name: str) -> str:
    jobs = (
        client.BatchV1Api(cluster.api)
        .list_namespaced_job(namespace, label_selector=f"{LABEL_JOB}={name}")
        .items
    )
    assert len(jobs) == 1, [j.metadata.name for j in jobs]
    return str(jobs[0].spec.template.spec.containers[0].image)


def plain_env(deployment: Any) -> dict[str, str]:
    return {e.name: e.value or "" for e in deployment.spec.template.spec.containers[0].env
            if e.value_from is None}  # fmt: skip


def _can_i(cluster: Cluster, account: str, *args: str) -> bool:
    out = cluster.kubectl("auth", "can-i", *args, "--as", account, check=False)
    return out.strip().splitlines()[0] == "yes"


# --- the tests, in the order a platform team lives them -----------------------------------


def test_install_creates_the_operator_its_account_and_least_privilege_rbac(
    cluster: Cluster, release: Release
) -> None:
    out = release.install_or_upgrade("install")
    # NOTES.txt: what to do next.
    assert "kubectl -n " + release.watched + " get ftj -w" in out, out
    assert "docs/install.md" in out
    cluster.kubectl("wait", "--for=condition=Established", "--timeout=60s", f"crd/{CRD_NAME}")
    deployment = release.deployment()
    assert deployment.status.available_replicas == 1  # (a kwok pod)
    account = deployment.spec.template.spec.service_account_name
    client.CoreV1Api(cluster.api).read_namespaced_service_account(account, release.namespace)
    rbac = client.RbacAuthorizationV1Api(cluster.api)
    rbac.read_namespaced_role(release.fullname, release.watched)
    rbac.read_namespaced_role_binding(release.fullname, release.watched)
    rbac.read_namespaced_role(f"{release.fullname}-leader-election", release.namespace)
    rbac.read_cluster_role(release.fullname)
    rbac.read_cluster_role_binding(release.fullname)
    # What the API server's authorizer makes of it, for the chart's ServiceAccount.
    sa = f"system:serviceaccount:{release.namespace}:{account}"
    watched, home = ("-n", release.watched), ("-n", release.namespace)
    lease = f"leases.coordination.k8s.io/{release.fullname}-leader"
    allowed = [
        ("create", "jobs.batch", *watched),
        ("patch", "finetunejobs.finetune.dev", "--subresource=status", *watched),
        ("create", "roles.rbac.authorization.k8s.io", *watched), ("watch", "pods", *watched),
        ("list", "nodes"), ("watch", "customresourcedefinitions.apiextensions.k8s.io"),
        ("list", "namespaces"), ("update", lease, *home), ("create", "leases", *home),
        ("create", "finetunejobprogresses.finetune.dev", *watched),
        ("update", "finetunejobs.finetune.dev", "--subresource=finalizers", *watched),
        ("create", "configmaps", *watched), ("get", "rolebindings.rbac.authorization.k8s.io",
                                             *watched),
        ("patch", "roles.rbac.authorization.k8s.io", *watched), ("list", "events", *watched),
        # The metadata watches of the jobs' prerequisites (by label).
        ("watch", "configmaps", *watched), ("list", "serviceaccounts", *watched),
        ("watch", "rolebindings.rbac.authorization.k8s.io", *watched),
    ]  # fmt: skip
    denied = [
        ("get", "secrets", *watched), ("list", "secrets", *home), ("list", "secrets", "-A"),
        ("create", "jobs.batch", *home), ("list", "pods", "-n", "default"),
        ("list", "finetunejobs.finetune.dev", "-A"), ("get", "namespaces"),
        ("update", "leases.coordination.k8s.io/someone-else", *home), ("delete", "nodes"),
        ("escalate", "roles.rbac.authorization.k8s.io", *watched),
        ("bind", "roles.rbac.authorization.k8s.io", *watched),
        ("create", "pods", *watched), ("delete", "configmaps", *watched),
        # No ConfigMap can be changed; none outside the watched namespaces read or listed.
        ("list", "configmaps", "-n", "kube-system"), ("watch", "configmaps", "-A"),
        ("get", "configmaps", "-n", "kube-system"),
        ("update", "configmaps", *watched), ("patch", "configmaps", "-n", "kube-system"),
        ("create", "configmaps", "-n", "kube-system"),
    ]  # fmt: skip
    assert [a for a in allowed if not _can_i(cluster, sa, *a)] == []
    assert [d for d in denied if _can_i(cluster, sa, *d)] == []


def test_the_operator_runs_with_the_charts_account_and_env_and_a_job_succeeds(
    cluster: Cluster, release: Release, local_operator: LocalOperator
) -> None:
    env = local_operator.chart_env
    assert env["FTO_NAMESPACES"] == release.watched and env["POD_NAMESPACE"] == release.namespace
    # It leads through the chart's Lease (get/create/update by the leader-election Role).
    lease = eventually(
        lambda: _lease_holder(cluster, release), what=f"the Lease\n{local_operator.log()}"
    )
    assert lease.startswith(env["POD_NAME"] + "_")
    # The example, as a user applies it, into the watched namespace.
    create_ftj(cluster, release.watched, _example("quickstart"))
    status = wait_phase(
        cluster, release.watched, "quickstart", "Succeeded", local_operator, timeout=300
    )
    assert status["modelUri"].startswith("s3://models/quickstart")
    # The chart's default trainer image (an allowed registry) reached the job's pods, and the
    # pods' progress-only Role could be created (RBAC escalation check passed): the
    # namespace's shared one, since the operator found the chart's trainer policy bound.
    assert _job_image(cluster, release.watched, "quickstart") == "registry.invalid/ml/trainer:1.0"
    rbac = client.RbacAuthorizationV1Api(cluster.api)
    rbac.read_namespaced_role("finetune-trainer", release.watched)
    assert "share their namespace's identity" in local_operator.log()
    # JSON logs, as the chart asks, and not one permission problem.
    lines = [line for line in local_operator.log().splitlines() if line.startswith("{")]
    assert lines and all(json.loads(line)["level"] for line in lines)
    assert local_operator.permission_problems() == [], local_operator.log()


def test_an_image_outside_the_allowed_registries_is_refused_and_its_ttl_still_applies(
    cluster: Cluster, release: Release, local_operator: LocalOperator
) -> None:
    name = "foreign-image"
    manifest = _example(name)
    manifest["spec"].setdefault("resources", {})["image"] = "docker.io/someone/trainer:latest"
    manifest["spec"].setdefault("runPolicy", {})["ttlSecondsAfterFinished"] = 8
    create_ftj(cluster, release.watched, manifest)
    status = wait_phase(cluster, release.watched, name, "Failed", local_operator, timeout=60)
    assert status["failureReason"] == "ImageNotAllowed"
    assert "registry.invalid/ml/" in status["message"]
    # Refused before anything ran: no Job, no pod, not even the job's other children.
    selector = f"{LABEL_JOB}={name}"
    batch, core = client.BatchV1Api(cluster.api), client.CoreV1Api(cluster.api)
    assert batch.list_namespaced_job(release.watched, label_selector=selector).items == []
    assert core.list_namespaced_config_map(release.watched, label_selector=selector).items == []
    events = wait_events(cluster, release.watched, name, "ImageNotAllowed")
    assert [(e.type, e.reason) for e in events] == [("Warning", "ImageNotAllowed")]
    # A refused job is a finished one: its TTL deletes it as it would a failed run.
    eventually(lambda: find_ftj(cluster, release.watched, name) is None, timeout=60,
               what="the refused FineTuneJob deleted by its TTL")  # fmt: skip


def _lease_holder(cluster: Cluster, release: Release) -> str | None:
    try:
        lease = client.CoordinationV1Api(cluster.api).read_namespaced_lease(
            f"{release.fullname}-leader", release.namespace
        )
    except ApiException as error:
        if error.status == 404:
            return None
        raise
    return lease.spec.holder_identity or None


def test_upgrade_while_a_job_runs_keeps_the_job_and_applies_the_new_values(
    cluster: Cluster, release: Release, local_operator: LocalOperator
) -> None:
    name = "long-run"
    created = create_ftj(cluster, release.watched, _example(name, run_duration="45s"))
    wait_phase(cluster, release.watched, name, "Running", local_operator, timeout=300)
    batch = client.BatchV1Api(cluster.api)
    before = batch.read_namespaced_job(f"{name}-0", release.watched)
    release.values["operator"] |= {"defaultImage": "registry.invalid/ml/trainer:2.0",
                                   "logFormat": "text"}  # fmt: skip
    # No --wait: on a busy cluster the new (kwok) pod may take a while, and the job must
    # still be running when the new operator takes over.
    release.install_or_upgrade("upgrade", wait=False)
    # The rollout, done by hand: the old process stops (SIGTERM), a new one starts with the
    # upgraded Deployment's env.
    local_operator.stop()
    local_operator.start_as_deployed()
    assert local_operator.chart_env["FTO_DEFAULT_IMAGE"] == "registry.invalid/ml/trainer:2.0"
    assert local_operator.chart_env["FTO_LOG_FORMAT"] == "text"
    # The new operator took over a job whose pod was still running.
    running = batch.read_namespaced_job(f"{name}-0", release.watched).status
    assert running.active == 1 and not running.succeeded, (
        "the job finished before the new operator started: the test proves nothing"
    )
    status = wait_phase(cluster, release.watched, name, "Succeeded", local_operator, timeout=300)
    # The same FineTuneJob, the same attempt's Job, no restart, the image it started with.
    found = find_ftj(cluster, release.watched, name)
    assert found is not None and found["metadata"]["uid"] == created["metadata"]["uid"]
    assert (status.get("restarts", 0), status.get("attempt", 0)) == (0, 0)
    assert batch.read_namespaced_job(f"{name}-0", release.watched).metadata.uid == (
        before.metadata.uid
    )
    assert _job_image(cluster, release.watched, name) == "registry.invalid/ml/trainer:1.0"
    # New jobs get the new default image; the new process logs text.
    create_ftj(cluster, release.watched, _example("after-upgrade"))
    wait_phase(cluster, release.watched, "after-upgrade", "Succeeded", local_operator, timeout=300)
    assert _job_image(cluster, release.watched, "after-upgrade") == (
        "registry.invalid/ml/trainer:2.0"
    )
    new_lines = local_operator.log(since_start=True).splitlines()
    assert new_lines and not any(line.startswith("{") for line in new_lines)
    assert local_operator.permission_problems() == [], local_operator.log()


def test_uninstall_keeps_the_crd_and_the_finetunejobs(
    cluster: Cluster, release: Release, local_operator: LocalOperator
) -> None:
    create_ftj(cluster, release.watched, _example("kept"))
    wait_phase(cluster, release.watched, "kept", "Succeeded", local_operator, timeout=300)
    before = client.CustomObjectsApi(cluster.api).list_namespaced_custom_object(
        GROUP, VERSION, release.watched, PLURAL
    )["items"]
    local_operator.stop()  # the rollout's end: the pod goes with the Deployment
    out = release.uninstall()
    assert f'release "{release.name}" uninstalled' in out
    # The release's objects are gone...
    rbac = client.RbacAuthorizationV1Api(cluster.api)
    for read in (
        lambda: release.deployment(),
        lambda: rbac.read_cluster_role(release.fullname),
        lambda: rbac.read_cluster_role_binding(release.fullname),
        lambda: rbac.read_namespaced_role(release.fullname, release.watched),
        lambda: client.CoreV1Api(cluster.api).read_namespaced_service_account(
            release.fullname, release.namespace
        ),
    ):
        with pytest.raises(ApiException) as gone:
            read()
        assert gone.value.status == 404
    # ...the CRD and every FineTuneJob (with its status) are not.
    crd = client.ApiextensionsV1Api(cluster.api).read_custom_resource_definition(CRD_NAME)
    assert crd.metadata.deletion_timestamp is None
    after = client.CustomObjectsApi(cluster.api).list_namespaced_custom_object(
        GROUP, VERSION, release.watched, PLURAL
    )["items"]
    assert {j["metadata"]["uid"] for j in after} == {j["metadata"]["uid"] for j in before}
    assert {j["metadata"]["name"] for j in after} >= {"kept"}
    assert all(j["status"]["phase"] == "Succeeded" for j in after)


def test_cluster_wide_install_grants_the_same_everywhere_and_still_no_secrets(
    cluster: Cluster, cluster_wide: Release
) -> None:
    # Not run as an operator here: on the shared cluster it would reconcile every other
    # test's jobs. tests/helm proves its ClusterRole is the watched-namespace Role plus the
    # cluster reads that the runs above proved sufficient; this proves the binding works.
    cluster_wide.install_or_upgrade("install")
    account = cluster_wide.deployment().spec.template.spec.service_account_name
    sa = f"system:serviceaccount:{cluster_wide.namespace}:{account}"
    assert plain_env(cluster_wide.deployment())["FTO_NAMESPACES"] == ""
    for scope in (("-A",), ("-n", cluster_wide.watched), ("-n", "default")):
        assert _can_i(cluster, sa, "watch", "finetunejobs.finetune.dev", *scope)
        assert _can_i(cluster, sa, "create", "jobs.batch", *scope)
        assert _can_i(cluster, sa, "create", "roles.rbac.authorization.k8s.io", *scope)
        assert not _can_i(cluster, sa, "get", "secrets", *scope)
        assert not _can_i(cluster, sa, "create", "pods", *scope)
    # Cluster-wide, kopf never lists namespaces, so the chart does not grant it.
    assert not _can_i(cluster, sa, "list", "namespaces")
    assert _can_i(cluster, sa, "watch", "nodes")
    cluster_wide.uninstall()
    with pytest.raises(ApiException):
        client.RbacAuthorizationV1Api(cluster.api).read_cluster_role(cluster_wide.fullname)
