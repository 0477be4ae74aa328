"""The real node's network, seen from a pod: cluster names resolve, the API server (through
its Service) and MinIO answer, and nothing else does. Traffic to the internet, to pod or
Service addresses nobody owns, to the host's other ports is refused on this machine, and
the drop rules that refuse it count the packets (hack/node.sh, "Network")."""

from __future__ import annotations

import json
import subprocess
import uuid
from pathlib import Path
from typing import Any
from urllib.parse import urlparse

from fttestkit.cluster import Cluster
from tests.e2e.realnode import LOCAL_NODE, TRAINER_IMAGE, run_pod

PROBE = r"""
import json, socket, sys
targets = json.loads(sys.argv[1])
result = {}
for name, (host, port) in targets.items():
    try:
        with socket.create_connection((host, port), timeout=3):
            result[name] = "connected"
    except OSError as error:
        result[name] = type(error).__name__
try:
    socket.getaddrinfo("pypi.org", 443)
    result["resolve pypi.org"] = "resolved"
except OSError as error:
    result["resolve pypi.org"] = type(error).__name__
print("RESULT " + json.dumps(result))
"""


def ports(cluster: Cluster) -> dict[str, str]:
    """hack/cluster-up.sh's ports.env."""
    text = (Path(cluster.env["FTO_STATE"]) / "ports.env").read_text()
    return dict(line.split("=", 1) for line in text.splitlines() if "=" in line)


def drop_counts() -> dict[str, int]:
    """Packets counted by each of hack/node.sh's DROP rules, by comment."""
    out = subprocess.run(
        ["iptables", "-w", "-L", "FTO-FORWARD", "-v", "-x", "-n"], capture_output=True,
        text=True, check=True,
    ).stdout + subprocess.run(
        ["iptables", "-w", "-L", "FTO-INPUT", "-v", "-x", "-n"], capture_output=True,
        text=True, check=True,
    ).stdout  # fmt: skip
    counts = {}
    for line in out.splitlines():
        if "DROP" in line and "fto:" in line:
            counts[line.split("fto:", 1)[1].split("*/")[0].strip()] = int(line.split()[0])
    return counts


def test_a_pod_reaches_the_cluster_and_nothing_beyond_this_machine(
    cluster: Cluster, node: str, images: dict[str, str], e2e_namespace: str
) -> None:
    env = cluster.env
    s3 = urlparse(env["FTO_S3_ENDPOINT"])
    apiserver = urlparse(env["FTO_APISERVER"])
    targets = {
        "apiserver via its Service": ["kubernetes.default.svc.cluster.local", 443],
        "minio": [s3.hostname, s3.port],
        "the registry": [apiserver.hostname, int(ports(cluster)["REGISTRY_PORT"])],
        "the internet": ["1.1.1.1", 443],
        "a pod address nobody has": ["10.244.3.3", 80],
        "a fake (kwok) pod's address": ["10.245.3.3", 80],
        "a Service address nobody has": ["10.96.203.203", 443],
        "the host's kubelet port": [apiserver.hostname, int(ports(cluster)["KUBELET_PORT"])],
    }
    before = drop_counts()
    name = f"probe-{uuid.uuid4().hex[:6]}"
    pod: dict[str, Any] = {
        "metadata": {"name": name},
        "spec": {
            "restartPolicy": "Never",
            "automountServiceAccountToken": False,
            **LOCAL_NODE,
            "containers": [{
                "name": "probe", "image": TRAINER_IMAGE, "imagePullPolicy": "Never",
                "command": ["python", "-c", PROBE, json.dumps(targets)],
                "securityContext": {"runAsNonRoot": True, "runAsUser": 1000,
                                    "allowPrivilegeEscalation": False,
                                    "capabilities": {"drop": ["ALL"]}},
            }],
        },
    }  # fmt: skip
    done, log = run_pod(cluster, e2e_namespace, pod)
    assert done.status.phase == "Succeeded", log[-3000:]
    (line,) = [x for x in log.splitlines() if x.startswith("RESULT ")]
    result = json.loads(line.removeprefix("RESULT "))
    assert result["apiserver via its Service"] == "connected", result  # DNS, kube-proxy
    assert result["minio"] == "connected", result
    assert result["the registry"] == "connected", result  # output.oci pushes from pods
    for refused in ("the internet", "a pod address nobody has", "a fake (kwok) pod's address",
                    "a Service address nobody has", "the host's kubelet port"):  # fmt: skip
        assert result[refused] != "connected", (refused, result)
    assert result["resolve pypi.org"] != "resolved", result  # no forwarding DNS
    # The SYN to the internet was dropped here, by our rule (not merely unanswered), and so
    # was the one to the host's kubelet port.
    after = drop_counts()
    assert after["pod traffic never leaves the machine"] > before.get(
        "pod traffic never leaves the machine", 0
    ), (before, after)
    key = "pods reach the host only on its API server, S3, registry and DNS ports"
    assert after[key] > before.get(key, 0), (before, after)
