"""The checkpoint protocol on a store (S3 or a local directory); rules in protocol.py.

checkpoints = CheckpointStore(open_store(output.uri, s3=output.s3), job_identity(job))
newest = checkpoints.newest()                 # a Manifest, or None to start afresh
checkpoints.download(newest, local_dir)       # every file, sha256-checked
checkpoints.save(step, local_dir, metrics)    # files first, the manifest last
checkpoints.retain(keep=2)                    # oldest complete ones beyond keep go
"""

from __future__ import annotations

import json
import logging
from pathlib import Path

from fttrainer.storage import ObjectInfo, StorageError, Store, contained
from fttrainer.storage.paths import sha256_file

from .protocol import (
    CHECKPOINTS,
    MANIFEST,
    FileEntry,
    Listing,
    Manifest,
    ManifestError,
    checkpoint_name,
    missing_files,
    retention,
)

log = logging.getLogger("fttrainer")
DONE = "DONE.json"
# training.onNonFinite rollback: one entry per rollback of this run, so a restarted attempt
# knows how many there were (the limit, the lowered learning rate). A new run clears it.
ROLLBACKS = "ROLLBACKS.json"


class CheckpointError(RuntimeError):
    """A checkpoint that cannot be restored (e.g. a file changed after its manifest)."""


class CheckpointStore:
    def __init__(self, store: Store, identity: str) -> None:
        self.store = store
        self.identity = identity
        self.root = f"{CHECKPOINTS}/{identity}"

    @property
    def uri(self) -> str:
        return f"{self.store.uri.rstrip('/')}/{self.root}"

    def _key(self, step: int, path: str = "") -> str:
        return f"{self.root}/{checkpoint_name(step)}/{path}"

    def _listing(self) -> Listing:
        prefix = f"{self.root}/"
        return Listing.of({o.key.removeprefix(prefix): o.size for o in self.store.list(prefix)})

    # ------------------------------------------------------------------ reading
    def complete(self, listing: Listing | None = None) -> list[Manifest]:
        """Every checkpoint that counts, newest first (see protocol.py for the rules)."""
        listing = listing or self._listing()
        found = []
        for step in listing.with_manifest():
            manifest = self._manifest(step, listing.files[step])
            if manifest is not None:
                found.append(manifest)
        return found

    def newest(self) -> Manifest | None:
        complete = self.complete()
        return complete[0] if complete else None

    def _manifest(self, step: int, files: dict[str, int]) -> Manifest | None:
        name = checkpoint_name(step)
        try:
            manifest = Manifest.from_json(self.store.read_bytes(self._key(step, MANIFEST)))
        except (ManifestError, StorageError) as error:
            log.warning("checkpoint %s ignored: %s", name, error)
            return None
        if manifest.job != self.identity or manifest.step != step:
            log.warning("checkpoint %s ignored: its manifest belongs to another run", name)
            return None
        problems = missing_files(manifest, files)
        if problems:
            log.warning("checkpoint %s ignored: %s", name, "; ".join(problems))
            return None
        return manifest

    def download(self, manifest: Manifest, target: Path) -> Path:
        """The checkpoint's files into target/checkpoint-<step>, each checked against the
        manifest's sha256 (a mismatch is an error: the manifest promised these bytes)."""
        folder = target / checkpoint_name(manifest.step)
        for entry in manifest.files:
            try:
                destination = contained(
                    folder,
                    entry.path,
                    source=f"{self.uri}/{checkpoint_name(manifest.step)}/{MANIFEST}",
                )
            except StorageError as error:
                raise CheckpointError(str(error)) from None
            self.store.download_file(self._key(manifest.step, entry.path), destination)
            if sha256_file(destination) != entry.sha256:
                raise CheckpointError(
                    f"{self.uri}/{checkpoint_name(manifest.step)}/{entry.path}: "
                    "content differs from its manifest"
                )
        return folder

    # ------------------------------------------------------------------ writing
    def save(
        self,
        step: int,
        folder: Path,
        *,
        metrics: dict[str, float] | None = None,
        epoch: float | None = None,
        uploaded: list[ObjectInfo] | None = None,
    ) -> Manifest:
        """Upload every file of `folder` (unless `uploaded` says they already are, e.g. by
        other nodes), then write the manifest: from then on the checkpoint counts."""
        infos = uploaded if uploaded is not None else self.upload_files(step, folder)
        files = tuple(
            sorted(FileEntry(i.key, i.size, i.sha256 or "") for i in infos if i.key != MANIFEST)
        )
        if any(not f.sha256 for f in files):
            raise CheckpointError(f"{checkpoint_name(step)}: a file was uploaded without checksum")
        manifest = Manifest(step, self.identity, files, metrics or {}, epoch)
        self.store.write_bytes(self._key(step, MANIFEST), manifest.to_json().encode())
        log.info(
            "checkpoint %s: %d files, %.1f MB -> %s",
            checkpoint_name(step),
            len(files),
            manifest.size / 1e6,
            self.uri,
        )
        return manifest

    def upload_files(self, step: int, folder: Path) -> list[ObjectInfo]:
        """The files of one local checkpoint folder, keys relative to the checkpoint."""
        infos = self.store.upload_dir(folder, self._key(step), checksum=True)
        prefix = self._key(step)
        return [ObjectInfo(i.key.removeprefix(prefix), i.size, i.sha256) for i in infos]

    def retain(self, keep: int, protect: int | None = None) -> list[int]:
        """Delete checkpoints beyond `keep` (see checkpoints.retention). A checkpoint's
        manifest goes first, so a kill half-way leaves an incomplete one, never a lie."""
        listing = self._listing()
        complete = [m.step for m in self.complete(listing)]
        incomplete = [s for s in listing.files if s not in complete]
        doomed = retention(complete, incomplete, keep, protect)
        for step in doomed:
            files = listing.files.get(step, {})
            if MANIFEST in files:
                self.store.delete([self._key(step, MANIFEST)])
            self.store.delete([self._key(step, path) for path in files if path != MANIFEST])
        if doomed:
            log.info("retention: deleted %s", ", ".join(checkpoint_name(s) for s in doomed))
        return doomed

    # ------------------------------------------------------------------ run state
    def mark_done(self, step: int) -> None:
        """The run finished: the same job started again begins a new run (see clear)."""
        self.store.write_bytes(f"{self.root}/{DONE}", json.dumps({"step": step}).encode())

    def done(self) -> bool:
        return self.store.stat(f"{self.root}/{DONE}") is not None

    def rollbacks(self) -> list[dict[str, object]]:
        """This run's rollbacks, oldest first."""
        key = f"{self.root}/{ROLLBACKS}"
        if self.store.stat(key) is None:
            return []
        entries = json.loads(self.store.read_bytes(key))
        return [e for e in entries if isinstance(e, dict)] if isinstance(entries, list) else []

    def record_rollback(self, entry: dict[str, object]) -> None:
        entries = [*self.rollbacks(), entry]
        self.store.write_bytes(f"{self.root}/{ROLLBACKS}", json.dumps(entries, indent=1).encode())

    def clear(self) -> None:
        """Remove a finished run's checkpoints before a new run of the same job writes its
        own: old steps must never be mistaken for the new run's (manifests first)."""
        keys = [o.key for o in self.store.list(f"{self.root}/")]
        self.store.delete([k for k in keys if k.endswith(f"/{MANIFEST}") or k.endswith(DONE)])
        self.store.delete([k for k in keys if not k.endswith(MANIFEST) and not k.endswith(DONE)])
