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
           "content may be null or absent; arguments a JSON string or an object; tools a list "
           "or a JSON string. Rendered by the chat template with tools=: the calls carry "
           "loss, the tool results are context"),
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
           "function_call (one call, or a JSON list of parallel calls) becomes an assistant "
           "tool call, observation a tool turn; bare function schemas in tools are wrapped as "
           "{type: function, function: ...}"),
    Layout("oasst", "OpenAssistant message tree",
           {"prompt": {"role": "prompter", "text": "What is 2 plus 3?",
                       "replies": [{"role": "assistant", "text": "5"}]}},
           "every root-to-answer path becomes a conversation"),
    Layout("prompt_completion", "TRL prompt / completion (strings)",
           {"prompt": "2 plus 3 is", "completion": " 5."},
           "plain text, no chat template; loss on the completion"),
    Layout("prompt_completion", "TRL prompt / completion (turns)",
           {"prompt": [{"role": "user", "content": "What is 2 plus 3?"},
                       {"role": "assistant", "content": "5"},
                       {"role": "user", "content": "And 2 plus 2?"}],
            "completion": [{"role": "assistant", "content": "4"}]},
           "rendered with the chat template; loss on the completion only (assistant turns in "
           "the prompt are context)"),
    Layout("preference", "explicit prompt / chosen / rejected",
           {"prompt": "What is 2 plus 3?", "chosen": "5", "rejected": "6"}, "for DPO"),
    Layout("preference", "TRL conversational, implicit prompt",
           {"chosen": [{"role": "user", "content": "What is 2 plus 3?"},
                       {"role": "assistant", "content": "5"}],
            "rejected": [{"role": "user", "content": "What is 2 plus 3?"},
                         {"role": "assistant", "content": "6"}]},
           "the turns both share are the prompt; they may differ only after the last user "
           "turn"),
    Layout("preference", "ShareGPT conversations + chosen / rejected turns",
           {"conversations": [{"from": "human", "value": "What is 2 plus 3?"}],
            "chosen": {"from": "gpt", "value": "5"}, "rejected": {"from": "gpt", "value": "6"}}),
    Layout("prompt_only", "prompt plus columns for the rewards",
           {"prompt": "What is 2 plus 3?", "answer": "5"},
           "for GRPO; other columns reach the reward functions"),
)  # fmt: skip


def render_formats(*, rendered: bool = True) -> str:
    """Each format and layout: the example row, the sample it becomes and, with `rendered`,
    the text the built-in ChatML template (fttrainer/templates.py) renders and the parts of
    it the SFT loss is computed on."""
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
                lines.append("  renders: " + _indented(text.rstrip("\n")))
            trained = trained_parts(sample)
            if trained:
                lines.append("  loss on: " + ", ".join(json.dumps(part) for part in trained))
        lines.append("")
    return "\n".join(lines)


def rendered_text(sample: Sample) -> str | None:
    """The training text of a sample under the built-in template (None: no text to show);
    a preference pair shows its prompt and chosen answer."""
    if isinstance(sample.get("completion"), str):
        return str(sample["prompt"]) + str(sample["completion"])
    if "text" in sample:
        return str(sample["text"])
    messages = sample.get("messages") or [*sample.get("prompt", []), *sample.get("chosen", [])]
    if not messages:
        return None
    return _render(messages, sample.get("tools"))[0]


def trained_parts(sample: Sample) -> list[str]:
    """The pieces of the rendered text SFT computes the loss on with the defaults
    (trainOnResponsesOnly on for formats with answers; EOS appended to plain text and
    plain-text completions); none for preference and prompt-only samples, whose loss is
    DPO's or GRPO's."""
    if isinstance(sample.get("completion"), str):
        return [str(sample["completion"]) + "<eos>"]
    if "text" in sample:
        return [str(sample["text"]) + "<eos>"]
    if "messages" not in sample:
        return []
    messages, tools = sample["messages"], sample.get("tools")
    text, spans = _render(messages, tools)
    start = sample.get("completion_start") or 0
    prompt_end = len(_render(messages[:start], tools)[0]) if start else 0
    return [text[a:b] for a, b in spans if a >= prompt_end]


def _render(messages: list[dict[str, Any]], tools: Any) -> tuple[str, list[tuple[int, int]]]:
    """Text and generation spans (character ranges) under the built-in template."""
    from transformers.utils.chat_template_utils import render_jinja_template

    from fttrainer.templates import CHAT_TEMPLATE

    result: Any = render_jinja_template(
        conversations=[messages],
        tools=tools,
        chat_template=CHAT_TEMPLATE,
        return_assistant_tokens_mask=True,
    )
    rendered, spans = result  # (rendered conversations, their generation indices)
    return str(rendered[0]), [(int(a), int(b)) for a, b in spans[0]]


def _indented(text: str) -> str:
    return text.replace("\n", "\n           ")
