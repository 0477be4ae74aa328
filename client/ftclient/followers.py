"""`finetune submit --follow`: the job's progress as it goes, until it ends. A bar on a
terminal, a line per change otherwise (CI logs, `make quickstart-cluster`); phase changes
and Warning Events are printed either way."""

from __future__ import annotations

import time
from typing import Any, TextIO

from .errors import NotFoundError
from .kube import Kube
from .status import ended, phase_of

POLL_SECONDS = 2.0


def progress_line(job: dict[str, Any]) -> str:
    """`step 10/30 (33%)  loss 2.31  eta 20s`: the progress part of the status."""
    progress = (job.get("status") or {}).get("progress") or {}
    parts = [f"step {progress.get('summary') or progress.get('step', 0)}"]
    if progress.get("loss"):
        parts.append(f"loss {progress['loss']}")
    if progress.get("eta"):
        parts.append(f"eta {progress['eta']}")
    return "  ".join(parts)


class ProgressPrinter:
    def __init__(self, kube: Kube, name: str, *, out: TextIO, poll: float = POLL_SECONDS) -> None:
        self.kube = kube
        self.name = name
        self.out = out
        self.poll = poll
        self.bar: Any = None

    def run(self) -> dict[str, Any] | None:
        """The job once ended; None when it was deleted."""
        phase = None
        line = None
        seen_events: set[str] = set()
        while True:
            try:
                job = self.kube.get(self.name)
            except NotFoundError:
                self._close_bar()
                return None
            status = job.get("status") or {}
            progress = status.get("progress") or {}
            if progress.get("step"):  # where it got (once a step is done), then what
                self._progress(job, progress, line)  # happened (Succeeded comes last)
                line = progress_line(job)
            if phase_of(job) != phase:
                phase = phase_of(job)
                said = f" ({status['message']})" if status.get("message") else ""
                self._say(f"{self.name}: {phase}{said}")
            for event in self.kube.events(self.name):
                key = event.metadata.uid or event.metadata.name
                if event.type == "Warning" and key not in seen_events:
                    seen_events.add(key)
                    self._say(f"{self.name}: Warning {event.reason}: {event.message}")
            if ended(job):
                self._close_bar()
                return job
            time.sleep(self.poll)

    def _progress(
        self, job: dict[str, Any], progress: dict[str, Any], previous: str | None
    ) -> None:
        if self.out.isatty():
            from tqdm import tqdm

            if self.bar is None and progress.get("totalSteps"):
                self.bar = tqdm(
                    total=progress["totalSteps"], unit="step", desc=self.name, file=self.out
                )
            if self.bar is not None:
                self.bar.n = progress.get("step", 0)
                self.bar.set_postfix_str(progress_line(job).split("  ", 1)[-1], refresh=True)
            return
        if progress_line(job) != previous:
            self._say(f"{self.name}: {progress_line(job)}")

    def _say(self, text: str) -> None:
        if self.bar is not None:
            self.bar.write(text, file=self.out)
        else:
            print(text, file=self.out, flush=True)

    def _close_bar(self) -> None:
        if self.bar is not None:
            self.bar.close()
            self.bar = None
