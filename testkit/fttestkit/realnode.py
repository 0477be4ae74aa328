"""What a FineTuneJob on the local cluster's real node needs, shared by the e2e tests and
bench/realnode_latency.py: the trainer image's name, what puts a pod on the node, a MinIO
bucket with the Secret that lets a namespace's pods use it, and the tiny CPU job."""

from __future__ import annotations

import json
import os
from pathlib import Path
from typing import Any

from kubernetes import client

from fttestkit.cluster import Cluster

TRAINER_IMAGE = os.environ.get("TRAINER_IMAGE", "finetune-trainer:dev")


# What puts a pod on the real node (hack/node.sh's taint and label).
LOCAL_NODE: dict[str, Any] = {
    "nodeSelector": {"finetune.dev/pool": "local"},
    "tolerations": [
        {"key": "finetune.dev/local-node", "operator": "Exists", "effect": "NoSchedule"}
    ],
}


# A trainer pod's share of the 2-CPU node: two of them (nodes: 2) and the operators'
# 100m each must fit at once.
POD_RESOURCES = {"cpu": "800m", "memory": "3Gi", "sharedMemory": "256Mi"}


class Bucket:
    """A fresh MinIO bucket and the Secret that lets a namespace's pods use it."""

    def __init__(self, cluster: Cluster, name: str) -> None:
        self.cluster = cluster
        self.name = name
        self.s3 = cluster.s3()
        self.s3.create_bucket(Bucket=name)

    def put_dir(self, local: Path, prefix: str) -> str:
        for path in sorted(local.rglob("*")):
            if path.is_file():
                key = f"{prefix}/{path.relative_to(local).as_posix()}"
                self.s3.upload_file(str(path), self.name, key)
        return f"s3://{self.name}/{prefix}"

    def put_text(self, key: str, text: str) -> str:
        self.s3.put_object(Bucket=self.name, Key=key, Body=text.encode())
        return f"s3://{self.name}/{key}"

    def keys(self, prefix: str) -> set[str]:
        pages = self.s3.get_paginator("list_objects_v2").paginate(Bucket=self.name, Prefix=prefix)
        return {o["Key"] for page in pages for o in page.get("Contents", [])}

    def get_json(self, key: str) -> Any:
        return json.loads(self.s3.get_object(Bucket=self.name, Key=key)["Body"].read())

    def credentials_secret(self, namespace: str, name: str = "s3-credentials") -> str:
        secret = client.V1Secret(
            metadata=client.V1ObjectMeta(name=name),
            string_data={key: self.cluster.env[key]
                         for key in ("AWS_ACCESS_KEY_ID", "AWS_SECRET_ACCESS_KEY")},
        )  # fmt: skip
        client.CoreV1Api(self.cluster.api).create_namespaced_secret(namespace, secret)
        return name

    def s3_spec(self, secret: str) -> dict[str, Any]:
        """output.s3 for a pod: the bridge address the pods reach MinIO on."""
        return {
            "endpoint": self.cluster.env["FTO_S3_ENDPOINT"], "forcePathStyle": True,
            "region": self.cluster.env["AWS_REGION"], "credentialsSecretRef": {"name": secret},
        }  # fmt: skip


def qa_rows(count: int) -> str:
    rows = [
        {"question": f"What is {i} plus {i}?", "answer": f"It is {2 * i}."} for i in range(count)
    ]
    return "".join(json.dumps(row) + "\n" for row in rows)


def cpu_job(
    name: str, model: str, data: str, bucket: Bucket, secret: str, *, steps: int,
    save_steps: int, log_every: int,
) -> dict[str, Any]:  # fmt: skip
    """A LoRA FineTuneJob of the tiny model on the real node's CPU, in and out of MinIO."""
    return {
        "apiVersion": "finetune.dev/v1alpha1", "kind": "FineTuneJob",
        "metadata": {"name": name},
        "spec": {
            "model": {"name": model},
            "dataset": {"train": {"uri": data}, "format": "qa", "maxSeqLength": 64},
            "method": {"type": "lora", "lora": {"r": 8, "alpha": 16}},
            "training": {"maxSteps": steps, "batchSize": 4, "learningRate": 1e-2,
                         "device": "cpu", "seed": 7},
            "evaluation": {"strategy": "no"},
            # Reports every 2 s (not 15): a run of seconds shows its progress half-way.
            "logging": {"steps": log_every, "statusIntervalSeconds": 2},
            "output": {"uri": f"s3://{bucket.name}/{name}", "saveSteps": save_steps,
                       "s3": bucket.s3_spec(secret)},
            "resources": {"gpusPerNode": 0, **POD_RESOURCES, **LOCAL_NODE},
        },
    }  # fmt: skip
