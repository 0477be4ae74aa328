"""fttrainer.oci without a registry: references, Docker credentials, layers that are the same
bytes for the same files, and extraction that refuses what would leave models/. The push,
the pull and a kubelet mounting the image: tests/e2e/test_oci_models.py."""

from __future__ import annotations

import base64
import io
import os
import tarfile
from pathlib import Path

import pytest

from fttrainer.oci import OciError, _extract, _layers, docker_auth, parse_reference, write_layer


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
