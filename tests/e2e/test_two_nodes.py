"""`resources.nodes: 2` on CPU: two pods of the trainer image rendezvous through the
headless Service's DNS name (CoreDNS, the pods' hostnames), train as two ranks over gloo,
and only rank 0 publishes the results."""

from __future__ import annotations

import json
from pathlib import Path

from ftapi.progress import RankReport
from fttestkit.cluster import eventually
from fttestkit.finetunejobs import create_ftj, phase_is
from fttestkit.release import Release
from tests.e2e.realnode import Bucket, FinetuneCli, job_pods, pod_logs, tiny_cpu_job

STEPS = 20


def test_two_pods_rendezvous_by_dns_and_train_as_two_ranks(
    operator_release: Release, bucket: Bucket, tmp_path: Path
) -> None:
    cluster, ns, name = operator_release.cluster, operator_release.watched, "two-nodes"
    job = tiny_cpu_job(operator_release, bucket, tmp_path, name, steps=STEPS, save_steps=10,
                       log_every=5)  # fmt: skip
    job["spec"]["resources"]["nodes"] = 2
    create_ftj(cluster, ns, job)
    status = eventually(lambda: phase_is(cluster, ns, name, "Succeeded", "Failed"),
                        timeout=480, interval=1.0, what="the job to finish")  # fmt: skip
    assert status["phase"] == "Succeeded", pod_logs(operator_release, name)

    pods = job_pods(operator_release, name)
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
    # `finetune logs --all`: both pods' logs, each line labelled with its rank.
    shown = FinetuneCli(operator_release, tmp_path / "home").run("logs", name, "--all")
    assert shown.returncode == 0, shown.stderr
    printed = shown.stdout.split("\n")  # lines end at \n only (progress bars write \r)
    by_label = {rank: [line.removeprefix(f"[rank {rank}] ") for line in printed
                       if line.startswith(f"[rank {rank}] ")] for rank in (0, 1)}  # fmt: skip
    for rank, log in logs.items():
        assert by_label[rank] == log.rstrip("\n").split("\n"), (rank, shown.stdout[-2000:])
    assert bucket.get_json(f"{name}/final_metrics.json")["global_step"] == STEPS
    # Each rank reported on its own, from its own pod, to the end; with the default stall,
    # straggler and loss-spike settings a healthy run draws no warning and no restart.
    progress = json.loads(cluster.kubectl("get", "finetunejobprogresses", "-n", ns,
                                          f"{name}-progress", "-o", "json"))  # fmt: skip
    ranks = {int(k): RankReport.model_validate_json(v) for k, v in progress["ranks"].items()}
    assert sorted(ranks) == [0, 1]
    for rank, report in ranks.items():
        assert (report.pod, report.done, report.step) == (
            by_rank[rank]["metadata"]["name"], True, STEPS)  # fmt: skip
        assert report.compute_seconds and report.compute_seconds > 0
    assert status.get("restarts", 0) == 0, status
    warnings = cluster.kubectl("get", "events", "-n", ns, "--field-selector",
                               f"involvedObject.name={name},type=Warning", "-o",
                               "jsonpath={.items[*].reason}")  # fmt: skip
    assert not {"Restarting", "Straggler", "LossSpike"} & set(warnings.split()), warnings
