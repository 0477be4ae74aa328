"""Every dataset format and layout, each with one example row: what `finetune formats` shows
and what the trainer tests train on (tests/trainer/test_data_layouts.py), so the catalogue
cannot drift from what works.

    print(render_formats())
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from typing import Any

from ftapi.v1alpha1 import Columns

from .formats import FormatContext, Sample, convert_row

WEATHER_TOOL = {
    "type": "function",
    "function": {
        "name": "get_weather",
        "description": "Current temperature in a city",
        "parameters": {"type": "object", "properties": {"city": {"type": "string"}}},
    },
}


@dataclass(frozen=True)
class Layout:
    """One row shape users have, read with `dataset.format: <format>`."""

    format: str
    name: str
    row: dict[str, Any]
    note: str = ""

    def sample(self) -> Sample:
        (converted,) = convert_row(self.format, self.row, FormatContext(Columns()))
        return converted


LAYOUTS: tuple[Layout, ...] = (
    Layout("plain_text", "text column (JSONL) or one line of a .txt file",
           {"text": "The capital of France is Paris."}, "loss on every token, EOS appended"),
    Layout("instruction", "alpaca", {"instruction": "Add the numbers.", "input": "2 and 3",
                                     "output": "5"}, "instruction and input form the user turn"),
    Layout("qa", "question / answer columns", {"question": "What is 2 plus 3?", "answer": "5"}),
    Layout("mcq", "question / choices / answer letter or index",
           {"question": "2 plus 3?", "choices": ["4", "5", "6"], "answer": "B"},
           "the answer is the letter; accuracy/F1 from the letters' likelihood"),
    Layout("messages", "OpenAI chat",
           {"messages": [{"role": "system", "content": "Be brief."},
                         {"role": "user", "content": "What is 2 plus 3?"},
                         {"role": "assistant", "content": "5"}]}),
    Layout("messages", "OpenAI chat with tool calls",
           {"messages": [
               {"role": "user", "content": "How warm is Paris?"},
               {"role": "assistant", "content": None, "tool_calls": [
                   {"id": "call_1", "type": "function", "function": {
                       "name": "get_weather", "arguments": "{\"city\": \"Paris\"}"}}]},
               {"role": "tool", "tool_call_id": "call_1", "content": "22 C"},
               {"role": "assistant", "content": "It is 22 C in Paris."}],
            "tools": json.dumps([WEATHER_TOOL])},
           "tool calls and results are rendered by the chat template with tools=; a "
           "tool-call-only answer carries loss"),
    Layout("sharegpt", "ShareGPT (from/value; human|user, gpt|assistant, system)",
           {"conversations": [{"from": "human", "value": "What is 2 plus 3?"},
                              {"from": "gpt", "value": "5"}]}),
    Layout("sharegpt", "ShareGPT with function_call / observation turns and tools",
           {"conversations": [
               {"from": "human", "value": "How warm is Paris?"},
               {"from": "function_call",
                "value": "{\"name\": \"get_weather\", \"arguments\": {\"city\": \"Paris\"}}"},
               {"from": "observation", "value": "22 C"},
               {"from": "gpt", "value": "It is 22 C in Paris."}],
            "tools": json.dumps([WEATHER_TOOL["function"]])},
           "function_call becomes an assistant tool call, observation a tool turn"),
    Layout("oasst", "OpenAssistant message tree",
           {"prompt": {"role": "prompter", "text": "What is 2 plus 3?",
                       "replies": [{"role": "assistant", "text": "5"}]}},
           "every root-to-answer path becomes a conversation"),
    Layout("prompt_completion", "TRL prompt / completion (strings)",
           {"prompt": "2 plus 3 is", "completion": " 5."},
           "plain text, no chat template; loss on the completion"),
    Layout("prompt_completion", "TRL prompt / completion (turns)",
           {"prompt": [{"role": "user", "content": "What is 2 plus 3?"}],
            "completion": [{"role": "assistant", "content": "5"}]}),
    Layout("preference", "explicit prompt / chosen / rejected",
           {"prompt": "What is 2 plus 3?", "chosen": "5", "rejected": "6"}, "for DPO"),
    Layout("preference", "TRL conversational, implicit prompt",
           {"chosen": [{"role": "user", "content": "What is 2 plus 3?"},
                       {"role": "assistant", "content": "5"}],
            "rejected": [{"role": "user", "content": "What is 2 plus 3?"},
                         {"role": "assistant", "content": "6"}]},
           "the turns both share are the prompt"),
    Layout("preference", "ShareGPT conversations + chosen / rejected turns",
           {"conversations": [{"from": "human", "value": "What is 2 plus 3?"}],
            "chosen": {"from": "gpt", "value": "5"}, "rejected": {"from": "gpt", "value": "6"}}),
    Layout("prompt_only", "prompt plus columns for the rewards",
           {"prompt": "What is 2 plus 3?", "answer": "5"},
           "for GRPO; other columns reach the reward functions"),
)  # fmt: skip


def render_formats(*, rendered: bool = True) -> str:
    """Each format and layout: the example row, the sample it becomes and, for
    conversations, the text the built-in ChatML template renders."""
    lines = [
        "dataset.format values (columns can be renamed with dataset.columns):",
        "",
    ]
    for layout in LAYOUTS:
        sample = layout.sample()
        lines.append(f"{layout.format}: {layout.name}")
        if layout.note:
            lines.append(f"  {layout.note}")
        lines.append(f"  row:     {json.dumps(layout.row)}")
        lines.append(f"  becomes: {json.dumps(sample)}")
        if rendered:
            text = rendered_text(sample)
            if text is not None:
                shown = text.rstrip("\n").replace("\n", "\n           ")
                lines.append(f"  renders: {shown}")
        lines.append("")
    return "\n".join(lines)


def rendered_text(sample: Sample) -> str | None:
    """The training text of a sample under the built-in template (None: no text to show)."""
    if isinstance(sample.get("completion"), str):
        return str(sample["prompt"]) + str(sample["completion"])
    if "text" in sample:
        return str(sample["text"])
    messages = sample.get("messages") or [*sample.get("prompt", []), *sample.get("chosen", [])]
    if not messages:
        return None
    from transformers.utils.chat_template_utils import render_jinja_template

    from fttrainer.templates import CHAT_TEMPLATE

    result: Any = render_jinja_template(
        conversations=[messages], tools=sample.get("tools"), chat_template=CHAT_TEMPLATE
    )
    return str(result[0][0])  # (rendered conversations, generation indices)
