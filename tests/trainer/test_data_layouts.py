"""Every data layout of the format catalogue (fttrainer/data/catalog.py, what `finetune
formats` shows) really trains a tiny model: SFT layouts with SFT, preference layouts with
DPO, prompt-only rows with GRPO. Tool calls reach the loss."""

from __future__ import annotations

import json
import math
from pathlib import Path
from typing import Any

import pytest

from ftapi import parse_job
from fttrainer.data.catalog import LAYOUTS, Layout
from fttrainer.recipe import Recipe
from tests.builders import make_job

TRAINERS = {
    "preference": {"type": "dpo"},
    "prompt_only": {
        "type": "grpo",
        "grpo": {
            "numGenerations": 2,
            "maxCompletionLength": 8,
            "rewards": [{"type": "regex", "pattern": r"\d"}],
        },
    },
}


def _recipe(model: Path, layout: Layout, out: Path, rows: int = 8) -> Recipe:
    data = out / "data.jsonl"
    data.parent.mkdir(parents=True, exist_ok=True)
    data.write_text("".join(json.dumps(layout.row) + "\n" for _ in range(rows)))
    job = (
        make_job("layouts")
        .set("model.name", str(model))
        .set(
            "dataset", {"train": {"uri": str(data)}, "format": layout.format, "maxSeqLength": 2048}
        )
        .set("training", {"maxSteps": 2, "batchSize": 2, "learningRate": 1e-2, "device": "cpu"})
        .set("evaluation.strategy", "no")
        .set("logging.steps", 1)
        .set("resources.gpusPerNode", 0)
        .set("output.uri", str(out / "published"))
    )
    if layout.format in TRAINERS:
        job.set("trainer", TRAINERS[layout.format])
    return Recipe(parse_job(job.obj()), out)


@pytest.mark.parametrize("layout", LAYOUTS, ids=[f"{x.format}: {x.name}" for x in LAYOUTS])
def test_each_layout_trains(layout: Layout, tiny_llama: Path, tmp_path: Path) -> None:
    recipe = _recipe(tiny_llama, layout, tmp_path)
    recipe.setup()
    result = recipe.train()
    assert result.final_metrics["global_step"] == 2
    losses = [m["loss"] for m in result.step_metrics]
    assert losses and all(math.isfinite(loss) for loss in losses)


def _labelled_text(recipe: Recipe) -> str:
    assert recipe.token_report is not None
    encoded = recipe.token_report.encoded["train"][0]
    return str(recipe.tokenizer.decode([t for t in encoded["labels"] if t != -100]))


@pytest.mark.parametrize(
    "name",
    ["OpenAI chat with tool calls", "ShareGPT with function_call / observation turns and tools"],
)
def test_tool_calls_carry_loss(name: str, tiny_llama: Path, tmp_path: Path) -> None:
    """The answer that is only a tool call (content null) is trained on: its call is inside
    the labels, and the tool's result and the tools' definitions are not."""
    layout = next(x for x in LAYOUTS if x.name == name)
    recipe = _recipe(tiny_llama, layout, tmp_path)
    recipe.setup()
    trained = _labelled_text(recipe)
    assert '<tool_call>\n{"name": "get_weather", "arguments": {"city": "Paris"}}' in trained
    assert "It is 22 C in Paris." in trained
    assert "22 C<|im_end|>" not in trained.replace("It is 22 C in Paris.<|im_end|>", "")
    assert "Current temperature" not in trained  # the tool list is context, not target
    result = recipe.train()
    assert result.final_metrics["global_step"] == 2


def test_a_template_that_cannot_render_tools_is_an_error_naming_it(
    tiny_llama: Path, tmp_path: Path
) -> None:
    layout = next(x for x in LAYOUTS if x.name == "OpenAI chat with tool calls")
    recipe = _recipe(tiny_llama, layout, tmp_path)
    plain = (
        "{% for m in messages %}{{ '<|im_start|>' + m['role'] + '\\n' }}"
        "{% generation %}{{ (m['content'] or '') + '<|im_end|>\\n' }}{% endgeneration %}"
        "{% endfor %}"
    )
    spec: Any = recipe.spec.model_copy(deep=True)
    spec.dataset.chat_template = plain
    recipe.spec = spec
    with pytest.raises(ValueError, match=r"dataset.chatTemplate does not render tools"):
        recipe.setup()


def test_plain_text_jsonl_and_prompt_completion_strings_label_what_they_should(
    tiny_llama: Path, tmp_path: Path
) -> None:
    layout = next(x for x in LAYOUTS if x.name == "TRL prompt / completion (strings)")
    recipe = _recipe(tiny_llama, layout, tmp_path / "pc")
    recipe.setup()
    assert _labelled_text(recipe).startswith(" 5.")  # the completion (and EOS), not the prompt
    text = next(x for x in LAYOUTS if x.format == "plain_text")
    recipe = _recipe(tiny_llama, text, tmp_path / "text")
    recipe.setup()
    assert "The capital of France is Paris." in _labelled_text(recipe)
