"""The checkpoint protocol: what makes a checkpoint in the output location count.

    <output.uri>/checkpoints/<job identity>/checkpoint-<step>/...files...
    <output.uri>/checkpoints/<job identity>/checkpoint-<step>/MANIFEST.json   (written last)

A checkpoint counts only when its manifest exists, parses, and every file it lists is
present with the listed size; files are checked against their sha256 when downloaded.
An upload killed half-way therefore leaves a checkpoint nobody resumes from, and retention
deletes a manifest before the files it lists, so a kill during deletion does the same.

The identity ties checkpoints to one job: the FineTuneJob's uid in a cluster (a job
deleted and created again under the same name starts afresh), and locally the name plus a
fingerprint of what makes weights and optimizer state incompatible (model, data, method,
trainer). Training hyperparameters are left out on purpose: raising maxSteps and running
again continues the same run.

Everything here is pure (no storage, no torch): the storage side is in store.py.
"""

from __future__ import annotations

import hashlib
import json
import re
from dataclasses import dataclass, field

from ftapi.v1alpha1 import FineTuneJob

MANIFEST = "MANIFEST.json"
FORMAT = 1
CHECKPOINTS = "checkpoints"
_NAME = re.compile(r"^checkpoint-(\d+)$")


class ManifestError(ValueError):
    """A manifest that cannot be trusted (unparsable, wrong format, wrong job)."""


@dataclass(frozen=True, order=True)
class FileEntry:
    path: str  # relative to the checkpoint directory, '/'-separated
    size: int
    sha256: str


@dataclass(frozen=True)
class Manifest:
    step: int
    job: str
    files: tuple[FileEntry, ...]
    metrics: dict[str, float] = field(default_factory=dict)
    epoch: float | None = None

    def to_json(self) -> str:
        return json.dumps(
            {
                "format": FORMAT,
                "step": self.step,
                "job": self.job,
                "epoch": self.epoch,
                "metrics": self.metrics,
                "files": [{"path": f.path, "size": f.size, "sha256": f.sha256} for f in self.files],
            },
            indent=2,
        )

    @classmethod
    def from_json(cls, text: str | bytes) -> Manifest:
        try:
            data = json.loads(text)
            if data.get("format") != FORMAT:
                raise ManifestError(f"unknown manifest format {data.get('format')!r}")
            files = tuple(
                FileEntry(str(f["path"]), int(f["size"]), str(f["sha256"])) for f in data["files"]
            )
            return cls(
                step=int(data["step"]),
                job=str(data["job"]),
                files=files,
                metrics={k: float(v) for k, v in (data.get("metrics") or {}).items()},
                epoch=data.get("epoch"),
            )
        except (ValueError, KeyError, TypeError, AttributeError) as error:
            if isinstance(error, ManifestError):
                raise
            raise ManifestError(f"unreadable manifest: {error}") from None

    @property
    def size(self) -> int:
        return sum(f.size for f in self.files)


def checkpoint_name(step: int) -> str:
    return f"checkpoint-{step}"


def parse_step(name: str) -> int | None:
    match = _NAME.match(name.strip("/"))
    return int(match.group(1)) if match else None


def job_identity(job: FineTuneJob) -> str:
    """The folder under checkpoints/ that only this job resumes from (see module doc)."""
    if job.metadata.uid:
        return job.metadata.uid
    spec = job.spec
    compatible = {
        section: getattr(spec, section).model_dump(mode="json", by_alias=True)
        for section in ("model", "dataset", "method", "trainer")
    }
    digest = hashlib.sha256(json.dumps(compatible, sort_keys=True).encode()).hexdigest()
    return f"{job.name}-{digest[:12]}"


def missing_files(manifest: Manifest, sizes: dict[str, int]) -> list[str]:
    """Files the manifest lists that are absent or of another size ('path: why')."""
    problems = []
    for entry in manifest.files:
        found = sizes.get(entry.path)
        if found is None:
            problems.append(f"{entry.path}: missing")
        elif found != entry.size:
            problems.append(f"{entry.path}: {found} bytes, manifest says {entry.size}")
    return problems


@dataclass(frozen=True)
class Listing:
    """What the store holds under one job's checkpoints/ folder, grouped by checkpoint."""

    files: dict[int, dict[str, int]]  # step -> {path relative to the checkpoint: size}

    @classmethod
    def of(cls, sizes: dict[str, int]) -> Listing:
        """From {key relative to the job folder: size}, e.g. 'checkpoint-4/model.bin'."""
        files: dict[int, dict[str, int]] = {}
        for key, size in sizes.items():
            top, _, rest = key.partition("/")
            step = parse_step(top)
            if step is not None and rest:
                files.setdefault(step, {})[rest] = size
        return cls(files)

    def with_manifest(self) -> list[int]:
        """Steps that have a manifest file, newest first (candidates; still to be validated)."""
        return sorted((s for s, f in self.files.items() if MANIFEST in f), reverse=True)


def retention(
    complete: list[int], incomplete: list[int], keep: int, protect: int | None
) -> list[int]:
    """Checkpoints to delete: complete ones beyond the newest `keep` (never the newest,
    never `protect`, e.g. the best one), and leftovers of killed uploads that are older than
    the newest complete checkpoint (a newer incomplete one may be the upload in progress)."""
    keep = max(keep, 1)
    newest_first = sorted(complete, reverse=True)
    doomed = [s for s in newest_first[keep:] if s != protect]
    newest = newest_first[0] if newest_first else None
    if newest is not None:
        doomed += [s for s in incomplete if s < newest]
    return sorted(doomed)


def best(manifests: list[Manifest], metric: str = "eval_loss") -> Manifest | None:
    """The checkpoint with the lowest `metric` among those evaluated at their step."""
    scored = [m for m in manifests if metric in m.metrics]
    return min(scored, key=lambda m: (m.metrics[metric], -m.step)) if scored else None
