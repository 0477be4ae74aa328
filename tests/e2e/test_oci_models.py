"""A model as an OCI image (fttrainer.publishing.oci), the shape serving mounts: pushed to the
cluster's registry (TLS, htpasswd), pulled back file for file, and mounted by a plain pod with a
Kubernetes `image` volume on the real node (containerd 2.3, Kubernetes 1.36: ImageVolume is GA),
where transformers loads it and computes the same logits as from the folder it came from. Then the
FineTuneJob side: output.oci from a trainer pod (the adapter and the merged model, with their
lineage, digests in status), model.name: oci:// as a second job's base, a refused push that keeps
the model in S3, and the same locally with `finetune run`."""

from __future__ import annotations

import base64
import hashlib
import json
import os
import subprocess
import sys
import uuid
from pathlib import Path
from typing import Any

import pytest
import torch
import yaml
from kubernetes import client

from fttestkit.cluster import Cluster, eventually
from fttestkit.finetunejobs import create_ftj, phase_is
from fttestkit.release import Release
from fttrainer.model.sources import pulled_digest
from fttrainer.publishing.lineage import tree_digest
from fttrainer.publishing.oci import OciError, Registry, docker_auth, pull_model, push_model
from fttrainer.tiny import save_tiny_model
from tests.e2e.realnode import (
    LOCAL_NODE,
    Bucket,
    cpu_job,
    pod_logs,
    pull_secret,
    qa_rows,
    registry_auths,
    renamed,
    run_pod,
    tiny_cpu_job,
)
from tests.trainer.test_vision import CORPUS, QUESTION, colour_rows

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
    pod, log = run_pod(cluster, e2e_namespace, _serving_pod(
        "serve-from-image", f"{address}/{repository}@{digest}", "registry", images["trainer"],
        ["python", "-c", LOGITS],
    ))  # fmt: skip
    assert pod.status.phase == "Succeeded", log[-3000:]
    served = json.loads(next(line for line in log.splitlines() if line.startswith("LOGITS "))[7:])
    from transformers import AutoModelForCausalLM

    model = AutoModelForCausalLM.from_pretrained(str(folder), dtype=torch.float32).eval()
    with torch.no_grad():
        local = model(torch.tensor([PROMPT])).logits[0, -1]
    assert torch.allclose(torch.tensor(served), local, atol=1e-5), (served[:5], local[:5])


def _serving_pod(
    name: str, reference: str, pull: str, image: str, args: list[str]
) -> dict[str, Any]:
    """The serving shape: a plain, locked-down pod on the real node running `args` in
    `image`, the model image `reference` (pulled with Secret `pull`) mounted at /model."""
    return {
        "metadata": {"name": name},
        "spec": {
            **LOCAL_NODE, "restartPolicy": "Never", "automountServiceAccountToken": False,
            "imagePullSecrets": [{"name": pull}],
            "securityContext": {"runAsNonRoot": True, "seccompProfile": {"type": "RuntimeDefault"}},
            "containers": [{
                "name": "serve", "image": image, "imagePullPolicy": "Never", "args": args,
                "resources": {"requests": {"cpu": "200m", "memory": "512Mi"}},
                "volumeMounts": [{"name": "model", "mountPath": "/model", "subPath": "models"},
                                 {"name": "workspace", "mountPath": "/workspace"}],
                "securityContext": {"readOnlyRootFilesystem": True,
                                    "allowPrivilegeEscalation": False,
                                    "capabilities": {"drop": ["ALL"]}},
            }],
            "volumes": [
                {"name": "model", "image": {"reference": reference, "pullPolicy": "IfNotPresent"}},
                {"name": "workspace", "emptyDir": {}},
            ],
        },
    }  # fmt: skip


def _registry(cluster: Cluster) -> Registry:
    """A client with the cluster registry's credentials, trusting the cluster's CA."""
    address = cluster.env["FTO_REGISTRY"]
    return Registry(address, docker_auth({"auths": registry_auths(cluster)}, address),
                    ca_file=cluster.env["FTO_REGISTRY_CA"])  # fmt: skip


def _s3_sha256s(bucket: Bucket, prefix: str) -> dict[str, str]:
    """sha256 of every object under prefix/, by its path below it."""
    found = {}
    for key in sorted(bucket.keys(prefix + "/")):
        body = bucket.s3.get_object(Bucket=bucket.name, Key=key)["Body"].read()
        found[key.removeprefix(prefix + "/")] = hashlib.sha256(body).hexdigest()
    return found


def _registry_access(cluster: Cluster, namespace: str, secret: str, auths: dict[str, Any]
                     ) -> dict[str, Any]:  # fmt: skip
    """A dockerconfigjson Secret with `auths` and a ConfigMap with the registry's CA in the
    jobs' namespace: the spec's output.oci / model.registry access to them."""
    pull_secret(cluster, namespace, secret, auths)
    ca = f"{secret}-ca"
    client.CoreV1Api(cluster.api).create_namespaced_config_map(namespace, {
        "metadata": {"name": ca},
        "data": {"ca.crt": Path(cluster.env["FTO_REGISTRY_CA"]).read_text()},
    })  # fmt: skip
    return {"credentialsSecretRef": {"name": secret},
            "caConfigMapRef": {"name": ca, "key": "ca.crt"}}  # fmt: skip


def test_a_job_pushes_its_adapter_and_merged_model_with_lineage_and_another_trains_on_it(
    operator_release: Release, bucket: Bucket, tmp_path: Path
) -> None:
    release, cluster, ns = operator_release, operator_release.cluster, operator_release.watched
    address = cluster.env["FTO_REGISTRY"]
    repository = f"e2e-tuned/{uuid.uuid4().hex[:8]}"
    access = _registry_access(cluster, ns, "registry-push", registry_auths(cluster))
    job = tiny_cpu_job(release, bucket, tmp_path, "oci-push", steps=4, save_steps=4,
                       log_every=1)  # fmt: skip
    job["spec"]["output"]["mergeAdapter"] = True
    job["spec"]["output"]["oci"] = {"reference": f"oci://{address}/{repository}:v1", **access}
    create_ftj(cluster, ns, job)
    status = eventually(lambda: phase_is(cluster, ns, "oci-push", "Failed", "Succeeded"),
                        timeout=480, interval=2.0, what="the pushing job to end")  # fmt: skip
    assert status["phase"] == "Succeeded", f"{status}\n{pod_logs(release, 'oci-push')}"
    image, merged = status["modelImage"], status["mergedModelImage"]
    assert image.startswith(f"oci://{address}/{repository}:v1@sha256:"), status
    assert merged.startswith(f"oci://{address}/{repository}:v1-merged@sha256:"), status
    assert image in status["message"]

    # What the registry holds is what S3 holds, file for file, under the digests in status.
    registry = _registry(cluster)
    notes = {}
    for pinned, folder, content in ((image, "final", "adapter"),
                                    (merged, "merged", "merged-model")):  # fmt: skip
        digest = pinned.rsplit("@", 1)[1]
        assert pull_model(pinned, tmp_path / folder, registry) == digest
        assert _sha256s(tmp_path / folder) == _s3_sha256s(bucket, f"oci-push/{folder}")
        manifest, _ = registry.get_manifest(repository, digest)
        notes[folder] = manifest["annotations"]
        assert notes[folder]["dev.finetune.content"] == content
    lineage = notes["final"]
    assert lineage["dev.finetune.job"] == f"{ns}/oci-push"
    assert lineage["dev.finetune.base-model"] == job["spec"]["model"]["name"]
    assert lineage["dev.finetune.base-model.digest"] == tree_digest(tmp_path / "tiny-llama")
    data_sha = hashlib.sha256(qa_rows(64).encode()).hexdigest()
    data_uri = job["spec"]["dataset"]["train"]["uri"]
    assert json.loads(lineage["dev.finetune.datasets"]) == [
        {"uri": data_uri, "sha256": f"sha256:{data_sha}"}
    ]
    assert json.loads(lineage["dev.finetune.spec"])["output"]["oci"]["reference"].endswith(":v1")
    assert lineage["dev.finetune.spec.sha256"].startswith("sha256:")
    assert "train_loss" in json.loads(lineage["dev.finetune.metrics"])
    assert lineage["dev.finetune.operator.version"].startswith("finetune-operator")
    assert lineage["dev.finetune.trainer.version"].startswith("finetune-trainer")
    result = bucket.get_json("oci-push/result.json")
    assert result["images"] == {"final": image, "merged": merged}

    # A second job starts from the merged image (model.name: oci://, tag and digest) and
    # continues the first one's adapter from its image (method.adapter.uri: oci://), and
    # pushes with a credential the registry refuses: PublishFailed at once, no restart, its
    # trained adapter kept in S3 and named in status.
    wrong = {address: {"auth": base64.b64encode(b"fto:not-the-password").decode()}}
    refused = _registry_access(cluster, ns, "registry-wrong", wrong)
    second = renamed(job, "oci-base")
    second["spec"]["model"] = {"name": merged, "registry": access}
    second["spec"]["method"] = {"type": "adapter", "adapter": {"uri": image}}
    second["spec"]["output"].pop("mergeAdapter")
    second["spec"]["output"]["oci"] = {"reference": f"oci://{address}/{repository}:v2", **refused}
    create_ftj(cluster, ns, second)
    status = eventually(lambda: phase_is(cluster, ns, "oci-base", "Failed", "Succeeded"),
                        timeout=480, interval=2.0, what="the second job to end")  # fmt: skip
    logs = cluster.kubectl("logs", "-n", ns, "-l", "finetune.dev/job-name=oci-base",
                           "--tail=-1", check=False)  # fmt: skip
    assert status["phase"] == "Failed", f"{status}\n{logs}"
    assert status["failureReason"] == "PublishFailed", status
    assert "the credentials were refused" in status["message"], status
    assert status.get("restarts", 0) == 0, status
    assert status["modelUri"] == f"s3://{bucket.name}/oci-base/final", status
    assert "adapter_model.safetensors" in _s3_sha256s(bucket, "oci-base/final")
    assert f"model.name: {merged} ->" in logs, logs  # pulled from the registry, then trained
    assert f"method.adapter.uri: {image} ->" in logs, logs
    assert "modelImage" not in status


def test_finetune_run_trains_on_an_image_and_pushes_one_from_a_laptop(
    cluster: Cluster, node: str, tmp_path: Path
) -> None:
    """One local run both ways: model.name is an oci:// tag (resolved to its digest, pulled
    into the cache), output.oci pushes the result. Locally the registry's credentials come
    from the Docker config (DOCKER_CONFIG) and its CA from SSL_CERT_FILE, as docker and
    oras users have them."""
    address = cluster.env["FTO_REGISTRY"]
    repository = f"e2e-local/{uuid.uuid4().hex[:8]}"
    base = push_model(save_tiny_model("llama", tmp_path / "tiny"),
                      f"oci://{address}/{repository}:base", _registry(cluster))  # fmt: skip
    docker = tmp_path / "docker"
    docker.mkdir()
    (docker / "config.json").write_text(Path(cluster.env["FTO_REGISTRY_AUTH"]).read_text())
    env = {**os.environ, "DOCKER_CONFIG": str(docker), "SSL_CERT_FILE": cluster.env[
        "FTO_REGISTRY_CA"], "XDG_CACHE_HOME": str(tmp_path / "cache")}  # fmt: skip
    data = tmp_path / "qa.jsonl"
    data.write_text(qa_rows(16))
    manifest = {
        "apiVersion": "finetune.dev/v1alpha1", "kind": "FineTuneJob",
        "metadata": {"name": "local-oci"},
        "spec": {
            "model": {"name": f"oci://{address}/{repository}:base"}, "method": {"type": "full"},
            "dataset": {"train": {"uri": str(data)}, "format": "qa", "maxSeqLength": 64},
            "training": {"maxSteps": 2, "batchSize": 4, "device": "cpu", "seed": 7},
            "evaluation": {"strategy": "no"},
            "output": {"uri": str(tmp_path / "out"), "saveSteps": 2,
                       "oci": {"reference": f"oci://{address}/{repository}:v1"}},
        },
    }  # fmt: skip
    path = tmp_path / "job.yaml"
    path.write_text(yaml.safe_dump(manifest))
    done = subprocess.run([sys.executable, "-m", "fttrainer.cli", "run", str(path)],
                          env=env, capture_output=True, text=True, timeout=600)  # fmt: skip
    log = done.stdout + done.stderr
    assert done.returncode == 0, log[-4000:]
    assert f"model.name: oci://{address}/{repository}:base ->" in log, log[-3000:]
    (copy,) = [p for p in (tmp_path / "cache" / "finetune" / "models").iterdir() if p.is_dir()]
    assert pulled_digest(copy) == base
    image = json.loads((tmp_path / "out" / "result.json").read_text())["images"]["final"]
    assert image.startswith(f"oci://{address}/{repository}:v1@sha256:")
    registry = _registry(cluster)
    assert pull_model(image, tmp_path / "pulled", registry) == image.rsplit("@", 1)[1]
    assert _sha256s(tmp_path / "pulled") == _sha256s(tmp_path / "out" / "final")
    manifest_pushed, _ = registry.get_manifest(repository, image.rsplit("@", 1)[1])
    notes = manifest_pushed["annotations"]
    assert (notes["dev.finetune.content"], notes["dev.finetune.base-model.digest"]) == (
        "model", base)  # fmt: skip


SERVE_VISION = """
import base64, io, json, sys, torch
from PIL import Image
from transformers import AutoModelForImageTextToText, AutoProcessor
processor = AutoProcessor.from_pretrained("/model")
model = AutoModelForImageTextToText.from_pretrained("/model", dtype=torch.float32).eval()
answers = []
for data in json.loads(sys.argv[1]):
    image = Image.open(io.BytesIO(base64.b64decode(data))).convert("RGB")
    turn = {"role": "user", "content": [{"type": "image"}, {"type": "text", "text": sys.argv[2]}]}
    text = processor.apply_chat_template([turn], add_generation_prompt=True, tokenize=False)
    batch = processor(text=[text], images=[[image]], return_tensors="pt")
    with torch.no_grad():
        out = model.generate(**batch, max_new_tokens=3, do_sample=False)
    new = out[0, batch["input_ids"].shape[1]:]
    answers.append(processor.decode(new, skip_special_tokens=True).strip())
print("ANSWERS " + json.dumps(answers))
"""


def test_a_vision_job_trains_on_uploaded_images_and_a_pod_serves_its_image(
    operator_release: Release, bucket: Bucket, images: dict[str, str], tmp_path: Path
) -> None:
    """Rows with pictures on this machine go up as `finetune submit` stages them (the file
    and its images as one tree); a trainer pod on the real node reads them from S3, tunes a
    tiny Idefics3 with LoRA and pushes the merged model, its processor and the images'
    lineage; a plain pod mounts that image and answers held-back pictures right."""
    from ftapi import parse_job
    from ftclient.staging import HashCache, Stager, local_locations, plan_staging
    from fttrainer.tiny_vision import build

    release, cluster, ns = operator_release, operator_release.cluster, operator_release.watched
    address = cluster.env["FTO_REGISTRY"]
    repository = f"e2e-vision/{uuid.uuid4().hex[:8]}"
    access = _registry_access(cluster, ns, "registry-vision", registry_auths(cluster))
    model = bucket.put_dir(build("idefics3", corpus=CORPUS).save(tmp_path / "tiny"), "vlm")
    rows = colour_rows(tmp_path / "local", 48, seed=1)
    secret = bucket.credentials_secret(ns, f"s3-{bucket.name}")
    job = cpu_job("vision", model, str(rows), bucket, secret, steps=40, save_steps=40,
                  log_every=5)  # fmt: skip
    job["spec"]["dataset"] = {"train": {"uri": str(rows)}, "format": "messages",
                              "maxSeqLength": 128}  # fmt: skip
    job["spec"]["training"].update(batchSize=8, learningRate=5e-3, seed=0)
    job["spec"]["output"]["mergeAdapter"] = True
    job["spec"]["output"]["oci"] = {"reference": f"oci://{address}/{repository}:v1", **access}
    found, problems = local_locations(parse_job(job), tmp_path)
    assert not problems
    (staged,) = plan_staging(found, f"s3://{bucket.name}/staging", HashCache(None))
    assert len(staged.files) == 49  # the rows and their 48 pictures
    Stager(bucket.s3).upload([staged])
    job["spec"]["dataset"]["train"]["uri"] = staged.uri
    create_ftj(cluster, ns, job)
    status = eventually(lambda: phase_is(cluster, ns, "vision", "Failed", "Succeeded"),
                        timeout=480, interval=2.0, what="the vision job to end")  # fmt: skip
    assert status["phase"] == "Succeeded", f"{status}\n{pod_logs(release, 'vision')}"
    digest = status["mergedModelImage"].rsplit("@", 1)[1]
    manifest, _ = _registry(cluster).get_manifest(repository, digest)
    assert json.loads(manifest["annotations"]["dev.finetune.images"])["count"] == 48

    held = colour_rows(tmp_path / "held", 6, seed=7)
    asked = [json.loads(line) for line in held.read_text().splitlines()]
    pictures = [base64.b64encode((held.parent / r["messages"][0]["content"][0]["image"])
                                 .read_bytes()).decode() for r in asked]  # fmt: skip
    pod, log = run_pod(cluster, ns, _serving_pod(
        "serve-vision", f"{address}/{repository}@{digest}", "registry-vision", images["trainer"],
        ["python", "-c", SERVE_VISION, json.dumps(pictures), QUESTION],
    ))  # fmt: skip
    assert pod.status.phase == "Succeeded", log[-3000:]
    answers = json.loads(next(line for line in log.splitlines() if line.startswith("ANSWERS "))[8:])
    expected = [r["messages"][1]["content"] for r in asked]
    right = sum(a.startswith(e) for a, e in zip(answers, expected, strict=True))
    assert right >= 5, list(zip(answers, expected, strict=True))
