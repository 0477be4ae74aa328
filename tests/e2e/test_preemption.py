"""A training pod deleted mid-run (what a preemption, a node drain or a spot reclaim does):
the kubelet's SIGTERM makes the trainer save a checkpoint at the end of its step within the
grace period, the operator restarts the job, and the new attempt resumes from that step,
on the data attempt 0 prepared (kept in the job's output store), not reading a row again.

Seen through the client, as a user follows it: `finetune submit`, then `finetune logs -f`
started before the pod exists, which shows the training and goes on across the restart;
the deleted attempt's log read back after its pod is gone (kept by the trainer's
entrypoint in the job's output); `finetune wait` exiting 0."""

from __future__ import annotations

from pathlib import Path

import yaml

from fttestkit.cluster import eventually
from fttestkit.finetunejobs import phase_is, read_ftj
from fttestkit.release import Release
from tests.e2e.realnode import Bucket, FinetuneCli, job_pods, pod_logs, tiny_cpu_job, training_pod

STEPS = 400  # the deletion comes at the first logged loss (step 10), well before the end


def test_a_deleted_pod_saves_on_sigterm_and_the_restart_resumes_from_that_step(
    operator_release: Release, bucket: Bucket, tmp_path: Path
) -> None:
    cluster, ns, name = operator_release.cluster, operator_release.watched, "preempted"
    # No periodic checkpoint within the run: the one a restart finds is SIGTERM's.
    job = tiny_cpu_job(operator_release, bucket, tmp_path, name, steps=STEPS,
                       save_steps=100_000, log_every=10)  # fmt: skip
    # The first loss in the log is step 10's (not step 1's), so the SIGTERM comes after it.
    job["spec"]["logging"]["firstStep"] = False
    manifest = tmp_path / "preempted.yaml"
    manifest.write_text(yaml.safe_dump(job))
    finetune = FinetuneCli(operator_release, tmp_path / "home")
    follower = finetune.start("logs", name, "-f")  # before the job, and so its pod, exists
    try:
        assert follower.stdout is not None
        first = follower.stdout.readline()  # it looked, and found no job yet
        assert first == f"[finetune: waiting for FineTuneJob {name} to be created]\n", first
        submitted = finetune.run("submit", str(manifest))
        assert submitted.returncode == 0, submitted.stderr
        pod = eventually(lambda: training_pod(operator_release, name), timeout=300,
                         interval=0.5, what="a training pod's first loss")  # fmt: skip
        # What the status had reported by now: the restart must not start before it.
        reported = ((read_ftj(cluster, ns, name).get("status") or {}).get("progress") or {}).get(
            "step"
        ) or 0
        assert pod["spec"]["terminationGracePeriodSeconds"] == 120
        # As a preemption does: a graceful delete (SIGTERM, then the grace period).
        cluster.kubectl("delete", "pod", "-n", ns, pod["metadata"]["name"], "--wait=false")

        status = eventually(lambda: phase_is(cluster, ns, name, "Succeeded", "Failed"),
                            timeout=480, interval=1.0, what="the job to finish")  # fmt: skip
        followed, errors = follower.communicate(timeout=120)
    finally:
        follower.kill()
    assert status["phase"] == "Succeeded", pod_logs(operator_release, name)
    assert status.get("restarts", 0) == 1, status
    result = bucket.get_json(f"{name}/result.json")
    resumed = result["resumed_from_step"]
    # The checkpoint saved on SIGTERM: past the last step the status had reported (at most
    # the step that was running is lost; without it the restart would start from 0).
    assert resumed is not None and resumed >= max(reported, 10), (resumed, reported)
    final = bucket.get_json(f"{name}/final_metrics.json")
    assert final["global_step"] == STEPS
    # The new pod's scratch is empty: it took the data attempt 0 prepared from the output
    # store (output.uri/prepared/) and read no row; status and result.json say so.
    assert result["startup"]["dataReused"] is True, result["startup"]
    assert status["startup"]["dataReused"] is True, status.get("startup")

    # `logs -f` (waiting from before the job existed): attempt 0's training, then attempt
    # 1's, and it ended with the job.
    assert follower.returncode == 0, errors
    lines = followed.splitlines()
    turn = next(i for i, line in enumerate(lines) if line.startswith("[finetune: attempt 1"))
    assert any("'loss'" in line for line in lines[:turn]), followed[-3000:]
    assert any("SIGTERM: saving a checkpoint" in line for line in lines[:turn])
    assert any("data: prepared " in line for line in lines[:turn]), followed[-3000:]
    assert any("data: reused " in line for line in lines[turn:]), followed[-3000:]
    assert not any("data: prepared " in line for line in lines[turn:])
    assert any(f"'global_step': {STEPS}" in line or "'train_runtime'" in line
               for line in lines[turn:]), followed[-3000:]  # fmt: skip

    # Attempt 0's pod is gone; its log is read from what the pod kept.
    eventually(lambda: not [p for p in job_pods(operator_release, name)
                            if p["metadata"]["labels"].get("finetune.dev/attempt") == "0"],
               timeout=120, what="attempt 0's pod deleted")  # fmt: skip
    kept = finetune.run("logs", name, "--attempt", "0")
    assert kept.returncode == 0, kept.stderr
    shown = [line for line in lines[:turn] if "'loss'" in line or "SIGTERM" in line]
    assert shown and all(line in kept.stdout for line in shown), (shown, kept.stdout[-3000:])
    assert cluster.env["AWS_SECRET_ACCESS_KEY"] not in kept.stdout + followed
    waited = finetune.run("wait", name)
    assert waited.returncode == 0 and f"{name} Succeeded" in waited.stdout
