"""The pure parts of training.onNonFinite (fttrainer/supervision/divergence.py): which action a
non-finite step gets, how finiteness of gradients, weights and optimizer state is read, and
the rollback record a restarted attempt counts. The real runs are in
tests/trainer/test_divergence.py."""

from __future__ import annotations

import math
from pathlib import Path
from types import SimpleNamespace

import pytest
import torch

from fttrainer.checkpointing.store import CheckpointStore
from fttrainer.storage import LocalStore
from fttrainer.supervision.divergence import (
    LossWatch,
    decide,
    describe,
    gradients_finite,
    optimizer_tensors,
    tensors_finite,
)
from fttrainer.supervision.faults import ENV_FAULT_NAN_AT_STEP, ENV_FAULT_SLEEP, Faults

DECISIONS = {
    "stop stops": ("stop", 0, 0, 3, "stop"),
    "skip while under the limit in a row": ("skip", 2, 0, 3, "skip"),
    "skip stops at the limit in a row": ("skip", 3, 0, 3, "stop"),
    "rollback while under the limit": ("rollback", 0, 2, 3, "rollback"),
    "rollback stops once the limit was used": ("rollback", 0, 3, 3, "stop"),
    "a skip count does not limit rollbacks": ("rollback", 9, 0, 1, "rollback"),
}


@pytest.mark.parametrize(
    ("action", "in_a_row", "rollbacks", "limit", "expected"), DECISIONS.values(),
    ids=DECISIONS.keys(),
)  # fmt: skip
def test_decide(action: str, in_a_row: int, rollbacks: int, limit: int, expected: str) -> None:
    assert decide(action, skipped_in_a_row=in_a_row, rollbacks=rollbacks, limit=limit) == expected


@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16, torch.float16])
@pytest.mark.parametrize("bad", [math.nan, math.inf, -math.inf])
def test_one_non_finite_element_anywhere_is_found(dtype: torch.dtype, bad: float) -> None:
    params = [torch.nn.Parameter(torch.ones(4, 4, dtype=dtype)) for _ in range(3)]
    for p in params:
        p.grad = torch.zeros_like(p)
    frozen = torch.nn.Parameter(torch.ones(2), requires_grad=False)  # no grad: not read
    assert gradients_finite([*params, frozen]) and tensors_finite(params)
    params[2].grad[3, 1] = bad  # type: ignore[index]
    assert not gradients_finite(params)
    with torch.no_grad():
        params[1][0, 0] = bad
    assert not tensors_finite(params)
    # Integer tensors (quantized weights, step counters) are not floating point: skipped.
    assert tensors_finite([torch.tensor([1, 2], dtype=torch.uint8), torch.tensor(3)])


def test_the_optimizer_state_is_read_through_accelerates_wrapper() -> None:
    weight = torch.nn.Parameter(torch.ones(3))
    adam = torch.optim.AdamW([weight], lr=0.1)
    weight.grad = torch.ones(3)
    adam.step()
    wrapped = SimpleNamespace(optimizer=adam)  # accelerate's AcceleratedOptimizer
    assert tensors_finite(optimizer_tensors(wrapped))
    adam.state[weight]["exp_avg_sq"][1] = math.inf
    assert not tensors_finite(optimizer_tensors(wrapped))


def test_the_test_faults_are_off_by_default_and_sleeps_only_in_a_first_attempt() -> None:
    assert Faults.from_env({}) == Faults()
    faults = Faults.from_env({ENV_FAULT_NAN_AT_STEP: "3, 4", ENV_FAULT_SLEEP: "2:5,eval:1.5"})
    assert (faults.nan_steps, faults.sleeps) == ({3, 4}, {"2": 5.0, "eval": 1.5})
    restarted = Faults.from_env({ENV_FAULT_SLEEP: "2:5", "FINETUNE_ATTEMPT": "1"})
    assert restarted.sleeps == {}


def test_describe_spells_values_as_the_status_does() -> None:
    values = {"train_loss": math.nan, "grad_norm": math.inf, "learning_rate": 1e-4}
    assert describe(values) == "train_loss NaN, grad_norm Infinity"


def test_rollbacks_are_recorded_per_run_and_cleared_with_it(tmp_path: Path) -> None:
    checkpoints = CheckpointStore(LocalStore(tmp_path), "job-uid")
    assert checkpoints.rollbacks() == []
    checkpoints.record_rollback({"at_step": 7, "resume_from": 6})
    checkpoints.record_rollback({"at_step": 9, "resume_from": 8})
    assert [r["at_step"] for r in checkpoints.rollbacks()] == [7, 9]
    checkpoints.mark_done(10)
    checkpoints.clear()  # a new run of the same job starts with none
    assert checkpoints.rollbacks() == []


def test_a_log_leaves_the_skipped_steps_loss_out_and_counts_them() -> None:
    """The Trainer's logged loss is its running sum over the steps since the last log; a
    skipped step added its last finite loss (2.0 here) to it, which is taken out again."""
    watch = LossWatch(logged_step=10)
    watch.skipped(2.0)
    # Steps 11-14: losses 1, (skipped), 1, 1 -> the Trainer logs (1 + 2 + 1 + 1) / 4.
    logs = watch.corrected({"loss": 5.0 / 4, "grad_norm": 0.5}, 14)
    assert logs == {"loss": pytest.approx(1.0), "grad_norm": 0.5, "skipped_steps": 1}
    assert watch.corrected({"loss": 0.9}, 15) == {"loss": 0.9}  # the next window is its own
    # A window of skipped steps alone has no loss.
    watch.skipped(2.0)
    assert watch.corrected({"loss": 2.0, "learning_rate": 1e-4}, 16) == {
        "learning_rate": 1e-4, "skipped_steps": 1}  # fmt: skip
    assert watch.corrected({"train_runtime": 3.0}, 16) == {"train_runtime": 3.0}
    # The attempt's mean: six steps, two skipped, each of which added 2.0.
    assert watch.mean_loss((5.0 + 0.9 + 2.0 + 1.1) / 6, 6) == pytest.approx((3.0 + 0.9 + 1.1) / 4)
    assert LossWatch().mean_loss(1.5, 3) == 1.5
