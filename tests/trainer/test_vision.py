"""Vision-language fine-tuning on CPU: each tiny family (fttrainer/tiny_vision.py) learns the
colour of a square from generated pictures, with LoRA on its language model alone (the
vision tower and the projector stay frozen); merged and reloaded with its processor, it
answers held-back pictures right. Full fine-tuning leaves the image path as it was."""

from __future__ import annotations

import json
import random
from pathlib import Path
from typing import Any

import pytest

from ftapi import parse_job
from fttestkit.builders import make_job
from fttrainer.recipe import Recipe
from fttrainer.tiny import DEFAULT_CORPUS
from fttrainer.tiny_vision import FAMILIES, build

COLOURS = {"red": (220, 20, 20), "green": (20, 200, 20), "blue": (20, 20, 220)}
QUESTION = "What colour is the square?"
# The tokenizer learns the answers as words: the task is the picture, not spelling.
CORPUS = (*DEFAULT_CORPUS, *[f"{QUESTION} {c}." for c in COLOURS] * 5)


def _picture(path: Path, colour: tuple[int, int, int], rng: random.Random) -> None:
    """A square of `colour` on a grey ground, at a random place, with a little noise."""
    from PIL import Image, ImageDraw

    image = Image.new("RGB", (48, 48), (128, 128, 128))
    x, y = rng.randint(0, 16), rng.randint(0, 16)
    shade = tuple(min(255, max(0, c + rng.randint(-15, 15))) for c in colour)
    ImageDraw.Draw(image).rectangle((x, y, x + 31, y + 31), fill=shade)
    image.save(path, format=rng.choice(["PNG", "JPEG"]))


def colour_rows(folder: Path, count: int, seed: int) -> Path:
    rng = random.Random(seed)
    (folder / "img").mkdir(parents=True, exist_ok=True)
    rows = []
    for i in range(count):
        name = list(COLOURS)[i % len(COLOURS)]
        picture = folder / "img" / f"{seed}-{i}.img"
        _picture(picture, COLOURS[name], rng)
        rows.append({"messages": [
            {"role": "user", "content": [{"type": "image", "image": f"img/{picture.name}"},
                                         {"type": "text", "text": QUESTION}]},
            {"role": "assistant", "content": name},
        ]})  # fmt: skip
    path = folder / "train.jsonl"
    path.write_text("".join(json.dumps(r) + "\n" for r in rows))
    return path


@pytest.fixture(scope="module")
def colours(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return colour_rows(tmp_path_factory.mktemp("colours"), 48, seed=1)


LORA = {"type": "lora", "lora": {"r": 16, "alpha": 32}}


def _recipe(
    model: Path,
    data: Path,
    output: Path,
    method: dict[str, Any] = LORA,
    vision: dict[str, Any] | None = None,
    prompts: Path | None = None,
    **training: Any,
) -> Recipe:
    evaluation = {"strategy": "no", **({"promptsUri": str(prompts)} if prompts else {})}
    job = parse_job(
        make_job().set("model.name", str(model)).set("vision", vision or {})
        .set("evaluation", evaluation)
        .set("dataset", {"train": {"uri": str(data)}, "format": "messages", "maxSeqLength": 128})
        .set("method", method)
        .set("training", {"device": "cpu", "maxSteps": 40, "batchSize": 8, "seed": 0,
                          "learningRate": 5e-3, **training})
        .set("logging.steps", 5)
        .set("output", {"uri": str(output / "published"), "mergeAdapter": method == LORA}).obj()
    )  # fmt: skip
    recipe = Recipe(job, output)
    recipe.setup()
    return recipe


def _planned_trainable_is_trained(recipe: Recipe, model: Path) -> None:
    """`finetune plan`'s count of trainable parameters is what the trainer trains."""
    from fttrainer.model.memory_plan import ModelShape, estimate_memory

    planned = estimate_memory(ModelShape.from_pretrained(str(model)), recipe.spec).trainable
    trained = sum(p.numel() for p in recipe.trainer.model.parameters() if p.requires_grad)
    assert planned == trained


def _answer(model: Any, processor: Any, picture: Path) -> str:
    import torch
    from PIL import Image

    messages = [{"role": "user", "content": [{"type": "image"},
                                             {"type": "text", "text": QUESTION}]}]  # fmt: skip
    text = processor.apply_chat_template(messages, add_generation_prompt=True, tokenize=False)
    with Image.open(picture) as image:
        batch = processor(text=[text], images=[[image.convert("RGB")]], return_tensors="pt")
    with torch.no_grad():
        out = model.generate(**batch, max_new_tokens=3, do_sample=False)
    return str(processor.decode(out[0, batch["input_ids"].shape[1] :], skip_special_tokens=True))


@pytest.mark.parametrize("family", FAMILIES)
def test_lora_on_the_language_model_learns_the_colour_of_a_square(
    family: str, colours: Path, tmp_path: Path
) -> None:
    model = build(family, corpus=CORPUS).save(tmp_path / f"tiny-{family}")
    held_back = colour_rows(tmp_path / "held", 6, seed=7)
    rows = [json.loads(line) for line in held_back.read_text().splitlines()]
    prompts = tmp_path / "held" / "prompts.jsonl"  # evaluation prompts with pictures
    prompts.write_text("".join(
        json.dumps({"prompt": QUESTION, "images": [row["messages"][0]["content"][0]["image"]]})
        + "\n" for row in rows[:3]))  # fmt: skip
    recipe = _recipe(model, colours, tmp_path / "run", prompts=prompts)
    trainable = [n for n, p in recipe.trainer.model.named_parameters() if p.requires_grad]
    assert trainable and all("lora_" in n for n in trainable), trainable[:5]
    frozen = ("vision", "visual", "multi_modal_projector", "connector")
    assert not [n for n in trainable if any(part in n for part in frozen)]
    _planned_trainable_is_trained(recipe, model)
    result = recipe.train()
    losses = [m["loss"] for m in result.step_metrics if "loss" in m]
    assert losses[-1] < 0.5 * losses[0], losses

    # The merged model and its processor, reloaded as a server would, answer held-back
    # pictures.
    recipe.save(result)
    merged = tmp_path / "run" / "merged"
    assert (merged / "processor_config.json").is_file()
    assert (tmp_path / "run" / "final" / "processor_config.json").is_file()
    from transformers import AutoModelForImageTextToText, AutoProcessor

    tuned = AutoModelForImageTextToText.from_pretrained(merged)
    processor = AutoProcessor.from_pretrained(merged)
    answers = [
        _answer(tuned, processor, held_back.parent / row["messages"][0]["content"][0]["image"])
        for row in rows
    ]
    expected = [row["messages"][1]["content"] for row in rows]
    right = sum(a.strip().startswith(e) for a, e in zip(answers, expected, strict=True))
    assert right >= 5, list(zip(answers, expected, strict=True))
    # The evaluation prompts were answered with their pictures, before and after training.
    compared = json.loads((tmp_path / "run" / "model_comparison.json").read_text())
    assert [c["images"] for c in compared] == [
        [row["messages"][0]["content"][0]["image"]] for row in rows[:3]
    ]
    tuned_right = sum(
        c["fine_tuned"].strip().startswith(e) for c, e in zip(compared, expected, strict=False)
    )
    assert tuned_right >= 2, compared


def test_full_fine_tuning_trains_the_language_model_and_leaves_the_image_path(
    colours: Path, tmp_path: Path
) -> None:
    import torch

    model = build("idefics3", corpus=CORPUS).save(tmp_path / "tiny-idefics3")
    recipe = _recipe(model, colours, tmp_path / "run", {"type": "full"}, maxSteps=20,
                     learningRate=1e-3)  # fmt: skip
    named = dict(recipe.trainer.model.named_parameters())
    trainable = {n for n, p in named.items() if p.requires_grad}
    assert any(n.startswith("model.text_model.") for n in trainable)
    assert not [n for n in trainable if n.startswith(("model.vision_model.", "model.connector."))]
    _planned_trainable_is_trained(recipe, model)
    before = {n: p.detach().clone() for n, p in named.items() if n.startswith("model.connector.")}
    result = recipe.train()
    losses = [m["loss"] for m in result.step_metrics if "loss" in m]
    assert losses[-1] < 0.5 * losses[0], losses
    after = dict(recipe.trainer.model.named_parameters())
    assert all(torch.equal(before[n], after[n]) for n in before)


def test_spec_vision_adapts_the_tower_and_trains_the_projector_whole(
    colours: Path, tmp_path: Path
) -> None:
    """Qwen2.5-VL keeps its projector (the merger) inside its tower's module: with both
    trained under LoRA, the tower's linear layers get adapters, the merger none (it is
    trained whole, and saved with the adapter), and the merger's weights move."""
    import torch
    from safetensors import safe_open

    model = build("qwen2_5_vl", corpus=CORPUS).save(tmp_path / "tiny-qwen")
    vision = {"trainVisionTower": True, "trainProjector": True}
    recipe = _recipe(model, colours, tmp_path / "run", vision=vision, maxSteps=5)
    named = dict(recipe.trainer.model.named_parameters())
    trainable = [n for n, p in named.items() if p.requires_grad]
    assert any(".visual.blocks." in n and "lora_" in n for n in trainable)
    assert any(".language_model." in n and "lora_" in n for n in trainable)
    merger = [n for n in trainable if ".visual.merger." in n]
    assert merger and not [n for n in merger if "lora_" in n], merger
    assert not [n for n in trainable if "patch_embed" in n]  # a convolution: not adapted
    _planned_trainable_is_trained(recipe, model)
    before = {n: named[n].detach().clone() for n in merger}
    result = recipe.train()
    after = dict(recipe.trainer.model.named_parameters())
    assert any(not torch.equal(before[n], after[n]) for n in merger)
    recipe.save(result)
    with safe_open(str(tmp_path / "run" / "final" / "adapter_model.safetensors"), "pt") as saved:
        keys = list(saved.keys())
    assert any("visual.merger." in k and "lora_" not in k for k in keys), keys[:10]


def test_full_fine_tuning_trains_the_projector_when_asked_and_not_the_tower(
    colours: Path, tmp_path: Path
) -> None:
    model = build("gemma3", corpus=CORPUS).save(tmp_path / "tiny-gemma3")
    recipe = _recipe(model, colours, tmp_path / "run", {"type": "full"},
                     {"trainProjector": True}, maxSteps=3, learningRate=1e-3)  # fmt: skip
    named = dict(recipe.trainer.model.named_parameters())
    trainable = {n for n, p in named.items() if p.requires_grad}
    assert {n for n in named if n.startswith("model.multi_modal_projector.")} <= trainable
    assert not [n for n in trainable if n.startswith("model.vision_tower.")]
    _planned_trainable_is_trained(recipe, model)


def test_vision_settings_on_a_text_only_model_are_refused_before_it_loads(
    tiny_llama: Path, colours: Path, tmp_path: Path
) -> None:
    turns = [{"role": "user", "content": "hi"}, {"role": "assistant", "content": "red"}]
    text = tmp_path / "text.jsonl"
    text.write_text(json.dumps({"messages": turns}) + "\n")
    with pytest.raises(ValueError, match=r"vision.trainProjector set, but model type 'llama'"):
        _recipe(tiny_llama, text, tmp_path / "run", vision={"trainProjector": True})


def _preference_rows(folder: Path, count: int, seed: int) -> Path:
    """The colour task as pairs: the right colour chosen, another rejected."""
    rows = [json.loads(line) for line in colour_rows(folder, count, seed).read_text().splitlines()]
    pairs = []
    for i, row in enumerate(rows):
        right = row["messages"][1]["content"]
        wrong = [c for c in COLOURS if c != right][i % 2]
        pairs.append({"prompt": [row["messages"][0]],
                      "chosen": [{"role": "assistant", "content": right}],
                      "rejected": [{"role": "assistant", "content": wrong}]})  # fmt: skip
    path = folder / "pairs.jsonl"
    path.write_text("".join(json.dumps(p) + "\n" for p in pairs))
    return path


def test_dpo_with_images_prefers_the_right_colour(tmp_path: Path) -> None:
    """DPO (LoRA on the language model) on picture/colour pairs: the loss falls from log 2
    and the reward margin of the right colour grows."""
    model = build("idefics3", corpus=CORPUS).save(tmp_path / "tiny-idefics3")
    data = _preference_rows(tmp_path / "pairs", 48, seed=1)
    job = parse_job(
        make_job().set("model.name", str(model))
        .set("dataset", {"train": {"uri": str(data)}, "format": "preference", "maxSeqLength": 128})
        .set("trainer", {"type": "dpo", "dpo": {"beta": 0.5}}).set("method", LORA)
        .set("training", {"device": "cpu", "maxSteps": 30, "batchSize": 8, "seed": 0,
                          "learningRate": 5e-3})
        .set("evaluation.strategy", "no").set("logging.steps", 5)
        .set("output.uri", str(tmp_path / "published")).obj()
    )  # fmt: skip
    recipe = Recipe(job, tmp_path / "run")
    recipe.setup()
    logged = [m for m in recipe.train().step_metrics if "loss" in m]
    assert logged[0]["loss"] == pytest.approx(0.693, abs=0.05)
    assert logged[-1]["loss"] < 0.4, [m["loss"] for m in logged]
    assert logged[-1]["rewards/margins"] > logged[0]["rewards/margins"] + 1.0


def _collated_lengths(recipe: Recipe) -> list[int]:
    """Each training sample's length as TRL's vision collator will produce it: the
    processor's own rendering of the turns with the pictures (the ground truth)."""
    from fttrainer.data.vision_rows import as_vision_row

    assert recipe.data is not None
    lengths = []
    for sample in recipe.data.train:
        row = as_vision_row(sample, recipe.data.image_path, recipe.spec.vision.max_image_pixels)
        from trl.data_utils import prepare_multimodal_messages

        messages = prepare_multimodal_messages(row["messages"], images=row["images"])
        out = recipe.processor.apply_chat_template(
            [messages], tokenize=True, return_dict=True,
            processor_kwargs={"add_special_tokens": False},
        )  # fmt: skip
        lengths.append(len(out["input_ids"][0]))
    return lengths


def _image_rows(folder: Path, images: list[int], answer: str = "red", scale: int = 1) -> Path:
    """Rows with `images[i]` pictures each (of varied sizes, times `scale`) before the
    question."""
    from PIL import Image

    (folder / "img").mkdir(parents=True, exist_ok=True)
    rows = []
    for i, count in enumerate(images):
        parts: list[dict[str, Any]] = []
        for j in range(count):
            name = f"img/{i}-{j}.png"
            size = (scale * (40 + 30 * j), scale * (90 - 20 * j))
            Image.new("RGB", size, (200, 20, 20)).save(folder / name)
            parts.append({"type": "image", "image": name})
        parts.append({"type": "text", "text": QUESTION})
        rows.append({"messages": [{"role": "user", "content": parts},
                                  {"role": "assistant", "content": answer}]})  # fmt: skip
    path = folder / "train.jsonl"
    path.write_text("".join(json.dumps(r) + "\n" for r in rows))
    return path


@pytest.mark.parametrize("family", FAMILIES)
def test_the_token_check_counts_each_image_as_the_processor_expands_it(
    family: str, tmp_path: Path
) -> None:
    """The longest sample the token check reports is the longest the collator builds,
    images expanded (Gemma 3: 4 soft tokens and markers each; Mllama: one)."""
    model = build(family, corpus=CORPUS).save(tmp_path / f"tiny-{family}")
    data = _image_rows(tmp_path / "rows", [0, 1, 3, 2])
    recipe = _recipe(model, data, tmp_path / "run", maxSteps=1)
    assert recipe.token_report is not None
    lengths = _collated_lengths(recipe)
    assert recipe.token_report.longest == max(lengths), lengths
    assert recipe.token_report.mean == pytest.approx(sum(lengths) / len(lengths))


def test_a_cut_inside_an_image_is_refused_and_a_cut_after_them_kept(tmp_path: Path) -> None:
    """overlong truncate: a sample whose images reach past maxSeqLength is refused by its
    line (the collator's cut would split an image); one cut in its answer is trained."""
    from fttrainer.data.prepare import DataError

    model = build("gemma3", corpus=CORPUS).save(tmp_path / "tiny-gemma3")
    long_answer = " ".join(["red"] * 40)
    data = _image_rows(tmp_path / "rows", [1, 1], answer=long_answer)
    recipe = _recipe(model, data, tmp_path / "ok", maxSteps=1)
    assert recipe.token_report is not None
    assert recipe.token_report.longest > 30
    job = recipe.job.model_dump(by_alias=True, mode="json")
    job["spec"]["dataset"]["maxSeqLength"] = 30
    Recipe(parse_job(job), tmp_path / "cut").setup()  # images end well before 30: cut kept

    crowded = _image_rows(tmp_path / "crowded", [1, 5])
    job["spec"]["dataset"]["train"]["uri"] = str(crowded)
    with pytest.raises(DataError, match=r"train.jsonl:2: its images' tokens reach token \d+, past"):
        Recipe(parse_job(job), tmp_path / "refused").setup()
    job["spec"]["dataset"]["overlong"] = "drop"
    dropped = Recipe(parse_job(job), tmp_path / "dropped")
    dropped.setup()
    assert dropped.token_report is not None
    assert sum(len(v) for v in dropped.token_report.overlong.values()) == 1


def test_max_image_pixels_bounds_what_a_picture_costs(tmp_path: Path) -> None:
    """Qwen2.5-VL's tokens grow with the picture: with a processor that reads up to 112 x
    112, vision.maxImagePixels 56 x 56 scales pictures down before it, and the token check
    counts what the collator then builds."""
    from transformers.models.qwen2_vl import Qwen2VLImageProcessorPil

    tiny = build("qwen2_5_vl", corpus=CORPUS)
    tiny.processor.image_processor = Qwen2VLImageProcessorPil(
        patch_size=14, size={"shortest_edge": 56 * 56, "longest_edge": 112 * 112}
    )
    model = tiny.save(tmp_path / "tiny-qwen")
    data = _image_rows(tmp_path / "rows", [1, 2], scale=4)
    free = _recipe(model, data, tmp_path / "free", maxSteps=1)
    bounded = _recipe(model, data, tmp_path / "bounded", vision={"maxImagePixels": 56 * 56},
                      maxSteps=1)  # fmt: skip
    for recipe in (free, bounded):
        assert recipe.token_report is not None
        assert recipe.token_report.longest == max(_collated_lengths(recipe))
    assert free.token_report is not None and bounded.token_report is not None
    assert bounded.token_report.longest < free.token_report.longest


def test_finetune_plan_counts_the_tower_and_the_images_tokens(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    """`finetune plan` on a vision-language model: the tower and projector in the memory
    estimate, and what each image of the data adds, as the token check counts it."""
    import yaml

    from fttrainer.cli import main
    from fttrainer.data.image_tokens import image_costs

    model = build("gemma3", corpus=CORPUS).save(tmp_path / "tiny-gemma3")
    data = _image_rows(tmp_path / "rows", [1, 2])
    job = tmp_path / "job.yaml"
    job.write_text(yaml.safe_dump(
        make_job().set("model.name", str(model)).set("evaluation.strategy", "no")
        .set("dataset", {"train": {"uri": str(data)}, "format": "messages"}).obj()))  # fmt: skip
    assert main(["plan", str(job)]) == 0
    out = capsys.readouterr().out
    from transformers import AutoProcessor

    cost = image_costs(AutoProcessor.from_pretrained(model), [("a", (40, 90))], None).of(["a"])
    assert f"image tokens: each image adds {cost}..{cost} tokens" in out, out[-1500:]
    assert "note: vision-language: vision tower" in out
