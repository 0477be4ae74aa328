"""The format catalogue (`finetune formats`): every format has an example, every example
converts, and what it shows is what the built-in template renders and trains on."""

from __future__ import annotations

import json
from typing import get_args

import pytest

from ftapi.v1alpha1.dataset import DatasetFormat
from fttrainer.data.catalog import LAYOUTS, Layout, render_formats, rendered_text, trained_parts


def test_every_format_has_at_least_one_layout() -> None:
    assert {layout.format for layout in LAYOUTS} == set(get_args(DatasetFormat))


def test_layout_names_are_unique_per_format() -> None:
    keys = [(layout.format, layout.name) for layout in LAYOUTS]
    assert len(keys) == len(set(keys))


def test_the_catalogue_shows_each_row_and_what_it_becomes() -> None:
    text = render_formats()
    for layout in LAYOUTS:
        assert f"\n{layout.format}: {layout.name}\n" in text
        assert f"  row:     {json.dumps(layout.row)}\n" in text
        assert f"  becomes: {json.dumps(layout.sample())}\n" in text
    assert "renders:" not in render_formats(rendered=False)


TRAINED = {
    "OpenAI chat with tool calls": [
        '<tool_call>\n{"name": "get_weather", "arguments": {"city": "Paris"}}\n</tool_call>'
        "<|im_end|>",
        "It is 22 C in Paris.<|im_end|>",
    ],
    "TRL prompt / completion (turns)": ["4<|im_end|>"],
    "TRL prompt / completion (strings)": [" 5.<eos>"],
    "explicit prompt / chosen / rejected": [],  # DPO's loss, not a span of the text
    "prompt plus columns for the rewards": [],
}


@pytest.mark.parametrize(("name", "trained"), TRAINED.items(), ids=list(TRAINED))
def test_the_loss_spans_shown(name: str, trained: list[str]) -> None:
    layout = next(x for x in LAYOUTS if x.name == name)
    assert trained_parts(layout.sample()) == trained


def test_tool_results_render_as_context_in_a_user_turn() -> None:
    layout = next(x for x in LAYOUTS if x.name == "OpenAI chat with tool calls")
    text = rendered_text(layout.sample())
    assert text is not None
    assert "<|im_start|>user\n<tool_response>\n22 C\n</tool_response><|im_end|>\n" in text
    assert text.startswith("<|im_start|>system\nYou may call one or more functions")


def test_a_layout_converts_to_one_sample() -> None:
    layout = Layout("qa", "x", {"question": "q", "answer": "a"})
    assert layout.sample() == {
        "messages": [{"role": "user", "content": "q"}, {"role": "assistant", "content": "a"}]
    }
