"""fttrainer.publishing.oci without a registry: references, Docker credentials, layers that are the
same bytes for the same files, and extraction that refuses what would leave models/. The push, the
pull and a kubelet mounting the image: tests/e2e/test_oci_models.py."""

from __future__ import annotations

import base64
import io
import json
import os
import tarfile
from pathlib import Path

import pytest

from fttrainer.publishing.oci import (
    OciError,
    _extract,
    _layers,
    docker_auth,
    parse_reference,
    write_layer,
)


def test_references_parse_and_bad_ones_are_refused() -> None:
    ref = parse_reference("oci://registry.example:5000/team/models/llama:v1")
    assert (ref.registry, ref.repository, ref.tag, ref.digest) == (
        "registry.example:5000", "team/models/llama", "v1", None)  # fmt: skip
    digest = "sha256:" + "a" * 64
    pinned = parse_reference(f"oci://r.io/m@{digest}")
    assert (pinned.repository, pinned.target, str(pinned)) == (
        "m",
        digest,
        f"oci://r.io/m@{digest}",
    )
    assert parse_reference("oci://r.io/m").target == "latest"
    for bad in ("s3://b/k", "oci://r.io", "oci:///m:v1", "oci://r.io/m@sha256:short"):
        with pytest.raises(OciError):
            parse_reference(bad)


def test_docker_credentials_are_found_by_registry() -> None:
    encoded = base64.b64encode(b"robot:s3cret").decode()
    config = {"auths": {"https://r.io/v1/": {"auth": encoded},
                        "other:5000": {"username": "u", "password": "p"}}}  # fmt: skip
    assert docker_auth(config, "r.io") == ("robot", "s3cret")
    assert docker_auth(config, "other:5000") == ("u", "p")
    assert docker_auth(config, "nowhere") is None


def test_layers_are_the_same_bytes_for_the_same_files(tmp_path: Path) -> None:
    folder = tmp_path / "model"
    (folder / "sub").mkdir(parents=True)
    (folder / "config.json").write_text("{}")
    (folder / "sub" / "tokenizer.json").write_text("[]")
    first = write_layer(folder, _layers(folder)[0], tmp_path / "a.tar")
    os.utime(folder / "config.json", (1, 1))  # another time, owner-independent
    second = write_layer(folder, _layers(folder)[0], tmp_path / "b.tar")
    assert first == second
    with tarfile.open(tmp_path / "a.tar") as tar:
        members = [(m.name, m.isdir(), m.mode, m.uid, m.mtime) for m in tar.getmembers()]
    assert members == [("models", True, 0o755, 0, 0), ("models/config.json", False, 0o644, 0, 0),
                       ("models/sub", True, 0o755, 0, 0),
                       ("models/sub/tokenizer.json", False, 0o644, 0, 0)]  # fmt: skip


def _tar(path: Path, entries: list[tarfile.TarInfo]) -> Path:
    with tarfile.open(path, "w") as tar:
        for entry in entries:
            tar.addfile(entry, io.BytesIO(b"x") if entry.isfile() else None)
    return path


def _file(name: str) -> tarfile.TarInfo:
    info = tarfile.TarInfo(name)
    info.size = 1
    return info


def test_extraction_refuses_what_leaves_models_or_is_not_a_file(tmp_path: Path) -> None:
    link = tarfile.TarInfo("models/link")
    link.type, link.linkname = tarfile.SYMTYPE, "/etc/passwd"
    for bad in (_file("models/../escape"), _file("etc/passwd"), link):
        with pytest.raises(OciError):
            _extract(_tar(tmp_path / "bad.tar", [bad]), tmp_path / "out", "oci://r/m")
    assert not (tmp_path / "escape").exists()
    _extract(_tar(tmp_path / "good.tar", [_file("models/a/b.bin")]), tmp_path / "out", "oci://r/m")
    assert (tmp_path / "out/a/b.bin").read_bytes() == b"x"


def test_a_pods_registry_secret_gives_the_credentials_and_a_local_run_reads_docker_config(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    from fttrainer.publishing.oci import connect

    auth = base64.b64encode(b"robot:from-secret").decode()
    monkeypatch.setenv("PUSH", json.dumps({"auths": {"r.io:5000": {"auth": auth}}}))
    client = connect("oci://r.io:5000/m:v1", secret_env="PUSH", ca_env="NO_CA")
    assert (client.credentials, client.base) == (("robot", "from-secret"), "https://r.io:5000")
    client.close()
    # The Secret holds another registry: said, not an anonymous push that fails later.
    with pytest.raises(OciError, match=r"no entry for other\.io") as missing:
        connect("oci://other.io/m:v1", secret_env="PUSH", ca_env="NO_CA")
    assert missing.value.permanent
    monkeypatch.setenv("PUSH", "not json")
    with pytest.raises(OciError, match=r"not JSON .*dockerconfigjson"):
        connect("oci://r.io:5000/m:v1", secret_env="PUSH", ca_env="NO_CA")
    # No Secret (a local run): the Docker config, as docker and oras read it.
    monkeypatch.delenv("PUSH")
    (tmp_path / "config.json").write_text(json.dumps({"auths": {"r.io:5000": {
        "username": "me", "password": "local"}}}))  # fmt: skip
    monkeypatch.setenv("DOCKER_CONFIG", str(tmp_path))
    local = connect("oci://r.io:5000/m:v1", secret_env="PUSH", ca_env="NO_CA", plain_http=True)
    assert (local.credentials, local.base) == (("me", "local"), "http://r.io:5000")
    local.close()
    monkeypatch.setenv("DOCKER_CONFIG", str(tmp_path / "none"))
    anonymous = connect("oci://r.io:5000/m:v1", secret_env="PUSH", ca_env="NO_CA")
    assert anonymous.credentials is None
    anonymous.close()


def test_lineage_names_the_base_the_data_the_spec_the_metrics_and_the_releases(
    tmp_path: Path,
) -> None:
    from ftapi import parse_job
    from fttestkit.builders import make_job
    from fttrainer.publishing.lineage import BaseModel, image_annotations, spec_digest, tree_digest

    written_by = {"finetune.dev/written-by": "op 1.2"}
    job = parse_job(make_job("tuned").set("metadata.namespace", "team-a")
                    .set("metadata.annotations", written_by).obj())  # fmt: skip
    base = BaseModel("s3://models/llama", None, "sha256:" + "b" * 64)
    notes = image_annotations(
        job, content="adapter", base=base, data={"s3://d/train.jsonl": "sha256:" + "c" * 64},
        metrics={"train_loss": 1.5, "eval_loss": float("nan"), "epoch": 2, "note": "x"},
        trainer_release="finetune-trainer 0.3.0",
    )  # fmt: skip
    assert notes["dev.finetune.job"] == "team-a/tuned"
    assert notes["dev.finetune.content"] == "adapter"
    assert notes["dev.finetune.base-model"] == "s3://models/llama"
    assert notes["dev.finetune.base-model.digest"] == "sha256:" + "b" * 64
    assert json.loads(notes["dev.finetune.datasets"]) == [
        {"uri": "s3://d/train.jsonl", "sha256": "sha256:" + "c" * 64}]  # fmt: skip
    assert notes["dev.finetune.spec.sha256"] == spec_digest(job)
    assert json.loads(notes["dev.finetune.spec"]) == job.spec.to_dict()
    assert json.loads(notes["dev.finetune.metrics"]) == {"train_loss": 1.5, "epoch": 2.0}
    assert notes["dev.finetune.trainer.version"] == "finetune-trainer 0.3.0"
    assert notes["dev.finetune.operator.version"] == "op 1.2"
    assert all(isinstance(v, str) for v in notes.values())
    # Another spec, another hash; the same files wherever they are, the same tree digest.
    other = parse_job(make_job("tuned").set("training.learningRate", 0.5).obj())
    assert spec_digest(other) != spec_digest(job)
    for folder in (tmp_path / "a", tmp_path / "b"):
        (folder / "sub").mkdir(parents=True)
        (folder / "sub" / "w.bin").write_bytes(b"weights")
        (folder / ".finetune-complete").write_text(str(folder))  # a cache marker: not content
    assert tree_digest(tmp_path / "a") == tree_digest(tmp_path / "b")
    (tmp_path / "b" / "sub" / "w.bin").write_bytes(b"other")
    assert tree_digest(tmp_path / "a") != tree_digest(tmp_path / "b")


def test_lineage_pins_the_set_of_images_the_data_held() -> None:
    """A vision fine-tune's image carries its images' count and one digest of their set:
    the same set in any order gives the same value, another set another; none, no key."""
    import hashlib

    from ftapi import parse_job
    from fttestkit.builders import make_job
    from fttrainer.publishing.lineage import BaseModel, image_annotations

    job = parse_job(make_job("tuned").obj())
    digests = [hashlib.sha256(bytes([i])).hexdigest() for i in range(3)]

    def notes(images: list[str]) -> dict[str, str]:
        return image_annotations(
            job, content="adapter", base=BaseModel("m"), data={}, metrics={},
            trainer_release="t", images=images,
        )  # fmt: skip

    pinned = json.loads(notes(digests)["dev.finetune.images"])
    listing = "".join(f"{d}\n" for d in sorted(digests)).encode()
    assert pinned == {"count": 3, "sha256": "sha256:" + hashlib.sha256(listing).hexdigest()}
    assert json.loads(notes(digests[::-1])["dev.finetune.images"]) == pinned
    assert json.loads(notes(digests[:2])["dev.finetune.images"]) != pinned
    assert "dev.finetune.images" not in notes([])


def test_an_unreachable_registry_is_retried_and_a_bad_secret_is_bad_input(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """model.name: oci:// when the registry cannot be reached (nothing listens on port 1)
    stays an OciError, so the attempt fails and a restart tries again; a Secret that cannot
    work is a ValueError naming the field (the run's InvalidInput, never retried)."""
    from ftapi.v1alpha1.registry import RegistryAccess
    from fttrainer.model.sources import fetch_image

    plain = RegistryAccess(plain_http=True)
    with pytest.raises(OciError, match=r"cannot reach 127\.0\.0\.1:1") as unreachable:
        fetch_image("oci://127.0.0.1:1/m:v1", registry=plain, root=tmp_path, field="model.name")
    assert not unreachable.value.permanent
    monkeypatch.setenv("FINETUNE_OCI_PULL_SECRET", json.dumps({"auths": {}}))
    with pytest.raises(ValueError, match=r"^spec\.model\.name: .*no entry for 127\.0\.0\.1:1"):
        fetch_image("oci://127.0.0.1:1/m:v1", registry=plain, root=tmp_path, field="model.name")
    assert not any(tmp_path.iterdir())  # nothing half-written is left to be taken for a model
