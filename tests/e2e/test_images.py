"""Both images, as built by `make images` from their Dockerfiles: each runs as UID 1000, its
command line answers with a read-only root file system and no capabilities, and its size is
reported."""

from __future__ import annotations

import uuid
from typing import Any

import pytest

from tests.e2e.conftest import LOCAL_NODE, ctr, normalized, run_pod
from tests.integration.conftest import Cluster

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
