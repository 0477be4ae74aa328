"""The local OCI registry (hack/registry.sh) as a user's cluster meets one: TLS from the
cluster's CA and htpasswd auth; the real node's kubelet (containerd trusting the CA through
hosts.toml) told "unauthorized" within seconds when a pod's pull Secret is wrong."""

from __future__ import annotations

import base64
import json
import ssl
import urllib.error
import urllib.request
import uuid
from pathlib import Path
from typing import Any

import pytest
from kubernetes import client

from fttestkit.cluster import Cluster, eventually
from tests.e2e.realnode import LOCAL_NODE


def _registry(cluster: Cluster) -> tuple[str, str, dict[str, Any]]:
    """(host:port, CA file, the Docker-style auth document) of the cluster's registry."""
    env = cluster.env
    assert env.get("FTO_REGISTRY"), "the cluster's env file names no registry (hack/registry.sh)"
    auth = json.loads(Path(env["FTO_REGISTRY_AUTH"]).read_text())
    return env["FTO_REGISTRY"], env["FTO_REGISTRY_CA"], auth


def _secret(core: client.CoreV1Api, namespace: str, name: str, auths: dict[str, Any]) -> None:
    document = base64.b64encode(json.dumps({"auths": auths}).encode()).decode()
    core.create_namespaced_secret(namespace, {
        "metadata": {"name": name}, "type": "kubernetes.io/dockerconfigjson",
        "data": {".dockerconfigjson": document},
    })  # fmt: skip


def _pod(name: str, image: str, secret: str) -> dict[str, Any]:
    return {
        "metadata": {"name": name},
        "spec": {
            "restartPolicy": "Never",
            "automountServiceAccountToken": False,
            "imagePullSecrets": [{"name": secret}],
            **LOCAL_NODE,
            "containers": [{
                "name": "pulled", "image": image, "imagePullPolicy": "Always",
                "command": ["python", "-c", "print('pulled and ran')"],
                "securityContext": {"runAsNonRoot": True, "runAsUser": 1000,
                                    "allowPrivilegeEscalation": False,
                                    "capabilities": {"drop": ["ALL"]}},
            }],
        },
    }  # fmt: skip


def _events(core: client.CoreV1Api, namespace: str, pod: str) -> list[tuple[str, str]]:
    found = core.list_namespaced_event(namespace, field_selector=f"involvedObject.name={pod}")
    return [(e.reason, e.message or "") for e in found.items]


def _status(url: str, ca: str | None, user_password: str | None = None) -> int:
    """The HTTP status of a GET (ca None: the system's trust store)."""
    request = urllib.request.Request(url)
    if user_password is not None:
        request.add_header(
            "Authorization", "Basic " + base64.b64encode(user_password.encode()).decode()
        )
    context = ssl.create_default_context(cafile=ca)
    try:
        with urllib.request.urlopen(request, context=context, timeout=10) as answer:
            return int(answer.status)
    except urllib.error.HTTPError as error:
        return int(error.code)


def test_the_registry_wants_tls_from_the_clusters_ca_and_credentials(
    cluster: Cluster, node: str
) -> None:
    address, ca, auth = _registry(cluster)
    assert address.startswith("10.244.0.1:")  # the node's bridge: this machine and its pods
    url = f"https://{address}/v2/"
    user_password = base64.b64decode(auth["auths"][address]["auth"]).decode()
    assert _status(url, ca) == 401
    assert _status(url, ca, user_password) == 200
    assert _status(url, ca, "fto:wrong") == 401
    with pytest.raises(urllib.error.URLError, match="CERTIFICATE_VERIFY_FAILED"):
        _status(url, None)  # not a certificate the system trusts


def test_a_wrong_pull_secret_is_named_by_the_kubelet_within_seconds(
    cluster: Cluster, node: str, images: dict[str, str], e2e_namespace: str
) -> None:
    """(A pull with the right Secret: tests/e2e/test_release_install.py, on the released
    images. Those have image IDs of their own: the kubelet ties a pull's credentials to the
    image ID, and a local build pulled with a Secret would need that Secret from then on.)"""
    address, _, auth = _registry(cluster)
    image = f"{address}/fto-tests/operator:{uuid.uuid4().hex[:8]}"
    core = client.CoreV1Api(cluster.api)
    wrong = {address: {"auth": base64.b64encode(b"fto:not-the-password").decode()}}
    assert wrong.keys() == auth["auths"].keys()
    _secret(core, e2e_namespace, "registry-wrong", wrong)
    core.create_namespaced_pod(e2e_namespace, _pod("refused", image, "registry-wrong"))

    def refused() -> str | None:
        found = core.read_namespaced_pod("refused", e2e_namespace)
        for status in found.status.container_statuses or []:
            waiting = status.state.waiting
            if waiting is not None and waiting.reason in ("ErrImagePull", "ImagePullBackOff"):
                return f"{waiting.reason}: {waiting.message}"
        return None

    why = eventually(refused, timeout=60, what="the wrong pull Secret's reason")
    assert "401" in why or "unauthorized" in why.lower(), why
    assert address in why
