"""Who the trainer pods are and what they may reach: the trainer's ServiceAccount, a Role
whose only right is the job's progress object, the RoleBinding, and optionally a
NetworkPolicy that admits traffic only from the job's own pods.

Two shapes of the identity (docs/operator.md, "The trainer's identity"):
- per job (the default): `<job>-trainer`, the Role naming the job's progress object
  (`resourceNames`), owned by the FineTuneJob: three creates and three watch events per job;
- per namespace (`--trainer-policy`, the Helm chart's default): `finetune-trainer`, made once
  per namespace and shared by its jobs, the Role allowing `patch` on every progress object
  of the namespace, which the chart's ValidatingAdmissionPolicy (templates/trainer-policy.yaml)
  narrows to the progress object of the job whose pod the token is bound to. The operator
  takes this shape only when it finds that policy bound (main.py), so the Role alone never
  widens what a pod may write."""

from __future__ import annotations

from typing import Any

from ftapi.constants import GROUP, PROGRESS_PLURAL, TRAINER_ACCOUNT
from ftapi.v1alpha1 import FineTuneJob

from .naming import LABEL_COMPONENT, LABEL_JOB, MANAGED_BY, Meta, Names

RBAC = "rbac.authorization.k8s.io"


def build_service_account(names: Names, meta: Meta) -> dict[str, Any]:
    return _service_account(meta(names.trainer, "trainer"))


def build_role(names: Names, meta: Meta) -> dict[str, Any]:
    # The trainer's only right: update its own progress object.
    rule = {
        "apiGroups": [GROUP],
        "resources": [PROGRESS_PLURAL],
        "resourceNames": [names.progress],
        "verbs": ["get", "patch", "update"],
    }
    return {
        "apiVersion": f"{RBAC}/v1",
        "kind": "Role",
        "metadata": meta(names.trainer, "trainer"),
        "rules": [rule],
    }


def build_role_binding(
    names: Names, meta: Meta, account: str, namespace: str | None
) -> dict[str, Any]:
    return _role_binding(meta(names.trainer, "trainer"), names.trainer, account, namespace)


def build_namespace_identity(namespace: str) -> list[dict[str, Any]]:
    """The shared trainer identity of one namespace: ServiceAccount, Role, RoleBinding, in
    creation order (the RoleBinding after its Role: see Children.stages). No owner: every
    job of the namespace uses them, and they outlive each."""

    def meta() -> dict[str, Any]:
        labels = {"app.kubernetes.io/managed-by": MANAGED_BY, LABEL_COMPONENT: "trainer"}
        return {"name": TRAINER_ACCOUNT, "namespace": namespace, "labels": labels}

    # patch only: what the trainer sends (fttrainer.reporting.progress); no get, so that a pod
    # cannot read the other jobs' progress either.
    rule = {"apiGroups": [GROUP], "resources": [PROGRESS_PLURAL], "verbs": ["patch"]}
    role = {"apiVersion": f"{RBAC}/v1", "kind": "Role", "metadata": meta(), "rules": [rule]}
    binding = _role_binding(meta(), TRAINER_ACCOUNT, TRAINER_ACCOUNT, namespace)
    return [_service_account(meta()), role, binding]


def _service_account(metadata: dict[str, Any]) -> dict[str, Any]:
    return {
        "apiVersion": "v1",
        "kind": "ServiceAccount",
        "metadata": metadata,
        "automountServiceAccountToken": True,
    }


def _role_binding(
    metadata: dict[str, Any], role: str, account: str, namespace: str | None
) -> dict[str, Any]:
    subject = {"kind": "ServiceAccount", "name": account}
    if namespace:
        subject["namespace"] = namespace
    return {
        "apiVersion": f"{RBAC}/v1",
        "kind": "RoleBinding",
        "metadata": metadata,
        "roleRef": {"apiGroup": RBAC, "kind": "Role", "name": role},
        "subjects": [subject],
    }


def build_network_policy(job: FineTuneJob, metadata: dict[str, Any]) -> dict[str, Any]:
    """Ingress to the job's pods only from its own pods (rendezvous, NCCL, any port)."""
    own = {"matchLabels": {LABEL_JOB: job.name}}
    return {
        "apiVersion": "networking.k8s.io/v1",
        "kind": "NetworkPolicy",
        "metadata": metadata,
        "spec": {
            "podSelector": own,
            "policyTypes": ["Ingress"],
            "ingress": [{"from": [{"podSelector": own}]}],
        },
    }
