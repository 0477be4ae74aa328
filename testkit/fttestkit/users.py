"""Namespace users as the security tests play them: a Role that may only run FineTuneJobs,
bindings for a user name, and the admin's connection impersonating that user (the API
server then authorizes every request as them)."""

from __future__ import annotations

from typing import Any

from kubernetes import client

from ftapi.constants import GROUP, PLURAL

from .cluster import Cluster

RBAC_GROUP = "rbac.authorization.k8s.io"
RUNNER_ROLE = "finetune-runner"


def grant_runner_role(cluster: Cluster, ns: str) -> None:
    """The Role of a user who may only run FineTuneJobs in `ns`."""
    role: dict[str, Any] = {
        "metadata": {"name": RUNNER_ROLE},
        "rules": [{"apiGroups": [GROUP], "resources": [PLURAL],
                   "verbs": ["create", "get", "list", "watch", "delete"]}],
    }  # fmt: skip
    _rbac(cluster).create_namespaced_role(ns, role)


def bind(cluster: Cluster, ns: str, user: str, kind: str = "Role", role: str = RUNNER_ROLE) -> None:
    """Bind `user` to `role` (a Role, or a ClusterRole such as edit) in `ns`."""
    binding: dict[str, Any] = {
        "metadata": {"name": user},
        "roleRef": {"apiGroup": RBAC_GROUP, "kind": kind, "name": role},
        "subjects": [{"kind": "User", "name": user, "apiGroup": RBAC_GROUP}],
    }
    _rbac(cluster).create_namespaced_role_binding(ns, binding)


def _rbac(cluster: Cluster) -> Any:
    """The RBAC API, untyped: its stubs take V1 models, these take manifests as dicts."""
    return client.RbacAuthorizationV1Api(cluster.api)


def impersonating(cluster: Cluster, user: str) -> client.ApiClient:
    """The admin's connection, impersonating `user`."""
    api = client.ApiClient(cluster.api.configuration)
    api.set_default_header("Impersonate-User", user)  # type: ignore[no-untyped-call]
    return api
