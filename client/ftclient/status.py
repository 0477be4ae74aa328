"""What `finetune status`, `list` and `wait` print, from a FineTuneJob as the API server
returns it (a dict). Pure: no cluster, no clock but the one passed in."""

from __future__ import annotations

from datetime import UTC, datetime
from typing import Any

FINAL_PHASES = ("Succeeded", "Failed")
# `finetune wait`'s exit status by the phase it ended in.
EXIT_CODES = {"Succeeded": 0, "Failed": 1, "Suspended": 3}
EXIT_DELETED = 4
EXIT_TIMEOUT = 124
LIST_COLUMNS = ("NAME", "PHASE", "PROGRESS", "LOSS", "ETA", "RESTARTS", "AGE")


def phase_of(job: dict[str, Any]) -> str:
    return str((job.get("status") or {}).get("phase") or "Pending")


def is_final(job: dict[str, Any]) -> bool:
    return phase_of(job) in FINAL_PHASES


def ended(job: dict[str, Any]) -> bool:
    """What `wait` stops at: a final phase, or Suspended (a cancelled job does not resume by
    itself)."""
    return phase_of(job) in EXIT_CODES


def age(created: str | None, now: datetime) -> str:
    if not created:
        return "-"
    seconds = int((now - datetime.fromisoformat(created.replace("Z", "+00:00"))).total_seconds())
    return duration(max(seconds, 0))


def duration(seconds: int) -> str:
    if seconds < 120:
        return f"{seconds}s"
    minutes = seconds // 60
    if minutes < 120:
        return f"{minutes}m"
    hours = minutes // 60
    return f"{hours}h{minutes % 60}m" if hours < 48 else f"{hours // 24}d"


def list_rows(
    jobs: list[dict[str, Any]], now: datetime, *, namespaces: bool = False
) -> list[list[str]]:
    header = (["NAMESPACE"] if namespaces else []) + list(LIST_COLUMNS)
    rows = [header]
    for job in sorted(
        jobs, key=lambda j: (j["metadata"].get("namespace", ""), j["metadata"]["name"])
    ):
        status = job.get("status") or {}
        progress = status.get("progress") or {}
        row = [job["metadata"].get("namespace", "")] if namespaces else []
        row += [
            job["metadata"]["name"],
            phase_of(job),
            progress.get("summary") or "-",
            progress.get("loss") or "-",
            progress.get("eta") or "-",
            str(status.get("restarts", 0)),
            age(job["metadata"].get("creationTimestamp"), now),
        ]
        rows.append(row)
    return rows


def table(rows: list[list[str]]) -> str:
    widths = [max(len(row[i]) for row in rows) for i in range(len(rows[0]))]
    return "\n".join(
        "   ".join(cell.ljust(width) for cell, width in zip(row, widths, strict=True)).rstrip()
        for row in rows
    )


def describe(job: dict[str, Any], events: list[Any], now: datetime, *, last_events: int = 8) -> str:
    """The job at a glance: phase and why, progress, loss, ETA, where its model and
    checkpoints are, its warnings and latest Events."""
    meta = job["metadata"]
    status = job.get("status") or {}
    progress = status.get("progress") or {}
    metrics = status.get("metrics") or {}
    old = age(meta.get("creationTimestamp"), now)
    lines = [f"FineTuneJob {meta['name']} in {meta.get('namespace', '')}  ({old} old)"]
    phase = phase_of(job)
    reason = status.get("failureReason") or _condition_reason(status, phase)
    lines.append(f"  phase:      {phase}" + (f" ({reason})" if reason else ""))
    if status.get("message"):
        lines.append(f"  message:    {status['message']}")
    if progress:
        done = progress.get("summary") or f"step {progress.get('step', 0)}"
        epoch = f", epoch {progress['epoch']:.2f}" if progress.get("epoch") is not None else ""
        lines.append(f"  progress:   {done}{epoch}")
        if progress.get("loss"):
            lines.append(f"  loss:       {progress['loss']}")
        if progress.get("eta"):
            lines.append(f"  eta:        {progress['eta']}")
        if progress.get("tokensPerSecond"):
            lines.append(f"  throughput: {progress['tokensPerSecond']:.0f} tokens/s")
    if metrics.get("evalLoss") is not None:
        lines.append(f"  eval loss:  {metrics['evalLoss']:.4g}")
    lines.append(
        f"  attempt:    {status.get('attempt', 0)} (restarts: {status.get('restarts', 0)})"
    )
    checkpoint = status.get("checkpoint") or {}
    if checkpoint.get("latest"):
        lines.append(f"  checkpoint: step {checkpoint.get('step')} at {checkpoint['latest']}")
    output = (job.get("spec") or {}).get("output", {}).get("uri")
    if status.get("modelUri"):
        lines.append(f"  model:      {status['modelUri']}")
    elif output:
        lines.append(f"  output:     {output}")
    for warning in status.get("warnings") or []:
        said = f"{warning.get('reason')}: {warning.get('message')}"
        lines.append(f"  warning:    step {warning.get('step')}: {said}")
    shown = events[-last_events:]
    if shown:
        lines.append("  events:")
        for event in shown:
            moment = event.last_timestamp or event.event_time or event.first_timestamp
            when = age(moment.isoformat(), now) if moment else "-"
            lines.append(f"    {when:>5} {event.type:<7} {event.reason}: {event.message}")
    return "\n".join(lines)


def _condition_reason(status: dict[str, Any], phase: str) -> str | None:
    for condition in status.get("conditions") or []:
        if condition.get("type") == phase and condition.get("status") == "True":
            reason = condition.get("reason")
            return str(reason) if reason and reason != phase else None
    return None


def now_utc() -> datetime:
    return datetime.now(UTC)
