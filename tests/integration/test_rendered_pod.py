"""The Job the operator renders would really train: its pod's command and environment,
taken from the API server, run here against the real S3 server, and the FineTuneJob's
status shows what that trainer reported.

kwok has no containers, so this test plays the kubelet for pod 0 of the Job:
- args: `$(JOB_COMPLETION_INDEX)` expanded to 0 (as the kubelet does), the mounted paths
  mapped into a temporary folder (/etc/finetune -> the `<job>-config` ConfigMap's file,
  /workspace -> a scratch folder), the port to a free one (the rendezvous host is already
  the pod's own loopback: a single-node job has no rendezvous Service);
- env: every variable as rendered, `secretKeyRef`s resolved from the Secrets in the
  namespace, the `fieldRef`s (namespace, pod name, node name) from pod 0 as kwok runs it;
  plus what a kubelet gives a
  pod: KUBERNETES_SERVICE_HOST/PORT and the ServiceAccount's token (from the TokenRequest
  API) and CA, in a folder named by FINETUNE_SERVICE_ACCOUNT_DIR;
- the model is a tiny one on local disk (the image would have it, or fetch it from a hub).
Everything else is the operator's: the torchrun line, the resolved config, the credentials'
wiring, the progress object and the Role that lets the pod write it.
"""

from __future__ import annotations

import base64
import json
import os
import subprocess
import sys
import uuid
from pathlib import Path
from typing import Any
from urllib.parse import urlparse

import pytest
import yaml
from kubernetes import client

from ftapi import contract
from ftapi.constants import GROUP, PROGRESS_PLURAL, VERSION
from ftapi.progress import RANKS_FIELD, RankReport
from fttestkit.cluster import Cluster, eventually
from fttestkit.finetunejobs import create_ftj, status_of
from fttestkit.kubeconfig import write_pod_identity
from fttestkit.operator import Operator
from fttestkit.ports import free_port
from fttrainer.tiny import save_tiny_model

pytestmark = pytest.mark.integration
STEPS = 6


def _env(container: Any, ns: str, core: client.CoreV1Api, pod: Any) -> dict[str, str]:
    fields = {"metadata.namespace": ns, "metadata.name": pod.metadata.name,
              "spec.nodeName": pod.spec.node_name}  # fmt: skip
    env: dict[str, str] = {}
    for variable in container.env or []:
        if variable.value is not None:
            env[variable.name] = variable.value
            continue
        source = variable.value_from
        if source.field_ref is not None:
            env[variable.name] = fields[source.field_ref.field_path]
        elif source.secret_key_ref is not None:
            ref = source.secret_key_ref
            data = core.read_namespaced_secret(ref.name, ns).data or {}
            if ref.key not in data:
                assert ref.optional, f"{variable.name}: Secret {ref.name} has no {ref.key}"
                continue
            env[variable.name] = base64.b64decode(data[ref.key]).decode()
    return env


def test_the_rendered_pod_trains_and_reports_to_status(
    cluster: Cluster, operator: Operator, ns: str, tmp_path: Path
) -> None:
    core = client.CoreV1Api(cluster.api)
    s3 = cluster.s3()
    bucket = f"e2e-{uuid.uuid4().hex[:10]}"
    s3.create_bucket(Bucket=bucket)
    rows = [{"question": f"What is {i} plus {i}?", "answer": f"It is {2 * i}."} for i in range(32)]
    s3.put_object(Bucket=bucket, Key="data/qa.jsonl",
                  Body="".join(json.dumps(r) + "\n" for r in rows).encode())  # fmt: skip
    core.create_namespaced_secret(ns, {
        "metadata": {"name": "s3-credentials"},
        "stringData": {"AWS_ACCESS_KEY_ID": cluster.env["AWS_ACCESS_KEY_ID"],
                       "AWS_SECRET_ACCESS_KEY": cluster.env["AWS_SECRET_ACCESS_KEY"]},
    })  # fmt: skip
    model = save_tiny_model("llama", tmp_path / "tiny-llama")
    name = "e2e"
    manifest = {
        "apiVersion": "finetune.dev/v1alpha1", "kind": "FineTuneJob",
        "metadata": {"name": name},
        "spec": {
            "model": {"name": str(model)},
            "dataset": {"train": {"uri": f"s3://{bucket}/data/qa.jsonl"}, "format": "qa",
                        "maxSeqLength": 64},
            "method": {"type": "lora"},
            "training": {"maxSteps": STEPS, "batchSize": 4, "learningRate": 1e-2},
            "evaluation": {"strategy": "no"},
            "logging": {"steps": 1},
            "output": {"uri": f"s3://{bucket}/out", "saveSteps": 2,
                       "s3": {"endpoint": cluster.env["FTO_S3_ENDPOINT"], "forcePathStyle": True,
                              "region": cluster.env["AWS_REGION"],
                              "credentialsSecretRef": {"name": "s3-credentials"}}},
            # kwok keeps the pod "running" while this test runs its command.
            "resources": {"gpusPerNode": 0, "annotations": {
                "finetune.dev/kwok-run-duration": "600s"}},
        },
    }  # fmt: skip
    create_ftj(cluster, ns, manifest)
    batch = client.BatchV1Api(cluster.api)
    job = eventually(
        lambda: batch.list_namespaced_job(ns, label_selector=f"finetune.dev/job-name={name}").items,
        what="the rendered Job",
    )[0]  # fmt: skip
    template = job.spec.template.spec
    container = template.containers[0]
    selector = f"job-name={job.metadata.name}"
    pod = eventually(
        lambda: [p for p in core.list_namespaced_pod(ns, label_selector=selector).items
                 if p.spec.node_name],
        what="pod 0 on a kwok node",
    )[0]  # fmt: skip

    # The pod's files: the config ConfigMap at /etc/finetune, a scratch /workspace.
    config = core.read_namespaced_config_map(f"{name}-config", ns).data
    etc = tmp_path / "etc-finetune"
    etc.mkdir()
    for key, text in config.items():
        (etc / key).write_text(text)
    workspace = tmp_path / "workspace"
    port = str(free_port())
    mapped = {
        "$(JOB_COMPLETION_INDEX)": "0",
        contract.JOB_CONFIG_PATH: str(etc / Path(contract.JOB_CONFIG_PATH).name),
        contract.RUN_OUTPUT: str(workspace / "run"),
        str(contract.MASTER_PORT): port,
    }
    assert container.args[container.args.index("--master-addr") + 1] == "127.0.0.1"
    args = [mapped.get(arg, arg) for arg in container.args]
    assert args[0] == contract.TORCHRUN and str(etc / "job.yaml") in args

    # The pod's identity: a token for its ServiceAccount, the API server's CA.
    account = write_pod_identity(
        cluster, template.service_account_name, ns, tmp_path / "serviceaccount"
    )
    kubeconfig = yaml.safe_load(Path(cluster.kubeconfig).read_text())
    cluster_entry = kubeconfig["clusters"][0]["cluster"]
    server = urlparse(cluster_entry["server"])
    env = {
        "PATH": f"{Path(sys.executable).parent}:{os.environ['PATH']}",
        "HOME": str(workspace), "OMP_NUM_THREADS": "1",
        **_env(container, ns, core, pod),
        "KUBERNETES_SERVICE_HOST": server.hostname or "127.0.0.1",
        "KUBERNETES_SERVICE_PORT": str(server.port),
        "FINETUNE_SERVICE_ACCOUNT_DIR": str(account),
    }  # fmt: skip
    workspace.mkdir()
    secret = cluster.env["AWS_SECRET_ACCESS_KEY"]
    run = subprocess.run(args, env=env, capture_output=True, text=True, timeout=600)
    output = run.stdout + run.stderr
    assert run.returncode == 0, output[-4000:]
    assert secret not in output, "a credential reached the trainer's output"

    # The model and its result are in S3, where the status says.
    listed = s3.list_objects_v2(Bucket=bucket, Prefix="out/")
    keys = {o["Key"] for o in listed.get("Contents", [])}
    assert "out/result.json" in keys and "out/final/adapter_model.safetensors" in keys

    # The trainer's reports reached the FineTuneJob's status through the operator.
    def reported() -> dict[str, Any] | None:
        status = status_of(cluster, ns, name)
        progress = status.get("progress") or {}
        return status if progress.get("step") == STEPS else None

    status = eventually(reported, timeout=60, what="the trainer's last report in status")
    assert status["progress"]["summary"] == f"{STEPS}/{STEPS} (100%)"
    assert status["metrics"]["trainLoss"] > 0
    assert status["checkpoint"]["step"] == STEPS
    assert status["checkpoint"]["latest"].startswith(f"s3://{bucket}/out/checkpoints/")
    assert status["modelUri"] == f"s3://{bucket}/out/final"
    # Rank 0's own report (liveness and pace) names the pod and node, and its end.
    progress = client.CustomObjectsApi(cluster.api).get_namespaced_custom_object(
        GROUP, VERSION, ns, PROGRESS_PLURAL, f"{name}-progress")  # fmt: skip
    rank = RankReport.model_validate_json(progress[RANKS_FIELD]["0"])
    assert (rank.pod, rank.node, rank.step, rank.done) == (
        pod.metadata.name, pod.spec.node_name, STEPS, True)  # fmt: skip
    assert rank.step_seconds and rank.compute_seconds and rank.compute_seconds > 0
