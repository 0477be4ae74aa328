"""The trainer's progress reports: what they say (metrics, ETA, throughput), when they are
sent (rate limit, events), and that reporting can neither break nor slow training."""

from __future__ import annotations

import json
import logging
import math
import threading
import time
from collections.abc import Iterator
from datetime import UTC, datetime, timedelta
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from types import SimpleNamespace
from typing import Any

import pytest

from ftapi.contract import CONTRACT
from ftapi.progress import REPORT_FIELD, CheckpointReport, ProgressReport
from fttrainer.callbacks import ProgressCallback
from fttrainer.reporting.progress import (
    MERGE_PATCH,
    KubeError,
    KubeTarget,
    ProgressObjectSink,
    ProgressReporter,
    metrics_from_logs,
    non_finite_from_logs,
)
from tests.unit.trainer.fakes import Collect, ManualClock

NOW = datetime(2026, 5, 1, 12, 0, tzinfo=UTC)
TOKEN = "secret-token-that-must-never-be-logged"


class Failing:
    def __init__(self) -> None:
        self.calls = 0

    def send(self, report: ProgressReport) -> None:
        self.calls += 1
        raise KubeError(403, "finetunejobprogresses is forbidden")


def _reporter(sink: Any = None, **kwargs: Any) -> tuple[ProgressReporter, Collect, ManualClock]:
    collect, clock = Collect(), ManualClock(1000.0)
    reporter = ProgressReporter(
        sink if sink is not None else collect, clock=clock, now=lambda: NOW,
        background=False, **kwargs,
    )  # fmt: skip
    return reporter, collect, clock


# ---------------------------------------------------------------------- metrics mapping
METRIC_CASES = {
    "sft step log: loss is train_loss, bookkeeping dropped": (
        {"loss": 2.5, "grad_norm": 1.25, "learning_rate": 1e-4, "epoch": 0.5,
         "num_tokens": 4096.0, "mean_token_accuracy": 0.4},
        {"train_loss": 2.5, "grad_norm": 1.25, "learning_rate": 1e-4,
         "mean_token_accuracy": 0.4},
    ),
    "evaluation: eval_* kept, runtime and throughput dropped": (
        {"eval_loss": 1.5, "eval_runtime": 2.0, "eval_samples_per_second": 10.0,
         "eval_steps_per_second": 1.0, "eval_mean_token_accuracy": 0.6, "eval_perplexity": 4.48,
         "epoch": 1.0},
        {"eval_loss": 1.5, "eval_mean_token_accuracy": 0.6, "eval_perplexity": 4.48},
    ),
    "grpo: reward and per-reward means": (
        {"loss": 0.01, "reward": 0.75, "reward_std": 0.1, "rewards/length/mean": 0.5,
         "kl": 0.02, "completions/mean_length": 12},
        {"train_loss": 0.01, "reward": 0.75, "reward_std": 0.1, "rewards/length/mean": 0.5,
         "kl": 0.02, "completions/mean_length": 12.0},
    ),
    "the trainer's closing summary is no metric (train_loss there is the run's mean)": (
        {"train_runtime": 30.0, "train_samples_per_second": 3.0, "train_steps_per_second": 0.4,
         "total_flos": 1e12, "train_loss": 2.0, "epoch": 2.0},
        {},
    ),
    "final metrics of the recipe: accuracy, benchmarks, base scores": (
        {"train_loss": 1.0, "global_step": 12, "train_runtime_seconds": 3.2,
         "eval_accuracy": 0.75, "benchmark/arith": 0.5, "eval_loss/base": 3.0,
         "test_loss": 1.1},
        {"eval_accuracy": 0.75, "benchmark/arith": 0.5, "eval_loss/base": 3.0,
         "test_loss": 1.1},
    ),
    "non-finite values go to non_finite_from_logs, non-numeric ones are dropped": (
        {"loss": math.nan, "grad_norm": math.inf, "note": "x", "flag": True, "count": 3},
        {"count": 3.0},
    ),
}  # fmt: skip


@pytest.mark.parametrize(("logs", "expected"), METRIC_CASES.values(), ids=METRIC_CASES.keys())
def test_metrics_from_trainer_logs(logs: dict[str, Any], expected: dict[str, float]) -> None:
    assert metrics_from_logs(logs) == expected


# ---------------------------------------------------------------------- the report
def test_a_report_on_the_wire_has_the_contracts_camel_case_fields_and_no_percent() -> None:
    reporter, sent, clock = _reporter(attempt=2)
    reporter.training_started(step=0, total_steps=100, epoch=0.0)
    clock.t += 20
    reporter.logged({"loss": 2.0, "num_tokens": 8000.0}, step=10, epoch=0.25)
    reporter.checkpointed(uri="s3://b/run/checkpoints/uid/checkpoint-10", step=10, count=1)
    wire = json.loads(sent.reports[-1].model_dump_json(by_alias=True, exclude_none=True))
    assert wire == {
        "contract": CONTRACT,
        "attempt": 2,
        "stage": "training",
        "step": 10,
        "totalSteps": 100,
        "epoch": 0.25,
        "tokensPerSecond": 400.0,
        "etaSeconds": 180,
        "metrics": {"train_loss": 2.0},
        "nonFinite": {},
        "skippedSteps": 0,
        "warnings": [],
        "checkpoint": {"latest": "s3://b/run/checkpoints/uid/checkpoint-10", "step": 10,
                       "count": 1},
        "updatedAt": "2026-05-01T12:00:00Z",
    }  # fmt: skip
    # The operator computes the printable summary/percent; the trainer sends numbers only.
    assert ProgressReport.model_validate(wire) == sent.reports[-1]


ETA_CASES = {
    "no step yet: unknown": (0, 100, 0, 30.0, None),
    "10 steps in 20 s, 90 to go": (0, 100, 10, 20.0, 180),
    "resumed at 50: only this attempt's pace counts": (50, 100, 60, 20.0, 80),
    "no total (unknown max steps)": (0, 0, 10, 20.0, None),
    "past the total": (0, 10, 12, 20.0, 0),
}


@pytest.mark.parametrize(
    ("first", "total", "step", "elapsed", "eta"), ETA_CASES.values(), ids=ETA_CASES.keys()
)
def test_eta_from_this_attempts_pace(
    first: int, total: int, step: int, elapsed: float, eta: int | None
) -> None:
    reporter, _, clock = _reporter()
    reporter.training_started(step=first, total_steps=total)
    clock.t += elapsed
    reporter.stepped(step=step)
    assert reporter.report().eta_seconds == eta


def test_the_done_report_has_no_eta_and_names_the_model() -> None:
    reporter, sent, clock = _reporter()
    reporter.training_started(step=0, total_steps=10)
    clock.t += 5
    reporter.stepped(step=10, force=True)
    reporter.finish(model_uri="s3://b/run/final")
    done = sent.reports[-1]
    assert (done.stage, done.model_uri, done.eta_seconds, done.step) == (
        "done", "s3://b/run/final", None, 10,
    )  # fmt: skip


def test_the_first_step_reports_where_the_time_before_it_went() -> None:
    from ftapi.v1alpha1.status import Startup

    reporter, sent, _ = _reporter()
    reporter.training_started(step=0, total_steps=10)
    startup = Startup(
        data_seconds=3.5,
        data_reused=True,
        model_seconds=9.0,
        first_step_seconds=1.2,
        total_seconds=30.0,
    )
    reporter.started_up(startup)
    wire = sent.reports[-1].to_dict()
    assert wire["startup"] == {
        "dataSeconds": 3.5,
        "dataReused": True,
        "modelSeconds": 9.0,
        "firstStepSeconds": 1.2,
        "totalSeconds": 30.0,
    }


class SlowCollect(Collect):
    """A sink whose every write takes a while (an API server under load)."""

    def send(self, report: Any) -> None:
        time.sleep(0.2)
        super().send(report)


def test_the_report_naming_the_final_model_has_left_before_the_publish_steps_go_on() -> None:
    """A push refused right after (PublishFailed) ends the process at once: the status must
    still say where the model is."""
    slow = SlowCollect()
    reporter = ProgressReporter(slow, now=lambda: NOW)  # the background sender, as in a run
    reporter.training_started(step=0, total_steps=4)
    reporter.published(model_uri="s3://b/run/final")
    assert slow.reports and slow.reports[-1].model_uri == "s3://b/run/final"


TOKEN_CASES = {
    "trl num_tokens counts from zero in each attempt": ({"num_tokens": 5000.0}, 0.0, 500.0),
    "transformers' counter is restored on resume: from where it stood": (
        {"num_input_tokens_seen": 15000}, 10000.0, 500.0,
    ),
    "trl's counter wins when both are logged": (
        {"num_tokens": 2000.0, "num_input_tokens_seen": 99999}, 0.0, 200.0,
    ),
    "no counter: unknown": ({"loss": 1.0}, 0.0, None),
}  # fmt: skip


@pytest.mark.parametrize(
    ("logs", "seen_at_start", "rate"), TOKEN_CASES.values(), ids=TOKEN_CASES.keys()
)
def test_tokens_per_second(logs: dict[str, Any], seen_at_start: float, rate: float | None) -> None:
    reporter, _, clock = _reporter()
    reporter.training_started(step=0, total_steps=10, tokens_seen=seen_at_start)
    clock.t += 10
    reporter.logged(logs, step=2)
    assert reporter.report().tokens_per_second == rate


def test_later_metrics_replace_earlier_ones_and_the_rest_stays() -> None:
    reporter, sent, clock = _reporter()
    reporter.training_started(step=0, total_steps=10)
    reporter.evaluated({"eval_loss": 3.0}, step=0)
    clock.t += 20
    reporter.logged({"loss": 2.0, "learning_rate": 1e-3}, step=5)
    clock.t += 20
    reporter.logged({"loss": 1.5, "learning_rate": 5e-4}, step=10)
    assert sent.reports[-1].metrics == {
        "eval_loss": 3.0, "train_loss": 1.5, "learning_rate": 5e-4,
    }  # fmt: skip


def test_a_non_finite_metric_is_reported_as_such_and_hides_the_older_finite_value() -> None:
    reporter, sent, clock = _reporter()
    reporter.training_started(step=0, total_steps=10)
    reporter.logged({"loss": 2.0, "grad_norm": 0.5, "learning_rate": 1e-3}, step=3)
    reporter.non_finite_step({"train_loss": math.nan, "grad_norm": -math.inf}, step=4,
                             skipped=True)  # fmt: skip
    report = sent.reports[-1]  # sent at once, whatever the interval
    assert report.non_finite == {"train_loss": "NaN", "grad_norm": "-Infinity"}
    assert report.metrics == {"learning_rate": 1e-3}  # never the old 2.0 shown as current
    assert (report.step, report.skipped_steps) == (4, 1)
    assert '"train_loss":"NaN"' in report.model_dump_json(by_alias=True)  # valid JSON
    clock.t += 20
    reporter.logged({"loss": 1.9, "grad_norm": 0.4}, step=5)
    report = sent.reports[-1]
    assert report.non_finite == {} and report.metrics["train_loss"] == 1.9
    assert report.skipped_steps == 1  # counted for the whole attempt
    assert non_finite_from_logs({"eval_loss": math.inf, "loss": 1.0}) == {"eval_loss": "Infinity"}


# ---------------------------------------------------------------------- when it sends
def test_sends_are_rate_limited_but_events_go_at_once() -> None:
    reporter, sent, clock = _reporter(interval=15.0)
    timeline = [
        (0.0, lambda: reporter.training_started(step=0, total_steps=100), True),
        (5.0, lambda: reporter.stepped(step=1), False),
        (14.9, lambda: reporter.logged({"loss": 1.0}, step=2), False),
        (15.0, lambda: reporter.stepped(step=3), True),
        (16.0, lambda: reporter.evaluated({"eval_loss": 1.0}, step=3), True),
        (17.0, lambda: reporter.checkpointed(uri="u/checkpoint-3", step=3, count=1), True),
        (20.0, lambda: reporter.logged({"loss": 0.9}, step=4), False),
        (31.9, lambda: reporter.stepped(step=5), False),
        (32.0, lambda: reporter.stepped(step=6), True),
        (33.0, lambda: reporter.report_stage("saving"), True),
        (34.0, lambda: reporter.report_stage("publishing"), True),
        (35.0, lambda: reporter.finish(model_uri="u/final"), True),
    ]
    expected = 0
    for at, event, goes in timeline:
        clock.t = 1000.0 + at
        event()
        expected += goes
        assert len(sent.reports) == expected, f"at {at}s"
    assert [r.stage for r in sent.reports[-3:]] == ["saving", "publishing", "done"]


def test_an_evaluation_ends_the_evaluating_stage() -> None:
    reporter, sent, _ = _reporter()
    reporter.training_started(step=0, total_steps=10)
    reporter.report_stage("evaluating")
    reporter.evaluated({"eval_loss": 1.0}, step=5)
    assert [r.stage for r in sent.reports] == ["training", "evaluating", "training"]


# ---------------------------------------------------------------------- from the environment
def _account(tmp_path: Path) -> Path:
    (tmp_path / "token").write_text(TOKEN + "\n")
    (tmp_path / "ca.crt").write_text("not parsed until a request")
    return tmp_path


IN_CLUSTER = {
    "FINETUNE_PROGRESS_NAME": "job-progress",
    "FINETUNE_NAMESPACE": "team-a",
    "FINETUNE_ATTEMPT": "3",
    "KUBERNETES_SERVICE_HOST": "10.96.0.1",
    "KUBERNETES_SERVICE_PORT": "443",
}
ENV_CASES = {
    "local run: no configmap named": ({}, None),
    "in a cluster": (IN_CLUSTER, 3),
    "rank 0 under torchrun": ({**IN_CLUSTER, "RANK": "0"}, 3),
    "other ranks never report": ({**IN_CLUSTER, "RANK": "1"}, None),
    "no namespace": ({**IN_CLUSTER, "FINETUNE_NAMESPACE": ""}, None),
    "not in a cluster after all": ({**IN_CLUSTER, "KUBERNETES_SERVICE_HOST": ""}, None),
    "unreadable attempt": ({**IN_CLUSTER, "FINETUNE_ATTEMPT": "x"}, 0),
}


@pytest.mark.parametrize(("environ", "attempt"), ENV_CASES.values(), ids=ENV_CASES.keys())
def test_from_env(tmp_path: Path, environ: dict[str, str], attempt: int | None) -> None:
    reporter = ProgressReporter.from_env(environ, account_dir=_account(tmp_path))
    if attempt is None:
        assert not reporter.enabled
        return
    assert reporter.enabled and reporter.attempt == attempt
    assert reporter.report().attempt == attempt
    sink = reporter._sender.sink  # type: ignore[union-attr]
    assert isinstance(sink, ProgressObjectSink)
    assert (
        sink.path
        == "/apis/finetune.dev/v1alpha1/namespaces/team-a/finetunejobprogresses/job-progress"
    )
    assert sink.target == KubeTarget(
        "https://10.96.0.1:443", tmp_path / "token", tmp_path / "ca.crt"
    )


def test_from_cluster_without_a_token_or_with_ipv6(tmp_path: Path) -> None:
    with pytest.raises(KubeError, match="no service account token"):
        KubeTarget.from_cluster({"KUBERNETES_SERVICE_HOST": "10.0.0.1"}, account_dir=tmp_path)
    ipv6 = KubeTarget.from_cluster(
        {"KUBERNETES_SERVICE_HOST": "fd00::1", "KUBERNETES_SERVICE_PORT": "6443"},
        account_dir=_account(tmp_path),
    )
    assert ipv6.server == "https://[fd00::1]:6443"
    assert TOKEN not in repr(ipv6)


def test_a_disabled_reporter_does_nothing() -> None:
    reporter = ProgressReporter(None)
    reporter.training_started(step=0, total_steps=10)
    reporter.logged({"loss": 1.0}, step=1)
    reporter.checkpointed(uri="u", step=1, count=1)
    reporter.finish(model_uri="u/final")
    assert not reporter.enabled and reporter.sent == 0
    assert (reporter.stage, reporter.step, reporter.metrics, reporter.model_uri) == (
        "starting", 0, {}, None,
    )  # fmt: skip


def test_a_quiet_trainer_re_sends_its_report_newly_dated_until_done() -> None:
    """The heartbeat that tells the operator the process still runs through a long
    evaluation or upload (ftapi.progress.heartbeat_seconds)."""
    collect = Collect()
    times = iter(NOW + timedelta(seconds=i) for i in range(10_000))
    reporter = ProgressReporter(collect, now=lambda: next(times), heartbeat=0.05)
    reporter.training_started(step=3, total_steps=10)
    deadline = time.monotonic() + 10
    while len(collect.reports) < 4 and time.monotonic() < deadline:
        time.sleep(0.02)
    beats = collect.reports[1:4]
    assert len(beats) == 3 and {r.step for r in beats} == {3}
    stamps = [r.updated_at for r in collect.reports[:4]]
    assert stamps == sorted(stamps) and len(set(stamps)) == 4
    reporter.finish(model_uri="s3://b/final")
    sent = len(collect.reports)
    time.sleep(0.3)
    assert len(collect.reports) == sent and collect.reports[-1].stage == "done"


# ---------------------------------------------------------------------- never breaks training
def test_a_failing_sink_never_raises_and_warns_once(caplog: pytest.LogCaptureFixture) -> None:
    failing = Failing()
    reporter, _, clock = _reporter(sink=failing)
    with caplog.at_level(logging.DEBUG, logger="fttrainer"):
        reporter.training_started(step=0, total_steps=10)
        clock.t += 20
        reporter.logged({"loss": 1.0}, step=1)
        reporter.report_stage("saving")
        reporter.finish(model_uri="u/final")
    assert failing.calls == 4 and reporter.failures == 4
    levels = [r.levelno for r in caplog.records if "not sent" in r.getMessage()]
    assert levels == [logging.WARNING, logging.DEBUG, logging.DEBUG, logging.DEBUG]


def test_a_bad_value_is_logged_not_raised(caplog: pytest.LogCaptureFixture) -> None:
    reporter, sent, _ = _reporter()
    reporter.training_started(step=-5, total_steps=10)  # the contract refuses a negative step
    assert sent.reports == [] and reporter.failures == 1
    assert "progress report failed" in caplog.text


def test_a_slow_api_server_does_not_slow_training_and_the_newest_report_wins() -> None:
    release, first_taken = threading.Event(), threading.Event()
    received: list[int] = []

    class Slow:
        def send(self, report: ProgressReport) -> None:
            first_taken.set()
            release.wait(10)
            received.append(report.step)

    reporter = ProgressReporter(Slow(), interval=0.0)
    started = time.monotonic()
    reporter.training_started(step=0, total_steps=10)
    assert first_taken.wait(5)  # the worker holds report 0 at the "server"
    for step in range(1, 6):
        reporter.stepped(step=step)
    assert time.monotonic() - started < 1.0, "events waited for the API server"
    release.set()
    assert reporter.flush(5)
    assert received == [0, 5]  # steps 1-4 were superseded while the server was slow


# ---------------------------------------------------------------------- the HTTP request
class _Server:
    """A local HTTP server that records requests and answers with a fixed status."""

    def __init__(self, status: int) -> None:
        self.requests: list[tuple[str, str, dict[str, str], bytes]] = []
        outer = self

        class Handler(BaseHTTPRequestHandler):
            def do_PATCH(self) -> None:
                body = self.rfile.read(int(self.headers["Content-Length"]))
                outer.requests.append((self.command, self.path, dict(self.headers), body))
                answer = json.dumps(
                    {"kind": "Status", "message": "finetunejobprogresses is forbidden"}
                )
                self.send_response(status)
                self.send_header("Content-Type", "application/json")
                self.end_headers()
                self.wfile.write(answer.encode())

            def log_message(self, *args: Any) -> None:
                pass

        self.httpd = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.url = f"http://127.0.0.1:{self.httpd.server_address[1]}"
        threading.Thread(target=self.httpd.serve_forever, daemon=True).start()


@pytest.fixture
def server_factory() -> Iterator[Any]:
    servers: list[_Server] = []

    def start(status: int) -> _Server:
        servers.append(_Server(status))
        return servers[-1]

    yield start
    for server in servers:
        server.httpd.shutdown()
        server.httpd.server_close()


def test_the_sink_sends_a_merge_patch_of_the_report_field(
    tmp_path: Path, server_factory: Any
) -> None:
    server = server_factory(200)
    target = KubeTarget(server.url, _account(tmp_path) / "token")
    reporter, _, _ = _reporter(sink=ProgressObjectSink(target, "team-a", "job-progress"))
    reporter.training_started(step=0, total_steps=10)
    assert reporter.failures == 0 and reporter.sent == 1
    ((method, path, headers, body),) = server.requests
    assert (method, path) == (
        "PATCH",
        "/apis/finetune.dev/v1alpha1/namespaces/team-a/finetunejobprogresses/job-progress",
    )
    assert headers["Content-Type"] == MERGE_PATCH
    assert headers["Authorization"] == f"Bearer {TOKEN}"
    patch = json.loads(body)
    assert list(patch) == [REPORT_FIELD]
    report = ProgressReport.model_validate_json(patch[REPORT_FIELD])
    assert (report.stage, report.total_steps) == ("training", 10)


def test_a_refused_patch_is_a_warning_without_the_token(
    tmp_path: Path, server_factory: Any, caplog: pytest.LogCaptureFixture
) -> None:
    server = server_factory(403)
    target = KubeTarget(server.url, _account(tmp_path) / "token")
    with pytest.raises(KubeError) as refused:
        ProgressObjectSink(target, "ns", "cm").send(_reporter()[0].report())
    assert refused.value.status == 403 and "forbidden" in str(refused.value)
    reporter, _, _ = _reporter(sink=ProgressObjectSink(target, "ns", "cm"))
    reporter.training_started(step=0, total_steps=10)  # does not raise
    assert reporter.failures == 1
    assert "403 finetunejobprogresses is forbidden" in caplog.text and TOKEN not in caplog.text


def test_an_unreachable_api_server_is_an_error_within_the_timeout(tmp_path: Path) -> None:
    target = KubeTarget("http://127.0.0.1:9", _account(tmp_path) / "token", timeout=1.0)
    reporter, _, _ = _reporter(sink=ProgressObjectSink(target, "ns", "cm"))
    started = time.monotonic()
    reporter.training_started(step=0, total_steps=10)
    assert reporter.failures == 1 and time.monotonic() - started < 3.0


# ---------------------------------------------------------------------- the Trainer callback
def _state(step: int, *, main: bool = True) -> SimpleNamespace:
    return SimpleNamespace(
        global_step=step, epoch=step / 10, max_steps=10, is_world_process_zero=main,
        num_input_tokens_seen=0,
    )  # fmt: skip


def _control(**flags: bool) -> SimpleNamespace:
    return SimpleNamespace(
        **{"should_log": False, "should_evaluate": False, "should_save": False, **flags}
    )


STEP_END_CASES = {
    "nothing follows: the step is reported": ({}, ["training"]),
    "a log follows: it reports": ({"should_log": True}, []),
    "a checkpoint follows: it reports": ({"should_save": True}, []),
    "an evaluation follows: the stage says so": ({"should_evaluate": True}, ["evaluating"]),
}


@pytest.mark.parametrize(("flags", "stages"), STEP_END_CASES.values(), ids=STEP_END_CASES.keys())
def test_callback_step_end(flags: dict[str, bool], stages: list[str]) -> None:
    reporter, sent, clock = _reporter(interval=0.0)
    callback = ProgressCallback(reporter)
    callback.on_train_begin(None, _state(0), _control())
    clock.t += 1
    callback.on_step_end(None, _state(1), _control(**flags))
    assert [r.stage for r in sent.reports[1:]] == stages
    assert reporter.step == 1


def test_callback_reports_a_checkpoint_only_once_committed_and_only_on_rank_0() -> None:
    reporter, sent, _ = _reporter()
    upload = SimpleNamespace(latest=None, kept=0, checkpoints=SimpleNamespace(uri="s3://b/ck/id"))
    callback = ProgressCallback(reporter, upload)  # type: ignore[arg-type]
    callback.on_save(None, _state(2), _control())
    assert sent.reports == []  # no manifest written yet: nothing to report
    upload.latest, upload.kept = SimpleNamespace(step=2), 1
    callback.on_save(None, _state(2, main=False), _control())
    callback.on_log(None, _state(2, main=False), _control(), logs={"loss": 1.0})
    assert sent.reports == []  # other ranks never report
    callback.on_save(None, _state(2), _control())
    (report,) = sent.reports
    assert report.checkpoint == CheckpointReport(
        latest="s3://b/ck/id/checkpoint-2", step=2, count=1
    )


def test_tokens_per_second_leaves_the_first_steps_warm_up_out_once_a_later_log_exists() -> None:
    """The first logged step carries torch.compile, CUDA initialisation and the allocator
    growing: 30 s for 500 tokens here, then 500 tokens/s. The rate counts from that first
    log once a later one exists."""
    reporter, _, clock = _reporter()
    reporter.training_started(step=0, total_steps=100)
    clock.t += 30
    reporter.logged({"num_tokens": 500.0}, step=1)
    assert reporter.report().tokens_per_second == pytest.approx(500 / 30)
    clock.t += 10
    reporter.logged({"num_tokens": 5500.0}, step=11)
    assert reporter.report().tokens_per_second == 500.0
    clock.t += 10
    reporter.logged({"num_tokens": 10500.0}, step=21)
    assert reporter.report().tokens_per_second == 500.0
    # A new attempt measures afresh.
    reporter.training_started(step=21, total_steps=100, tokens_seen=0.0)
    clock.t += 20
    reporter.logged({"num_tokens": 2000.0}, step=22)
    assert reporter.report().tokens_per_second == 100.0
