"""fttrainer.tiny_vision: each family's tiny model and processor are the real classes, wired
as the family's checkpoints are: the processor turns a conversation with an image into the
family's image tokens and pixels, the model's loss comes back finite and backpropagates into
the vision tower, and both reload from the saved folder through the Auto classes."""

from __future__ import annotations

import math
from pathlib import Path

import pytest

from fttrainer.tiny_vision import FAMILIES, IMAGE_TOKENS, build


def _image(colour: tuple[int, int, int]) -> object:
    from PIL import Image

    return Image.new("RGB", (48, 40), colour)


CONVERSATION = [
    {"role": "user", "content": [{"type": "image"}, {"type": "text", "text": "What colour?"}]},
    {"role": "assistant", "content": [{"type": "text", "text": "red"}]},
]


@pytest.mark.parametrize("family", FAMILIES)
def test_a_tiny_family_reads_an_image_and_reloads(family: str, tmp_path: Path) -> None:
    import torch
    from transformers import AutoModelForImageTextToText, AutoProcessor

    tiny = build(family)
    processor = tiny.processor
    text = processor.apply_chat_template(CONVERSATION, tokenize=False)
    batch = processor(text=[text], images=[[_image((250, 0, 0))]], return_tensors="pt")
    image_id = tiny.model.config.image_token_id
    expected = 1 if family == "mllama" else IMAGE_TOKENS  # Mllama: cross-attention
    if "image_grid_thw" in batch:  # Qwen keeps the aspect ratio: 48x40 is 3x2 merged patches
        expected = int(batch["image_grid_thw"].prod()) // 4
        assert expected == 6
    assert int((batch["input_ids"] == image_id).sum()) == expected
    out = tiny.model(**batch, labels=batch["input_ids"])
    assert math.isfinite(out.loss.item())
    out.loss.backward()
    # The image reaches the loss: its path gets a gradient. At initialisation Gemma 3's
    # projection is zero (its projector's gradient is not) and Mllama's cross-attention
    # gates are (theirs is not).
    path = ("vision", "visual", "projector", "connector", "cross_attn")
    seen = [p.grad for n, p in tiny.model.named_parameters() if any(part in n for part in path)]
    assert seen and any(g is not None and bool(g.abs().sum() > 0) for g in seen)

    folder = tiny.save(tmp_path / family)
    again = AutoProcessor.from_pretrained(folder)
    model = AutoModelForImageTextToText.from_pretrained(folder)
    assert type(again) is type(processor) and type(model) is type(tiny.model)
    batch = again(text=[text], images=[[_image((250, 0, 0))]], return_tensors="pt")
    with torch.no_grad():
        assert math.isfinite(model(**batch, labels=batch["input_ids"]).loss.item())


def test_the_command_writes_a_model_and_its_processor(tmp_path: Path) -> None:
    import subprocess
    import sys

    out = tmp_path / "tiny-idefics3"
    done = subprocess.run(
        [sys.executable, "-m", "fttrainer.tiny_vision", "--family", "idefics3", "--output",
         str(out)], capture_output=True, text=True, check=False,
    )  # fmt: skip
    assert done.returncode == 0, done.stderr[-2000:]
    assert done.stdout.splitlines()[-1] == str(out)
    names = {p.name for p in out.iterdir()}
    assert {"config.json", "model.safetensors", "processor_config.json"} <= names
