"""Both images, as built by `make images` from their Dockerfiles: each runs as UID 1000, its
command line answers with a read-only root file system and no capabilities, and its size is
reported; read from inside a container the node's containerd runs, its process is UID and
GID 1000 with no capabilities, as the image makes it."""

from __future__ import annotations

import json
import uuid
from typing import Any

import pytest
from kubernetes import client

from fttestkit.cluster import Cluster
from fttestkit.paths import REPO
from tests.e2e.realnode import LOCAL_NODE, ctr, normalized, run_pod

# The images' own ENTRYPOINTs run (args only): the trainer's (tini, then
# fttrainer.entrypoint) prepares /workspace, a volume under the read-only root, then execs
# its arguments; the operator's is `python -m ftoperator`.
ARGS = {
    "trainer": (["finetune", "--help"], "Fine-tune LLMs from FineTuneJob manifests"),
    "operator": (["--help"], "usage: finetune-operator"),
}


def _image_size(cluster: Cluster, image: str) -> str:
    listed = ctr(cluster, "images", "ls", f"name=={normalized(image)}").splitlines()
    return " ".join(listed[1].split()[3:5])


@pytest.mark.parametrize("which", ["trainer", "operator"])
def test_the_image_runs_as_1000_with_a_read_only_root(
    cluster: Cluster, images: dict[str, str], e2e_namespace: str, which: str
) -> None:
    args, expected = ARGS[which]
    name = f"{which}-{uuid.uuid4().hex[:6]}"
    pod: dict[str, Any] = {
        "metadata": {"name": name},
        "spec": {
            "restartPolicy": "Never",
            "automountServiceAccountToken": False,
            **LOCAL_NODE,
            "securityContext": {"runAsNonRoot": True, "seccompProfile": {"type": "RuntimeDefault"}},
            "containers": [{
                "name": which, "image": images[which], "imagePullPolicy": "Never",
                "args": args,
                "volumeMounts": [{"name": "workspace", "mountPath": "/workspace"}],
                "securityContext": {"readOnlyRootFilesystem": True,
                                    "allowPrivilegeEscalation": False,
                                    "capabilities": {"drop": ["ALL"]}},
            }],
            "volumes": [{"name": "workspace", "emptyDir": {}}],
        },
    }  # fmt: skip
    done, log = run_pod(cluster, e2e_namespace, pod)
    assert done.status.phase == "Succeeded", log[-3000:]
    assert expected in log, log[-3000:]
    # The image's own user: runAsNonRoot held without a runAsUser in the pod.
    assert done.spec.security_context.run_as_user is None
    print(f"{images[which]}: {_image_size(cluster, images[which])}")


# Read from inside the container: who the process is and what it may do, as the image
# makes it (the pod sets no user, group or capabilities of its own).
IDENTITY = r"""
import json, os
status = dict(line.split(":", 1) for line in open("/proc/self/status") if ":" in line)
print("IDENTITY " + json.dumps({
    "uid": os.getuid(), "euid": os.geteuid(), "gid": os.getgid(), "egid": os.getegid(),
    "groups": os.getgroups(),
    **{cap: status[cap].strip() for cap in ("CapEff", "CapPrm", "CapInh", "CapAmb")},
}))
"""
NO_CAPABILITIES = "0000000000000000"
# The trainer's ENTRYPOINT (tini, fttrainer.entrypoint) execs its args; the operator's is
# `python -m ftoperator`, so its probe replaces the command.
PROBES = {
    "trainer": {"args": ["python", "-c", IDENTITY]},
    "operator": {"command": ["python", "-c", IDENTITY]},
}


@pytest.mark.parametrize("which", ["trainer", "operator"])
def test_inside_the_image_the_process_is_1000_1000_without_capabilities_run_by_containerd(
    cluster: Cluster, images: dict[str, str], e2e_namespace: str, which: str
) -> None:
    name = f"{which}-id-{uuid.uuid4().hex[:6]}"
    pod: dict[str, Any] = {
        "metadata": {"name": name},
        "spec": {
            "restartPolicy": "Never",
            "automountServiceAccountToken": False,
            **LOCAL_NODE,
            "containers": [{
                "name": which, "image": images[which], "imagePullPolicy": "Never",
                **PROBES[which],
                "volumeMounts": [{"name": "workspace", "mountPath": "/workspace"}],
            }],
            "volumes": [{"name": "workspace", "emptyDir": {}}],
        },
    }  # fmt: skip
    done, log = run_pod(cluster, e2e_namespace, pod)
    assert done.status.phase == "Succeeded", log[-3000:]
    (line,) = [x for x in log.splitlines() if x.startswith("IDENTITY ")]
    identity = json.loads(line.removeprefix("IDENTITY "))
    assert (identity["uid"], identity["euid"]) == (1000, 1000), identity
    assert (identity["gid"], identity["egid"]) == (1000, 1000), identity
    assert 0 not in identity["groups"], identity  # not in root's group either
    for cap in ("CapEff", "CapPrm", "CapInh", "CapAmb"):
        assert identity[cap] == NO_CAPABILITIES, identity
    # It was this node's containerd that ran it, at the pinned version.
    (status,) = done.status.container_statuses
    assert status.container_id.startswith("containerd://"), status.container_id
    node = client.CoreV1Api(cluster.api).read_node(done.spec.node_name)
    pinned = _pinned("CONTAINERD_VERSION")
    runtime = node.status.node_info.container_runtime_version
    assert runtime.startswith("containerd://"), runtime
    assert runtime.removeprefix("containerd://").lstrip("v") == pinned.lstrip("v"), runtime


def _pinned(name: str) -> str:
    text = (REPO / "hack" / "versions.env").read_text()
    return dict(
        line.split("=", 1) for line in text.splitlines() if "=" in line and not line.startswith("#")
    )[name].strip()
