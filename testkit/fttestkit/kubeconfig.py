"""A ServiceAccount's identity, as a process outside the cluster needs it: a token from the
TokenRequest API and the API server's CA. Tests run the operator and the trainer with these
(the rights their RBAC grants), never with the admin kubeconfig.

    path = write_kubeconfig(cluster, "fto-tests", "fto-system", tmp / "operator.kubeconfig")
    folder = write_pod_identity(cluster, "job-trainer", ns, tmp / "serviceaccount")
"""

from __future__ import annotations

import base64
from pathlib import Path
from typing import Any

import yaml
from kubernetes import client

from .cluster import Cluster


def service_account_token(
    cluster: Cluster, account: str, namespace: str, *, seconds: int = 3600,
    pod: dict[str, Any] | None = None,
) -> str:  # fmt: skip
    """pod: bind the token to this pod (as the kubelet's projected tokens are), so that its
    user info carries the pod's name and UID."""
    bound = None
    if pod is not None:
        meta = pod["metadata"]
        bound = client.V1BoundObjectReference(
            kind="Pod", api_version="v1", name=meta["name"], uid=meta["uid"]
        )
    request = client.AuthenticationV1TokenRequest(
        spec=client.V1TokenRequestSpec(
            audiences=[], expiration_seconds=seconds, bound_object_ref=bound
        )
    )
    answer: Any = client.CoreV1Api(cluster.api).create_namespaced_service_account_token(
        account, namespace, request
    )
    return str(answer.status.token)


def _admin_cluster_entry(cluster: Cluster) -> dict[str, Any]:
    admin = yaml.safe_load(Path(cluster.kubeconfig).read_text())
    return dict(admin["clusters"][0]["cluster"])


def write_kubeconfig(
    cluster: Cluster, account: str, namespace: str, path: Path, *, seconds: int = 3600,
    pod: dict[str, Any] | None = None,
) -> Path:  # fmt: skip
    """A kubeconfig at `path` that authenticates as the ServiceAccount (with a token bound
    to `pod`, as that pod's own)."""
    token = service_account_token(cluster, account, namespace, seconds=seconds, pod=pod)
    ca = _admin_cluster_entry(cluster)["certificate-authority-data"]
    path.write_text(yaml.safe_dump({
        "apiVersion": "v1", "kind": "Config", "current-context": "sa",
        "clusters": [{"name": "local", "cluster": {
            "server": cluster.env["FTO_APISERVER"], "certificate-authority-data": ca}}],
        "users": [{"name": account, "user": {"token": token}}],
        "contexts": [{"name": "sa", "context": {"cluster": "local", "user": account}}],
    }))  # fmt: skip
    return path


def write_pod_identity(
    cluster: Cluster, account: str, namespace: str, folder: Path, *, seconds: int = 3600
) -> Path:
    """`token` and `ca.crt` in `folder`, as the kubelet mounts them at
    /var/run/secrets/kubernetes.io/serviceaccount."""
    folder.mkdir(parents=True, exist_ok=True)
    token = service_account_token(cluster, account, namespace, seconds=seconds)
    (folder / "token").write_text(token)
    ca = _admin_cluster_entry(cluster)["certificate-authority-data"]
    (folder / "ca.crt").write_bytes(base64.b64decode(ca))
    return folder
