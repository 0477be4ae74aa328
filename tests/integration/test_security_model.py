"""The security model of docs/install.md, as two namespace users see it (impersonated on the
real API server, the operator under the chart's rights): one who may only run FineTuneJobs,
one with the built-in `edit` role and no rights on FineTuneJobs. Neither can change another
job's status or progress, nor gain a right through the operator: the only thing a job's
pods receive is updating their own job's progress object.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import pytest
from kubernetes import client
from kubernetes.client.exceptions import ApiException

from ftapi.constants import GROUP, KIND, PLURAL, PROGRESS_KIND, PROGRESS_PLURAL, VERSION
from ftapi.progress import REPORT_FIELD, ProgressReport
from ftoperator.children import LABEL_JOB
from fttestkit.cluster import Cluster, eventually, read_job
from fttestkit.finetunejobs import create_ftj, long_running_job, status_of, wait_phase
from fttestkit.operator import Operator
from fttestkit.users import RBAC_GROUP, bind, grant_runner_role, impersonating

pytestmark = pytest.mark.integration
RUNNER, EDITOR = "alice-runs-jobs", "eve-edits"


def _grant(cluster: Cluster, ns: str) -> None:
    grant_runner_role(cluster, ns)
    bind(cluster, ns, RUNNER)
    bind(cluster, ns, EDITOR, "ClusterRole", "edit")


def _forbidden(call: Callable[[], Any]) -> bool:
    try:
        call()
    except ApiException as error:
        return error.status == 403
    return False


def _manifest(name: str) -> dict[str, Any]:
    return dict(long_running_job(name).obj())


def _attacks(
    api: client.ApiClient, ns: str, user: str, forged: str, owner: dict[str, Any]
) -> dict[str, Callable[[], Any]]:
    """What a user would try against the job "bob", by name."""
    custom, rbac = client.CustomObjectsApi(api), client.RbacAuthorizationV1Api(api)
    secrets = [{"apiGroups": [""], "resources": ["secrets"], "verbs": ["get"]}]
    steal = {
        "metadata": {"name": f"{user}-steals"},
        "roleRef": {"apiGroup": RBAC_GROUP, "kind": "Role", "name": "bob-trainer"},
        "subjects": [{"kind": "User", "name": user, "apiGroup": RBAC_GROUP}],
    }
    progress = {
        "apiVersion": f"{GROUP}/{VERSION}", "kind": PROGRESS_KIND,
        "metadata": {"name": "forged", "ownerReferences": [owner]}, REPORT_FIELD: forged,
    }  # fmt: skip
    return {
        "write bob's status": lambda: custom.patch_namespaced_custom_object_status(
            GROUP, VERSION, ns, PLURAL, "bob", {"status": {"modelUri": "s3://attacker/m"}}),
        "write bob's progress": lambda: custom.patch_namespaced_custom_object(
            GROUP, VERSION, ns, PROGRESS_PLURAL, "bob-progress", {REPORT_FIELD: forged}),
        "create a progress object owned by bob": lambda: custom.create_namespaced_custom_object(
            GROUP, VERSION, ns, PROGRESS_PLURAL, progress),
        "widen bob's trainer Role": lambda: rbac.patch_namespaced_role(
            "bob-trainer", ns, {"rules": secrets}),
        "bind bob's trainer Role to themselves": lambda: rbac.create_namespaced_role_binding(
            ns, steal),
    }  # fmt: skip


def test_neither_a_job_runner_nor_an_editor_can_touch_another_job_or_gain_rights(
    cluster: Cluster, operator: Operator, ns: str
) -> None:
    _grant(cluster, ns)
    # The runner's own job, created with the runner's rights: the operator acts on it.
    runner = client.CustomObjectsApi(impersonating(cluster, RUNNER))
    runner.create_namespaced_custom_object(GROUP, VERSION, ns, PLURAL, _manifest("alice"))
    victim = create_ftj(cluster, ns, _manifest("bob"))
    wait_phase(cluster, ns, "alice", "Running", operator)
    wait_phase(cluster, ns, "bob", "Running", operator)
    before = status_of(cluster, ns, "bob")

    forged = ProgressReport(
        stage="done", step=10, total_steps=10, model_uri="s3://attacker/model",
        updated_at="2026-11-23T12:00:00Z",  # type: ignore[arg-type]
    ).model_dump_json(exclude_none=True)  # fmt: skip
    owner = {"apiVersion": f"{GROUP}/{VERSION}", "kind": KIND, "name": "bob",
             "uid": victim["metadata"]["uid"], "controller": True}  # fmt: skip
    for user in (RUNNER, EDITOR):
        attempts = _attacks(impersonating(cluster, user), ns, user, forged, owner)
        allowed = [what for what, call in attempts.items() if not _forbidden(call)]
        assert allowed == [], f"{user} may {allowed}"

    # The old channel: a ConfigMap labelled with bob's name, which `edit` may create, is no
    # longer read at all.
    client.CoreV1Api(impersonating(cluster, EDITOR)).create_namespaced_config_map(ns, {
        "metadata": {"name": "bob-progress-forged", "labels": {LABEL_JOB: "bob"}},
        "data": {"report": forged},
    })  # fmt: skip
    # What the runner's pods get through the operator: their own progress object, no more.
    trainer = f"system:serviceaccount:{ns}:alice-trainer"

    def can(*args: str) -> bool:
        answer = cluster.kubectl("auth", "can-i", *args, "-n", ns, "--as", trainer, check=False)
        return answer.strip().splitlines()[-1] == "yes"

    assert can("patch", f"{PROGRESS_PLURAL}.{GROUP}/alice-progress")
    denied = [
        ("patch", f"{PROGRESS_PLURAL}.{GROUP}/bob-progress"),
        ("create", f"{PROGRESS_PLURAL}.{GROUP}"),
        ("patch", f"{PLURAL}.{GROUP}/alice", "--subresource=status"),
        ("get", "secrets"),
        ("create", "pods"),
        ("get", "configmaps/alice-config"),
        ("patch", "roles.rbac.authorization.k8s.io/alice-trainer"),
    ]
    granted = [args for args in denied if can(*args)]
    assert granted == [], f"alice's pods may {granted}"

    def settled() -> dict[str, Any] | None:
        status = status_of(cluster, ns, "bob")
        return status if status.get("phase") == "Running" else None

    after = eventually(settled, what="bob still Running")
    assert "modelUri" not in after and "attacker" not in str(after)
    assert after.get("progress") == before.get("progress")
    assert read_job(cluster, ns, "bob-1") is None  # nothing restarted it either
