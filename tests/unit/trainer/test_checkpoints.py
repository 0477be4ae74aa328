"""The checkpoint protocol's pure rules: manifests, identity, completeness, retention."""

from __future__ import annotations

import pytest

from ftapi import parse_job
from fttestkit.builders import make_job
from fttrainer.checkpointing.protocol import (
    MANIFEST,
    FileEntry,
    Listing,
    Manifest,
    ManifestError,
    job_identity,
    missing_files,
    parse_step,
    retention,
)

MANIFEST_4 = Manifest(
    step=4,
    job="job-a",
    files=(
        FileEntry("adapter_model.safetensors", 100, "ab" * 32),
        FileEntry("optimizer.pt", 7, "cd" * 32),
    ),
    metrics={"loss": 1.5},
    epoch=0.5,
)


def test_manifest_round_trips() -> None:
    assert Manifest.from_json(MANIFEST_4.to_json()) == MANIFEST_4
    assert MANIFEST_4.size == 107


@pytest.mark.parametrize(
    ("text", "why"),
    [
        ('{"format": 1, "step": 4, "job": "a", "fil', "unreadable manifest"),  # cut short
        ('{"format": 2, "step": 4, "job": "a", "files": []}', "unknown manifest format 2"),
        ('{"format": 1, "job": "a", "files": []}', "unreadable manifest"),
        ('{"format": 1, "step": 4, "job": "a", "files": [{"path": "x"}]}', "unreadable manifest"),
        ("[]", "unreadable manifest"),
    ],
)
def test_untrustworthy_manifests_are_refused(text: str, why: str) -> None:
    with pytest.raises(ManifestError, match=why):
        Manifest.from_json(text)


def test_missing_or_short_files_make_a_checkpoint_incomplete() -> None:
    full = {"adapter_model.safetensors": 100, "optimizer.pt": 7, MANIFEST: 300}
    assert missing_files(MANIFEST_4, full) == []
    short = {**full, "adapter_model.safetensors": 60}
    assert missing_files(MANIFEST_4, short) == [
        "adapter_model.safetensors: 60 bytes, manifest says 100"
    ]
    del full["optimizer.pt"]
    assert missing_files(MANIFEST_4, full) == ["optimizer.pt: missing"]


def test_listing_groups_by_checkpoint_and_orders_candidates() -> None:
    listing = Listing.of({
        "checkpoint-2/a": 1, "checkpoint-2/MANIFEST.json": 5,
        "checkpoint-10/a": 1, "checkpoint-10/MANIFEST.json": 5,
        "checkpoint-12/a": 1,  # upload in progress or killed: no manifest
        "other/file": 3, "checkpoint-x/a": 1,
    })  # fmt: skip
    assert sorted(listing.files) == [2, 10, 12]
    assert listing.with_manifest() == [10, 2]
    assert parse_step("checkpoint-007/") == 7 and parse_step("checkpoints") is None


@pytest.mark.parametrize(
    ("complete", "incomplete", "keep", "protect", "deleted"),
    [
        ([2, 4, 6, 8], [], 2, None, [2, 4]),
        ([2, 4, 6, 8], [], 1, None, [2, 4, 6]),
        ([2, 4, 6, 8], [], 2, 2, [4]),  # the best checkpoint is kept
        ([8], [], 1, None, []),  # never the newest
        ([6, 8], [3, 10], 5, None, [3]),  # 3: leftover of a killed upload; 10: may be uploading
        ([], [3], 2, None, []),  # nothing complete yet: the incomplete one may be in progress
    ],
)
def test_retention(
    complete: list[int], incomplete: list[int], keep: int, protect: int | None, deleted: list[int]
) -> None:
    assert retention(complete, incomplete, keep, protect) == deleted


def test_identity_is_the_uid_in_a_cluster_and_a_fingerprint_locally() -> None:
    job = make_job("run").set("model.name", "org/a")
    assert job_identity(parse_job(job.set("metadata.uid", "1234-abcd").obj())) == "1234-abcd"
    local = make_job("run").set("model.name", "org/a")
    base = job_identity(parse_job(local.obj()))
    assert base.startswith("run-")
    # More steps continue the same run; another model or method does not.
    assert job_identity(parse_job(local.set("training.maxSteps", 99).obj())) == base
    assert job_identity(parse_job(local.set("model.name", "org/b").obj())) != base
    assert job_identity(parse_job(make_job("other").set("model.name", "org/a").obj())) != base
