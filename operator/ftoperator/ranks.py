"""What the ranks' own reports (ftapi.progress.RankReport) tell the operator. Pure.

    silences(ranks, attempt, now)               each live rank, with the seconds since its
                                                last report (past minimumSeconds: Stalled)
    slow_ranks(ranks, attempt, factor)          rank -> how many times slower it computes
                                                than the median of the others
    track_stragglers(previous, ranks, ...)      status.stragglers next, and which of them
                                                have been slow for windowSeconds on end
                                                (their Warning Event is due)
    other_stalls(ranks, attempt, verdict)       the ranks whose watchdog also stopped them
                                                (their last report's `stalled`), for a
                                                Stalled verdict that names one rank

Every rank re-sends its report at least every ftapi.progress.heartbeat_seconds from a thread
of its own, so a rank waiting in a collective keeps reporting and a stopped or frozen one
goes quiet: a hang names the rank that caused it. A rank's compute time is its forward
passes' (no collective inside them under data parallelism), so a rank that the others wait
for stands out while all step times look alike.
"""

from __future__ import annotations

import statistics
from collections.abc import Mapping
from dataclasses import dataclass
from datetime import datetime

from ftapi.progress import RankReport
from ftapi.v1alpha1.scheduling import StragglerDetection
from ftapi.v1alpha1.status import Straggler

# The fewest ranks with a compute time before one can be called slower than the others.
MIN_RANKS = 2


def current(ranks: Mapping[int, RankReport], attempt: int) -> dict[int, RankReport]:
    """The reports of this attempt's ranks (a torn-down attempt's late writes left out)."""
    return {rank: report for rank, report in ranks.items() if report.attempt == attempt}


def silences(
    ranks: Mapping[int, RankReport], attempt: int, now: datetime
) -> list[tuple[RankReport, float]]:
    """This attempt's ranks that have not said they are done, by rank, each with the
    seconds since its last report."""
    return [
        (report, (now - report.updated_at).total_seconds())
        for _, report in sorted(current(ranks, attempt).items())
        if not report.done
    ]


# How much of another rank's stall verdict a failure message repeats (its first line, its
# middle cut first: the deadline opens it, the collective in flight ends it; the whole text
# and the stack stay in its report).
OTHER_STALL_CHARS = 600


def other_stalls(ranks: Mapping[int, RankReport], attempt: int, verdict: str) -> str:
    """`; also stopped by its watchdog: rank 1 (pod p on node n): <its verdict>` for every
    rank of this attempt whose last report says its watchdog stopped it and that `verdict`
    (one rank's termination message) does not name already; empty when none."""
    others = [
        f"{where(r.rank, r.pod, r.node)}: {_ends(r.stalled.splitlines()[0], OTHER_STALL_CHARS)}"
        for r in sorted(current(ranks, attempt).values(), key=lambda r: r.rank)
        if r.stalled and f"rank {r.rank}:" not in verdict
    ]
    return f"; also stopped by its watchdog: {'; '.join(others)}" if others else ""


# How long a Stalled verdict waits for the gang's other watchdogs after the first rank's pod
# failed: each fires at its own deadline, seconds apart (more on a busy node), and the one
# waiting in a collective names what is in flight, the most useful line of the verdict.
PEER_STALL_GRACE_SECONDS = 10.0


def peer_stalls_due(
    ranks: Mapping[int, RankReport],
    attempt: int,
    verdict: str,
    failed_at: datetime | None,
    now: datetime,
) -> float | None:
    """Seconds to wait before ending the attempt on `verdict` (one rank's Stalled
    termination message, its pod failed at `failed_at`): while another rank of the attempt
    has neither said it stalled nor finished, for PEER_STALL_GRACE_SECONDS at most. None:
    decide now."""
    if failed_at is None:
        return None
    # At most the grace from now, whatever the node's clock says.
    left = min(
        PEER_STALL_GRACE_SECONDS - (now - failed_at).total_seconds(), PEER_STALL_GRACE_SECONDS
    )
    pending = [
        r
        for r in current(ranks, attempt).values()
        if not r.done and not r.stalled and f"rank {r.rank}:" not in verdict
    ]
    return left if left > 0 and pending else None


def _ends(text: str, limit: int) -> str:
    """`text`, or its first and last parts with " ... " between, in `limit` characters."""
    if len(text) <= limit:
        return text
    head = (limit - 5) // 3
    return f"{text[:head]} ... {text[len(text) - (limit - 5 - head) :]}"


def where(rank: int, pod: str | None, node: str | None) -> str:
    """`rank 1 (pod p on node n)`: what a message names."""
    at = [f"pod {pod}" if pod else "", f"node {node}" if node else ""]
    place = " on ".join(part for part in at if part)
    return f"rank {rank} ({place})" if place else f"rank {rank}"


def slow_ranks(ranks: Mapping[int, RankReport], attempt: int, factor: float) -> dict[int, float]:
    """Rank -> its compute time over the median of the other ranks', for the ranks slower
    than `factor` times that (finished ranks left out)."""
    timed = {
        rank: report.compute_seconds
        for rank, report in current(ranks, attempt).items()
        if report.compute_seconds and not report.done
    }
    if len(timed) < MIN_RANKS:
        return {}
    found = {}
    for rank, seconds in timed.items():
        others = statistics.median(v for r, v in timed.items() if r != rank)
        if others > 0 and seconds > factor * others:
            found[rank] = round(seconds / others, 2)
    return found


@dataclass(frozen=True)
class Stragglers:
    now: list[Straggler]
    """status.stragglers next: slow ranks, each with when it was first seen slow."""
    due: list[Straggler]
    """Those slow for windowSeconds on end whose Warning Event was not sent yet."""
    requeue_after: float | None
    """Seconds until the next one becomes due (None: none pending)."""


def track_stragglers(
    previous: list[Straggler],
    ranks: Mapping[int, RankReport],
    attempt: int,
    spec: StragglerDetection,
    now: datetime,
) -> Stragglers:
    if not spec.enabled:
        return Stragglers([], [], None)
    reports = current(ranks, attempt)
    before = {s.rank: s for s in previous}
    found, due, waits = [], [], []
    for rank, ratio in sorted(slow_ranks(ranks, attempt, spec.factor).items()):
        report, old = reports[rank], before.get(rank)
        since = old.since if old is not None else now
        warned = old.warned if old is not None else False
        elapsed = (now - since).total_seconds()
        straggler = Straggler(
            rank=rank, pod=report.pod, node=report.node, ratio=ratio, since=since, warned=warned
        )
        if not warned and elapsed >= spec.window_seconds:
            straggler.warned = True
            due.append(straggler)
        elif not warned:
            waits.append(spec.window_seconds - elapsed)
        found.append(straggler)
    return Stragglers(found, due, min(waits) + 1.0 if waits else None)


def straggler_message(straggler: Straggler, spec: StragglerDetection) -> str:
    place = where(straggler.rank, straggler.pod, straggler.node)
    return (
        f"{place} computes {straggler.ratio:g}x slower than the median of the other ranks "
        f"since {straggler.since:%H:%M:%S}Z (runPolicy.stragglerDetection factor "
        f"{spec.factor:g}, windowSeconds {spec.window_seconds}); every step waits for it. "
        "If it lasts, cordon that node and delete the pod: the job restarts (one of "
        "runPolicy.maxRestarts) from its newest checkpoint on the other nodes"
    )
