"""A model as an OCI image (fttrainer.oci), the shape serving mounts: pushed to the cluster's
registry (TLS, htpasswd), pulled back file for file, and mounted by a plain pod with a
Kubernetes `image` volume on the real node (containerd 2.3, Kubernetes 1.36: ImageVolume is
GA), where transformers loads it and computes the same logits as from the folder it came
from. The FineTuneJob side (output.oci, model.name: oci://) builds on this."""

from __future__ import annotations

import hashlib
import json
import uuid
from pathlib import Path

import pytest
import torch

from fttestkit.cluster import Cluster
from fttrainer.oci import OciError, Registry, docker_auth, pull_model, push_model
from fttrainer.tiny import save_tiny_model
from tests.e2e.realnode import LOCAL_NODE, pull_secret, registry_auths, run_pod

PROMPT = [1, 5, 9, 12, 3, 7]
LOGITS = f"""
import json, torch
from transformers import AutoModelForCausalLM
model = AutoModelForCausalLM.from_pretrained("/model", dtype=torch.float32).eval()
with torch.no_grad():
    logits = model(torch.tensor([{PROMPT}])).logits[0, -1]
print("LOGITS " + json.dumps([round(float(x), 6) for x in logits]))
"""


def _sha256s(folder: Path) -> dict[str, str]:
    return {p.relative_to(folder).as_posix(): hashlib.sha256(p.read_bytes()).hexdigest()
            for p in sorted(folder.rglob("*")) if p.is_file()}  # fmt: skip


def test_a_model_pushed_as_an_image_pulls_back_whole_and_a_pod_mounts_it_as_a_volume(
    cluster: Cluster, node: str, images: dict[str, str], e2e_namespace: str, tmp_path: Path
) -> None:
    address = cluster.env["FTO_REGISTRY"]
    auths = registry_auths(cluster)
    registry = Registry(address, docker_auth({"auths": auths}, address),
                        ca_file=cluster.env["FTO_REGISTRY_CA"])  # fmt: skip
    folder = save_tiny_model("llama", tmp_path / "tiny")
    repository = f"e2e-models/tiny-{uuid.uuid4().hex[:8]}"
    digest = push_model(folder, f"oci://{address}/{repository}:v1", registry,
                        annotations={"dev.finetune.base-model": "tiny-llama"})  # fmt: skip
    # The same files give the same image: a second push uploads nothing and names it again.
    assert push_model(folder, f"oci://{address}/{repository}:v1", registry,
                      annotations={"dev.finetune.base-model": "tiny-llama"}) == digest  # fmt: skip
    manifest, _ = registry.get_manifest(repository, digest)
    assert manifest["annotations"] == {"dev.finetune.base-model": "tiny-llama"}
    pulled = pull_model(f"oci://{address}/{repository}@{digest}", tmp_path / "pulled", registry)
    assert pulled == digest
    assert _sha256s(tmp_path / "pulled") == _sha256s(folder)
    # Wrong credentials: refused, and said so.
    wrong = Registry(address, ("nobody", "wrong"), ca_file=cluster.env["FTO_REGISTRY_CA"])
    with pytest.raises(OciError, match="answered 401: the credentials were refused") as refused:
        push_model(folder, f"oci://{address}/{repository}:v2", wrong)
    assert refused.value.permanent

    # The serving shape: a plain pod mounts the image's models/ and loads it.
    pull_secret(cluster, e2e_namespace, "registry", auths)
    pod, log = run_pod(cluster, e2e_namespace, {
        "metadata": {"name": "serve-from-image"},
        "spec": {
            **LOCAL_NODE, "restartPolicy": "Never", "automountServiceAccountToken": False,
            "imagePullSecrets": [{"name": "registry"}],
            "securityContext": {"runAsNonRoot": True, "seccompProfile": {"type": "RuntimeDefault"}},
            "containers": [{
                "name": "serve", "image": images["trainer"], "imagePullPolicy": "Never",
                "args": ["python", "-c", LOGITS],
                "resources": {"requests": {"cpu": "200m", "memory": "512Mi"}},
                "volumeMounts": [{"name": "model", "mountPath": "/model", "subPath": "models"},
                                 {"name": "workspace", "mountPath": "/workspace"}],
                "securityContext": {"readOnlyRootFilesystem": True,
                                    "allowPrivilegeEscalation": False,
                                    "capabilities": {"drop": ["ALL"]}},
            }],
            "volumes": [
                {"name": "model", "image": {"reference": f"{address}/{repository}@{digest}",
                                            "pullPolicy": "IfNotPresent"}},
                {"name": "workspace", "emptyDir": {}},
            ],
        },
    })  # fmt: skip
    assert pod.status.phase == "Succeeded", log[-3000:]
    served = json.loads(next(line for line in log.splitlines() if line.startswith("LOGITS "))[7:])
    from transformers import AutoModelForCausalLM

    model = AutoModelForCausalLM.from_pretrained(str(folder), dtype=torch.float32).eval()
    with torch.no_grad():
        local = model(torch.tensor([PROMPT])).logits[0, -1]
    assert torch.allclose(torch.tensor(served), local, atol=1e-5), (served[:5], local[:5])
