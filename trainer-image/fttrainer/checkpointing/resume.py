"""Checkpoints in the training loop: resume from the newest complete one when a run starts
again (after a kill, a preemption, a node loss), and the collective steps with which
callbacks.CheckpointUpload uploads each one the Trainer writes.

What a resume restores is what transformers' Trainer saves in checkpoint-<step>/: the
weights (the adapter for PEFT methods), optimizer and scheduler state, the RNG states of
every process, and trainer_state.json (global step, epoch, log history, and so where in
the epoch the data loader stands: the Trainer skips the batches already seen, in the same
seeded order).

Across nodes: each node's first process uploads the files its node wrote (ZeRO shards,
RNG states), the ranks exchange what they uploaded, and rank 0 writes the manifest last.
Every node's first process downloads the whole checkpoint before training resumes.
"""

from __future__ import annotations

import logging
from pathlib import Path
from typing import Any

from fttrainer.storage import ObjectInfo

from .protocol import checkpoint_name
from .store import CheckpointStore

log = logging.getLogger("fttrainer")


def distributed() -> bool:
    import torch.distributed as dist

    return dist.is_available() and dist.is_initialized() and dist.get_world_size() > 1


def barrier() -> None:
    if distributed():
        import torch.distributed as dist

        dist.barrier()


def from_rank_zero(value: Any) -> Any:
    """Rank 0's value (any picklable object) on every rank: all ranks take one decision."""
    if not distributed():
        return value
    import torch.distributed as dist

    box = [value]
    dist.broadcast_object_list(box, src=0)
    return box[0]


def gathered(infos: list[ObjectInfo]) -> list[ObjectInfo]:
    if not distributed():
        return infos
    import torch.distributed as dist

    everyone: list[Any] = [None] * dist.get_world_size()
    dist.all_gather_object(everyone, infos)
    merged: dict[str, ObjectInfo] = {}
    for part in reversed(everyone):  # rank 0's copy of a shared name wins
        for info in part or []:
            merged[info.key] = info
    return sorted(merged.values())


def restore(
    checkpoints: CheckpointStore, local_dir: Path, *, main: bool, local_main: bool
) -> Path | None:
    """Where the Trainer resumes from (a local checkpoint folder), or None to start afresh.

    A run that finished before (DONE) is a new run of the same job: its checkpoints are
    removed first so they are never mistaken for this run's."""
    newest = None
    if main:
        if checkpoints.done():
            log.info("the previous run of this job finished: starting a new run")
            checkpoints.clear()
        else:
            newest = checkpoints.newest()
    # Rank 0's manifest itself: the other nodes download exactly it, without listing again.
    newest = from_rank_zero(newest)
    if newest is None:
        return None
    folder = local_dir / checkpoint_name(newest.step)
    if local_main:
        checkpoints.download(newest, local_dir)
        log.info("resuming from %s/%s (step %d)", checkpoints.uri, folder.name, newest.step)
    barrier()
    return folder


def stop_at_max_steps(trainer: Any) -> None:
    """Make a resume from the final checkpoint train nothing.

    transformers 5.23's loop runs at least one step of the resumed epoch before it checks
    max_steps, so a run killed after its last checkpoint but before it published would train
    (and checkpoint) step max_steps+1 on restart, and again on every further restart. The
    guard sits on the epoch loop itself so that it holds for every strategy (DeepSpeed and
    FSDP load their checkpoints inside train(), before the loop)."""
    run_epoch = trainer._run_epoch

    def guarded(*args: Any, **kwargs: Any) -> Any:
        if trainer.state.max_steps > 0 and trainer.state.global_step >= trainer.state.max_steps:
            trainer.control.should_training_stop = True
            return None
        return run_epoch(*args, **kwargs)

    trainer._run_epoch = guarded


def metrics_at(history: list[dict[str, Any]], step: int) -> dict[str, float]:
    """The latest training loss, and the evaluation loss when it was measured at this very
    step (the Trainer evaluates before it saves): only those make a checkpoint "best"."""
    metrics = {}
    trained = next((h for h in reversed(history) if "loss" in h), None)
    if trained is not None:
        metrics["loss"] = float(trained["loss"])
    evaluated = next((h for h in reversed(history) if "eval_loss" in h), None)
    if evaluated is not None and evaluated.get("step") == step:
        metrics["eval_loss"] = float(evaluated["eval_loss"])
    return metrics
