"""`finetune submit`: a manifest written for this machine, run on the cluster.

    validated (as `finetune validate`)  ->  the cluster reachable, the name free
    ->  local paths uploaded to the staging location, by content  ->  URIs rewritten
    ->  the cluster's job defaults laid beneath, a local output moved to staging
    ->  checked again  ->  server-side apply

Nothing is uploaded or applied before the job is known to be valid; nothing is applied
before every upload is complete.
"""

from __future__ import annotations

import copy
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from ftapi import InvalidSpecError, parse_job
from ftapi.v1alpha1 import FineTuneJob

from .config import ClientConfig
from .errors import AlreadyExistsError, ClientError, StagingError, ValidationError
from .kube import Kube
from .manifests import beneath
from .staging import (
    HashCache,
    Progress,
    StagedPath,
    Stager,
    StageReport,
    local_locations,
    plan_staging,
    rewrite,
)
from .store import s3_client, s3_error

HASH_CACHE = Path("~/.cache/finetune/hashes.json")


@dataclass
class Submitted:
    """What submit did: the manifest it applied and where every local path went."""

    name: str
    namespace: str
    context: str
    manifest: dict[str, Any]
    staged: list[StagedPath] = field(default_factory=list)
    report: StageReport = field(default_factory=StageReport)
    output_moved: tuple[str, str] | None = None
    """(the manifest's local output, the staging URI it became)."""
    applied: bool = False

    @property
    def output_uri(self) -> str:
        return str(self.manifest["spec"]["output"]["uri"])


def prepare_manifest(
    manifest: dict[str, Any],
    *,
    name: str | None,
    namespace: str,
    config: ClientConfig,
    staging: str | None,
    now: float | None = None,
) -> tuple[dict[str, Any], tuple[str, str] | None]:
    """The manifest as it will be applied, before staging: named, in the namespace, the
    cluster's job defaults beneath it, a local output moved under the staging location
    (`outputs/<namespace>/<name>/<time>`: a pod cannot write to this machine). Pure."""
    prepared = copy.deepcopy(manifest)
    metadata = prepared.setdefault("metadata", {})
    if name:
        metadata["name"] = name
    metadata["namespace"] = namespace
    if config.job_defaults:
        prepared["spec"] = beneath(config.job_defaults, prepared.get("spec") or {})
    output = prepared["spec"].setdefault("output", {})
    moved = None
    uri = output.get("uri")
    if uri is None or "://" not in uri:
        if not staging:
            raise StagingError(
                f"spec.output.uri {uri!r} is on this machine, which no pod can write to: set an "
                "s3:// output, or a staging location (--staging or `staging:` in the client config)"
            )
        stamp = time.strftime("%Y%m%dT%H%M%SZ", time.gmtime(now))
        output["uri"] = f"{staging.rstrip('/')}/outputs/{namespace}/{metadata['name']}/{stamp}"
        moved = (str(uri), output["uri"])
    return prepared, moved


def check_applied(manifest: dict[str, Any], source: str) -> FineTuneJob:
    """The final manifest checked again (the defaults and the rewritten URIs included)."""
    try:
        return parse_job(manifest, source)
    except InvalidSpecError as exc:
        problems = "\n".join(f"  {error}" for error in exc.errors)
        raise ValidationError(
            f"{source}: invalid after submit's changes (the client config's jobDefaults, "
            f"the staged URIs):\n{problems}"
        ) from None


class Submitter:
    """Stages and applies one validated job."""

    def __init__(
        self,
        kube: Kube,
        config: ClientConfig,
        *,
        staging: str | None = None,
        base: Path | None = None,
        hash_cache: Path | None = HASH_CACHE,
        s3: Callable[[], Any] | None = None,
    ) -> None:
        """`s3()` gives the S3 client, made on first use (a manifest with nothing local
        needs none): the Client's own, so one client serves submit, logs and metrics."""
        self.kube = kube
        self.config = config
        self.staging = staging or config.staging
        self.base = base or Path.cwd()
        self.hashes = HashCache(hash_cache.expanduser() if hash_cache else None)
        self.s3 = s3 or (lambda: s3_client(config.s3))

    def submit(
        self,
        job: FineTuneJob,
        manifest: dict[str, Any],
        *,
        source: str,
        name: str | None = None,
        dry_run: bool = False,
        progress: Callable[[int], Progress | None] | None = None,
    ) -> Submitted:
        """`progress(total_bytes)` gives the upload's byte callback (a progress bar)."""
        namespace = self.kube.namespace
        prepared, moved = prepare_manifest(
            manifest, name=name, namespace=namespace, config=self.config, staging=self.staging
        )
        job_name = prepared["metadata"]["name"]
        if not dry_run and self.kube.exists(job_name):  # fails in seconds when unreachable
            raise AlreadyExistsError(
                f"FineTuneJob {job_name} exists in namespace {namespace}: submit never replaces "
                f"a job; `finetune cancel {job_name} --delete` first, or submit with --name"
            )
        found, problems = local_locations(job, self.base)
        if problems:
            raise StagingError("; ".join(problems))
        staged: list[StagedPath] = []
        report = StageReport()
        if found:
            if not self.staging:
                fields = ", ".join(f"{f.location.field} ({f.location.value})" for f in found)
                raise StagingError(
                    f"{fields} name this machine's files: give a staging location to upload "
                    "them to (--staging s3://bucket/prefix, or `staging:` in the client config)"
                )
            columns = job.spec.dataset.columns
            column = columns.images if columns else None
            staged = plan_staging(found, self.staging, self.hashes, [column] if column else [])
            self.hashes.save()
            stager = Stager(self.s3())
            try:
                if dry_run:
                    _, report = stager.missing(staged)
                else:
                    todo, _ = stager.missing(staged)
                    callback = progress(sum(f.size for _, f in todo)) if progress else None
                    report = stager.upload(staged, callback)
            except ClientError:
                raise
            except Exception as exc:
                raise s3_error(f"uploading to {self.staging}", exc, self.s3()) from None
            rewrite(prepared, staged)
        check_applied(prepared, source)
        submitted = Submitted(
            job_name, namespace, self.kube.context, prepared, staged, report, moved
        )
        if not dry_run:
            self.kube.apply(prepared)
            submitted.applied = True
        return submitted
