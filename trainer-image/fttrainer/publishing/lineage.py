"""Where a tuned model came from, as the annotations of the image output.oci pushes.

    notes = image_annotations(job, content="adapter", base=BaseModel(...), data=..., metrics=...)

Registries, `crane manifest` and `oras manifest fetch` show a manifest's annotations, and
they travel with the digest that serving pins: which base model (and the digest, commit or
content hash it was at), which data (each file's sha256, and the set of images its rows
hold), which spec (its hash and the spec itself), the final metrics, and the trainer and
operator releases. Pure: the caller hashes.
"""

from __future__ import annotations

import hashlib
import json
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Literal

from ftapi.contract import ANNOTATION_WRITTEN_BY
from ftapi.v1alpha1 import FineTuneJob
from fttrainer.reporting.tracking import final_scalars
from fttrainer.storage.paths import sha256_file

PREFIX = "dev.finetune"
# What the image holds: the adapter (PEFT methods' final/), a whole model (full fine-tuning's
# final/), or the base with the adapter merged in (merged/).
Content = Literal["adapter", "model", "merged-model"]


@dataclass(frozen=True)
class BaseModel:
    name: str
    """As the spec names it (hub id, s3://, oci:// or a path)."""
    revision: str | None = None
    """The spec's model.revision, if any."""
    digest: str | None = None
    """What pins its bytes: an oci:// image's manifest digest, a Hub commit, or the sha256 of
    a folder's file hashes (tree_digest)."""


def spec_digest(job: FineTuneJob) -> str:
    """sha256 of the spec as the run read it (defaults resolved), canonical JSON."""
    return "sha256:" + hashlib.sha256(_canonical(job.spec.to_dict()).encode()).hexdigest()


def tree_digest(folder: Path) -> str:
    """sha256 over the sorted "<sha256>  <path>" lines of a folder's files (sha256sum's
    format): the same files give the same digest, wherever they were copied."""
    lines = []
    for path in sorted(p for p in folder.rglob("*") if p.is_file() and not p.name.startswith(".")):
        lines.append(f"{sha256_file(path)}  {path.relative_to(folder).as_posix()}\n")
    return "sha256:" + hashlib.sha256("".join(lines).encode()).hexdigest()


def image_set_digest(digests: Sequence[str]) -> str:
    """sha256 over the sorted sha256 hex digests of a dataset's distinct images, one per
    line: the set in one value (`ls images/ | sort | sha256sum` of a prepared folder)."""
    lines = "".join(f"{d}\n" for d in sorted(digests))
    return "sha256:" + hashlib.sha256(lines.encode()).hexdigest()


def image_annotations(
    job: FineTuneJob,
    *,
    content: Content,
    base: BaseModel,
    data: Mapping[str, str | None],
    metrics: Mapping[str, Any],
    trainer_release: str,
    images: Sequence[str] = (),
) -> dict[str, str]:
    """The manifest annotations of one pushed image (OCI's own keys where one fits).
    `images`: the sha256 digests of the distinct images in the data (a vision fine-tune)."""
    spec = job.spec
    namespace = job.metadata.namespace
    job_name = f"{namespace}/{job.name}" if namespace else job.name
    notes = {
        "org.opencontainers.image.title": f"{job.name} ({content})",
        "org.opencontainers.image.description": (
            f"FineTuneJob {job_name}: {spec.method.type} {spec.trainer.type} fine-tune of "
            f"{base.name}"
        ),
        f"{PREFIX}.job": job_name,
        f"{PREFIX}.content": content,
        f"{PREFIX}.method": spec.method.type,
        f"{PREFIX}.trainer": spec.trainer.type,
        f"{PREFIX}.base-model": base.name,
        f"{PREFIX}.datasets": _canonical(
            [{"uri": uri, "sha256": digest} for uri, digest in sorted(data.items())]
        ),
        f"{PREFIX}.spec.sha256": spec_digest(job),
        f"{PREFIX}.spec": _canonical(spec.to_dict()),
        f"{PREFIX}.metrics": _canonical(final_scalars(metrics)),
        f"{PREFIX}.trainer.version": trainer_release,
    }
    if images:
        notes[f"{PREFIX}.images"] = _canonical(
            {"count": len(images), "sha256": image_set_digest(images)}
        )
    if base.revision:
        notes[f"{PREFIX}.base-model.revision"] = base.revision
    if base.digest:
        notes[f"{PREFIX}.base-model.digest"] = base.digest
    operator = job.metadata.annotations.get(ANNOTATION_WRITTEN_BY)
    if operator:  # a pod's job.yaml names the operator release that wrote it
        notes[f"{PREFIX}.operator.version"] = operator
    return notes


def _canonical(value: Any) -> str:
    return json.dumps(value, sort_keys=True, separators=(",", ":"))
