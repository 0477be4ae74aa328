"""runPolicy.stallDetection on real tiny-model runs: a step that never ends is caught within
its deadline, the process writes every thread's stack (naming where it hangs) and exits with
the Stalled verdict, and the next attempt resumes from the last checkpoint and finishes; a
slow first step and slow evaluations, each inside its own budget, are not stalls.

The hang is the FINETUNE_FAULT_SLEEP test fault (fttrainer/faults.py): a sleep inside the
step's forward, in the first attempt only."""

from __future__ import annotations

import re
import time
from pathlib import Path

from ftapi.contract import STALLED
from fttrainer.faults import ENV_ATTEMPT, ENV_FAULT_SLEEP
from tests.trainer.recipes import committed_steps, run_quickstart

FAST = (
    "runPolicy.stallDetection={minimumSeconds: 10, stepTimeFactor: 3, startupSeconds: 300, "
    "evaluationSeconds: 60, checkpointSeconds: 60}"
)


def test_a_hung_step_is_stopped_with_its_stack_and_the_restart_resumes(
    tiny_llama: Path, qa_data: Path, tmp_path: Path
) -> None:
    out = tmp_path / "run"
    began = time.monotonic()
    hung, said = run_quickstart(tiny_llama, qa_data, out, FAST, "output.saveSteps=2",
                                env={ENV_FAULT_SLEEP: "3:3600"})  # fmt: skip
    took = time.monotonic() - began
    assert hung.returncode == STALLED.exit_code, hung.stderr[-3000:]
    assert took < 300, "the hang was not cut short"
    detected = re.search(r"optimizer step 3 has not ended after (\d+) s \(deadline 10 s", said)
    assert detected and 10 <= int(detected.group(1)) <= 15, said
    # Where it hangs: the stuck thread's innermost frames in the verdict, every thread's
    # full stack in the log.
    assert said.startswith(STALLED.marker) and "_sleep_for_tests" in said
    assert "the stacks of every thread of this process follow" in hung.stderr
    assert re.search(r'File ".*faults\.py", line \d+ in _sleep_for_tests', hung.stderr)
    assert committed_steps(out) == [2]

    # The operator's next attempt (FINETUNE_ATTEMPT=1: the fault is off) resumes and ends.
    again, _ = run_quickstart(tiny_llama, qa_data, out, FAST, "output.saveSteps=2",
                              env={ENV_FAULT_SLEEP: "3:3600", ENV_ATTEMPT: "1"})  # fmt: skip
    assert again.returncode == 0, again.stderr[-3000:]
    assert "resuming from" in again.stderr and "(step 2)" in again.stderr
    assert committed_steps(out)[-1] == 5


def test_a_slow_first_step_and_slow_evaluations_are_not_stalls(
    tiny_llama: Path, qa_data: Path, tmp_path: Path
) -> None:
    """Each sleeps 12 s, past minimumSeconds (10) but inside its own phase's budget: the
    first step in startupSeconds, each evaluation (the base one, at steps 2 and 4) in
    evaluationSeconds."""
    out = tmp_path / "run"
    result, said = run_quickstart(
        tiny_llama, qa_data, out, FAST, "training.maxSteps=4", "evaluation.strategy=steps",
        "evaluation.steps=2", env={ENV_FAULT_SLEEP: "1:12,eval:12"},
    )  # fmt: skip
    assert result.returncode == 0, result.stderr[-3000:]
    assert result.stderr.count("test fault: sleeping 12 s at eval") >= 3
    assert "stalled" not in result.stderr and said == ""
