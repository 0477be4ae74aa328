"""Who the trainer pods are and what they may reach: the per-job ServiceAccount, a Role
whose only right is its own progress object, the RoleBinding, and optionally a
NetworkPolicy that admits traffic only from the job's own pods."""

from __future__ import annotations

from typing import Any

from ftapi.constants import GROUP, PROGRESS_PLURAL
from ftapi.v1alpha1 import FineTuneJob

from .naming import LABEL_JOB, Meta, Names


def build_service_account(names: Names, meta: Meta) -> dict[str, Any]:
    return {
        "apiVersion": "v1",
        "kind": "ServiceAccount",
        "metadata": meta(names.trainer, "trainer"),
        "automountServiceAccountToken": True,
    }


def build_role(names: Names, meta: Meta) -> dict[str, Any]:
    return {
        "apiVersion": "rbac.authorization.k8s.io/v1",
        "kind": "Role",
        "metadata": meta(names.trainer, "trainer"),
        # The trainer's only right: update its own progress object.
        "rules": [
            {
                "apiGroups": [GROUP],
                "resources": [PROGRESS_PLURAL],
                "resourceNames": [names.progress],
                "verbs": ["get", "patch", "update"],
            }
        ],
    }


def build_role_binding(
    names: Names, meta: Meta, account: str, namespace: str | None
) -> dict[str, Any]:
    subject = {"kind": "ServiceAccount", "name": account}
    if namespace:
        subject["namespace"] = namespace
    return {
        "apiVersion": "rbac.authorization.k8s.io/v1",
        "kind": "RoleBinding",
        "metadata": meta(names.trainer, "trainer"),
        "roleRef": {"apiGroup": "rbac.authorization.k8s.io", "kind": "Role", "name": names.trainer},
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
