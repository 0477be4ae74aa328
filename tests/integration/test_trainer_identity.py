"""The shared trainer identity (docs/operator.md, "The trainer's identity") on the real API
server: the chart's ValidatingAdmissionPolicy applied, an operator with `--trainer-policy`
under the chart's rights, and tokens bound to the jobs' (kwok) pods as the kubelet would
mount them. A pod may write its own job's progress object and nothing else; without the
policy the operator falls back to a per-job identity.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest
import yaml
from kubernetes import client, config
from kubernetes.client.exceptions import ApiException

from ftapi.constants import GROUP, PROGRESS_PLURAL, TRAINER_ACCOUNT, VERSION
from ftapi.progress import REPORT_FIELD
from ftoperator.children import LABEL_JOB
from fttestkit.chart import trainer_policy_objects
from fttestkit.cluster import Cluster, eventually, fresh_namespace, read_job, unique
from fttestkit.finetunejobs import create_ftj, long_running_job, wait_phase
from fttestkit.kubeconfig import write_kubeconfig
from fttestkit.operator import RELEASE, RELEASE_NAMESPACE, Operator

pytestmark = pytest.mark.integration


@pytest.fixture(scope="module")
def policy(cluster: Cluster) -> Iterator[str]:
    """The chart's trainer policy and binding, as `helm install` creates them (removed after:
    no other test's pods run as finetune-trainer)."""
    objects = trainer_policy_objects(RELEASE, RELEASE_NAMESPACE)
    text = yaml.safe_dump_all(objects)
    cluster.kubectl("apply", "--server-side", "--force-conflicts", "-f", "-", input=text)
    yield objects[0]["metadata"]["name"]
    cluster.kubectl("delete", "-f", "-", "--ignore-not-found", input=text)


def _as_pod(cluster: Cluster, ns: str, pod: dict[str, Any] | None, path: Path) -> Any:
    """The API as the trainer account with a token bound to `pod` (None: bound to nothing)."""
    write_kubeconfig(cluster, TRAINER_ACCOUNT, ns, path, pod=pod)
    return client.CustomObjectsApi(config.new_client_from_config(config_file=str(path)))


def _refusal(call: Callable[[], Any]) -> str | None:
    """None when the call went through, else the API server's status and message."""
    try:
        call()
    except ApiException as error:
        return f"{error.status} {error.body}"
    return None


def _pod_of(cluster: Cluster, ns: str, job: str) -> dict[str, Any]:
    def listed() -> dict[str, Any] | None:
        pods = client.CoreV1Api(cluster.api).list_namespaced_pod(
            ns, label_selector=f"{LABEL_JOB}={job}"
        )
        return cluster.api.sanitize_for_serialization(pods.items[0]) if pods.items else None

    return eventually(listed, what=f"a pod of {job}")


def test_a_pod_of_the_shared_identity_writes_its_own_jobs_progress_and_nothing_else(
    cluster: Cluster, crd: Any, policy: str, request: pytest.FixtureRequest, tmp_path: Path
) -> None:
    with fresh_namespace(cluster, unique("tid-", request, 24, 8)) as ns:
        operator = Operator(cluster, tmp_path / "operator.log", "--trainer-policy", policy,
                            namespaces=(ns,))  # fmt: skip
        try:
            # "alice-0"'s pods are named alice-0-<attempt>-<index>-<suffix>: they start with
            # "alice-", and still may not write alice's progress.
            for name in ("alice", "bob", "alice-0"):
                create_ftj(cluster, ns, dict(long_running_job(name).obj()))
            for name in ("alice", "bob", "alice-0"):
                wait_phase(cluster, ns, name, "Running", operator)
            assert "share their namespace's identity" in operator.log()
        finally:
            operator.stop()
        core, rbac = client.CoreV1Api(cluster.api), client.RbacAuthorizationV1Api(cluster.api)
        # One identity for the namespace, none per job.
        assert core.read_namespaced_service_account(TRAINER_ACCOUNT, ns).metadata.labels[
            "app.kubernetes.io/managed-by"] == "finetune-operator"  # fmt: skip
        assert [r.metadata.name for r in rbac.list_namespaced_role(ns).items] == [TRAINER_ACCOUNT]
        accounts = {a.metadata.name for a in core.list_namespaced_service_account(ns).items}
        assert accounts == {"default", TRAINER_ACCOUNT}
        job = read_job(cluster, ns, "alice-0")  # alice's attempt 0
        assert job is not None
        assert job.spec.template.spec.service_account_name == TRAINER_ACCOUNT

        alice_pod, impostor_pod = _pod_of(cluster, ns, "alice"), _pod_of(cluster, ns, "alice-0")
        alice = _as_pod(cluster, ns, alice_pod, tmp_path / "alice.kubeconfig")
        impostor = _as_pod(cluster, ns, impostor_pod, tmp_path / "impostor.kubeconfig")
        unbound = _as_pod(cluster, ns, None, tmp_path / "unbound.kubeconfig")

        def write(api: Any, job_name: str) -> Callable[[], Any]:
            body = {REPORT_FIELD: '{"stage": "training", "step": 1}'}
            return lambda: api.patch_namespaced_custom_object(
                GROUP, VERSION, ns, PROGRESS_PLURAL, f"{job_name}-progress", body
            )

        # The policy is enforced once the API server's informer has it: wait for that.
        refused = eventually(lambda: _refusal(write(unbound, "alice")), what="the policy")
        assert refused.startswith("403") and "bound to a trainer pod" in refused, refused
        assert _refusal(write(alice, "alice")) is None  # its own job: allowed
        for api, target, who in ((alice, "bob", alice_pod), (impostor, "alice", impostor_pod)):
            refused = _refusal(write(api, target)) or ""
            assert refused.startswith("403"), (who["metadata"]["name"], target, refused)
            assert f"{target}-progress" in refused and who["metadata"]["name"] in refused
        # No read either: the shared Role grants patch alone.
        read = _refusal(lambda: alice.get_namespaced_custom_object(
            GROUP, VERSION, ns, PROGRESS_PLURAL, "bob-progress"))  # fmt: skip
        assert (read or "").startswith("403"), read


def test_without_the_policy_bound_each_job_keeps_its_own_identity(
    cluster: Cluster, crd: Any, request: pytest.FixtureRequest, tmp_path: Path
) -> None:
    with fresh_namespace(cluster, unique("tid-", request, 24, 8)) as ns:
        operator = Operator(cluster, tmp_path / "operator.log", "--trainer-policy",
                            "no-such-policy", namespaces=(ns,))  # fmt: skip
        try:
            create_ftj(cluster, ns, dict(long_running_job("carol").obj()))
            wait_phase(cluster, ns, "carol", "Running", operator)
            assert "each job gets its own trainer identity" in operator.log()
        finally:
            operator.stop()
        job = read_job(cluster, ns, "carol-0")
        assert job is not None
        assert job.spec.template.spec.service_account_name == "carol-trainer"
        roles = client.RbacAuthorizationV1Api(cluster.api).list_namespaced_role(ns).items
        assert [r.metadata.name for r in roles] == ["carol-trainer"]


def test_a_strangers_account_under_the_shared_name_fails_the_job_and_is_not_taken_over(
    cluster: Cluster, crd: Any, policy: str, request: pytest.FixtureRequest, tmp_path: Path
) -> None:
    with fresh_namespace(cluster, unique("tid-", request, 24, 8)) as ns:
        core = client.CoreV1Api(cluster.api)
        core.create_namespaced_service_account(ns, {"metadata": {"name": TRAINER_ACCOUNT}})
        operator = Operator(cluster, tmp_path / "operator.log", "--trainer-policy", policy,
                            namespaces=(ns,))  # fmt: skip
        try:
            create_ftj(cluster, ns, dict(long_running_job("dave").obj()))
            status = wait_phase(cluster, ns, "dave", "Failed", operator)
        finally:
            operator.stop()
        assert status["failureReason"] == "ChildConflict", status
        assert "ServiceAccount named finetune-trainer" in status["message"], status
        assert read_job(cluster, ns, "dave-0") is None
        labels = core.read_namespaced_service_account(TRAINER_ACCOUNT, ns).metadata.labels
        assert not labels  # untouched
