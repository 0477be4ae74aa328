"""Each rank's own report (fttrainer/supervision/ranks.py), loss spikes (divergence.SpikeWatch), the
collective timeout and the rank-scoped test faults. The real multi-rank runs are in
tests/trainer/test_distributed.py and tests/e2e/test_stalls.py."""

from __future__ import annotations

import time
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import pytest

from ftapi import parse_job
from ftapi.progress import STALL_REPORT_CHARS, RankReport
from fttestkit.builders import make_job
from fttrainer.arguments import TORCH_COLLECTIVE_TIMEOUT, collective_timeout
from fttrainer.supervision.divergence import SpikeWatch
from fttrainer.supervision.faults import Faults
from fttrainer.supervision.ranks import ComputeTimer, RankReporter, RankSink
from tests.unit.trainer.fakes import Collect, ManualClock

NOW = datetime(2026, 5, 1, 12, 0, tzinfo=UTC)


def test_a_rank_reports_its_step_and_the_medians_of_its_recent_steps() -> None:
    sink, clock = Collect(), ManualClock(100.0)
    reporter = RankReporter(sink, rank=3, attempt=2, pod="job-2-1", node="gpu-7", interval=60,
                            clock=clock, now=lambda: NOW)  # fmt: skip
    reporter.started()
    for step, (wall, compute) in enumerate([(None, 0.5), (2.0, 0.5), (2.2, 0.6), (9.0, 0.7)], 1):
        clock.t += 1
        reporter.stepped(step, step_seconds=wall, compute_seconds=compute)
    assert reporter._sender is not None and reporter._sender.flush(5)
    # The start (unless the first step replaced it before it left: one slot, newest wins)
    # and the first step at once; the other steps wait for the interval.
    steps = [r.step for r in sink.reports]
    assert steps[-1] == 1 and set(steps) <= {0, 1}, steps
    report = reporter.report()
    assert (report.rank, report.attempt, report.pod, report.node, report.step) == (
        3, 2, "job-2-1", "gpu-7", 4)  # fmt: skip
    assert report.step_seconds == 2.2 and report.compute_seconds == 0.55
    assert report.stepped_at == NOW and not report.done
    clock.t += 60
    reporter.stepped(5, step_seconds=2.0, compute_seconds=0.5)
    assert reporter._sender.flush(5) and sink.reports[-1].step == 5


def test_a_rank_keeps_reporting_while_it_waits_and_stops_once_done() -> None:
    """The heartbeat thread sends the current state, newly dated, while the training thread
    is stuck (in a collective, an evaluation) or between reports, so the step it names is
    the one reached (steps inside one interval are not sent themselves); after `finish`
    nothing more is sent (the operator does not take a finished rank's silence for a
    stall)."""
    sink = Collect()
    times = iter(NOW + timedelta(seconds=s) for s in range(10_000))
    reporter = RankReporter(sink, rank=1, interval=0.05, now=lambda: next(times))
    reporter.started()
    deadline = time.monotonic() + 5
    while len(sink.reports) < 3 and time.monotonic() < deadline:
        time.sleep(0.02)
    assert len(sink.reports) >= 3
    assert sink.reports[-1].updated_at > sink.reports[0].updated_at
    reporter.interval = 3600.0  # no step is sent itself from here
    reporter.stepped(1, step_seconds=None, compute_seconds=0.5)
    reporter.stepped(2, step_seconds=1.0, compute_seconds=0.5)
    deadline = time.monotonic() + 5
    while sink.reports[-1].step != 2 and time.monotonic() < deadline:
        time.sleep(0.02)
    assert (sink.reports[-1].step, sink.reports[-1].step_seconds) == (2, 1.0)
    reporter.finish()
    assert sink.reports[-1].done
    count = len(sink.reports)
    time.sleep(0.3)
    assert len(sink.reports) == count


def test_a_rank_report_is_a_merge_patch_of_its_own_key(tmp_path: Path) -> None:
    sent: list[tuple[str, str, Any, str]] = []

    class Target:
        def request(self, method: str, path: str, body: Any, *, content_type: str) -> None:
            sent.append((method, path, body, content_type))

    sink = RankSink(Target(), "team-a", "job-progress", 5)  # type: ignore[arg-type]
    sink.send(RankReport(rank=5, step=7, updated_at=NOW))
    ((method, path, body, content_type),) = sent
    assert (method, content_type) == ("PATCH", "application/merge-patch+json")
    assert path.endswith("/namespaces/team-a/finetunejobprogresses/job-progress")
    assert list(body) == ["ranks"] and list(body["ranks"]) == ["5"]
    assert RankReport.model_validate_json(body["ranks"]["5"]).step == 7


def test_from_env_outside_a_cluster_is_a_no_op() -> None:
    reporter = RankReporter.from_env({})
    reporter.started()
    reporter.stepped(1, step_seconds=1.0, compute_seconds=1.0)
    reporter.finish()
    assert not reporter.enabled


def test_the_compute_timer_counts_the_forward_passes_of_each_step() -> None:
    clock = ManualClock(100.0)
    timer = ComputeTimer(clock)
    assert timer.take() is None  # nothing timed
    for seconds in (0.25, 0.5):  # two micro-batches
        started = timer.begin(None)
        clock.t += seconds
        timer.end(started)
    assert timer.take() == 0.75
    assert timer.take() is None


def test_the_compute_timer_times_the_models_training_forward_and_nothing_around_it() -> None:
    """Attached to a real module: what happens inside its training forward counts (here a
    later pre-hook's delay, as the test faults' sleep), what happens around it does not (a
    collective before or after the forward, as DDP's or TRL's), nor an evaluation's."""
    import torch

    clock = ManualClock(0.0)
    timer = ComputeTimer(clock)
    model = torch.nn.Linear(2, 2)
    timer.attach(model)

    def slow_device(module: Any, args: Any) -> None:
        clock.t += 0.3  # registered after the timer's hook: inside the timed forward

    model.register_forward_pre_hook(slow_device)
    clock.t += 5.0  # waiting for the other ranks before the forward: not compute
    model(torch.ones(1, 2))
    clock.t += 7.0  # and after it
    assert timer.take() == pytest.approx(0.3)
    model.eval()
    model(torch.ones(1, 2))
    assert timer.take() is None


def test_under_torch_compile_the_timer_hooks_run_eagerly_and_time_every_step() -> None:
    """training.torchCompile wraps the model in torch.compile, which traces module hooks into
    its graph: a clock read there would be a constant of the trace, and each step's start
    time a failed guard (a recompile per step). The timer's hooks stay out of the graph."""
    import torch
    from torch._dynamo.utils import counters

    torch._dynamo.reset()
    counters.clear()
    clock = ManualClock(0.0)
    timer = ComputeTimer(clock)
    model = torch.nn.Linear(2, 2)
    timer.attach(model)
    compiled = torch.compile(model, backend="eager")

    def slow_device(module: Any, args: Any) -> None:
        clock.t += 0.3

    model.register_forward_pre_hook(slow_device)
    compiled(torch.ones(1, 2))
    assert timer.take() == pytest.approx(0.3)
    first = (counters["frames"]["total"], counters["stats"]["unique_graphs"])
    for _ in range(3):
        compiled(torch.ones(1, 2))
        assert timer.take() == pytest.approx(0.3)
    # Traced, the hooks compiled a new graph at each of these steps (1, 2, 3 graphs).
    assert (counters["frames"]["total"], counters["stats"]["unique_graphs"]) == first


SPIKES = {
    "a steady fall is no spike": ([6.0, 5.5, 5.0, 4.6, 4.2, 4.0, 3.8, 3.6, 3.5, 3.4, 3.3, 3.2], []),
    "a learning rate far too high: 6.07 then 44.5": ([6.07, 44.5, 40.0, 13.5], [1]),
    "late noise of small batches is no spike": ([0.2] * 10 + [0.7, 0.15, 0.9], []),
    "two episodes, two spikes": ([2.0] * 11 + [9.0, 2.0] + [2.0] * 12 + [9.0], [11, 25]),
}


@pytest.mark.parametrize(("losses", "spiking"), SPIKES.values(), ids=SPIKES.keys())
def test_loss_spikes(losses: list[float], spiking: list[int]) -> None:
    watch = SpikeWatch(3.0)
    found = [i for i, loss in enumerate(losses) if watch.observe(loss) is not None]
    assert found == spiking


def test_loss_spike_detection_off_and_non_finite_losses() -> None:
    off = SpikeWatch(0.0)
    assert all(off.observe(v) is None for v in [1.0] * 20 + [100.0])
    watch = SpikeWatch(3.0)
    for _ in range(11):
        watch.observe(1.0)
    assert watch.observe(float("nan")) is None  # divergence.py's business
    assert watch.observe(10.0) == pytest.approx(1.0)


def test_the_collective_timeout_follows_the_stall_deadlines() -> None:
    def spec(**sets: Any) -> Any:
        builder = make_job()
        for path, value in sets.items():
            builder.set(path.replace("__", "."), value)
        return parse_job(builder.obj()).spec

    assert collective_timeout(spec()) == 7200 + 60  # above every phase's deadline
    assert collective_timeout(spec(runPolicy__stallDetection={
        "minimumSeconds": 60, "startupSeconds": 300, "firstStepSeconds": 200,
        "evaluationSeconds": 600, "checkpointSeconds": 120})) == 660  # fmt: skip
    assert (
        collective_timeout(spec(runPolicy__stallDetection={"firstStepSeconds": 9000})) == 9000 + 60
    )  # the first step's budget counts too
    assert collective_timeout(spec(runPolicy__stallDetection__enabled=False)) == (
        TORCH_COLLECTIVE_TIMEOUT)  # fmt: skip
    assert collective_timeout(spec(distributed__ncclTimeoutSeconds=900)) == 900


def test_faults_can_strike_one_rank_only() -> None:
    environ = {"FINETUNE_FAULT_SLEEP": "3:600", "FINETUNE_FAULT_RANK": "1"}
    assert Faults.from_env({**environ, "RANK": "1"}).sleeps == {"3": 600.0}
    assert Faults.from_env({**environ, "RANK": "0"}).sleeps == {}
    assert Faults.from_env({"FINETUNE_FAULT_SLEEP": "every:0.1"}).sleeps == {"every": 0.1}


def test_a_stall_report_keeps_the_verdict_and_the_innermost_frames() -> None:
    sink = Collect()
    reporter = RankReporter(sink, rank=2, interval=3600, now=lambda: NOW)
    frames = "\n".join(f"  frame{i}.py:{i} fn{i}" for i in range(1000))  # innermost first
    reporter.stalled(f"optimizer step 9 has not ended after 20 s\n{frames}", timeout=5)
    last = sink.reports[-1]
    assert last.stalled is not None and len(last.stalled) == STALL_REPORT_CHARS
    assert last.stalled.startswith("optimizer step 9 has not ended after 20 s\n  frame0.py:0")
    assert "fn999" not in last.stalled and not last.done
