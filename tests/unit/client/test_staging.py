"""What submit uploads and where: local paths found in a manifest, content-addressed keys,
the hash cache, and the manifest rewritten to the uploads. Pure (no S3): the uploads
themselves are tested against the local S3 server (tests/integration/test_client.py)."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import pytest

from ftapi import parse_job
from ftclient.errors import StagingError
from ftclient.manifests import beneath, get_field, set_field
from ftclient.staging import HashCache, local_locations, plan_staging, rewrite, split_s3_uri


def manifest(**spec: object) -> dict[str, object]:
    base: dict[str, object] = {
        "model": {"name": "org/model"},
        "dataset": {"train": {"uri": "data/train.jsonl"}},
        "output": {"uri": "s3://out/run"},
    }
    base.update(spec)
    return {"apiVersion": "finetune.dev/v1alpha1", "kind": "FineTuneJob",
            "metadata": {"name": "job"}, "spec": base}  # fmt: skip


@pytest.fixture
def workdir(tmp_path: Path) -> Path:
    (tmp_path / "data").mkdir()
    (tmp_path / "data/train.jsonl").write_text('{"text": "a"}\n')
    model = tmp_path / "models/tiny"
    (model / ".git").mkdir(parents=True)
    (model / "config.json").write_text("{}")
    (model / "sub").mkdir()
    (model / "sub/weights.bin").write_bytes(b"\0" * 100)
    (model / ".git/HEAD").write_text("ref")
    return tmp_path


def test_local_paths_are_found_and_hub_ids_and_uris_are_not(workdir: Path) -> None:
    job = parse_job(manifest(
        model={"name": "models/tiny", "tokenizer": "org/tokenizer"},
        evaluation={"promptsUri": "s3://b/prompts.jsonl"},
    ))  # fmt: skip
    found, problems = local_locations(job, workdir)
    assert problems == []
    assert {(f.location.field, f.path) for f in found} == {
        ("spec.dataset.train.uri", workdir / "data/train.jsonl"),
        ("spec.model.name", workdir / "models/tiny"),
    }


def test_a_missing_local_path_is_a_problem_but_a_missing_hub_id_is_not(workdir: Path) -> None:
    job = parse_job(manifest(
        model={"name": "./models/gone", "tokenizer": "org/name"},
        dataset={"train": {"uri": "data/missing.jsonl"}},
    ))  # fmt: skip
    _, problems = local_locations(job, workdir)
    assert problems == [
        "spec.dataset.train.uri: 'data/missing.jsonl' does not exist on this machine",
        "spec.model.name: './models/gone' does not exist on this machine",
    ]
    # A name starting with a dot is a path (no hub id can): the quick start's model before
    # `python -m fttrainer.tiny` wrote it.
    job = parse_job(manifest(model={"name": ".quickstart/tiny-llama"}))
    assert local_locations(job, workdir)[1] == [
        "spec.model.name: '.quickstart/tiny-llama' does not exist on this machine"
    ]


def test_a_python_reward_file_is_staged_and_keeps_its_function_name(workdir: Path) -> None:
    (workdir / "rewards.py").write_text("def score(prompts, completions, **kw): return [0.0]\n")
    grpo = {"type": "grpo", "grpo": {"rewards": [
        {"type": "json"}, {"type": "python", "function": "rewards.py:score"},
    ]}}  # fmt: skip
    job = parse_job(manifest(trainer=grpo, dataset={"train": {"uri": "data/train.jsonl"},
                                                    "format": "prompt_only"}))  # fmt: skip
    found, _ = local_locations(job, workdir)
    reward = next(f for f in found if "rewards" in f.location.field)
    assert reward.location.field == "spec.trainer.grpo.rewards[1].function"
    staged = plan_staging([reward], "s3://bucket/stage", HashCache(None))
    rewritten = rewrite(manifest(trainer=grpo), staged)
    assert get_field(rewritten, "spec.trainer.grpo.rewards[1].function") == staged[0].uri + ":score"
    assert staged[0].uri.endswith("/rewards.py")


def test_keys_follow_content_not_names_or_times(
    workdir: Path, tmp_path_factory: pytest.TempPathFactory
) -> None:
    job = parse_job(manifest(model={"name": "models/tiny"}))
    found, _ = local_locations(job, workdir)
    first = plan_staging(found, "s3://bucket/stage/", HashCache(None))
    # The same content elsewhere, touched later: the same keys.
    elsewhere = tmp_path_factory.mktemp("copy")
    for folder in ("data", "models"):
        shutil.copytree(workdir / folder, elsewhere / folder)
    again = plan_staging(local_locations(job, elsewhere)[0], "s3://bucket/stage", HashCache(None))
    assert [p.uri for p in first] == [p.uri for p in again]
    data, model = sorted(first, key=lambda p: p.local.location.field)
    assert data.uri.startswith("s3://bucket/stage/blobs/") and data.uri.endswith("/train.jsonl")
    assert data.marker is None
    assert model.uri.startswith("s3://bucket/stage/trees/")
    assert model.marker == model.uri.removeprefix("s3://bucket/") + ".staged"
    # .git is not part of a model; nested folders are.
    assert sorted(f.key.removeprefix(model.uri.removeprefix("s3://bucket/") + "/")
                  for f in model.files) == ["config.json", "sub/weights.bin"]  # fmt: skip
    # One byte changed, or one file renamed: another folder key.
    (elsewhere / "models/tiny/sub/weights.bin").write_bytes(b"\0" * 99 + b"\1")
    changed = plan_staging(local_locations(job, elsewhere)[0], "s3://bucket/stage", HashCache(None))
    assert {p.uri for p in changed} - {p.uri for p in first} == {
        next(p.uri for p in changed if p.marker)
    }
    (elsewhere / "models/tiny/sub/weights.bin").write_bytes(b"\0" * 100)
    (elsewhere / "models/tiny/config.json").rename(elsewhere / "models/tiny/config2.json")
    renamed = plan_staging(local_locations(job, elsewhere)[0], "s3://bucket/stage", HashCache(None))
    assert next(p.uri for p in renamed if p.marker) != model.uri


def test_an_empty_folder_is_refused(workdir: Path) -> None:
    (workdir / "models/empty").mkdir()
    job = parse_job(manifest(model={"name": "models/empty"}))
    found, _ = local_locations(job, workdir)
    with pytest.raises(StagingError, match=r"spec\.model\.name: the folder .* is empty"):
        plan_staging(found, "s3://bucket/stage", HashCache(None))


def test_the_hash_cache_rehashes_only_changed_files(tmp_path: Path) -> None:
    data = tmp_path / "data.jsonl"
    data.write_text("one\n")
    cache = HashCache(tmp_path / "cache/hashes.json")
    first = cache.sha256(data)
    cache.save()
    # A cache entry is believed while size and mtime match: plant a wrong digest to see it.
    entries = json.loads((tmp_path / "cache/hashes.json").read_text())
    entries[str(data)][2] = "planted"
    (tmp_path / "cache/hashes.json").write_text(json.dumps(entries))
    assert HashCache(tmp_path / "cache/hashes.json").sha256(data) == "planted"
    data.write_text("two\n")  # changed: rehashed
    assert HashCache(tmp_path / "cache/hashes.json").sha256(data) not in ("planted", first)
    (tmp_path / "cache/hashes.json").write_text("{not json")
    assert HashCache(tmp_path / "cache/hashes.json").sha256(data) != "planted"


def test_staging_locations_must_be_s3_with_a_bucket() -> None:
    assert split_s3_uri("s3://bucket/a/b/") == ("bucket", "a/b")
    assert split_s3_uri("s3://bucket") == ("bucket", "")
    for bad in ("/tmp/stage", "gs://bucket/x", "s3:///x"):
        with pytest.raises(StagingError):
            split_s3_uri(bad)


def test_defaults_lie_beneath_the_manifest_which_wins() -> None:
    defaults = {"resources": {"cpu": "1", "memory": "2Gi", "tolerations": [{"key": "a"}]},
                "logging": {"steps": 1}}  # fmt: skip
    spec = {"model": {"name": "m"}, "resources": {"cpu": "4", "tolerations": [{"key": "b"}]}}
    merged = beneath(defaults, spec)
    assert merged == {
        "model": {"name": "m"},
        "resources": {"cpu": "4", "tolerations": [{"key": "b"}], "memory": "2Gi"},
        "logging": {"steps": 1},
    }
    assert list(merged) == ["model", "resources", "logging"]  # the manifest's order first
    assert defaults["resources"]["cpu"] == "1" and spec["resources"]["cpu"] == "4"  # unchanged


def test_fields_are_set_by_their_spoken_path() -> None:
    document = {"spec": {"rewards": [{"f": "a"}, {"f": "b"}]}}
    set_field(document, "spec.rewards[1].f", "c")
    assert document == {"spec": {"rewards": [{"f": "a"}, {"f": "c"}]}}
    assert get_field(document, "spec.rewards[5].f") is None


def _rows_with_images(folder: Path) -> Path:
    """A chat data file naming images beside it: a content part, an images column, and
    references submit leaves alone (an s3:// URI, a data: URL, text ending in .png)."""
    (folder / "img/sub").mkdir(parents=True)
    (folder / "img/a.png").write_bytes(b"\x89PNG a")
    (folder / "img/sub/b.jpg").write_bytes(b"\xff\xd8 b")
    (folder / "img/unused.png").write_bytes(b"not named by any row")
    rows = [
        {"messages": [{"role": "user", "content": [{"type": "image", "image": "img/a.png"},
                                                   {"type": "text", "text": "see x.png"}]},
                      {"role": "assistant", "content": "red"}]},
        {"images": ["img/sub/b.jpg", "s3://bucket/c.png", "data:image/png;base64,AAAA"],
         "conversations": [{"from": "human", "value": "<image>?"}]},
        {"messages": [{"role": "user", "content": [{"type": "image", "image": "img/a.png"}]}]},
    ]  # fmt: skip
    path = folder / "train.jsonl"
    path.write_text("".join(json.dumps(r) + "\n" for r in rows))
    return path


def test_a_data_file_goes_up_with_the_images_its_rows_name(tmp_path: Path) -> None:
    """The file and exactly the images its rows name beside it, paths kept, as one tree:
    the trainer resolves them against the uploaded file's folder. The key follows the
    images' bytes as well as the rows'."""
    _rows_with_images(tmp_path / "data")
    job = parse_job(manifest())
    found, _ = local_locations(job, tmp_path)
    (data,) = plan_staging(found, "s3://bucket/stage", HashCache(None))
    base = data.uri.removeprefix("s3://bucket/").removesuffix("/train.jsonl")
    assert base.startswith("stage/trees/") and data.marker == base + ".staged"
    assert sorted(f.key.removeprefix(base + "/") for f in data.files) == [
        "img/a.png", "img/sub/b.jpg", "train.jsonl"]  # fmt: skip
    rewritten = rewrite(manifest(), [data])
    assert get_field(rewritten, "spec.dataset.train.uri") == data.uri
    (tmp_path / "data/img/a.png").write_bytes(b"\x89PNG changed")
    (changed,) = plan_staging(found, "s3://bucket/stage", HashCache(None))
    assert changed.uri != data.uri


def test_images_that_cannot_go_up_are_refused_by_file_and_line(tmp_path: Path) -> None:
    path = _rows_with_images(tmp_path / "data")
    bad = [
        {"images": ["img/gone.png"]},
        {"images": [str(tmp_path / "data/img/a.png")]},
        {"images": ["../outside.png"]},
    ]
    (tmp_path / "outside.png").write_bytes(b"x")
    with path.open("a") as rows:
        rows.write("{not json\n" + "".join(json.dumps(r) + "\n" for r in bad))
    found, _ = local_locations(parse_job(manifest()), tmp_path)
    with pytest.raises(StagingError) as caught:
        plan_staging(found, "s3://bucket/stage", HashCache(None))
    message = str(caught.value)
    assert f"{path}:5: 'img/gone.png': does not exist on this machine" in message
    assert f"{path}:6: '{tmp_path / 'data/img/a.png'}': an absolute path" in message
    assert f"{path}:7: '../outside.png': leaves the data file's folder" in message


def test_a_named_images_column_is_read_too(tmp_path: Path) -> None:
    (tmp_path / "data/img").mkdir(parents=True)
    (tmp_path / "data/img/a.png").write_bytes(b"a")
    (tmp_path / "data/train.jsonl").write_text(json.dumps({"pics": ["img/a.png"]}) + "\n")
    found, _ = local_locations(parse_job(manifest()), tmp_path)
    (plain,) = plan_staging(found, "s3://bucket/stage", HashCache(None))
    assert plain.marker is None  # no column named: a file alone
    (tree,) = plan_staging(found, "s3://bucket/stage", HashCache(None), ["pics"])
    assert sorted(f.source.name for f in tree.files) == ["a.png", "train.jsonl"]
