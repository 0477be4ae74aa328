"""spec.scheduling and spec.runPolicy: queueing, suspension, restarts, deadlines, cleanup."""

from __future__ import annotations

from typing import Annotated

from pydantic import Field, StringConstraints

from ._base import ApiModel

# Kueue puts the queue's name in a label value: a DNS label of at most 63 characters.
QueueName = Annotated[
    str, StringConstraints(max_length=63, pattern=r"^[a-z0-9]([-a-z0-9]*[a-z0-9])?$")
]

# Ten years: longer durations mean "never" and would overflow date arithmetic.
MAX_SECONDS = 10 * 365 * 24 * 3600


class SchedulingSpec(ApiModel):
    """Admission. Mutable on a live job."""

    queue_name: QueueName | None = None
    """Kueue LocalQueue: the Job is created suspended with kueue.x-k8s.io/queue-name and
    starts when Kueue admits it."""
    suspend: bool = False
    """Stop the job's pods (checkpoint progress is kept) until set back to false."""


# A pod asked to stop (spot reclaim, node drain, preemption) gets this long by default: one
# step and one checkpoint upload; the kubelet's own default, 30 s, is often too short for that.
DEFAULT_GRACE_SECONDS = 120


class StallDetection(ApiModel):
    """How long the trainer may go without progress before it is called stalled: each
    process then writes the Python stacks of all its threads to its log and exits, and the
    job restarts from its newest checkpoint (reason Stalled, counted against maxRestarts).
    The defaults are far above what a healthy run takes."""

    enabled: bool = True
    """Off: a hung run holds its GPUs until activeDeadlineSeconds, if set."""
    step_time_factor: Annotated[float, Field(ge=2.0, le=1000.0)] = 20.0
    """After the first step, no optimizer step may take longer than this many times the
    median step of this attempt..."""
    minimum_seconds: Annotated[int, Field(ge=10, le=MAX_SECONDS)] = 900
    """... nor less than this (a slow step among fast ones is not a stall)."""
    startup_seconds: Annotated[int, Field(ge=10, le=MAX_SECONDS)] = 7200
    """From the start of the process to the start of training: downloading and loading the
    model, quantizing it, reading and tokenizing the data (an evaluation before training
    has its own budget, evaluationSeconds, and is not counted here)."""
    first_step_seconds: Annotated[int, Field(ge=10, le=MAX_SECONDS)] = 3600
    """From the start of training to the end of the first optimizer step: the first
    batches, torch.compile's and DeepSpeed's kernel builds, the first collectives."""
    evaluation_seconds: Annotated[int, Field(ge=10, le=MAX_SECONDS)] = 7200
    """Each evaluation during training, and the final one with its task scores."""
    checkpoint_seconds: Annotated[int, Field(ge=10, le=MAX_SECONDS)] = 3600
    """Each checkpoint's save and upload, and the final save and publish."""

    def longest_seconds(self) -> int:
        """The longest any phase may last: how long a rank may wait in a collective for
        another rank that is still within its deadline (distributed.ncclTimeoutSeconds'
        default follows it, so the watchdog, which names the stuck call, fires first)."""
        return max(
            self.minimum_seconds,
            self.startup_seconds,
            self.first_step_seconds,
            self.evaluation_seconds,
            self.checkpoint_seconds,
        )


class StragglerDetection(ApiModel):
    """A rank that computes slower than the others (a throttled or faulty GPU, a noisy
    neighbour) slows every rank, since each step waits for the slowest. Each rank reports
    the median time of its recent forward passes; a rank slower than the median of the
    others by `factor`, for `windowSeconds` on end, gets a Warning Event (reason Straggler)
    naming its pod and node, and is listed in status.stragglers. Nothing is restarted: move
    the job off that node (cordon it, or delete the pod to reschedule) if it lasts."""

    enabled: bool = True
    """Off: no straggler warnings (the per-rank metrics stay)."""
    factor: Annotated[float, Field(ge=1.1, le=100.0)] = 1.5
    """How many times slower than the median of the other ranks a rank must be."""
    window_seconds: Annotated[int, Field(ge=10, le=MAX_SECONDS)] = 600
    """For how long on end before the warning (a slow step or two is no straggler)."""


class RunPolicy(ApiModel):
    """Failure handling and cleanup. maxRestarts, ttlSecondsAfterFinished and
    terminationGracePeriodSeconds may change on a live job (the last from the next attempt)."""

    max_restarts: Annotated[int, Field(ge=0, le=1000)] = 3
    """Whole-job restarts after a pod failure, preemption or node loss. Each restart resumes
    from the newest complete checkpoint."""
    active_deadline_seconds: Annotated[int, Field(ge=1, le=MAX_SECONDS)] | None = None
    """Fail the job when it has been active this long, restarts included: counted from when
    it first ran, or until then from when its attempt's pods were created, so time stuck
    Pending (no node fits, an image that does not pull) counts; time queued (Kueue) or
    suspended before it first ran does not."""
    ttl_seconds_after_finished: Annotated[int, Field(ge=0, le=MAX_SECONDS)] | None = None
    """Delete the FineTuneJob this long after it finished (output data stays)."""
    stall_detection: StallDetection = StallDetection()
    """A run that stops making progress (a deadlocked data loader, a collective one rank never
    joins, a storage read that never returns) is stopped with its stacks and restarted."""
    straggler_detection: StragglerDetection = StragglerDetection()
    """A rank slower than the others is named in a Warning Event (never restarted)."""
    termination_grace_period_seconds: Annotated[int, Field(ge=1, le=3600)] = DEFAULT_GRACE_SECONDS
    """Seconds a pod that is asked to stop (preemption, node drain, spot reclaim, deletion)
    has before it is killed: on SIGTERM the trainer finishes its step, saves and uploads a
    checkpoint and exits, so the restart loses at most that step. Leave room for one step
    and one checkpoint upload."""
