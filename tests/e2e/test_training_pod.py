"""A FineTuneJob trained for real by the trainer image in a pod on the real node: the model
and data come from MinIO, the checkpoints and final model go back there, `kubectl get ftj`
shows the run's progress, loss and ETA, `kubectl logs` the trainer's log. And the same
manifest run locally with `finetune run` gives the same losses, step for step."""

from __future__ import annotations

import os
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

import yaml

from fttestkit.cluster import eventually
from fttestkit.finetunejobs import create_ftj, phase_is
from fttestkit.release import Release
from tests.e2e.realnode import Bucket, job_pods, pod_logs, tiny_cpu_job

# Long enough (~30 s on one CPU) for the trainer's progress reports (one every 15 s) to show
# the run half-way in `kubectl get ftj`.
STEPS = 500
LOG_EVERY = 10


def table_row(table: str) -> dict[str, str]:
    """The one row of a `kubectl get` table, by the header's column positions (values such
    as "3/12 (25%)" hold spaces)."""
    header, line = table.splitlines()[:2]
    starts = [i for i, c in enumerate(header) if c != " " and (i == 0 or header[i - 1] == " ")]
    bounds = [*starts[1:], None]
    return {
        header[a:b].strip(): line[a:b].strip().removeprefix("<none>")
        for a, b in zip(starts, bounds, strict=True)
    }


def step_losses(metrics: list[dict[str, Any]]) -> dict[int, float]:
    return {m["step"]: m["loss"] for m in metrics if "loss" in m}


def test_a_cpu_job_trains_in_the_trainer_image_and_matches_a_local_run(
    operator_release: Release, bucket: Bucket, tmp_path: Path
) -> None:
    cluster, ns, name = operator_release.cluster, operator_release.watched, "tiny-lora"
    job = tiny_cpu_job(operator_release, bucket, tmp_path, name, steps=STEPS, save_steps=100,
                       log_every=LOG_EVERY)  # fmt: skip
    create_ftj(cluster, ns, job)

    # While it runs, `kubectl get ftj` (the CRD's printer columns) shows the real run: a
    # step count, a loss and an ETA.
    seen: list[dict[str, str]] = []

    def row() -> dict[str, str] | None:
        seen.append(table_row(cluster.kubectl("get", "ftj", name, "-n", ns)))
        return seen[-1] if seen[-1]["PHASE"] in ("Succeeded", "Failed") else None

    eventually(row, timeout=480, interval=1.0, what="the job to finish")
    status = phase_is(cluster, ns, name, "Succeeded")
    assert status, pod_logs(operator_release, name)
    # Mid-run rows (the first ones say only "0": the total is not known before the trainer
    # reports it): some step short of the last, with a loss and an ETA.
    mid_run = tuple(f"{step}/{STEPS} " for step in range(1, STEPS))
    running = [r for r in seen if r["PHASE"] == "Running" and r["PROGRESS"].startswith(mid_run)]
    assert running, f"never saw the running job's progress: {seen}"
    assert any(float(r["LOSS"] or 0) > 0 and r["ETA"] for r in running), running
    assert status["progress"]["summary"] == f"{STEPS}/{STEPS} (100%)"

    # The pod was the trainer image's, on the real node; its log is the trainer's.
    (pod,) = job_pods(operator_release, name)
    assert pod["spec"]["nodeName"] == cluster.env["FTO_NODE_NAME"]
    assert pod["status"]["containerStatuses"][0]["image"].endswith("finetune-trainer:dev")
    # Under the chart's default it ran as the namespace's shared trainer identity, and its
    # progress reports above passed the chart's ValidatingAdmissionPolicy with the pod's own
    # token (docs/operator.md, "The trainer's identity").
    assert pod["spec"]["serviceAccountName"] == "finetune-trainer"
    log = cluster.kubectl("logs", "-n", ns, pod["metadata"]["name"])
    assert f"{STEPS}/{STEPS}" in log or f"'step': {STEPS}" in log or "train_loss" in log, log[
        -3000:
    ]
    assert cluster.env["AWS_SECRET_ACCESS_KEY"] not in log

    # Checkpoints and the final model are in MinIO, where the status says.
    keys = bucket.keys(f"{name}/")
    assert f"{name}/result.json" in keys
    assert f"{name}/final/adapter_model.safetensors" in keys
    assert status["modelUri"] == f"s3://{bucket.name}/{name}/final"
    assert status["checkpoint"]["step"] == STEPS
    pod_losses = step_losses(bucket.get_json(f"{name}/step_metrics.json"))
    assert set(range(LOG_EVERY, STEPS + 1, LOG_EVERY)) <= set(pod_losses), sorted(pod_losses)

    # The same manifest, run here by `finetune run` (its output beside the pod's).
    output = {**job["spec"]["output"], "uri": f"s3://{bucket.name}/{name}-local"}
    local = {**job, "spec": {**job["spec"], "output": output}}
    path = tmp_path / "job.yaml"
    path.write_text(yaml.safe_dump(local))
    keys = ("AWS_ACCESS_KEY_ID", "AWS_SECRET_ACCESS_KEY")
    env = {**os.environ, **{k: cluster.env[k] for k in keys}, "OMP_NUM_THREADS": "1"}
    started = time.monotonic()
    run = subprocess.run([str(Path(sys.executable).parent / "finetune"), "run", str(path)],
                         env=env, capture_output=True, text=True, timeout=600)  # fmt: skip
    assert run.returncode == 0, (run.stdout + run.stderr)[-4000:]
    local_losses = step_losses(bucket.get_json(f"{name}-local/step_metrics.json"))
    assert local_losses.keys() == pod_losses.keys()
    for step, loss in pod_losses.items():
        other = local_losses[step]
        assert abs(loss - other) <= 1e-4 * max(1.0, abs(loss)), (step, loss, other)
    print(f"local run: {time.monotonic() - started:.0f}s; losses {pod_losses}")
