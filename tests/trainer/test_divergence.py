"""training.onNonFinite on real tiny-model runs: a NaN loss injected at one step (the
FINETUNE_FAULT_NAN_AT_STEP test hook makes that step's loss NaN before backward, so its
gradients are NaN as a real divergence's are) is caught at that step and acted on: stop
fails the run (Diverged) with no checkpoint from that step on; skip trains on and counts
it; rollback exits for a restart, and the restart resumes from the checkpoint before it
with the lowered learning rate and finishes."""

from __future__ import annotations

import json
import math
import re
import subprocess
from pathlib import Path

import pytest

from ftapi.contract import DIVERGED, ROLLED_BACK, WORSE_THAN_BASE
from fttrainer.checkpointing.protocol import CHECKPOINTS
from fttrainer.checkpointing.store import ROLLBACKS
from fttrainer.supervision.faults import ENV_FAULT_NAN_AT_STEP, ENV_FAULT_NAN_WEIGHTS_AT_STEP
from tests.trainer.recipes import committed_steps, cpu_qa_recipe, run_quickstart


def _run(model: Path, data: Path, out: Path, nan_at: str, *settings: str) -> tuple[
    subprocess.CompletedProcess[str], str
]:  # fmt: skip
    """A 6-step run saving every 2 steps, with a NaN loss at the steps `nan_at` names."""
    return run_quickstart(model, data, out, "training.maxSteps=6", "logging.steps=1",
                          "output.saveSteps=2", *settings,
                          env={ENV_FAULT_NAN_AT_STEP: nan_at})  # fmt: skip


def test_stop_fails_the_run_at_the_nan_step_with_no_checkpoint_after_it(
    tiny_llama: Path, qa_data: Path, tmp_path: Path
) -> None:
    out = tmp_path / "run"
    result, said = _run(tiny_llama, qa_data, out, "4")
    assert result.returncode == DIVERGED.exit_code, result.stderr[-3000:]
    # Named as it was, with the last finite loss: never a mean, never 0.
    assert "diverged: step 4: train_loss NaN" in result.stderr
    assert "last finite loss" in result.stderr and "at step 3" in result.stderr
    assert said.startswith(DIVERGED.marker) and "step 4: train_loss NaN" in said
    assert committed_steps(out) == [2]  # step 4's checkpoint was never written
    assert not (out / "final").exists() and "done:" not in result.stdout


def test_weights_that_turn_nan_under_a_finite_loss_are_never_checkpointed(
    tiny_llama: Path, qa_data: Path, tmp_path: Path
) -> None:
    """Step 4's update leaves a weight NaN while its loss was finite (the loss check cannot
    see it yet): the checkpoint guard finds it when step 4's checkpoint is saved, deletes
    that checkpoint before it is uploaded, and stops the run as Diverged."""
    out = tmp_path / "run"
    result, said = run_quickstart(tiny_llama, qa_data, out, "training.maxSteps=6",
                                  "logging.steps=1", "output.saveSteps=2",
                                  env={ENV_FAULT_NAN_WEIGHTS_AT_STEP: "4"})  # fmt: skip
    assert result.returncode == DIVERGED.exit_code, result.stderr[-3000:]
    assert "test fault: a trainable weight is NaN after step 4" in result.stderr
    message = "step 4: the weights or optimizer state are not finite; checkpoint checkpoint-4 "
    assert said.startswith(DIVERGED.marker) and message + "was not saved" in said, said
    assert committed_steps(out) == [2]
    assert not (out / "checkpoint-4").exists() and not (out / "final").exists()


def test_skip_trains_on_and_counts_the_skipped_step(
    tiny_llama: Path, qa_data: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv(ENV_FAULT_NAN_AT_STEP, "3")
    recipe = cpu_qa_recipe(tiny_llama, qa_data, tmp_path, maxSteps=6, onNonFinite="skip")
    before = {n: p.detach().clone() for n, p in recipe.model.named_parameters() if p.requires_grad}
    result = recipe.train()
    guard = recipe.non_finite_guard
    assert (guard.skipped, recipe.trainer.state.global_step) == (1, 6)
    logged = {m["step"]: m for m in result.step_metrics if "loss" in m or "skipped_steps" in m}
    # The skipped step is logged as what it was: no loss, counted; the others' losses are
    # their own, finite (never the step before's).
    assert sorted(logged) == [1, 2, 3, 4, 5, 6]
    assert "loss" not in logged[3] and logged[3]["skipped_steps"] == 1
    assert all(math.isfinite(logged[s]["loss"]) and "skipped_steps" not in logged[s]
               for s in (1, 2, 4, 5, 6))  # fmt: skip
    trained = [logged[s]["loss"] for s in (1, 2, 4, 5, 6)]
    # The run's mean loss is the trained steps' (logged every step here).
    assert result.final_metrics["train_loss"] == pytest.approx(sum(trained) / 5, rel=1e-6)
    after = dict(recipe.model.named_parameters())
    assert all(bool(after[n].isfinite().all()) for n in before)
    assert any(not bool((after[n] == before[n]).all()) for n in before)  # it trained


def test_skip_gives_up_after_the_limit_in_a_row(
    tiny_llama: Path, qa_data: Path, tmp_path: Path
) -> None:
    """Steps 3 and 4 are NaN: one skip is allowed (nonFiniteLimit 1), the second in a row
    fails the run."""
    out = tmp_path / "run"
    result, said = _run(tiny_llama, qa_data, out, "3,4", "training.onNonFinite=skip",
                        "training.nonFiniteLimit=1")  # fmt: skip
    assert result.returncode == DIVERGED.exit_code, result.stderr[-3000:]
    assert "step 3: train_loss NaN, grad_norm NaN: its batch is skipped (1 in a row" in (
        result.stderr
    )
    assert "step 4: train_loss NaN" in said and "1 steps skipped in a row before it" in said


def test_rollback_restarts_from_the_checkpoint_before_the_nan_with_a_lower_rate(
    tiny_llama: Path, qa_data: Path, tmp_path: Path
) -> None:
    out = tmp_path / "run"
    settings = ("training.onNonFinite=rollback", "training.rollbackLearningRateFactor=0.5")
    first, said = _run(tiny_llama, qa_data, out, "5", *settings)
    assert first.returncode == ROLLED_BACK.exit_code, first.stderr[-3000:]
    assert said.startswith(ROLLED_BACK.marker)
    assert "step 5: train_loss NaN" in said and "rolling back to checkpoint step 4" in said
    assert committed_steps(out) == [2, 4]
    (record,) = json.loads(next(out.glob(f"{CHECKPOINTS}/*/{ROLLBACKS}")).read_text())
    assert (record["at_step"], record["resume_from"]) == (5, 4)

    # The restart (same command, as the operator's next attempt runs it): the hook has
    # fired for this job already, the rate is halved, the run finishes.
    second, _ = _run(tiny_llama, qa_data, out, "5", *settings)
    assert second.returncode == 0, second.stderr[-3000:]
    assert "rollback 1: learning rate x0.5" in second.stderr
    steps = json.loads((out / "step_metrics.json").read_text())
    assert [m["step"] for m in steps if "loss" in m][-2:] == [5, 6]
    assert all(math.isfinite(m["loss"]) for m in steps if "loss" in m)
    rates = {m["step"]: m["learning_rate"] for m in steps if "learning_rate" in m}
    assert rates[5] < 0.6 * rates[4]  # halved (and the linear schedule went on)


def test_a_learning_rate_two_orders_too_high_ends_worse_than_base_and_fails_if_asked(
    tiny_llama: Path, qa_data: Path, tmp_path: Path
) -> None:
    """As a new user typed it: a full fine-tune at learning rate 1.0. The validation loss
    after training is above the base model's: a warning naming both, and with
    evaluation.failIfWorseThanBase the WorseThanBase verdict, the model published."""
    out = tmp_path / "run"
    result, said = run_quickstart(
        tiny_llama, qa_data, out, "method={type: full}", "training.learningRate=1.0",
        "training.maxSteps=8", "evaluation.strategy=epoch",
        "evaluation.failIfWorseThanBase=true",
    )  # fmt: skip
    assert result.returncode == WORSE_THAN_BASE.exit_code, result.stderr[-3000:]
    figures = re.search(r"after training \(([\d.]+)\) is worse than before it \(([\d.]+)\)", said)
    assert figures and float(figures.group(1)) > float(figures.group(2)), said
    assert said.startswith(WORSE_THAN_BASE.marker) and f"the model is in {out}/final" in said
    assert "warning: the validation loss after training" in result.stderr
    assert (out / "final" / "model.safetensors").is_file()  # published for inspection
    # The jump is named when it happens (training.lossSpikeFactor 3: a Warning Event in a
    # cluster), long before the final evaluation.
    spike = re.search(r"loss spike: step (\d+): training loss ([\d.]+) is ([\d.]+)x its moving "
                      r"average ([\d.]+)", result.stderr)  # fmt: skip
    assert spike, result.stderr[-3000:]
    print(f"loss spike at step {spike.group(1)}: {spike.group(2)} against {spike.group(4)}")
