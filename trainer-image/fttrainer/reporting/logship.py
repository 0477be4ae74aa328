"""Keeping a pod's log after the pod is gone: the entrypoint runs the trainer with its output
through a pipe, copies every byte to the container's stdout (so `kubectl logs` is unchanged)
and writes it in chunks to the job's output location (ftapi.kept_logs has the layout).

A restart deletes the failed attempt's pods, and with them the log that explains the
failure; this keeps it where `finetune logs --attempt N` reads it. What is kept is redacted
like every message (a URL's user:password@, and the values of the pod's credential
variables), bounded (the head and the end past ftapi.kept_logs.KEEP_BYTES), and never slows
or stops training: a store that is down or slow costs kept log, not steps.
"""

from __future__ import annotations

import base64
import contextlib
import json
import os
import re
import signal
import subprocess
import sys
import threading
import time
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

from ftapi.kept_logs import KEEP_BYTES, TAIL_BYTES, TAIL_NAME, chunk_name, log_prefix, omitted_note
from ftapi.redaction import USERINFO

FLUSH_SECONDS = 5.0
CHUNK_BYTES = 1024 * 1024
LONGEST_LINE = 64 * 1024
MAX_UNSENT = 16 * 1024 * 1024
FINAL_FLUSH_SECONDS = 20.0
FORWARDED_SIGNALS = (signal.SIGTERM, signal.SIGINT, signal.SIGHUP, signal.SIGUSR1, signal.SIGUSR2)
# Variables holding credentials (the Secret-fed ones and anything named like one).
CREDENTIAL_NAME = re.compile(r"(SECRET|TOKEN|PASSWORD|API_KEY|ACCESS_KEY)", re.IGNORECASE)
SHORTEST_SECRET = 6
ENV_KEEP_BYTES = "FINETUNE_LOG_KEEP_BYTES"
ENV_FLUSH_SECONDS = "FINETUNE_LOG_FLUSH_SECONDS"


def secret_values(environ: Mapping[str, str]) -> list[str]:
    """The values of the credential variables, longest first (so a secret that contains
    another is replaced whole)."""
    values = {
        v for k, v in environ.items() if CREDENTIAL_NAME.search(k) and len(v) >= SHORTEST_SECRET
    }
    for value in list(values):  # a registry Secret's parts, as a library might quote them
        values.update(p for p in docker_config_secrets(value) if len(p) >= SHORTEST_SECRET)
    return sorted(values, key=len, reverse=True)


def docker_config_secrets(text: str) -> list[str]:
    """The credentials inside a Docker config (a dockerconfigjson Secret's value): each
    entry's auth (base64 user:password), its decoded password, password and identity token."""
    if not text.lstrip().startswith("{"):
        return []
    try:
        auths = json.loads(text).get("auths") or {}
    except (ValueError, AttributeError):
        return []
    found = []
    for entry in auths.values() if isinstance(auths, dict) else []:
        if not isinstance(entry, dict):
            continue
        for key in ("auth", "password", "identitytoken", "registrytoken"):
            if isinstance(entry.get(key), str):
                found.append(entry[key])
        with contextlib.suppress(ValueError, UnicodeDecodeError):
            found.append(base64.b64decode(entry.get("auth") or "").decode().partition(":")[2])
    return [value for value in found if value]


def make_redactor(secrets: Sequence[str]) -> Callable[[bytes], bytes]:
    pattern = re.compile("|".join(re.escape(s) for s in secrets)) if secrets else None

    def redact(data: bytes) -> bytes:
        text = data.decode("utf-8", "surrogateescape")
        text = USERINFO.sub(r"\g<scheme>", text)
        if pattern is not None:
            text = pattern.sub("[redacted]", text)
        return text.encode("utf-8", "surrogateescape")

    return redact


@dataclass
class KeptLog:
    """What to write where, from the bytes fed to it. Pure: no I/O, no clock.

    Whole lines only (a line longer than LONGEST_LINE is cut), each redacted once. Chunks
    until `keep_bytes` are kept, then a rolling tail of `tail_bytes`."""

    redact: Callable[[bytes], bytes]
    keep_bytes: int = KEEP_BYTES
    tail_bytes: int = TAIL_BYTES
    sequence: int = 0
    kept: int = 0
    omitted: int = 0
    pending: bytearray = field(default_factory=bytearray)
    partial: bytes = b""
    tail: bytearray = field(default_factory=bytearray)
    tail_changed: bool = False

    def feed(self, data: bytes) -> None:
        self.partial += data
        if b"\n" in self.partial:
            complete, _, self.partial = self.partial.rpartition(b"\n")
            self._add(complete + b"\n")
        while len(self.partial) > LONGEST_LINE:
            self._add(self.partial[:LONGEST_LINE] + b"\n")
            self.partial = self.partial[LONGEST_LINE:]

    def _add(self, lines: bytes) -> None:
        lines = self.redact(lines)
        room = max(self.keep_bytes - self.kept - len(self.pending), 0)
        if len(lines) <= room:
            self.pending += lines
            return
        cut = lines.rfind(b"\n", 0, room) + 1 if room else 0  # the head ends on a line
        self.pending += lines[:cut]
        self.tail += lines[cut:]
        self.tail_changed = True
        if len(self.tail) > self.tail_bytes:
            drop = len(self.tail) - self.tail_bytes
            newline = self.tail.find(b"\n", drop)
            drop = newline + 1 if newline != -1 else drop
            self.omitted += drop
            del self.tail[:drop]

    @property
    def buffered(self) -> int:
        return len(self.pending)

    def take(self, *, final: bool = False) -> list[tuple[str, bytes]]:
        """(object name, content) to write now, in order; `final` includes a last line that
        has no newline yet."""
        if final and self.partial:
            self._add(self.partial + b"\n")
            self.partial = b""
        writes = []
        while self.pending:
            piece = bytes(self.pending[:CHUNK_BYTES])
            if len(self.pending) > CHUNK_BYTES:
                piece = piece[: piece.rfind(b"\n") + 1] or piece
            del self.pending[: len(piece)]
            self.sequence += 1
            self.kept += len(piece)
            writes.append((chunk_name(self.sequence), piece))
        if self.tail_changed:
            note = omitted_note(self.omitted).encode() if self.omitted else b""
            writes.append((TAIL_NAME, note + bytes(self.tail)))
            self.tail_changed = False
        return writes


class Shipper:
    """Writes a KeptLog's pieces with `put(name, content)` from a thread of its own, every
    `interval` seconds and at the end; a failed write is tried again at the next tick (at
    most MAX_UNSENT bytes wait, then the oldest are dropped and counted)."""

    def __init__(self, log: KeptLog, put: Callable[[str, bytes], None], interval: float) -> None:
        self.log = log
        self.put = put
        self.interval = interval
        self.unsent: list[tuple[str, bytes]] = []
        self.dropped = 0
        self.failures = 0
        self.last_error = ""
        self._lock = threading.Lock()
        self._wake = threading.Event()
        self._stop = False
        self._thread = threading.Thread(target=self._loop, name="log-shipper", daemon=True)

    def start(self) -> None:
        self._thread.start()

    def feed(self, data: bytes) -> None:
        with self._lock:
            self.log.feed(data)
            if self.log.buffered >= CHUNK_BYTES:
                self._wake.set()

    def _loop(self) -> None:
        while True:
            self._wake.wait(self.interval)
            self._wake.clear()
            stopping = self._stop
            self.flush(final=stopping)
            if stopping:
                return

    def flush(self, *, final: bool = False) -> None:
        with self._lock:
            self.unsent += self.log.take(final=final)
            while sum(len(c) for _, c in self.unsent) > MAX_UNSENT and len(self.unsent) > 1:
                self.dropped += len(self.unsent.pop(0)[1])
            todo, self.unsent = self.unsent, []
        for index, (name, content) in enumerate(todo):
            try:
                self.put(name, content)
            except Exception as exc:  # a store that is down must not stop training
                self.failures += 1
                self.last_error = f"{type(exc).__name__}: {exc}"
                with self._lock:
                    self.unsent = todo[index:] + self.unsent
                return

    def close(self, timeout: float = FINAL_FLUSH_SECONDS) -> bool:
        """The last flush (the final partial line included); False when it did not finish
        in `timeout` or something stayed unsent."""
        self._stop = True
        self._wake.set()
        self._thread.join(timeout)
        return not self._thread.is_alive() and not self.unsent


@dataclass(frozen=True)
class Target:
    """Where this pod's log goes."""

    prefix: str
    """s3://bucket/.../logs/attempt-N/rank-R/"""
    s3: Any
    """The job's spec.output.s3 (ftapi S3Spec or None)."""


def shipping_target(environ: Mapping[str, str], config_path: str) -> Target | None:
    """Where to keep this pod's log: only in a trainer pod the operator made (it sets the
    attempt) whose job writes to S3."""
    from ftapi.progress import ENV_ATTEMPT

    attempt = environ.get(ENV_ATTEMPT)
    if attempt is None or not os.path.isfile(config_path):
        return None
    from ftapi import load_job

    job = load_job(config_path)
    uri = job.spec.output.uri
    if not uri.startswith("s3://"):
        return None
    rank = int(environ.get("JOB_COMPLETION_INDEX", "0") or 0)
    return Target(log_prefix(uri, int(attempt), rank), job.spec.output.s3)


def s3_put(target: Target) -> Callable[[str, bytes], None]:
    from fttrainer.storage.s3 import s3_client

    client = s3_client(target.s3, concurrency=2, read_timeout=15.0)
    bucket, _, prefix = target.prefix.removeprefix("s3://").partition("/")

    def put(name: str, content: bytes) -> None:
        client.put_object(
            Bucket=bucket, Key=prefix + name, Body=content, ContentType="text/plain; charset=utf-8"
        )

    return put


def run_keeping_log(
    command: Sequence[str],
    put: Callable[[str, bytes], None],
    environ: Mapping[str, str],
    *,
    out: int = 1,
) -> int:
    """Run `command` with its stdout and stderr through this process: copied to `out` as they
    come and kept with `put`. Signals are passed on; the exit status is the command's (128 +
    the signal when a signal ended it, as a shell reports it)."""
    log = KeptLog(
        make_redactor(secret_values(environ)),
        keep_bytes=int(environ.get(ENV_KEEP_BYTES, KEEP_BYTES)),
    )
    shipper = Shipper(log, put, float(environ.get(ENV_FLUSH_SECONDS, FLUSH_SECONDS)))
    reader, writer = os.pipe()
    try:
        child = subprocess.Popen(list(command), stdout=writer, stderr=writer)
    finally:
        os.close(writer)
    for forwarded in FORWARDED_SIGNALS:
        signal.signal(forwarded, lambda number, _frame: child.send_signal(number))
    shipper.start()
    with os.fdopen(reader, "rb", buffering=0) as pipe:
        while data := pipe.read(65536):
            _write_all(out, data)
            shipper.feed(data)
    code = child.wait()
    if not shipper.close():
        kind = "kept only in part" if shipper.failures else "not all kept"
        why = shipper.last_error or "timeout"
        print(f"fttrainer.entrypoint: this pod's log was {kind} ({why})", file=sys.stderr)
    return 128 - code if code < 0 else code


def _write_all(fd: int, data: bytes) -> None:
    view = memoryview(data)
    while view:
        try:
            written = os.write(fd, view)
        except BlockingIOError:
            time.sleep(0.01)
            continue
        view = view[written:]
