"""The stall watchdog's deadlines (runPolicy.stallDetection) and when it fires, on a fake
clock; the real hang is in tests/trainer/test_stalls.py."""

from __future__ import annotations

import os
import subprocess
import sys
import threading
import time
from pathlib import Path

from ftapi.contract import ENV_TERMINATION_LOG, STALLED
from ftapi.progress import RankReport
from ftapi.v1alpha1.scheduling import StallDetection
from fttestkit.paths import REPO
from fttrainer.supervision.divergence import LossWatch
from fttrainer.supervision.ranks import ComputeTimer
from fttrainer.supervision.watchdog import (
    Deadlines,
    Watchdog,
    describe_collective,
    innermost_frames,
    recorded_collectives,
)
from fttrainer.trainer_class import TrainerHooks, trainer_class
from tests.unit.trainer.fakes import ManualClock

SPEC = StallDetection(minimum_seconds=60, step_time_factor=10, startup_seconds=600,
                      first_step_seconds=400, evaluation_seconds=300,
                      checkpoint_seconds=120)  # fmt: skip


def test_each_phase_has_its_own_deadline_and_steps_follow_their_median() -> None:
    deadlines = Deadlines(SPEC)
    assert [deadlines.of(p) for p in ("starting", "first-step", "evaluating", "saving")] == [
        600, 400, 300, 120,
    ]  # fmt: skip
    assert deadlines.of("step") == 60  # no step yet: the floor
    deadlines.step_seconds += [2.0, 30.0, 3.0]
    assert deadlines.of("step") == 60  # 10 x the median 3 s is under the floor
    deadlines.step_seconds += [20.0, 20.0]
    assert deadlines.of("step") == 200  # 10 x the median 20 s
    assert "median step 20 s" in deadlines.explain("step")


def test_the_deadline_counts_from_the_phase_and_only_whole_steps_set_the_pace() -> None:
    clock = ManualClock()
    dog = Watchdog(SPEC, clock=clock)
    dog.note("importing torch and the training libraries")
    clock.t = 300
    dog.note("downloading the model")  # what it does now; the clock goes on
    clock.t = 590
    assert dog.overdue() is None  # the starting phase: 600 s from the process's start
    clock.t = 601
    assert "training has not started (it was downloading the model) after 601 s" in (
        dog.overdue() or ""
    )
    dog.began_training()  # the first step has its own budget from here
    clock.t += 399
    assert dog.overdue() is None
    clock.t += 2
    assert "the first optimizer step has not ended after 401 s (deadline 400 s" in (
        dog.overdue() or ""
    )
    dog.stepped(1)  # the first step's time is its own, not a step's pace
    assert dog.deadlines.step_seconds == []
    clock.t += 5
    dog.stepped(2)
    assert dog.deadlines.step_seconds == [5]
    dog.enter("evaluating")
    clock.t += 299
    assert dog.overdue() is None  # an evaluation far longer than a step is no stall
    dog.enter("step")
    clock.t += 61
    reason = dog.overdue() or ""
    assert "optimizer step 3 has not ended after 61 s (deadline 60 s" in reason


def test_an_evaluation_or_save_before_the_first_step_pauses_that_phases_clock() -> None:
    clock = ManualClock()
    dog = Watchdog(SPEC, clock=clock)
    clock.t = 500  # 500 s of loading
    dog.enter("evaluating")  # the base evaluation: 290 s, within its own 300
    clock.t += 290
    assert dog.overdue() is None
    dog.resume()
    assert dog.phase == "starting"
    clock.t += 99
    assert dog.overdue() is None  # 599 s of loading, the evaluation not counted
    clock.t += 2
    assert "after 601 s (deadline 600 s" in (dog.overdue() or "")
    dog.began_training()
    clock.t += 300
    dog.enter("saving")  # a checkpoint (a SIGTERM) before the first step ended
    clock.t += 110
    dog.resume()
    assert dog.phase == "first-step" and dog.overdue() is None
    clock.t += 101
    assert "the first optimizer step has not ended after 401 s" in (dog.overdue() or "")


def test_the_watchdog_thread_fires_once_naming_where_the_thread_waits() -> None:
    fired: list[str] = []
    blocked = threading.Event()

    def stuck_here() -> None:
        blocked.wait(30)

    worker = threading.Thread(target=stuck_here, daemon=True)
    worker.start()
    dog = Watchdog(StallDetection(first_step_seconds=10), poll=0.05, on_stall=fired.append)
    dog.began_training()
    dog.main_thread = worker  # the thread it names
    dog.since -= 11
    dog.start()
    deadline = time.monotonic() + 10
    while not fired and time.monotonic() < deadline:
        time.sleep(0.05)
    blocked.set()
    assert len(fired) == 1 and "the first optimizer step has not ended" in fired[0]
    assert "stuck_here" in fired[0]
    # Called on itself, the innermost frame is innermost_frames' own.
    assert innermost_frames(threading.current_thread()).startswith("stuck in watchdog.py")


def test_a_disabled_watchdog_starts_no_thread() -> None:
    dog = Watchdog(StallDetection(enabled=False)).start()
    assert dog._thread is None


def test_evaluations_and_saves_during_training_are_phases_of_their_own() -> None:
    import torch

    dog = Watchdog(SPEC, clock=ManualClock())

    class Trainer:
        model = torch.nn.Linear(1, 1)

        def evaluate(self) -> str:
            return dog.phase

        def _save_checkpoint(self, model: object, trial: object) -> str:
            return dog.phase

    hooks = TrainerHooks(watchdog=dog, loss_watch=LossWatch(), compute_timer=ComputeTimer())
    trainer = trainer_class(Trainer, hooks)()
    assert type(trainer).__name__ == "FineTuneTrainer"
    assert trainer.evaluate() == "evaluating"  # the base evaluation, before training
    assert dog.phase == "starting"  # loading goes on where it was
    dog.began_training()
    assert trainer._save_checkpoint(None, None) == "saving"
    assert dog.phase == "first-step"  # no step yet: the first step goes on
    dog.stepped(1)
    assert trainer.evaluate() == "evaluating" and dog.phase == "step"
    assert trainer._save_checkpoint(None, None) == "saving" and dog.phase == "step"
    # After training the recipe sets the phase (the final evaluation, its task scores).
    dog.training = False
    dog.enter("evaluating")
    assert trainer.evaluate() == "evaluating" and dog.phase == "evaluating"


def test_a_flight_recorder_entry_reads_as_one_line() -> None:
    entry = {"profiling_name": "nccl:all_reduce", "collective_seq_id": 41,
             "process_group": ["0", "default_pg"], "input_sizes": [[4096]],
             "state": "started", "retired": False}  # fmt: skip
    assert describe_collective(entry) == (
        "nccl:all_reduce #41 of default_pg, sizes [[4096]], started, not completed"
    )
    assert describe_collective({"retired": True}).endswith(", completed")
    assert recorded_collectives() == []  # not a distributed run


STALLING = r"""
import json, sys, threading, time
from datetime import UTC, datetime
from ftapi.v1alpha1.scheduling import StallDetection
from fttrainer.supervision.ranks import RankReporter
from fttrainer.supervision.watchdog import Watchdog

class FileSink:  # what RankSink would PATCH, written where the test reads it
    def send(self, report):
        with open(sys.argv[1], "a") as out:
            out.write(report.model_dump_json(by_alias=True, exclude_none=True) + "\n")

reporter = RankReporter(FileSink(), rank=1, attempt=0, pod="p-1", node="n-1", interval=3600)
dog = Watchdog(StallDetection(first_step_seconds=10), poll=0.05)
dog.report_stall = reporter.stalled
dog.began_training()
dog.since -= 11
dog.start()

def waiting_in_a_collective():
    time.sleep(30)

waiting_in_a_collective()
"""


def test_a_stall_sends_its_verdict_and_stack_in_the_ranks_last_report(tmp_path: Path) -> None:
    """The real stop path, in its own process (it ends with os._exit): the stacks go to the
    log, the verdict to the termination message, and the verdict with the training
    thread's stack, innermost frame first, in the rank's last report, before it exits."""
    reports, termination = tmp_path / "reports.jsonl", tmp_path / "termination-log"
    termination.touch()
    path = os.pathsep.join(str(REPO / p) for p in ("api", "trainer-image"))
    env = {**os.environ, ENV_TERMINATION_LOG: str(termination), "RANK": "1", "PYTHONPATH": path}
    done = subprocess.run([sys.executable, "-c", STALLING, str(reports)], env=env,
                          capture_output=True, text=True, timeout=60, check=False)  # fmt: skip
    assert done.returncode == STALLED.exit_code, done.stderr[-3000:]
    assert "finetune: stalled (rank 1): the first optimizer step has not ended" in done.stderr
    last = RankReport.model_validate_json(reports.read_text().splitlines()[-1])
    assert last.rank == 1 and last.stalled is not None and not last.done
    verdict, _, stack = last.stalled.partition("\nstack of the training thread, innermost first:")
    assert verdict.startswith("the first optimizer step has not ended after 1")
    frames = stack.strip().splitlines()
    assert frames[0].strip().endswith("waiting_in_a_collective"), frames  # time.sleep is C
    assert frames[1].strip().endswith("<module>"), frames
    assert termination.read_text().startswith(STALLED.marker)
