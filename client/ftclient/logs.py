"""`finetune logs`: a job's log across its attempts, from its pods while they exist and from
the log the trainer kept (ftapi.kept_logs) once they are gone.

    following (-f), no --attempt: the current attempt, waiting for its pod if none runs yet,
    then each later attempt as the operator starts it, until the job ends
    --attempt N: that attempt only (its pod's log, or the kept one)
"""

from __future__ import annotations

import queue
import threading
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from typing import Any

from ftapi.kept_logs import TAIL_NAME, attempt_and_rank, chunk_sequence, log_prefix, logs_root

from .errors import ClientError, NotFoundError
from .kube import INDEX_LABEL, Kube
from .status import is_final, phase_of
from .store import list_keys, read_text, split_uri

POLL_SECONDS = 2.0


@dataclass(frozen=True)
class Line:
    attempt: int
    rank: int
    text: str
    notice: bool = False
    """A line of ours (waiting, a new attempt), not the trainer's."""


def kept_log(s3: Any, output_uri: str, attempt: int, rank: int) -> list[str] | None:
    """The kept log of one pod, in order (chunks, then the tail past the cap); None when
    nothing was kept."""
    prefix = log_prefix(output_uri, attempt, rank)
    bucket, _ = split_uri(prefix)
    names = {key.rsplit("/", 1)[-1]: key for key in list_keys(s3, prefix)}
    if not names:
        return None
    chunks = sorted(
        (seq, key) for name, key in names.items() if (seq := chunk_sequence(name)) is not None
    )
    keys = [key for _, key in chunks] + ([names[TAIL_NAME]] if TAIL_NAME in names else [])
    return "".join(read_text(s3, f"s3://{bucket}/{key}") or "" for key in keys).splitlines()


def kept_attempts(s3: Any, output_uri: str) -> dict[int, list[int]]:
    """{attempt: [ranks]} of every log kept under the output."""
    found: dict[int, set[int]] = {}
    for key in list_keys(s3, logs_root(output_uri)):
        pair = attempt_and_rank(key)
        if pair is not None:
            found.setdefault(pair[0], set()).add(pair[1])
    return {attempt: sorted(ranks) for attempt, ranks in sorted(found.items())}


def _rank_of(pod: Any) -> int:
    labels = pod.metadata.labels or {}
    annotations = pod.metadata.annotations or {}
    value = labels.get(INDEX_LABEL) or annotations.get(INDEX_LABEL) or "0"
    return int(value)


def _started(pod: Any) -> bool:
    """Whether the trainer container has a log to read (running or ended)."""
    for container in pod.status.container_statuses or []:
        state = container.state
        if state is not None and (state.running is not None or state.terminated is not None):
            return True
    return False


def _ended(pod: Any) -> bool:
    return (
        pod.status.phase in ("Succeeded", "Failed") or pod.metadata.deletion_timestamp is not None
    )


class LogFollower:
    """Reads one job's logs; `s3()` gives an S3 client for the kept logs (made on first use:
    following a live pod needs no S3 credentials)."""

    def __init__(self, kube: Kube, s3: Callable[[], Any], *, poll: float = POLL_SECONDS) -> None:
        self.kube = kube
        self._s3_factory = s3
        self._s3: Any = None
        self.poll = poll

    def s3(self) -> Any:
        if self._s3 is None:
            self._s3 = self._s3_factory()
        return self._s3

    def lines(
        self,
        name: str,
        *,
        attempt: int | None = None,
        rank: int | None = 0,
        follow: bool = False,
        stop: threading.Event | None = None,
    ) -> Iterator[Line]:
        """`rank` None: every rank, each line labelled."""
        stop = stop or threading.Event()
        try:
            found: dict[str, Any] | None = self.kube.get(name)
        except NotFoundError:
            if not follow:
                raise
            # Following a job about to be submitted (a script tailing what it submits).
            waiting = f"[finetune: waiting for FineTuneJob {name} to be created]"
            yield Line(attempt or 0, rank or 0, waiting, notice=True)
            found = self._await_creation(name, stop)
        if found is None:
            return
        job = found
        target = (
            attempt if attempt is not None else int((job.get("status") or {}).get("attempt", 0))
        )
        waiting_said = False
        while not stop.is_set():
            pods = [p for p in self.kube.pods(name, target) if rank is None or _rank_of(p) == rank]
            started = [p for p in pods if _started(p)]
            current = int((job.get("status") or {}).get("attempt", 0))
            if started and (rank is not None or len(started) == len(pods)):
                yield from self._stream(started, target, follow=follow, stop=stop)
            elif target < current or is_final(job) or not follow:
                kept = self._kept(job, target, rank)
                if kept is None and not follow:
                    yield Line(target, rank or 0, self._nothing(job, target), notice=True)
                    return
                yield from kept or []
            else:
                if not waiting_said:
                    yield Line(
                        target,
                        rank or 0,
                        f"[finetune: waiting for the pod of attempt {target} "
                        f"(job {phase_of(job)})]",
                        notice=True,
                    )
                    waiting_said = True
                stop.wait(self.poll)
                job = self._refresh(name, job)
                continue
            if attempt is not None or not follow:
                return
            later = self._await_next(name, target, stop)
            if later is None or (
                is_final(later) and int(later["status"].get("attempt", 0)) <= target
            ):
                return
            job = later
            target += 1
            waiting_said = False
            yield Line(
                target,
                rank or 0,
                f"[finetune: attempt {target} ({job['status'].get('message') or 'restarted'})]",
                notice=True,
            )

    def _await_creation(self, name: str, stop: threading.Event) -> dict[str, Any] | None:
        while not stop.wait(self.poll):
            try:
                return self.kube.get(name)
            except NotFoundError:
                continue
        return None

    def _refresh(self, name: str, job: dict[str, Any]) -> dict[str, Any]:
        try:
            return self.kube.get(name)
        except NotFoundError:
            raise ClientError(f"FineTuneJob {name} was deleted") from None

    def _await_next(self, name: str, target: int, stop: threading.Event) -> dict[str, Any] | None:
        """After an attempt's log ended: the job once it has a later attempt or has ended."""
        while not stop.is_set():
            try:
                job = self.kube.get(name)
            except NotFoundError:
                return None
            if is_final(job) or int((job.get("status") or {}).get("attempt", 0)) > target:
                return job
            if phase_of(job) == "Suspended":
                return None
            stop.wait(self.poll)
        return None

    def _stream(
        self, pods: list[Any], attempt: int, *, follow: bool, stop: threading.Event
    ) -> Iterator[Line]:
        if len(pods) == 1:
            pod = pods[0]
            for text in self.kube.stream_log(pod.metadata.name, follow=follow and not _ended(pod)):
                yield Line(attempt, _rank_of(pod), text)
                if stop.is_set():
                    return
            return
        merged: queue.Queue[Line | None] = queue.Queue(maxsize=10000)

        def read(pod: Any) -> None:
            try:
                for text in self.kube.stream_log(
                    pod.metadata.name, follow=follow and not _ended(pod)
                ):
                    merged.put(Line(attempt, _rank_of(pod), text))
                    if stop.is_set():
                        break
            except ClientError as exc:
                merged.put(Line(attempt, _rank_of(pod), f"[finetune: {exc}]", notice=True))
            finally:
                merged.put(None)

        threads = [threading.Thread(target=read, args=(pod,), daemon=True) for pod in pods]
        for thread in threads:
            thread.start()
        remaining = len(threads)
        while remaining:
            item = merged.get()
            if item is None:
                remaining -= 1
            else:
                yield item

    def _kept(self, job: dict[str, Any], attempt: int, rank: int | None) -> list[Line] | None:
        output = (job.get("spec") or {}).get("output", {}).get("uri", "")
        if not output.startswith("s3://"):
            return None
        ranks = [rank] if rank is not None else kept_attempts(self.s3(), output).get(attempt, [])
        found: list[Line] = []
        for each in ranks:
            lines = kept_log(self.s3(), output, attempt, each)
            if lines is not None:
                found += [Line(attempt, each, text) for text in lines]
        return found if found else None

    def _nothing(self, job: dict[str, Any], attempt: int) -> str:
        return (
            f"[finetune: no log of attempt {attempt}: no pod of it runs and none was kept "
            f"(job {phase_of(job)}, attempt {(job.get('status') or {}).get('attempt', 0)})]"
        )


def wait_for(
    kube: Kube, name: str, *, timeout: float | None, poll: float = POLL_SECONDS
) -> dict[str, Any] | None:
    """The job once it has ended (status.ended); None when it was deleted; raises
    TimeoutError after `timeout` seconds."""
    from .status import ended

    deadline = None if timeout is None else time.monotonic() + timeout
    while True:
        try:
            job = kube.get(name)
        except NotFoundError:
            return None
        if ended(job):
            return job
        if deadline is not None and time.monotonic() >= deadline:
            raise TimeoutError(name)
        time.sleep(poll if deadline is None else min(poll, max(deadline - time.monotonic(), 0.05)))
