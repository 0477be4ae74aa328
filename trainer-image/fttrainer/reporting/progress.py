"""The trainer's side of the progress channel (the contract is ftapi.progress).

Rank 0 writes a `ProgressReport` into the `report` field of the job's FineTuneJobProgress:
at the start of training, at most every REPORT_INTERVAL_SECONDS while it trains, and at
once at each committed checkpoint, each evaluation, each stage change (saving,
publishing) and at the end ("done", with the published model's URI).

    reporter = ProgressReporter.from_env()      # a no-op unless the operator set the env
    trainer.add_callback(ProgressCallback(reporter, upload))  # callbacks.py
    reporter.report_stage("saving")
    reporter.finish(model_uri="s3://bucket/run/final")

Reporting never breaks or slows training: reports are built on the training thread (cheap)
and sent by one background thread that always sends the newest (a slow or unreachable API
server delays the status, never a step); a failed send is logged once as a warning, then
at debug level, and never raised.

The Kubernetes client is a few lines of urllib: the trainer image needs no Kubernetes
library to patch one object, and the pod's Role allows nothing more than get/patch/update
of that FineTuneJobProgress (by resourceName).
"""

from __future__ import annotations

import json
import logging
import math
import os
import ssl
import threading
import time
import urllib.error
import urllib.request
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path
from typing import Any, Concatenate, ParamSpec, Protocol
from urllib.parse import quote

from ftapi.constants import GROUP, PROGRESS_PLURAL, VERSION
from ftapi.progress import (
    ENV_ATTEMPT,
    ENV_NAMESPACE,
    ENV_PROGRESS_NAME,
    REPORT_FIELD,
    REPORT_INTERVAL_SECONDS,
    CheckpointReport,
    ProgressReport,
    Stage,
    spelled,
)
from ftapi.v1alpha1.common import NonFinite
from ftapi.v1alpha1.status import MAX_WARNINGS, RunWarning, Startup

log = logging.getLogger("fttrainer")
P = ParamSpec("P")

SERVICE_ACCOUNT_DIR = Path("/var/run/secrets/kubernetes.io/serviceaccount")
# Where the token and CA are when not at the kubelet's path (a pod's command run outside a
# pod, as tests/integration/test_rendered_pod.py does).
ENV_SERVICE_ACCOUNT_DIR = "FINETUNE_SERVICE_ACCOUNT_DIR"
MERGE_PATCH = "application/merge-patch+json"
REQUEST_TIMEOUT_SECONDS = 5.0
# How long finish() waits for the last report to go out before the process exits: one
# report in flight and the final one, each at most one request timeout.
FINISH_TIMEOUT_SECONDS = 2 * REQUEST_TIMEOUT_SECONDS + 1.0

# Trainer log names -> report metric names. "loss" is the training loss of the last logged
# steps; the Trainer's closing "train_loss" (the average of the whole run) is left out so
# that train_loss always means the same thing.
RENAMED = {"loss": "train_loss"}
# Bookkeeping, not metrics: the step, epoch and throughput have fields of their own.
SKIPPED = {
    "epoch",
    "step",
    "global_step",
    "total_flos",
    "train_loss",
    "num_tokens",
    "num_input_tokens_seen",
    "train_runtime_seconds",
}
SKIPPED_SUFFIXES = ("_runtime", "_samples_per_second", "_steps_per_second", "_tokens_per_second")
# Token counters, in order of preference, and where each counts from. TRL's trainers (SFT,
# DPO, GRPO) log `num_tokens`, counted by the trainer object of this process, so from zero
# in every attempt; transformers' `num_input_tokens_seen` (when enabled) is restored with the
# trainer state on resume, so it counts from wherever training began.
TOKEN_COUNTERS = ("num_tokens", "num_input_tokens_seen")


def metrics_from_logs(logs: Mapping[str, Any]) -> dict[str, float]:
    """The finite scalar metrics of one Trainer log (or final metrics), by their report
    names (non_finite_from_logs has the others: JSON has no NaN)."""
    return {k: v for k, v in _scalars(logs).items() if math.isfinite(v)}


def non_finite_from_logs(logs: Mapping[str, Any]) -> dict[str, NonFinite]:
    """The metrics of one log that are NaN or infinite, spelled as JSON readers expect."""
    return {k: spelled(v) for k, v in _scalars(logs).items() if not math.isfinite(v)}


def _scalars(logs: Mapping[str, Any]) -> dict[str, float]:
    found = {}
    for key, value in logs.items():
        if key in SKIPPED or key.endswith(SKIPPED_SUFFIXES):
            continue
        if isinstance(value, bool) or not isinstance(value, int | float):
            continue
        found[RENAMED.get(key, key)] = float(value)
    return found


class KubeError(RuntimeError):
    """A request the API server refused (status set) or that never got an answer."""

    def __init__(self, status: int | None, message: str) -> None:
        super().__init__(f"{status} {message}" if status else message)
        self.status = status


@dataclass(frozen=True)
class KubeTarget:
    """Where the API server is and how to prove who we are. The token is read from its file
    at every request (the kubelet rotates projected tokens) and never kept or logged."""

    server: str
    token_file: Path
    ca_file: Path | None = None
    """The CA that signed the server's certificate; None: plain http (tests only)."""
    timeout: float = REQUEST_TIMEOUT_SECONDS

    @classmethod
    def from_cluster(
        cls, environ: Mapping[str, str] = os.environ, account_dir: Path = SERVICE_ACCOUNT_DIR
    ) -> KubeTarget:
        """The in-cluster configuration: the API server's Service and the mounted token."""
        host = environ.get("KUBERNETES_SERVICE_HOST")
        if not host:
            raise KubeError(None, "not in a cluster: KUBERNETES_SERVICE_HOST is unset")
        port = environ.get("KUBERNETES_SERVICE_PORT", "443")
        token, ca = account_dir / "token", account_dir / "ca.crt"
        if not token.is_file() or not ca.is_file():
            raise KubeError(None, f"no service account token and CA in {account_dir}")
        host = f"[{host}]" if ":" in host else host  # IPv6
        return cls(f"https://{host}:{port}", token, ca)

    def request(
        self, method: str, path: str, body: Any = None, *, content_type: str = "application/json"
    ) -> Any:
        """One API call; the parsed JSON answer. Proxies are bypassed: the API server is
        reached directly, whatever HTTPS_PROXY the pod sets for downloads."""
        headers = {
            "Authorization": f"Bearer {self.token_file.read_text().strip()}",
            "Accept": "application/json",
        }
        data = None
        if body is not None:
            data = json.dumps(body).encode()
            headers["Content-Type"] = content_type
        url = self.server.rstrip("/") + path
        handlers: list[urllib.request.BaseHandler] = [urllib.request.ProxyHandler({})]
        if url.startswith("https:"):
            context = ssl.create_default_context(cafile=str(self.ca_file) if self.ca_file else None)
            handlers.append(urllib.request.HTTPSHandler(context=context))
        opener = urllib.request.build_opener(*handlers)
        request = urllib.request.Request(url, data=data, headers=headers, method=method)
        try:
            with opener.open(request, timeout=self.timeout) as response:
                payload = response.read()
        except urllib.error.HTTPError as error:
            raise KubeError(error.code, _status_message(error)) from None
        except (urllib.error.URLError, OSError) as error:  # refused, TLS, timeout
            raise KubeError(None, f"{method} {path}: {getattr(error, 'reason', error)}") from None
        return json.loads(payload) if payload else None


def _status_message(error: urllib.error.HTTPError) -> str:
    """The API server's Status message (it names the user and verb, never the token)."""
    try:
        message = json.loads(error.read()).get("message") or error.reason
    except (ValueError, AttributeError, OSError):
        message = error.reason
    return str(message)[:300]


class Sink(Protocol):
    def send(self, report: Any) -> None: ...


@dataclass(frozen=True)
class ProgressObjectSink:
    """Writes a report as a JSON merge patch of the job's FineTuneJobProgress object."""

    target: KubeTarget
    namespace: str
    name: str

    @property
    def path(self) -> str:
        namespace, name = quote(self.namespace, safe=""), quote(self.name, safe="")
        return f"/apis/{GROUP}/{VERSION}/namespaces/{namespace}/{PROGRESS_PLURAL}/{name}"

    def send(self, report: ProgressReport) -> None:
        document = report.model_dump_json(by_alias=True, exclude_none=True)
        self.target.request("PATCH", self.path, {REPORT_FIELD: document}, content_type=MERGE_PATCH)


def progress_object(
    environ: Mapping[str, str], account_dir: Path | None = None
) -> tuple[KubeTarget, str, str] | None:
    """Where this pod reports (the API server, the namespace, the object's name), or None:
    for local runs (no FINETUNE_PROGRESS_NAME) and outside a cluster (logged)."""
    name = environ.get(ENV_PROGRESS_NAME)
    if not name:
        return None
    namespace = environ.get(ENV_NAMESPACE)
    try:
        if not namespace:
            raise KubeError(None, f"{ENV_NAMESPACE} is unset")
        if account_dir is None:
            account_dir = Path(environ.get(ENV_SERVICE_ACCOUNT_DIR) or SERVICE_ACCOUNT_DIR)
        target = KubeTarget.from_cluster(environ, account_dir)
    except KubeError as error:
        log.warning("progress reporting off: %s", error)
        return None
    return target, namespace, name


def attempt_of(environ: Mapping[str, str]) -> int:
    try:
        return max(int(environ.get(ENV_ATTEMPT, "0")), 0)
    except ValueError:
        return 0


def _utc_now() -> datetime:
    return datetime.now(UTC)


class Dated(Protocol):
    updated_at: datetime

    def model_copy(self, *, update: dict[str, Any]) -> Any: ...


class Sender:
    """Delivers reports to a sink, off the training thread when `background`: one worker
    thread, one slot, the newest report wins (a burst of events costs one request)."""

    def __init__(
        self,
        sink: Sink,
        *,
        background: bool,
        heartbeat: float | None = None,
        now: Callable[[], datetime] = _utc_now,
        final: Callable[[Any], bool] = lambda report: report.stage == "done",
        current: Callable[[], Dated] | None = None,
    ) -> None:
        self.sink = sink
        self.background = background
        self.heartbeat = heartbeat
        """Send again (see `current`) after this many idle seconds (None: never): the
        operator takes a silent trainer for a stopped one."""
        self.now = now
        self.final = final
        """A report after which nothing is re-sent (the process is about to end)."""
        self.current = current
        """What a heartbeat sends: the sender's current state (None: the last report sent,
        newly dated)."""
        self._last: Dated | None = None
        self.sent = 0
        self.failures = 0
        self._pending: Dated | None = None
        self._busy = False
        self._condition = threading.Condition()
        self._thread: threading.Thread | None = None

    def submit(self, report: Dated) -> None:
        if not self.background:
            self._deliver(report)
            return
        with self._condition:
            self._pending = report
            if self._thread is None:
                self._thread = threading.Thread(
                    target=self._work, name="progress-report", daemon=True
                )
                self._thread.start()
            self._condition.notify_all()

    def flush(self, timeout: float) -> bool:
        """Wait until every submitted report is delivered (or failed); False on timeout."""
        with self._condition:
            return self._condition.wait_for(
                lambda: self._pending is None and not self._busy, timeout
            )

    def _work(self) -> None:
        while True:
            with self._condition:
                arrived = self._condition.wait_for(
                    lambda: self._pending is not None, self.heartbeat
                )
                if arrived:
                    report, self._pending = self._pending, None
                elif self._last is not None and not self.final(self._last):
                    report = self._heartbeat(self._last)
                else:
                    continue
                self._busy = True
            try:
                assert report is not None
                self._deliver(report)
            finally:
                with self._condition:
                    self._busy = False
                    self._condition.notify_all()

    def _heartbeat(self, last: Dated) -> Dated:
        if self.current is not None:
            return self.current()
        dated: Dated = last.model_copy(update={"updated_at": self.now()})
        return dated

    def _deliver(self, report: Dated) -> None:
        self._last = report
        try:
            self.sink.send(report)
        except Exception as error:  # anything: reporting must never stop training
            self.failures += 1
            level = logging.WARNING if self.failures == 1 else logging.DEBUG
            log.log(level, "progress report not sent (training goes on): %s", error)
        else:
            self.sent += 1


def _never_raises(
    event: Callable[Concatenate[ProgressReporter, P], None],
) -> Callable[Concatenate[ProgressReporter, P], None]:
    """An event of a disabled reporter does nothing; an event that fails is logged."""

    def guarded(self: ProgressReporter, /, *args: P.args, **kwargs: P.kwargs) -> None:
        if self._sender is None:
            return
        try:
            event(self, *args, **kwargs)
        except Exception as error:
            self._sender.failures += 1
            level = logging.WARNING if self._sender.failures == 1 else logging.DEBUG
            log.log(level, "progress report failed (training goes on): %s", error, exc_info=True)

    guarded.__name__, guarded.__doc__ = event.__name__, event.__doc__
    return guarded


class ProgressReporter:
    """What rank 0 knows about the run, and when to tell.

    Events update the state and send at once (training start, checkpoint, evaluation,
    stage, end) or when REPORT_INTERVAL_SECONDS have passed since the last send (steps,
    logs). `report()` builds the document from the state alone (clock injected)."""

    def __init__(
        self,
        sink: Sink | None,
        *,
        attempt: int = 0,
        interval: float = REPORT_INTERVAL_SECONDS,
        clock: Callable[[], float] = time.monotonic,
        now: Callable[[], datetime] = _utc_now,
        background: bool = True,
        heartbeat: float | None = None,
    ) -> None:
        self._sender = (
            Sender(sink, background=background, heartbeat=heartbeat, now=now)
            if sink is not None
            else None
        )
        self.attempt = attempt
        self.interval = interval
        self.clock = clock
        self.now = now
        self.stage: Stage = "starting"
        self.step = 0
        self.total_steps: int | None = None
        self.epoch: float | None = None
        self.tokens_per_second: float | None = None
        self.metrics: dict[str, float] = {}
        self.non_finite: dict[str, NonFinite] = {}
        self.skipped_steps = 0
        self.warnings: list[RunWarning] = []
        self.checkpoint: CheckpointReport | None = None
        self.model_uri: str | None = None
        self.startup: Startup | None = None
        self.model_image: str | None = None
        self.merged_model_image: str | None = None
        # This attempt's start (clock, step, token counters): the pace of the ETA and rate.
        self._began: tuple[float, int, dict[str, float]] | None = None
        # (clock, counter) at this attempt's first log: the rate counts from there once a
        # later log exists, so the first steps' warm-up (torch.compile, CUDA init, the
        # allocator growing) does not drag it down for the rest of the run.
        self._first_log: tuple[float, float] | None = None
        self._last_sent: float | None = None

    @classmethod
    def from_env(
        cls,
        environ: Mapping[str, str] = os.environ,
        account_dir: Path | None = None,
        **kwargs: Any,
    ) -> ProgressReporter:
        """A reporter to the progress object the operator named, or a no-op: for local runs
        (no FINETUNE_PROGRESS_NAME), on every rank but 0, and outside a cluster."""
        if environ.get("RANK", "0") != "0":
            return cls(None)
        found = progress_object(environ, account_dir)
        if found is None:
            return cls(None)
        target, namespace, name = found
        return cls(
            ProgressObjectSink(target, namespace, name), attempt=attempt_of(environ), **kwargs
        )

    @property
    def enabled(self) -> bool:
        return self._sender is not None

    @property
    def sent(self) -> int:
        return self._sender.sent if self._sender else 0

    @property
    def failures(self) -> int:
        return self._sender.failures if self._sender else 0

    # ------------------------------------------------------------------ events
    @_never_raises
    def training_started(
        self,
        *,
        step: int,
        total_steps: int | None,
        epoch: float | None = None,
        tokens_seen: float = 0.0,
    ) -> None:
        self.stage = "training"
        self.step, self.epoch = step, epoch
        self.total_steps = total_steps if total_steps and total_steps > 0 else None
        self._began = (
            self.clock(),
            step,
            {"num_tokens": 0.0, "num_input_tokens_seen": tokens_seen},
        )
        self._first_log = None
        self._send()

    @_never_raises
    def stepped(
        self, *, step: int, epoch: float | None = None, force: bool = False, send: bool = True
    ) -> None:
        """A step is done; send=False when an event of the same step (a log, an evaluation,
        a checkpoint) follows and reports it with more to say."""
        self.step, self.epoch = step, epoch if epoch is not None else self.epoch
        if send:
            self._send(force=force)

    @_never_raises
    def started_up(self, startup: Startup) -> None:
        """The first step is done: where the time before it went (status.startup)."""
        self.startup = startup
        self._send(force=True)

    @_never_raises
    def logged(self, logs: Mapping[str, Any], *, step: int, epoch: float | None = None) -> None:
        self.step, self.epoch = step, epoch if epoch is not None else self.epoch
        self._update_metrics(logs)
        self._measure_tokens(logs)
        self._send()

    @_never_raises
    def evaluated(
        self, metrics: Mapping[str, Any], *, step: int, epoch: float | None = None
    ) -> None:
        self.step, self.epoch = step, epoch if epoch is not None else self.epoch
        self._update_metrics(metrics)
        if self.stage == "evaluating":
            self.stage = "training"
        self._send(force=True)

    @_never_raises
    def checkpointed(self, *, uri: str, step: int, count: int) -> None:
        self.checkpoint = CheckpointReport(latest=uri, step=step, count=count)
        self._send(force=True)

    @_never_raises
    def report_stage(self, stage: Stage, metrics: Mapping[str, Any] | None = None) -> None:
        """A stage change (evaluating, saving, publishing), with the metrics known then."""
        self.stage = stage
        self._update_metrics(metrics or {})
        self._send(force=True)

    @_never_raises
    def non_finite_step(
        self, values: Mapping[str, float], *, step: int, skipped: bool, flush: bool = False
    ) -> None:
        """A step whose loss or gradient norm was not finite (skipped: its batch updated
        nothing), sent at once; flush when the process ends right after (Diverged)."""
        self.step = step
        self._merge(values)  # report names already (train_loss, grad_norm)
        self.skipped_steps += int(skipped)
        self._send(force=True)
        if flush and not self.flush():
            log.warning("the last progress report was not sent in time")

    def _update_metrics(self, logs: Mapping[str, Any]) -> None:
        self._merge(_scalars(logs))

    def _merge(self, values: Mapping[str, float]) -> None:
        """The newest value of each metric wins, finite or not."""
        for name, value in values.items():
            if math.isfinite(value):
                self.metrics[name] = value
                self.non_finite.pop(name, None)
            else:
                self.non_finite[name] = spelled(value)
                self.metrics.pop(name, None)

    @_never_raises
    def warned(self, *, reason: str, step: int, message: str) -> None:
        """Something to look at that does not stop the run (a loss spike): sent at once,
        the operator makes it an Event."""
        warning = RunWarning(reason=reason, step=step, message=message[:1024])
        self.warnings = [*self.warnings, warning][-MAX_WARNINGS:]
        self._send(force=True)

    @_never_raises
    def published(self, *, model_uri: str, timeout: float = FINISH_TIMEOUT_SECONDS) -> None:
        """The final model is in output.uri. Waits (at most timeout) for the report to
        leave: a publish step after it may fail and end the process at once, and status
        must name where the model is."""
        self.model_uri = model_uri
        self._send(force=True)
        if not self.flush(timeout):
            log.warning("the report naming the final model was not sent within %.0fs", timeout)

    @_never_raises
    def pushed_images(self, *, model_image: str, merged_model_image: str | None) -> None:
        """output.oci pushed the final (and merged) model: pinned references for status."""
        self.model_image, self.merged_model_image = model_image, merged_model_image
        self._send(force=True)

    @_never_raises
    def finish(self, *, model_uri: str, timeout: float = FINISH_TIMEOUT_SECONDS) -> None:
        """Stage done: the final model is at model_uri. Waits (at most timeout) for the
        report to leave, since the process ends right after."""
        self.stage, self.model_uri = "done", model_uri
        self._send(force=True)
        assert self._sender is not None
        if not self._sender.flush(timeout):
            log.warning("the final progress report was not sent within %.0fs", timeout)

    def flush(self, timeout: float = FINISH_TIMEOUT_SECONDS) -> bool:
        return self._sender.flush(timeout) if self._sender else True

    # ------------------------------------------------------------------ report
    def report(self) -> ProgressReport:
        """The document for the current state (pure but for the injected clocks)."""
        return ProgressReport(
            attempt=self.attempt,
            stage=self.stage,
            step=self.step,
            total_steps=self.total_steps,
            epoch=self.epoch,
            tokens_per_second=self.tokens_per_second,
            eta_seconds=self._eta(),
            metrics=dict(self.metrics),
            non_finite=dict(self.non_finite),
            skipped_steps=self.skipped_steps,
            warnings=list(self.warnings),
            checkpoint=self.checkpoint,
            startup=self.startup,
            model_uri=self.model_uri,
            model_image=self.model_image,
            merged_model_image=self.merged_model_image,
            updated_at=self.now(),
        )

    def _eta(self) -> int | None:
        """(total - step) x seconds per step of this attempt (a resumed attempt's pace, not
        the previous attempt's, which may have run on other hardware)."""
        if self._began is None or self.total_steps is None or self.stage == "done":
            return None
        began, first_step, _ = self._began
        done = self.step - first_step
        if done <= 0:
            return None
        remaining = max(self.total_steps - self.step, 0)
        return round(remaining * (self.clock() - began) / done)

    def _measure_tokens(self, logs: Mapping[str, Any]) -> None:
        if self._began is None:
            return
        began, _, counted_from = self._began
        now = self.clock()
        for counter in TOKEN_COUNTERS:
            value = logs.get(counter)
            if not isinstance(value, int | float):
                continue
            if self._first_log is None:
                self._first_log = (now, float(value))
                since, tokens = began, float(value) - counted_from[counter]
            else:
                since, tokens = self._first_log[0], float(value) - self._first_log[1]
            if now > since:
                self.tokens_per_second = max(tokens, 0.0) / (now - since)
            return

    def _send(self, *, force: bool = False) -> None:
        now = self.clock()
        if not force and self._last_sent is not None and now - self._last_sent < self.interval:
            return
        self._last_sent = now
        assert self._sender is not None
        self._sender.submit(self.report())
