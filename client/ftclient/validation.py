"""The check submit runs first: `finetune validate`'s, data report included, when the trainer
package is installed (it reads the data with the trainer's own code); the API's schema and
rules alone when only the client is (a notebook with no torch), which it says."""

from __future__ import annotations

import contextlib
import io
import tempfile
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import yaml

from ftapi import InvalidSpecError, parse_job, read_manifest
from ftapi.v1alpha1 import FineTuneJob

from .errors import ValidationError

JobSource = str | Path | dict[str, Any] | FineTuneJob


@dataclass(frozen=True)
class Checked:
    job: FineTuneJob
    manifest: dict[str, Any]
    source: str
    report: str
    """What the check printed (the data report)."""


def as_manifest(job: JobSource) -> tuple[dict[str, Any] | None, str]:
    """(the manifest, where it came from); None for a path (read by the check itself, in
    whichever config style it is written)."""
    if isinstance(job, FineTuneJob):
        return job.to_dict(), f"FineTuneJob {job.name}"
    if isinstance(job, dict):
        return job, "the manifest given"
    return None, str(job)


def check(job: JobSource, overrides: Sequence[str] = ()) -> Checked:
    """Validate as `finetune validate` does; ValidationError carries what it printed."""
    manifest, source = as_manifest(job)
    try:
        from fttrainer.cli import checked, parse_arguments
    except ImportError:
        return _schema_only(job, manifest, source)
    with tempfile.TemporaryDirectory(prefix="finetune-submit-") as scratch:
        path = Path(str(job))
        if manifest is not None:
            path = Path(scratch) / "job.yaml"
            path.write_text(yaml.safe_dump(manifest, sort_keys=False))
        argv = ["validate", str(path)] + [f"--set={o}" for o in overrides]
        printed = io.StringIO()
        with contextlib.redirect_stdout(printed), contextlib.redirect_stderr(printed):
            try:
                loaded = checked(parse_arguments(argv))
            except SystemExit:  # argparse's own refusal, printed
                loaded = None
    text = (
        printed.getvalue().replace(str(path), source)
        if manifest is not None
        else printed.getvalue()
    )
    if loaded is None:
        raise ValidationError(text.strip() or f"{source}: not valid")
    return Checked(loaded.job, loaded.manifest, source, text)


def _schema_only(job: JobSource, manifest: dict[str, Any] | None, source: str) -> Checked:
    try:
        if manifest is None:
            manifest = read_manifest(Path(str(job)))
        parsed = parse_job(manifest, source)
    except InvalidSpecError as exc:
        raise ValidationError(str(exc)) from None
    except OSError as exc:
        raise ValidationError(f"{source}: {exc.strerror}") from None
    note = f"{source}: valid FineTuneJob (data not checked: install finetune-trainer for that)\n"
    return Checked(parsed, manifest, source, note)
