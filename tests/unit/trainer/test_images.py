"""Images in rows (fttrainer/data/images.py, data/formats.py): every layout users have comes
out as `<image>` placeholders in user turns plus `images` in the same order; a reference is
placed beside its data file; bytes that are no usable image are refused with the reason."""

from __future__ import annotations

import base64
import hashlib
import io
import json
import struct
import zlib
from pathlib import Path
from typing import Any

import pytest

from ftapi.v1alpha1 import Columns
from fttrainer.data.formats import FormatContext, RowError, convert_row
from fttrainer.data.images import ImageError, check_image, decode_data_url, locate

CTX = FormatContext(Columns())


def _png(width: int = 4, height: int = 3, colour: tuple[int, int, int] = (200, 10, 10)) -> bytes:
    from PIL import Image

    out = io.BytesIO()
    Image.new("RGB", (width, height), colour).save(out, format="PNG")
    return out.getvalue()


def _user(*parts: dict[str, Any]) -> dict[str, Any]:
    return {"role": "user", "content": list(parts)}


BOT = {"role": "assistant", "content": "red"}
TEXT = {"type": "text", "text": "What colour?"}


# --- layouts -------------------------------------------------------------------------------

LAYOUTS: dict[str, tuple[str, dict[str, Any], list[dict[str, Any]], list[str]]] = {
    "transformers' image part": (
        "messages",
        {"messages": [_user({"type": "image", "image": "a.png"}, TEXT), BOT]},
        [{"role": "user", "content": "<image>What colour?"}, BOT],
        ["a.png"],
    ),
    "url and path keys": (
        "messages",
        {"messages": [_user({"type": "image", "url": "s3://b/a.png"}, TEXT,
                            {"type": "image", "path": "b.jpg"}), BOT]},
        [{"role": "user", "content": "<image>What colour?<image>"}, BOT],
        ["s3://b/a.png", "b.jpg"],
    ),
    "OpenAI's image_url part": (
        "messages",
        {"messages": [_user(TEXT, {"type": "image_url",
                                   "image_url": {"url": "data:image/png;base64,AA=="}}), BOT]},
        [{"role": "user", "content": "What colour?<image>"}, BOT],
        ["data:image/png;base64,AA=="],
    ),
    "TRL's bare parts and an images column": (
        "messages",
        {"messages": [_user({"type": "image"}, TEXT), BOT], "images": ["a.png"]},
        [{"role": "user", "content": "<image>What colour?"}, BOT],
        ["a.png"],
    ),
    "ShareGPT / LLaMA-Factory placeholders": (
        "sharegpt",
        {"conversations": [{"from": "human", "value": "<image><image>Same?"},
                           {"from": "gpt", "value": "no"}], "images": ["x.png", "y.png"]},
        [{"role": "user", "content": "<image><image>Same?"},
         {"role": "assistant", "content": "no"}],
        ["x.png", "y.png"],
    ),
    "alpaca with an images column": (
        "instruction",
        {"instruction": "<image>Read the sign.", "output": "STOP", "images": "sign.png"},
        [{"role": "user", "content": "<image>Read the sign."},
         {"role": "assistant", "content": "STOP"}],
        ["sign.png"],
    ),
    "a CSV cell with a JSON list": (
        "qa",
        {"question": "<image>Count?", "answer": "3", "images": '["dots.png"]'},
        [{"role": "user", "content": "<image>Count?"}, {"role": "assistant", "content": "3"}],
        ["dots.png"],
    ),
    "a Hugging Face datasets image": (
        "messages",
        {"messages": [_user({"type": "image", "image": {"bytes": b"\x89PNG", "path": None}}), BOT]},
        [{"role": "user", "content": "<image>"}, BOT],
        ["data:image;base64," + base64.b64encode(b"\x89PNG").decode()],
    ),
}  # fmt: skip


@pytest.mark.parametrize("name", LAYOUTS)
def test_every_layout_gives_placeholders_and_images_in_order(name: str) -> None:
    fmt, row, turns, refs = LAYOUTS[name]
    (sample,) = convert_row(fmt, row, CTX)
    assert sample["messages"] == turns
    assert sample["images"] == refs


def test_a_preference_row_keeps_its_images_with_the_prompt() -> None:
    image = {"type": "image", "image": "chart.png"}
    row = {
        "chosen": [_user(image, TEXT), {"role": "assistant", "content": "up"}],
        "rejected": [_user(image, TEXT), {"role": "assistant", "content": "down"}],
    }
    (sample,) = convert_row("preference", row, CTX)
    # the shared prompt is found although the image was read twice
    assert sample["prompt"] == [{"role": "user", "content": "<image>What colour?"}]
    assert sample["images"] == ["chart.png"]


def test_the_same_image_twice_is_listed_twice() -> None:
    part = {"type": "image", "image": "a.png"}
    (sample,) = convert_row("messages", {"messages": [_user(part, TEXT, part), BOT]}, CTX)
    assert sample["images"] == ["a.png", "a.png"]


def test_a_named_images_column_is_read_and_not_kept_as_a_column() -> None:
    ctx = FormatContext(Columns(images="pictures"))
    row = {"prompt": [_user({"type": "image"}, TEXT)], "pictures": ["p.png"], "label": "red"}
    (sample,) = convert_row("prompt_only", row, ctx)
    assert sample["images"] == ["p.png"] and "pictures" not in sample
    assert sample["label"] == "red"  # other columns still travel (GRPO rewards)


def test_text_only_rows_are_unchanged() -> None:
    row = {"messages": [{"role": "user", "content": "Write <image> literally"}, BOT]}
    (sample,) = convert_row("messages", row, CTX)
    assert sample == {"messages": row["messages"]}
    (text,) = convert_row("plain_text", {"text": "x", "images": ["a.png"]}, CTX)
    assert text == {"text": "x"}  # plain_text reads its text column only


BAD: dict[str, tuple[str, dict[str, Any], str]] = {
    "more images than placeholders": (
        "sharegpt",
        {"conversations": [{"from": "human", "value": "<image>Same?"},
                           {"from": "gpt", "value": "no"}], "images": ["x.png", "y.png"]},
        "images: 2 image(s), but the turns hold 1 <image> placeholder(s)",
    ),
    "placeholders without images": (
        "messages",
        {"messages": [_user({"type": "image", "image": "a.png"}, {"type": "image"}), BOT]},
        "1 <image> placeholder(s) or bare image parts beside parts that carry their own image",
    ),
    "an image given twice": (
        "messages",
        {"messages": [_user({"type": "image", "image": "a.png"}), BOT], "images": ["a.png"]},
        "images: the row's content parts carry their own images too",
    ),
    "an image in an assistant turn": (
        "sharegpt",
        {"conversations": [{"from": "human", "value": "q"},
                           {"from": "gpt", "value": "<image>"}], "images": ["x.png"]},
        "messages[1].content: an image in a assistant turn: images go in user turns",
    ),
    "an image part without an image": (
        "messages",
        {"messages": [_user({"type": "image", "image": 7}), BOT]},
        "messages[0].content[0].image: expected an image path, s3:// URI or data: URL, got 7",
    ),
    "an images column that is no list": (
        "messages",
        {"messages": [_user({"type": "image"}), BOT], "images": "[not json"},
        "images: not a JSON list of images",
    ),
}  # fmt: skip


@pytest.mark.parametrize("name", BAD)
def test_bad_image_rows_say_which_field(name: str) -> None:
    fmt, row, message = BAD[name]
    with pytest.raises(RowError) as caught:
        convert_row(fmt, row, CTX)
    assert message in str(caught.value)


# --- where a reference points --------------------------------------------------------------


@pytest.mark.parametrize(
    ("ref", "base", "where"),
    [
        ("img/a.png", "/data/train.jsonl", "/data/img/a.png"),
        ("/abs/a.png", "/data/train.jsonl", "/abs/a.png"),
        ("img/a.png", "s3://bucket/sets/train.jsonl", "s3://bucket/sets/img/a.png"),
        ("s3://other/a.png", "s3://bucket/train.jsonl", "s3://other/a.png"),
        ("data:image/png;base64,AA==", "s3://bucket/train.jsonl", "data:image/png;base64,AA=="),
    ],
)
def test_a_reference_is_placed_beside_its_data_file(ref: str, base: str, where: str) -> None:
    assert locate(ref, base) == where


@pytest.mark.parametrize(
    ("ref", "base", "message"),
    [
        ("https://example.com/a.png", "/d/t.jsonl", "https:// is not fetched"),
        ("../secret.png", "s3://bucket/sets/t.jsonl", "must stay under its folder"),
        ("/etc/passwd", "s3://bucket/sets/t.jsonl", "must stay under its folder"),
    ],
)
def test_references_the_trainer_will_not_fetch(ref: str, base: str, message: str) -> None:
    with pytest.raises(ImageError, match=message):
        locate(ref, base)


def test_data_urls_decode_and_bad_ones_say_why() -> None:
    assert decode_data_url("data:image/png;base64," + base64.b64encode(b"abc").decode()) == b"abc"
    with pytest.raises(ImageError, match="must be base64"):
        decode_data_url("data:image/png,abc")
    with pytest.raises(ImageError, match="not valid base64"):
        decode_data_url("data:image/png;base64,@@@")


# --- the check -----------------------------------------------------------------------------


def test_a_good_image_passes_with_its_digest_and_size() -> None:
    data = _png(5, 7)
    checked = check_image(data)
    assert (checked.format, checked.width, checked.height, checked.size) == ("PNG", 5, 7, len(data))
    assert checked.digest == hashlib.sha256(data).hexdigest()


def test_what_is_not_an_image_is_refused() -> None:
    with pytest.raises(ImageError, match="not an image"):
        check_image(b'{"rows": "not a picture"}')
    with pytest.raises(ImageError, match="empty"):
        check_image(b"")


def test_a_truncated_image_is_refused() -> None:
    data = _png(64, 64)
    with pytest.raises(ImageError, match="truncated or corrupt"):
        check_image(data[: len(data) // 2])


def test_a_decompression_bomb_is_refused_from_its_header() -> None:
    """A PNG whose header claims 100,000 x 100,000 pixels: refused before decoding (the
    bytes hold no such image: decoding would fail much later, or fill memory)."""

    def chunk(kind: bytes, body: bytes) -> bytes:
        return (
            struct.pack(">I", len(body)) + kind + body + struct.pack(">I", zlib.crc32(kind + body))
        )

    header = struct.pack(">IIBBBBB", 100_000, 100_000, 8, 2, 0, 0, 0)
    bomb = b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", header) + chunk(b"IDAT", zlib.compress(b"\0" * 64))
    bomb += chunk(b"IEND", b"")
    with pytest.raises(ImageError, match=r"100000 x 100000 = 10,000,000,000 pixels, more than"):
        check_image(bomb)
    with pytest.raises(ImageError, match="more than the 20 an image may have"):
        check_image(_png(5, 5), max_pixels=20)


# --- the data check: every image read, checked and kept before training ---------------------


def _vision_rows(tmp_path: Path) -> Path:
    """Four good rows beside their images: parts with their own image (two share one), an
    images column, a data: URL."""
    (tmp_path / "img").mkdir()
    (tmp_path / "img" / "red.png").write_bytes(_png(colour=(250, 0, 0)))
    (tmp_path / "img" / "blue.png").write_bytes(_png(colour=(0, 0, 250)))
    inline = "data:image/png;base64," + base64.b64encode(_png(colour=(0, 250, 0))).decode()
    rows = [
        {"messages": [_user({"type": "image", "image": "img/red.png"}, TEXT), BOT]},
        {"messages": [{"role": "user", "content": "<image>What colour?"},
                      {"role": "assistant", "content": "blue"}], "images": ["img/blue.png"]},
        {"messages": [_user({"type": "image_url", "image_url": {"url": inline}}, TEXT),
                      {"role": "assistant", "content": "green"}]},
        {"messages": [_user({"type": "image", "image": "img/red.png"}, TEXT),
                      {"role": "assistant", "content": "still red"}]},
    ]  # fmt: skip
    path = tmp_path / "train.jsonl"
    path.write_text("".join(json.dumps(r) + "\n" for r in rows))
    return path


def _prepare(path: Path, fmt: str = "messages") -> Any:
    from ftapi import parse_job
    from fttestkit.builders import make_job
    from fttrainer.data.prepare import prepare_data

    dataset = {"train": {"uri": str(path)}, "format": fmt}
    return prepare_data(parse_job(make_job().set("dataset", dataset).obj()).spec)


def test_images_are_kept_by_digest_and_counted(tmp_path: Path) -> None:
    path = _vision_rows(tmp_path)
    prepared = _prepare(path)
    samples = [json.loads(s) if isinstance(s, str) else s for s in prepared.train]
    digests = [s["images"] for s in samples]
    assert all(len(d) == 1 for d in digests)
    for (digest,) in digests:
        data = prepared.image_path(digest).read_bytes()
        assert hashlib.sha256(data).hexdigest() == digest
        check_image(data)
    report = prepared.report.images
    assert (report.count, report.distinct, report.formats) == (4, 3, {"PNG": 3})
    assert "images: 4 in samples (3 distinct" in prepared.report.render()


def test_every_bad_image_is_reported_with_file_line_and_reason(tmp_path: Path) -> None:
    from fttrainer.data.prepare import DataError

    path = _vision_rows(tmp_path)
    (tmp_path / "img" / "cut.png").write_bytes(_png(64, 64)[:100])
    (tmp_path / "img" / "notes.png").write_text("not a picture")
    bad = [
        {"messages": [_user({"type": "image", "image": "img/missing.png"}), BOT]},
        {"messages": [_user({"type": "image", "image": "img/cut.png"}), BOT]},
        {"messages": [_user({"type": "image", "image": "img/notes.png"}), BOT]},
        {"messages": [_user({"type": "image"}, {"type": "image"}), BOT], "images": ["img/red.png"]},
        {"messages": [_user({"type": "image", "image": "https://example.com/a.png"}), BOT]},
    ]
    with path.open("a") as out:
        out.write("".join(json.dumps(r) + "\n" for r in bad))
    with pytest.raises(DataError) as caught:
        _prepare(path)
    found = {p.origin.rsplit(":", 1)[1]: p.message for p in caught.value.problems}
    assert set(found) == {"5", "6", "7", "8", "9"}, found
    assert found["5"].startswith("images[0] 'img/missing.png': not found (")
    assert "images[0] 'img/cut.png': truncated or corrupt" in found["6"]
    assert "images[0] 'img/notes.png': not an image" in found["7"]
    assert "images: 1 image(s), but the turns hold 2 <image> placeholder(s)" in found["8"]
    assert "https:// is not fetched" in found["9"]
    assert all(p.origin.startswith(str(path)) for p in caught.value.problems)


def test_finetune_validate_refuses_images_for_a_text_only_model_and_reports_bad_ones(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    """`finetune validate` reads the model's config: images for a model that reads text
    only are refused (each would be read as the characters `<image>`), for a
    vision-language model counted; a bad image gives its file:line as a run would."""
    import yaml

    from fttestkit.builders import make_job
    from fttrainer.cli import main

    models = {}
    for kind in ("llama", "idefics3"):  # a config is all validate reads of a model
        models[kind] = tmp_path / kind
        models[kind].mkdir()
        (models[kind] / "config.json").write_text(json.dumps({"model_type": kind}))
    path = _vision_rows(tmp_path)
    job = tmp_path / "job.yaml"
    dataset = {"train": {"uri": str(path)}, "format": "messages"}

    def validate(model: Path) -> int:
        job.write_text(yaml.safe_dump(
            make_job().set("model.name", str(model)).set("dataset", dataset).obj()))  # fmt: skip
        return main(["validate", str(job)])

    assert validate(models["llama"]) == 1
    out, err = capsys.readouterr()
    assert "images: 4 in samples (3 distinct" in out
    assert f"the rows carry 4 image(s), and the model '{models['llama']}' reads text only" in err
    assert validate(models["idefics3"]) == 0
    assert "images: 4 in samples (3 distinct" in capsys.readouterr().out
    with path.open("a") as rows:
        gone = {"messages": [_user({"type": "image", "image": "img/gone.png"}), BOT]}
        rows.write(json.dumps(gone) + "\n")
    assert validate(models["idefics3"]) == 1
    assert f"{path}:5: images[0] 'img/gone.png': not found" in capsys.readouterr().err


def test_an_empty_list_of_parts_is_empty_text_as_before() -> None:
    (sample,) = convert_row("messages", {"messages": [{"role": "user", "content": []}, BOT]}, CTX)
    assert sample == {"messages": [{"role": "user", "content": ""}, BOT]}


def test_finetune_validate_refuses_vision_settings_for_a_text_only_model(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    """spec.vision on a model whose config has no vision_config is refused from the config,
    before any weight: it would be ignored."""
    import yaml

    from fttestkit.builders import make_job
    from fttrainer.cli import main

    model = tmp_path / "llama"
    model.mkdir()
    (model / "config.json").write_text(json.dumps({"model_type": "llama"}))
    data = tmp_path / "text.jsonl"
    data.write_text(json.dumps({"messages": [{"role": "user", "content": "hi"}, BOT]}) + "\n")
    job = tmp_path / "job.yaml"
    dataset = {"train": {"uri": str(data)}, "format": "messages"}
    manifest = make_job().set("model.name", str(model)).set("dataset", dataset)
    job.write_text(yaml.safe_dump(manifest.set("vision.maxImagePixels", 1024).obj()))
    assert main(["validate", str(job)]) == 1
    err = capsys.readouterr().err
    assert "vision.maxImagePixels set, but model type 'llama' reads no images" in err
    job.write_text(yaml.safe_dump(manifest.set("vision", {}).obj()))
    assert main(["validate", str(job)]) == 0


@pytest.mark.parametrize(
    ("size", "bound", "expected"),
    [((4000, 3000), 1_200_000, (1264, 948)), ((300, 200), 1_200_000, (300, 200)),
     ((300, 200), None, (300, 200)), ((10_000, 10), 784, (784, 1))],
)  # fmt: skip
def test_fit_scales_down_to_the_bound_keeping_the_aspect_ratio(
    size: tuple[int, int], bound: int | None, expected: tuple[int, int]
) -> None:
    from fttrainer.data.images import fit

    got = fit(*size, bound)
    assert got == expected
    assert bound is None or got[0] * got[1] <= bound


def test_evaluation_prompts_with_images_are_checked_when_read(tmp_path: Path) -> None:
    """promptsUri rows may carry images: each is checked when the prompts are read (before
    the model loads), bad ones reported by file:line; a text-only model refuses them."""
    from ftapi import parse_job
    from fttestkit.builders import make_job
    from fttrainer.data.prepare import DataError
    from fttrainer.evaluation.evaluator import Evaluator

    (tmp_path / "img").mkdir()
    (tmp_path / "img" / "ok.png").write_bytes(_png())
    prompts = tmp_path / "prompts.jsonl"
    rows = [
        {"prompt": "Colour?", "images": ["img/ok.png"]},
        {"prompt": "Colour?", "images": ["img/gone.png"]},
        {"prompt": "<image> and <image>?", "images": ["img/ok.png"]},
        {"prompt": "Colour?", "images": "img/ok.png"},
        {"prompt": "No picture."},
    ]
    prompts.write_text("".join(json.dumps(r) + "\n" for r in rows))
    spec = parse_job(make_job().set("evaluation.promptsUri", str(prompts)).obj()).spec

    def read(processor: Any) -> Evaluator:
        evaluator = Evaluator(spec, None, None, tmp_path / "out", processor)  # type: ignore[arg-type]
        evaluator.load_inputs()
        return evaluator

    with pytest.raises(DataError) as caught:
        read(object())
    found = {p.origin.rsplit(":", 1)[1]: p.message for p in caught.value.problems}
    assert set(found) == {"2", "3", "4"}
    assert "images[0] 'img/gone.png': not found" in found["2"]
    assert "1 image(s), but the prompt holds 2 <image> placeholder(s)" in found["3"]
    assert "expected a list of image references" in found["4"]

    prompts.write_text("".join(json.dumps(r) + "\n" for r in (rows[0], rows[4])))
    kept = read(object()).prompts
    assert [p.images for p in kept] == [("img/ok.png",), ()]
    assert kept[0].paths[0].read_bytes() == _png()
    with pytest.raises(ValueError, match=r"1 prompt\(s\) carry images, and the model"):
        read(None)
