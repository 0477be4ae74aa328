"""runPolicy.stallDetection on real tiny-model runs: a step that never ends is caught within
its deadline, the process writes every thread's stack (naming where it hangs) and exits with
the Stalled verdict, and the next attempt resumes from the last checkpoint and finishes; a
slow first step and slow evaluations, each inside its own budget, are not stalls.

The hang is the FINETUNE_FAULT_SLEEP test fault (fttrainer/supervision/faults.py): a sleep inside
the step's forward, in the first attempt only."""

from __future__ import annotations

import re
import time
from pathlib import Path

from ftapi.contract import ENV_TORCHRUN_SHUTDOWN_TIMEOUT, STALLED
from fttrainer.supervision.faults import (
    ENV_ATTEMPT,
    ENV_FAULT_FREEZE_AT_STEP,
    ENV_FAULT_RANK,
    ENV_FAULT_SLEEP,
)
from tests.trainer.recipes import committed_steps, run_quickstart

FAST = (
    "runPolicy.stallDetection={minimumSeconds: 10, stepTimeFactor: 3, startupSeconds: 300, "
    "firstStepSeconds: 120, evaluationSeconds: 60, checkpointSeconds: 60}"
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


def test_a_process_that_hangs_in_its_imports_is_stopped_and_says_so(
    tiny_llama: Path, qa_data: Path, tmp_path: Path
) -> None:
    """The watchdog starts before torch is imported: a hang there (here the test fault's
    sleep) ends at startupSeconds with the verdict naming what the process was doing."""
    began = time.monotonic()
    hung, said = run_quickstart(
        tiny_llama,
        qa_data,
        tmp_path / "run",
        "runPolicy.stallDetection.startupSeconds=10",
        env={ENV_FAULT_SLEEP: "imports:3600"},
    )
    took = time.monotonic() - began
    assert hung.returncode == STALLED.exit_code, hung.stderr[-3000:]
    assert took < 60, "the hang was not cut short"
    assert said.startswith(STALLED.marker), said
    doing = r"training has not started \(it was importing torch and the training libraries\)"
    detected = re.search(doing + r" after (\d+) s \(deadline 10 s", said)
    assert detected and 10 <= int(detected.group(1)) <= 15, said
    assert "_sleep_for_tests" in said


def test_a_slow_first_step_and_slow_evaluations_are_not_stalls(
    tiny_llama: Path, qa_data: Path, tmp_path: Path
) -> None:
    """A 60 s first step (as a compile or a first collective may take) and 12 s evaluations
    (the base one, at steps 2 and 4), all past minimumSeconds (10) but each inside its own
    phase's budget: firstStepSeconds, evaluationSeconds."""
    out = tmp_path / "run"
    result, said = run_quickstart(
        tiny_llama, qa_data, out, FAST, "training.maxSteps=4", "evaluation.strategy=steps",
        "evaluation.steps=2", env={ENV_FAULT_SLEEP: "1:60,eval:12"},
    )  # fmt: skip
    assert result.returncode == 0, result.stderr[-3000:]
    assert "test fault: sleeping 60 s at 1" in result.stderr
    assert result.stderr.count("test fault: sleeping 12 s at eval") >= 3
    assert "stalled" not in result.stderr and said == ""


def test_a_rank_blocked_before_a_collective_stops_the_gang_with_the_waiting_stack(
    tiny_llama: Path, qa_data: Path, tmp_path: Path
) -> None:
    """Two ranks under torchrun: rank 1 freezes at the start of step 3 (SIGSTOP: its own
    watchdog cannot run, as in a hung driver call), so rank 0 waits in that step's first
    collective (the all-gather of the batch's token count the loss is normalised by; DDP's
    buffer broadcast before the forward is off, arguments.py). Rank 0's watchdog fires, its
    stack and the flight recorder name the collective, and the gang stops (torchrun kills
    the frozen rank). The next attempt resumes from the last checkpoint and finishes."""
    out = tmp_path / "run"
    # torchrun kills the frozen rank (SIGTERM waits while it is stopped) after 5 s, not 30.
    faults = {ENV_FAULT_FREEZE_AT_STEP: "3", ENV_FAULT_RANK: "1",
              ENV_TORCHRUN_SHUTDOWN_TIMEOUT: "5"}  # fmt: skip
    began = time.monotonic()
    hung, said = run_quickstart(tiny_llama, qa_data, out, FAST, "output.saveSteps=2",
                                env=faults, processes=2)  # fmt: skip
    took = time.monotonic() - began
    assert hung.returncode != 0 and took < 300, hung.stderr[-3000:]
    log = hung.stderr
    stalled = re.search(r"finetune: stalled \(rank 0\): optimizer step 3 has not ended after "
                        r"(\d+) s \(deadline 10 s", log)  # fmt: skip
    assert stalled and 10 <= int(stalled.group(1)) <= 15, log[-4000:]
    assert "stalled (rank 1)" not in log
    waiting = log[stalled.start() :]
    collective = r'File ".*torch/(nn/parallel/distributed|distributed/)\S*", line \d+ in \w+'
    assert re.search(collective, waiting), waiting[-4000:]
    # The flight recorder's last collectives in the log, and in the verdict the innermost
    # frames and the collective rank 0 waits in, which rank 1 never joined.
    assert "the last collectives of this rank (PyTorch's flight recorder)" in waiting
    assert said.startswith(STALLED.marker) and "rank 0: " in said and "distributed" in said, said
    assert re.search(r"in flight: gloo:\w+ #\d+ of \S+, .*not completed", said), said
    assert committed_steps(out) == [2]

    again, _ = run_quickstart(tiny_llama, qa_data, out, FAST, "output.saveSteps=2",
                              env={**faults, ENV_ATTEMPT: "1"}, processes=2)  # fmt: skip
    assert again.returncode == 0, again.stderr[-3000:]
    assert "(step 2)" in again.stderr
    assert committed_steps(out)[-1] == 5
    print(
        f"blocked rank: rank 0 stopped after {stalled.group(1)} s (deadline 10 s); "
        f"the run took {took:.0f} s; resumed from step 2 (step 3 lost)"
    )


def test_the_collective_timeout_follows_the_phase_deadline(tmp_path: Path) -> None:
    """On a real (gloo) process group: the default group's collective timeout is the
    current phase's deadline plus a minute, so a collective stuck in a step ends within the
    step's deadline even where the watchdog cannot run, not after the longest phase's."""
    import datetime

    import torch
    import torch.distributed as dist

    from ftapi.v1alpha1.scheduling import StallDetection
    from fttrainer.supervision.watchdog import CollectiveTimeout, Watchdog

    spec = StallDetection(
        minimumSeconds=30, startupSeconds=3000, firstStepSeconds=600, checkpointSeconds=400
    )
    store = f"file://{tmp_path / 'store'}"
    longest = datetime.timedelta(seconds=3060)
    dist.init_process_group("gloo", init_method=store, rank=0, world_size=1, timeout=longest)
    try:
        backend = dist.group.WORLD._get_backend(torch.device("cpu"))

        def timeout() -> float:
            return float(backend.options._timeout.total_seconds())

        dog = Watchdog(spec)
        dog.on_deadline = CollectiveTimeout().follow
        dog.began_training()
        assert timeout() == 600 + 60
        dog.stepped(1)
        assert timeout() == 30 + 60  # minimumSeconds: no median step yet
        dog.enter("saving")
        assert timeout() == 400 + 60
        dog.resume()
        assert timeout() == 30 + 60
    finally:
        dist.destroy_process_group()
