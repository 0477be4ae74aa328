"""A run that diverges, through the whole stack, as a new user might start one: a full
fine-tune at learning rate 1.0 (two orders too high). The trainer pod on the real node names
the jump when it happens and compares the validation loss after training with the base
model's; the FineTuneJob says both: a LossSpike Warning Event naming the step, and the
Improved condition False (reason WorseThanBase, with its Warning Event). Failing such a run
is a setting (evaluation.failIfWorseThanBase), off by default, so the job succeeds.

(A NaN at a chosen step, through the operator: tests/e2e/test_faults.py, with the trainer's
test hook that only a test cluster's operator passes on.)"""

from __future__ import annotations

from pathlib import Path

from fttestkit.cluster import eventually
from fttestkit.finetunejobs import create_ftj, phase_is
from fttestkit.release import Release
from tests.e2e.realnode import Bucket, object_events, pod_logs, tiny_cpu_job


def test_a_learning_rate_two_orders_too_high_warns_of_the_spike_and_ends_not_improved(
    operator_release: Release, bucket: Bucket, tmp_path: Path
) -> None:
    release, cluster, ns, name = (operator_release, operator_release.cluster,
                                  operator_release.watched, "lr-too-high")  # fmt: skip
    job = tiny_cpu_job(release, bucket, tmp_path, name, steps=8, save_steps=8, log_every=1)
    job["spec"]["method"] = {"type": "full"}
    job["spec"]["training"]["learningRate"] = 1.0
    job["spec"]["dataset"]["split"] = {"train": 0.75, "validation": 0.25, "seed": 42}
    job["spec"]["evaluation"] = {"strategy": "epoch"}
    create_ftj(cluster, ns, job)
    status = eventually(lambda: phase_is(cluster, ns, name, "Failed", "Succeeded"),
                        timeout=480, interval=2.0, what="the job to end")  # fmt: skip
    assert status["phase"] == "Succeeded", pod_logs(release, name)
    improved = next(c for c in status["conditions"] if c["type"] == "Improved")
    assert (improved["status"], improved["reason"]) == ("False", "WorseThanBase"), improved

    # The Events follow the status write that ended the job: wait for them too.
    def told_worse() -> list[tuple[str, str]] | None:
        events = object_events(cluster, ns, "FineTuneJob", name)
        return events if any(r == "WorseThanBase" for r, _ in events) else None

    events = eventually(told_worse, timeout=30, what="the WorseThanBase Event")
    spikes = [m for r, m in events if r == "LossSpike"]
    assert spikes and "step" in spikes[0], events
    print(f"lr 1.0: {spikes[0]}; {improved['message']}")
