"""The operator benchmark's report (bench/operator_load.py): repeats folded into
min..median..max, the verdicts against the peer, the table. Pure: it reads what the phases
measured and decides nothing about how they ran.

A verdict compares ours with the peer on a row where lower is better:

    met           ours' worst beats the peer's best, or the medians differ (ours lower) by
                  more than the larger of the two ranges (max - min)
    missed        the same the other way round
    within noise  neither: the repeats overlap too much to tell

One repeat has no range: the verdict then only says which was lower, and the report says
there was one run.
"""

from __future__ import annotations

import argparse
import math
import statistics
from collections.abc import Sequence
from dataclasses import asdict, dataclass, field
from typing import Any, Protocol

MET, MISSED, NOISE = "met", "missed", "within noise"

# (title, summary key, format)
ROWS = (
    ("apply rate achieved (/s)", "apply_rate", ".1f"),
    ("create call p50 (ms)", "call_p50_ms", ".0f"),
    ("create call p99 (ms)", "call_p99_ms", ".0f"),
    ("due -> Job p50 (s)", "due_p50_s", ".3f"),
    ("due -> Job p99 (s)", "due_p99_s", ".3f"),
    ("due -> Job max (s)", "due_max_s", ".3f"),
    ("first due -> every Job (s)", "due_all_s", ".1f"),
    ("create sent -> Job p50 (s)", "p50_s", ".3f"),
    ("create sent -> Job p90 (s)", "p90_s", ".3f"),
    ("create sent -> Job p99 (s)", "p99_s", ".3f"),
    ("create sent -> Job max (s)", "max_s", ".3f"),
    ("every Job exists after (s)", "all_s", ".1f"),
    ("Jobs created per s", "throughput", ".1f"),
    ("window: work ended after (s)", "window_s", ".1f"),
    ("API requests per job", "requests_per_job", ".2f"),
    ("  ... until every Job", "requests_created_per_job", ".2f"),
    ("API server CPU ms per job", "apiserver_cpu_ms_per_job", ".1f"),
    ("API server idle (% core)", "apiserver_idle_percent", ".1f"),
    ("controller CPU s", "controller_cpu_s", ".1f"),
    ("controller CPU % (mean)", "controller_cpu_percent", ".0f"),
    ("controller CPU % (max 5 s)", "controller_max_cpu_percent", ".0f"),
    ("controller idle (% core)", "controller_idle_percent", ".1f"),
    ("controller peak RSS (MB)", "controller_peak_rss_mb", ".0f"),
    ("this script's CPU s", "bench_cpu_s", ".1f"),
    ("pods Running at the end", "pods_running", ".0f"),
)
TITLES = {key: title for title, key, _ in ROWS}
FORMATS = {key: fmt for _, key, fmt in ROWS}
# The targets against the peer (ours <= factor x the peer's), then rows compared the same
# way but not targets. Latency counts from each job's due time (the pacing's), the same
# arrival for every side: the "create sent" rows start when a client thread got to send,
# after queueing behind slower creates, and are shown, not compared (docs/benchmarks.md,
# "Equal arrival").
PEER_TARGETS = (
    ("due_all_s", 1.0),
    ("due_p99_s", 1.0),
    ("apiserver_cpu_ms_per_job", 1.0),
    ("controller_cpu_s", 1.0),
    ("requests_per_job", 1.2),
)
PEER_COMPARED = (("due_p50_s", 1.0), ("controller_peak_rss_mb", 1.0))
# Absolute targets on the operator's worst repeat: (title, key, below this)
TARGETS = (
    ("every Job exists after its first due create", "due_all_s", 120.0, "s"),
    ("p99 due -> Job", "due_p99_s", 5.0, "s"),
    ("operator peak RSS", "controller_peak_rss_mb", 300.0, "MB"),
)
TARGET_STEADY_CPU_PERCENT = 100.0  # of one core
ORDER = ("raw", "kubeflow", "kubeflow-tuned", "operator")
OURS = "operator"


class PhaseLike(Protocol):
    name: str
    jobs: int
    repeat: int
    position: int
    loaded: bool
    load: tuple[float, float]
    errors: list[str]
    relisted: int
    reconcile_mean_ms: float | None
    passes: float | None
    watch_events: dict[str, float]
    gc_seconds: dict[str, float]
    requests: dict[str, float]
    controllers: dict[str, dict[str, float | None]]
    steady: dict[str, float]

    def summary(self) -> dict[str, Any]: ...


def percentile(values: Sequence[float], q: float) -> float | None:
    """Nearest-rank percentile (q in 0..100); None for no values."""
    if not values:
        return None
    ordered = sorted(values)
    return ordered[max(0, math.ceil(q / 100 * len(ordered)) - 1)]


@dataclass(frozen=True)
class Spread:
    low: float
    median: float
    high: float
    runs: int

    @classmethod
    def of(cls, values: Sequence[float | None]) -> Spread | None:
        known = [float(v) for v in values if v is not None]
        if not known:
            return None
        return cls(min(known), statistics.median(known), max(known), len(known))

    @property
    def width(self) -> float:
        return self.high - self.low

    def scaled(self, factor: float) -> Spread:
        return Spread(self.low * factor, self.median * factor, self.high * factor, self.runs)

    def format(self, fmt: str) -> str:
        if self.runs == 1:
            return format(self.median, fmt)
        return f"{self.median:{fmt}} ({self.low:{fmt}}..{self.high:{fmt}})"


def verdict(ours: Spread, peer: Spread) -> str:
    """met / missed / within noise for a row where lower is better (module docstring)."""
    noise = max(ours.width, peer.width)
    if ours.high < peer.low or peer.median - ours.median > noise:
        return MET
    if ours.low > peer.high or ours.median - peer.median > noise:
        return MISSED
    return NOISE


def spreads(phases: Sequence[PhaseLike]) -> dict[str, dict[str, Spread | None]]:
    """Every row of every phase over its repeats: {phase: {key: Spread}}."""
    by_name: dict[str, list[dict[str, Any]]] = {}
    for phase in phases:
        by_name.setdefault(phase.name, []).append(phase.summary())
    keys = {key for _, key, _ in ROWS}
    return {
        name: {key: Spread.of([s.get(key) for s in summaries]) for key in keys}
        for name, summaries in by_name.items()
    }


def peer_name(names: Sequence[str]) -> str | None:
    """The peer the targets are judged against: Kubeflow tuned, else as shipped."""
    return next((n for n in ("kubeflow-tuned", "kubeflow") if n in names), None)


@dataclass(frozen=True)
class Verdict:
    key: str
    title: str
    factor: float
    target: bool
    result: str
    ours: Spread
    peer: Spread

    def line(self, peer: str, fmt: str) -> str:
        times = f"{self.factor:g}x " if self.factor != 1 else ""
        kind = "" if self.target else " (compared, not a target)"
        theirs = self.peer.scaled(self.factor).format(fmt)
        return (f"{self.result.upper():<13} {self.title} <= {times}{peer}'s{kind}: ours "
                f"{self.ours.format(fmt)} vs {theirs}")  # fmt: skip


def peer_verdicts(table: dict[str, dict[str, Spread | None]]) -> list[Verdict]:
    peer = peer_name(list(table))
    if peer is None or OURS not in table:
        return []
    out = []
    for rows, target in ((PEER_TARGETS, True), (PEER_COMPARED, False)):
        for key, factor in rows:
            ours, theirs = table[OURS].get(key), table[peer].get(key)
            if ours is None or theirs is None:
                continue
            out.append(Verdict(key, TITLES[key], factor, target,
                               verdict(ours, theirs.scaled(factor)), ours, theirs))  # fmt: skip
    return out


def absolute_checks(phases: Sequence[PhaseLike]) -> list[tuple[str, bool]]:
    """The operator's own targets, on its worst repeat (a missing figure fails)."""
    ours = [p for p in phases if p.name == OURS]
    out = []
    for title, key, limit, unit in TARGETS:
        values: list[float | None] = [p.summary().get(key) for p in ours]
        known = [v for v in values if v is not None]
        worst = max(known) if known and len(known) == len(values) else None
        ok = worst is not None and worst < limit
        missing = sum(p.summary()["missing"] for p in ours)
        counted = key in ("all_s", "due_all_s") and missing
        extra = f" ({missing} Jobs never appeared)" if counted else ""
        shown = "n/a" if worst is None else f"{worst:.3g} {unit}"
        out.append((f"{'PASS' if ok else 'FAIL'}  {title}{extra}, worst repeat: {shown} "
                    f"(target < {limit:g} {unit})", ok))  # fmt: skip
    for phase in ours:
        if phase.steady:
            cpu = phase.steady["operator_cpu_percent"]
            ok = cpu < TARGET_STEADY_CPU_PERCENT
            limit = TARGET_STEADY_CPU_PERCENT
            out.append((f"{'PASS' if ok else 'FAIL'}  operator CPU in the steady state "
                        f"(#{phase.repeat + 1}): {cpu:.3g} % of one core (target < {limit:g})",
                        ok))  # fmt: skip
    return out


def missed(phases: Sequence[PhaseLike]) -> list[str]:
    """The targets missed: an absolute one failed, or the peer's beaten us beyond noise."""
    failed = [text for text, ok in absolute_checks(phases) if not ok]
    return failed + [v.title for v in peer_verdicts(spreads(phases)) if v.target and
                     v.result == MISSED]  # fmt: skip


def render(phases: Sequence[PhaseLike], args: argparse.Namespace,
           cost: dict[str, float | None] | None) -> str:  # fmt: skip
    table = spreads(phases)
    names = [n for n in ORDER if n in table]
    peer = peer_name(names)
    repeats = max((p.repeat for p in phases), default=0) + 1
    ratios = [(f"op/{n.split('-')[-1]}", n) for n in ("raw", peer) if n and n in table]
    width = max(24 if repeats > 1 else 12, *(len(n) + 2 for n in names))
    lines = ["", f"{args.jobs} jobs at {args.rate or 'max'}/s; {repeats} repeat(s), the "
             "phase order rotated; cells: median (min..max)" if repeats > 1 else
             f"{args.jobs} jobs at {args.rate or 'max'}/s; one run (no spread)"]  # fmt: skip
    loaded = [f"{p.name} #{p.repeat + 1}" for p in phases if p.loaded]
    if loaded:
        lines.append(f"LOADED: {', '.join(loaded)} started above --max-load "
                     f"{args.max_load:g}: not for comparison")  # fmt: skip
    if cost:
        lines.append(
            f"a FineTuneJob create alone (no controller running): one by one p50 "
            f"{cost['sequential_p50_ms']:.1f} ms; a burst p50 {cost['burst_p50_ms']:.1f} ms, "
            f"p99 {cost['burst_p99_ms']:.1f} ms, {cost['burst_per_s']:.0f}/s"
        )
    lines.append(f"{'':<30}" + "".join(f"{n:>{width}}" for n in names)
                 + "".join(f"{title:>10}" for title, _ in ratios))  # fmt: skip
    for title, key, fmt in ROWS:
        row = ""
        for name in names:
            spread = table[name].get(key)
            row += f"{'-' if spread is None else spread.format(fmt):>{width}}"
        ours = table.get(OURS, {}).get(key)
        for _, base_name in ratios:
            base = table[base_name].get(key)
            ratio = ours.median / base.median if ours and base and base.median else None
            row += f"{'-' if ratio is None else f'{ratio:.2f}':>10}"
        lines.append(f"{title:<30}{row}")
    for phase in phases:
        lines.append(note(phase))
    raw = [p.summary() for p in phases if p.name == "raw"]
    if raw and raw[0]["delivery_p50_ms"] is not None:
        lines.append(f"raw: Job create returned -> ADDED on the watch p50 "
                     f"{raw[0]['delivery_p50_ms']:.0f} ms, p99 {raw[0]['delivery_p99_ms']:.0f} "
                     "ms (the watch's own delay)")  # fmt: skip
    steady = next((p.steady for p in phases if p.steady), None)
    if steady:
        lines.append(
            f"steady state: {steady['reports']:.0f} progress reports in {steady['seconds']:.0f} "
            f"s ({steady['failed_reports']:.0f} failed); operator CPU "
            f"{steady['operator_cpu_percent']:.0f} % of one core (busiest 5 s "
            f"{steady['operator_max_cpu_percent']:.0f} %), API server "
            f"{steady['apiserver_cpu_percent']:.0f} %; API requests per report "
            f"{steady['requests_per_report']:.2f} (status writes "
            f"{steady['status_writes_per_report']:.2f}); every job's status showed its last "
            f"report {steady['reflected_after_s']:.1f} s after it ({steady['jobs_behind']:.0f} "
            "still behind)"
        )
    lines.append("")
    lines.extend(text for text, _ in absolute_checks(phases))
    if peer:
        lines.extend(v.line(peer, FORMATS[v.key]) for v in peer_verdicts(table))
    return "\n".join(lines)


def note(phase: PhaseLike) -> str:
    """A phase run's line under the table: load, failures, where its requests and CPU went."""
    text = (f"{phase.name} #{phase.repeat + 1} (ran {phase.position + 1}.): load "
            f"{phase.load[0]:.1f} -> {phase.load[1]:.1f}")  # fmt: skip
    if phase.loaded:
        text += " LOADED"
    if phase.errors:
        failed = phase.summary()["errors"]  # a recorded phase keeps only the first errors
        text += f"; {failed} failed creates, first: {phase.errors[0]}"
    if phase.relisted:
        text += f"; {phase.relisted} Jobs seen by a re-list (watch broke)"
    if phase.reconcile_mean_ms is not None:
        text += f"; mean reconcile {phase.reconcile_mean_ms:.0f} ms"
    if phase.passes is not None:
        text += f"; {phase.passes / phase.jobs:.1f} passes per job"
    if phase.requests:
        by = "controller and method" if phase.controllers else "verb"
        shown = ", ".join(f"{k} {n / phase.jobs:.2f}" for k, n in sorted(phase.requests.items())
                          if round(n / phase.jobs, 2))  # fmt: skip
        text += f"; requests per job by {by}: {shown}"
    if phase.watch_events:
        shown = ", ".join(f"{k} {n / phase.jobs:.2f}" for k, n in sorted(phase.watch_events.items())
                          if round(n / phase.jobs, 2))  # fmt: skip
        text += f"; watch events per job by kind: {shown}"
    if phase.gc_seconds:
        text += (f"; garbage collector {sum(phase.gc_seconds.values()):.1f} s (full "
                 f"collections {phase.gc_seconds.get('2', 0.0):.1f} s)")  # fmt: skip
    for name, figures in sorted(phase.controllers.items()):
        cpu, peak = figures.get("cpu_s"), figures.get("peak_rss_mb")
        text += (f"; {name}: CPU {'-' if cpu is None else f'{cpu:.1f}'} s, peak RSS "
                 f"{'-' if peak is None else f'{peak:.0f}'} MB")  # fmt: skip
    return text


def document(
    phases: Sequence[PhaseLike],
    args: argparse.Namespace,
    cost: dict[str, float | None] | None,
    complete: bool = True,
) -> dict[str, Any]:
    """--json: the arguments, every phase run's summary, the spreads and the verdicts.
    Written after every phase (`complete` false until the last), so that a run cut short
    keeps what it measured and `--resume` can go on from it (recorded())."""
    table = spreads(phases)
    peer = peer_name(list(table))
    return {
        "args": {k: str(v) for k, v in vars(args).items()},
        "complete": complete,
        "create_cost": cost,
        "runs": [
            {
                "phase": p.name,
                "repeat": p.repeat,
                "position": p.position,
                "loaded": p.loaded,
                "load": list(p.load),
                "summary": p.summary(),
                "requests": p.requests,
                "controllers": p.controllers,
                "steady": p.steady,
                "relisted": p.relisted,
                "reconcile_mean_ms": p.reconcile_mean_ms,
                "passes": p.passes,
                "watch_events": p.watch_events,
                "gc_seconds": p.gc_seconds,
                "errors": p.errors[:20],
            }
            for p in phases
        ],
        "spreads": {
            name: {k: asdict(v) for k, v in rows.items() if v is not None}
            for name, rows in table.items()
        },
        "peer": peer,
        "verdicts": [
            {"key": v.key, "target": v.target, "factor": v.factor, "result": v.result}
            for v in peer_verdicts(table)
        ],
        "checks": [{"text": text, "passed": ok} for text, ok in absolute_checks(phases)],
    }


@dataclass
class RecordedPhase:
    """A phase run read back from a --json document: all that the report reads of it."""

    name: str
    jobs: int
    repeat: int
    position: int
    loaded: bool
    load: tuple[float, float]
    errors: list[str]
    relisted: int
    reconcile_mean_ms: float | None
    watch_events: dict[str, float]
    requests: dict[str, float]
    controllers: dict[str, dict[str, float | None]]
    steady: dict[str, float]
    figures: dict[str, Any] = field(default_factory=dict)
    passes: float | None = None  # not in the files of runs before 2026-11-28
    gc_seconds: dict[str, float] = field(default_factory=dict)  # nor this before 11-29

    def summary(self) -> dict[str, Any]:
        return self.figures


def recorded(doc: dict[str, Any]) -> list[RecordedPhase]:
    """The phase runs of a document() (--resume), in the order they ran."""
    return [
        RecordedPhase(
            name=run["phase"],
            jobs=int(run["summary"]["jobs"]),
            repeat=int(run["repeat"]),
            position=int(run["position"]),
            loaded=bool(run["loaded"]),
            load=(float(run["load"][0]), float(run["load"][1])),
            errors=list(run["errors"]),
            relisted=int(run["relisted"]),
            reconcile_mean_ms=run["reconcile_mean_ms"],
            passes=run.get("passes"),
            watch_events=dict(run["watch_events"]),
            gc_seconds=dict(run.get("gc_seconds") or {}),
            requests=dict(run["requests"]),
            controllers=dict(run["controllers"]),
            steady=dict(run["steady"]),
            figures=dict(run["summary"]),
        )
        for run in doc["runs"]
    ]
