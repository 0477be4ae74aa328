"""`resources.nodes: 2` on CPU: two pods of the trainer image rendezvous through the
headless Service's DNS name (CoreDNS, the pods' hostnames), train as two ranks over gloo,
and only rank 0 publishes the results."""

from __future__ import annotations

import json
from pathlib import Path

from fttrainer.tiny import save_tiny_model
from tests.e2e.conftest import (
    Bucket,
    Release,
    cpu_job,
    create_finetunejob,
    phase_is,
    pod_logs,
    qa_rows,
)
from tests.integration.conftest import eventually

STEPS = 20


def test_two_pods_rendezvous_by_dns_and_train_as_two_ranks(
    operator_release: Release, bucket: Bucket, tmp_path: Path
) -> None:
    cluster, ns, name = operator_release.cluster, operator_release.jobs, "two-nodes"
    model = bucket.put_dir(save_tiny_model("llama", tmp_path / "tiny-llama"), "models/tiny")
    data = bucket.put_text("data/qa.jsonl", qa_rows(64))
    secret = bucket.credentials_secret(ns, f"s3-{bucket.name}")
    job = cpu_job(name, model, data, bucket, secret, steps=STEPS, save_steps=10, log_every=5)
    job["spec"]["resources"]["nodes"] = 2
    create_finetunejob(cluster, ns, job)
    status = eventually(lambda: phase_is(cluster, ns, name, "Succeeded", "Failed"),
                        timeout=480, interval=1.0, what="the job to finish")  # fmt: skip
    assert status["phase"] == "Succeeded", pod_logs(operator_release, name)

    selector = f"finetune.dev/job-name={name}"
    pods = json.loads(cluster.kubectl("get", "pods", "-n", ns, "-l", selector, "-o", "json"))
    pods = pods["items"]
    by_rank = {
        int(p["metadata"]["annotations"]["batch.kubernetes.io/job-completion-index"]): p
        for p in pods
    }
    assert sorted(by_rank) == [0, 1]
    for pod in by_rank.values():
        assert pod["spec"]["nodeName"] == cluster.env["FTO_NODE_NAME"]
        assert pod["status"]["containerStatuses"][0]["state"]["terminated"]["exitCode"] == 0
    # torchrun's rendezvous address is rank 0's DNS name under the headless Service.
    args = by_rank[1]["spec"]["containers"][0]["args"]
    master = args[args.index("--master-addr") + 1]
    assert master.endswith(f".{by_rank[0]['spec']['subdomain']}"), master
    logs = {
        rank: cluster.kubectl("logs", "-n", ns, pod["metadata"]["name"])
        for rank, pod in by_rank.items()
    }
    for rank, log in logs.items():
        assert "2 process(es)" in log, (rank, log[-3000:])  # both ranks in one process group
    assert "published" in logs[0] and "published" not in logs[1], logs[1][-3000:]
    assert bucket.get_json(f"{name}/final_metrics.json")["global_step"] == STEPS
