"""Where a pod's log is kept after the pod is gone: the layout the trainer writes and the
client reads, under the job's output location.

    <output.uri>/logs/attempt-<N>/rank-<R>/000001.log, 000002.log, ...   in order, whole lines
    <output.uri>/logs/attempt-<N>/rank-<R>/tail.log                       after the cap: the end

N is the attempt (status.attempt), R the pod's node rank (its Indexed Job completion index);
every process of the pod writes into its one log, as `kubectl logs` shows it. Chunks are
written as the run goes (every few seconds), so a pod killed without warning loses at most
the last interval. Past KEEP_BYTES a pod's log keeps its head (the chunks) and its end
(tail.log, the last TAIL_BYTES, rewritten as it grows): where it started and how it ended.
"""

from __future__ import annotations

import re

KEEP_BYTES = 64 * 1024 * 1024
TAIL_BYTES = 4 * 1024 * 1024
TAIL_NAME = "tail.log"
_CHUNK = re.compile(r"^(\d{6})\.log$")
_RANK = re.compile(r"attempt-(\d+)/rank-(\d+)/")


def log_prefix(output_uri: str, attempt: int, rank: int) -> str:
    return f"{output_uri.rstrip('/')}/logs/attempt-{attempt}/rank-{rank}/"


def logs_root(output_uri: str) -> str:
    return f"{output_uri.rstrip('/')}/logs/"


def chunk_name(sequence: int) -> str:
    return f"{sequence:06d}.log"


def chunk_sequence(name: str) -> int | None:
    """The chunk's number, from its file name; None for anything else (tail.log)."""
    found = _CHUNK.match(name)
    return int(found.group(1)) if found else None


def attempt_and_rank(key: str) -> tuple[int, int] | None:
    """(attempt, rank) of a key under logs/; None for keys of another shape."""
    found = _RANK.search(key)
    return (int(found.group(1)), int(found.group(2))) if found else None


def omitted_note(omitted: int) -> str:
    return f"[finetune: {omitted} bytes of this log were not kept; its end follows]\n"
