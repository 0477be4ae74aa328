"""The trainer reads datasets from the real S3 server, with file:line locations intact."""

from __future__ import annotations

import json
import uuid
from pathlib import Path
from typing import Any

import boto3
import pytest
from botocore.config import Config

from ftapi import parse_job
from fttestkit.builders import make_job
from fttestkit.cluster import Cluster
from fttrainer.data.prepare import DataError, prepare_data

pytestmark = pytest.mark.integration


@pytest.fixture
def s3_bucket(cluster: Cluster, monkeypatch: Any) -> tuple[Any, str, str]:
    """(client, a new bucket, endpoint); the trainer's credentials in the environment."""
    for name in ("AWS_ACCESS_KEY_ID", "AWS_SECRET_ACCESS_KEY", "AWS_REGION"):
        monkeypatch.setenv(name, cluster.env[name])
    endpoint = cluster.env["FTO_S3_ENDPOINT"]
    s3 = boto3.client("s3", endpoint_url=endpoint, config=Config(s3={"addressing_style": "path"}))
    name = f"data-{uuid.uuid4().hex[:10]}"
    s3.create_bucket(Bucket=name)
    return s3, name, endpoint


def test_s3_dataset_is_read_with_locations(s3_bucket: tuple[Any, str, str]) -> None:
    s3, bucket, endpoint = s3_bucket
    good = "".join(json.dumps({"question": f"q{i}", "answer": f"a{i}"}) + "\n" for i in range(8))
    s3.put_object(Bucket=bucket, Key="qa/train.jsonl", Body=good.encode())
    s3.put_object(Bucket=bucket, Key="qa/bad.jsonl", Body=(good + "{broken\n").encode())
    output = {"uri": f"s3://{bucket}/out", "s3": {"endpoint": endpoint, "forcePathStyle": True}}

    def spec(key: str) -> Any:
        job = make_job().set("dataset", {"train": {"uri": f"s3://{bucket}/{key}"}, "format": "qa"})
        return parse_job(job.set("output", output).obj()).spec

    prepared = prepare_data(spec("qa/train.jsonl"))
    assert prepared.report.sources == {f"s3://{bucket}/qa/train.jsonl": 8}
    with pytest.raises(DataError) as caught:
        prepare_data(spec("qa/bad.jsonl"))
    assert caught.value.problems[0].origin == f"s3://{bucket}/qa/bad.jsonl:9"
    with pytest.raises(DataError, match="cannot download"):
        prepare_data(spec("qa/missing.jsonl"))


def test_evaluation_prompts_and_benchmarks_come_from_s3_before_the_model_loads(
    s3_bucket: tuple[Any, str, str],
) -> None:
    from fttrainer.evaluation.evaluator import Evaluator

    s3, bucket, endpoint = s3_bucket
    s3.put_object(Bucket=bucket, Key="prompts.txt", Body=b"What is LoRA?\nWhy QLoRA?\n")
    mcq = {"question": "2+2?", "choices": {"A": "3", "B": "4"}, "answer": "B"}
    s3.put_object(Bucket=bucket, Key="bench/mcq.jsonl", Body=(json.dumps(mcq) + "\n").encode())
    job = make_job().set(
        "output",
        {"uri": f"s3://{bucket}/out", "s3": {"endpoint": endpoint, "forcePathStyle": True}},
    )
    job.set("evaluation", {"promptsUri": f"s3://{bucket}/prompts.txt", "benchmarks": [
        {"name": "arith", "uri": f"s3://{bucket}/bench/mcq.jsonl", "format": "mcq"}]})  # fmt: skip
    evaluator = Evaluator(parse_job(job.obj()).spec, None, None, Path("unused"))  # type: ignore[arg-type]
    evaluator.load_inputs()  # no model, no tokenizer: inputs come first
    assert [p.text for p in evaluator.prompts] == ["What is LoRA?", "Why QLoRA?"]
    fmt, samples = evaluator.benchmarks["arith"]
    assert fmt == "mcq" and len(samples) == 1


def test_prepared_data_is_kept_in_the_output_store_for_the_other_nodes(
    s3_bucket: tuple[Any, str, str], tmp_path: Path
) -> None:
    """One node prepares and keeps a copy under output.uri/prepared/, marker last; another
    node (an attempt restarted elsewhere) downloads it instead of reading a row; a copy
    without its marker is never taken."""
    from fttrainer.node_cache import COMPLETE
    from fttrainer.storage import open_store

    s3, bucket, endpoint = s3_bucket
    rows = "".join(json.dumps({"question": f"q{i}", "answer": f"a{i}"}) + "\n" for i in range(30))
    s3.put_object(Bucket=bucket, Key="qa/train.jsonl", Body=rows.encode())
    output = {"uri": f"s3://{bucket}/out", "s3": {"endpoint": endpoint, "forcePathStyle": True}}
    job = make_job().set(
        "dataset", {"train": {"uri": f"s3://{bucket}/qa/train.jsonl"}, "format": "qa"}
    )
    spec = parse_job(job.set("output", output).obj()).spec
    mirror = open_store(f"s3://{bucket}/out/prepared", s3=spec.output.s3)
    first = prepare_data(spec, root=tmp_path / "node-a", mirror=mirror)
    assert not first.reused
    keys = {o.key for o in mirror.list()}
    assert f"{first.folder.name}/{COMPLETE}" in keys
    assert f"{first.folder.name}/train.arrow" in keys
    second = prepare_data(spec, root=tmp_path / "node-b", mirror=mirror)
    assert second.reused and second.folder.name == first.folder.name
    assert list(second.train) == list(first.train) and second.report == first.report
    mirror.delete([f"{first.folder.name}/{COMPLETE}"])
    third = prepare_data(spec, root=tmp_path / "node-c", mirror=mirror)
    assert not third.reused and list(third.train) == list(first.train)


def _png(colour: tuple[int, int, int]) -> bytes:
    import io

    from PIL import Image

    out = io.BytesIO()
    Image.new("RGB", (24, 16), colour).save(out, format="PNG")
    return out.getvalue()


def test_images_of_an_s3_data_file_are_read_from_s3_and_checked(
    s3_bucket: tuple[Any, str, str], tmp_path: Path
) -> None:
    """Paths beside an S3 data file and s3:// URIs are read from the real server, kept by
    digest; a missing key and a path leaving the data file's folder are bad rows with
    file:line. Evaluation prompts read theirs the same way."""
    from fttrainer.evaluation.evaluator import Evaluator

    s3, bucket, endpoint = s3_bucket
    red, blue = _png((220, 20, 20)), _png((20, 20, 220))
    s3.put_object(Bucket=bucket, Key="vis/img/red.png", Body=red)
    s3.put_object(Bucket=bucket, Key="shared/blue.png", Body=blue)

    def row(ref: str) -> str:
        user = {"role": "user", "content": [{"type": "image", "image": ref},
                                            {"type": "text", "text": "Colour?"}]}  # fmt: skip
        return json.dumps({"messages": [user, {"role": "assistant", "content": "red"}]}) + "\n"

    good = row("img/red.png") + row(f"s3://{bucket}/shared/blue.png") + row("img/red.png")
    s3.put_object(Bucket=bucket, Key="vis/train.jsonl", Body=good.encode())
    bad = good + row("img/gone.png") + row("../shared/blue.png")
    s3.put_object(Bucket=bucket, Key="vis/bad.jsonl", Body=bad.encode())
    output = {"uri": f"s3://{bucket}/out", "s3": {"endpoint": endpoint, "forcePathStyle": True}}

    def spec(key: str) -> Any:
        dataset = {"train": {"uri": f"s3://{bucket}/{key}"}, "format": "messages"}
        return parse_job(make_job().set("dataset", dataset).set("output", output).obj()).spec

    prepared = prepare_data(spec("vis/train.jsonl"))
    images = prepared.report.images
    assert images is not None and (images.count, images.distinct) == (3, 2)
    kept = {prepared.image_path(d).read_bytes() for d in prepared.image_digests()}
    assert kept == {red, blue}
    with pytest.raises(DataError) as caught:
        prepare_data(spec("vis/bad.jsonl"))
    found = {p.origin: p.message for p in caught.value.problems}
    assert set(found) == {f"s3://{bucket}/vis/bad.jsonl:4", f"s3://{bucket}/vis/bad.jsonl:5"}
    assert f"not found (s3://{bucket}/vis/img/gone.png)" in found[f"s3://{bucket}/vis/bad.jsonl:4"]
    assert "must stay under its folder" in found[f"s3://{bucket}/vis/bad.jsonl:5"]

    prompts = json.dumps({"prompt": "Colour?", "images": ["img/red.png"]}) + "\n"
    s3.put_object(Bucket=bucket, Key="vis/prompts.jsonl", Body=prompts.encode())
    job = make_job().set("output", output)
    job.set("evaluation.promptsUri", f"s3://{bucket}/vis/prompts.jsonl")
    asked = parse_job(job.obj()).spec
    evaluator = Evaluator(asked, None, None, tmp_path, processor=object())  # type: ignore[arg-type]
    evaluator.load_inputs()
    (prompt,) = evaluator.prompts
    assert prompt.images == ("img/red.png",) and prompt.paths[0].read_bytes() == red
