"""Each dataset.format turns its rows into TRL's standard shapes; bad rows say why."""

from __future__ import annotations

import contextlib
import json
import re
from pathlib import Path
from typing import Any

import pytest

from ftapi.v1alpha1 import Columns
from fttrainer.data.formats import (
    FORMATS,
    QUOTE,
    FormatContext,
    RowError,
    answer_letter,
    convert_row,
)

CTX = FormatContext(Columns())
USER, BOT = "user", "assistant"


def _msgs(*turns: tuple[str, str]) -> list[dict[str, str]]:
    return [{"role": role, "content": content} for role, content in turns]


def _chat(reply: dict[str, Any], user: dict[str, Any] | None = None) -> dict[str, Any]:
    """A messages row: a user turn "q" (with `user`'s extra keys), then `reply`."""
    return {"messages": [{"role": USER, "content": "q", **(user or {})}, {"role": BOT, **reply}]}


GOOD: dict[str, tuple[str, dict[str, Any], FormatContext, list[dict[str, Any]]]] = {
    "plain text": ("plain_text", {"text": "once upon a time"}, CTX, [{"text": "once upon a time"}]),
    "alpaca without input": (
        "instruction",
        {"instruction": "Say hi", "output": "hi"},
        CTX,
        [{"messages": _msgs((USER, "Say hi"), (BOT, "hi"))}],
    ),
    "alpaca with input": (
        "instruction",
        {"instruction": "Translate", "input": "chat", "output": "cat"},
        CTX,
        [{"messages": _msgs((USER, "Translate\n\nchat"), (BOT, "cat"))}],
    ),
    "qa with mapped columns and a system column": (
        "qa",
        {"q": "2+2?", "a": "4", "sys": "Be exact."},
        FormatContext(Columns(question="q", answer="a", system="sys")),
        [{"messages": _msgs(("system", "Be exact."), (USER, "2+2?"), (BOT, "4"))}],
    ),
    "qa answers that are numbers or booleans, spelt as JSON spells them": (
        "qa",
        {"question": "Is 7 prime? And 2+2?", "answer": True, "system": 4},
        CTX,
        [{"messages": _msgs(("system", "4"), (USER, "Is 7 prime? And 2+2?"), (BOT, "true"))}],
    ),
    "system prompt override replaces the row's": (
        "qa",
        {"question": "q", "answer": "a", "system": "row"},
        FormatContext(Columns(), "spec", "override"),
        [{"messages": _msgs(("system", "spec"), (USER, "q"), (BOT, "a"))}],
    ),
    "system prompt fallback keeps the row's": (
        "qa",
        {"question": "q", "answer": "a", "system": "row"},
        FormatContext(Columns(), "spec", "fallback"),
        [{"messages": _msgs(("system", "row"), (USER, "q"), (BOT, "a"))}],
    ),
    "system prompt fallback fills in": (
        "qa",
        {"question": "q", "answer": "a"},
        FormatContext(Columns(), "spec", "fallback"),
        [{"messages": _msgs(("system", "spec"), (USER, "q"), (BOT, "a"))}],
    ),
    "mcq with a letter": (
        "mcq",
        {"question": "Pick", "choices": ["x", "y"], "answer": "b"},
        CTX,
        [
            {
                "messages": _msgs((USER, "Pick\nA) x\nB) y"), (BOT, "B")),
                "answer_letter": "B",
                "n_choices": 2,
            }
        ],
    ),
    "mcq with an index and a mapping of options": (
        "mcq",
        {"question": "Pick", "choices": {"A": "x", "B": "y", "C": "z"}, "answer": 2},
        CTX,
        [
            {
                "messages": _msgs((USER, "Pick\nA) x\nB) y\nC) z"), (BOT, "C")),
                "answer_letter": "C",
                "n_choices": 3,
            }
        ],
    ),
    "sharegpt": (
        "sharegpt",
        {
            "conversations": [
                {"from": "system", "value": "S"},
                {"from": "human", "value": "hi"},
                {"from": "gpt", "value": "yo"},
            ]
        },
        CTX,
        [{"messages": _msgs(("system", "S"), (USER, "hi"), (BOT, "yo"))}],
    ),
    "openai messages": (
        "messages",
        {"messages": _msgs((USER, "hi"), (BOT, "yo"), (USER, "bye"), (BOT, "ok"))},
        CTX,
        [{"messages": _msgs((USER, "hi"), (BOT, "yo"), (USER, "bye"), (BOT, "ok"))}],
    ),
    "oasst: an unanswered follow-up keeps the answer before it; deleted replies go": (
        "oasst",
        {
            "prompt": {
                "role": "prompter",
                "text": "Q",
                "replies": [
                    {
                        "role": "assistant",
                        "text": "A",
                        "replies": [{"role": "prompter", "text": "follow-up nobody answered"}],
                    },
                    {
                        "role": "assistant",
                        "text": "spam",
                        "deleted": True,
                        "replies": [
                            {
                                "role": "prompter",
                                "text": "?",
                                "replies": [{"role": "assistant", "text": "under a deleted one"}],
                            }
                        ],
                    },
                ],
            }
        },
        CTX,
        [{"messages": _msgs((USER, "Q"), (BOT, "A"))}],
    ),
    "oasst tree with two answers": (
        "oasst",
        {
            "prompt": {
                "role": "prompter",
                "text": "Q",
                "replies": [
                    {"role": "assistant", "text": "A1"},
                    {
                        "role": "assistant",
                        "text": "A2",
                        "replies": [
                            {
                                "role": "prompter",
                                "text": "Why?",
                                "replies": [{"role": "assistant", "text": "Because"}],
                            }
                        ],
                    },
                ],
            }
        },
        CTX,
        [
            {"messages": _msgs((USER, "Q"), (BOT, "A1"))},
            {"messages": _msgs((USER, "Q"), (BOT, "A2"), (USER, "Why?"), (BOT, "Because"))},
        ],
    ),
    "preference from strings": (
        "preference",
        {"prompt": "p", "chosen": "good", "rejected": "bad"},
        CTX,
        [
            {
                "prompt": _msgs((USER, "p")),
                "chosen": _msgs((BOT, "good")),
                "rejected": _msgs((BOT, "bad")),
            }
        ],
    ),
    "prompt only keeps the other columns": (
        "prompt_only",
        {"prompt": "2+2?", "answer": "4"},
        CTX,
        [{"prompt": _msgs((USER, "2+2?")), "answer": "4"}],
    ),
    "openai tool call without content, tool turn, tools as a JSON string": (
        "messages",
        {
            "messages": [
                {"role": "user", "content": "Weather in Paris?"},
                {
                    "role": "assistant",
                    "content": None,
                    "tool_calls": [
                        {
                            "id": "c1",
                            "type": "function",
                            "function": {"name": "get_weather", "arguments": '{"city": "Paris"}'},
                        }
                    ],
                },
                {"role": "tool", "tool_call_id": "c1", "name": "get_weather", "content": "22C"},
                {"role": "assistant", "content": "It is 22C."},
            ],
            "tools": '[{"type": "function", "function": {"name": "get_weather"}}]',
        },
        CTX,
        [
            {
                "messages": [
                    {"role": "user", "content": "Weather in Paris?"},
                    {
                        "role": "assistant",
                        "content": "",
                        "tool_calls": [
                            {
                                "type": "function",
                                "id": "c1",
                                "function": {"name": "get_weather", "arguments": {"city": "Paris"}},
                            }
                        ],
                    },
                    {"role": "tool", "content": "22C", "tool_call_id": "c1", "name": "get_weather"},
                    {"role": "assistant", "content": "It is 22C."},
                ],
                "tools": [{"type": "function", "function": {"name": "get_weather"}}],
            }
        ],
    ),
    "sharegpt function call, observation and tools": (
        "sharegpt",
        {
            "conversations": [
                {"from": "system", "value": "Be brief."},
                {"from": "human", "value": "Weather in Paris?"},
                {
                    "from": "function_call",
                    "value": '{"name": "get_weather", "arguments": {"city": "Paris"}}',
                },
                {"from": "observation", "value": "22C"},
                {"from": "gpt", "value": "22C."},
            ],
            "tools": [{"name": "get_weather", "parameters": {}}],
        },
        CTX,
        [
            {
                "messages": [
                    {"role": "system", "content": "Be brief."},
                    {"role": "user", "content": "Weather in Paris?"},
                    {
                        "role": "assistant",
                        "content": "",
                        "tool_calls": [
                            {
                                "type": "function",
                                "function": {"name": "get_weather", "arguments": {"city": "Paris"}},
                            }
                        ],
                    },
                    {"role": "tool", "content": "22C"},
                    {"role": "assistant", "content": "22C."},
                ],
                "tools": [
                    {"type": "function", "function": {"name": "get_weather", "parameters": {}}}
                ],
            }
        ],
    ),
    "preference with an implicit prompt": (
        "preference",
        {
            "chosen": [{"role": "user", "content": "2+2?"}, {"role": "assistant", "content": "4"}],
            "rejected": [
                {"role": "user", "content": "2+2?"},
                {"role": "assistant", "content": "5"},
            ],
        },
        CTX,
        [
            {
                "prompt": _msgs((USER, "2+2?")),
                "chosen": _msgs((BOT, "4")),
                "rejected": _msgs((BOT, "5")),
            }
        ],
    ),
    "preference in the sharegpt layout": (
        "preference",
        {
            "conversations": [{"from": "human", "value": "2+2?"}],
            "chosen": {"from": "gpt", "value": "4"},
            "rejected": {"from": "gpt", "value": "5"},
        },
        CTX,
        [
            {
                "prompt": _msgs((USER, "2+2?")),
                "chosen": _msgs((BOT, "4")),
                "rejected": _msgs((BOT, "5")),
            }
        ],
    ),
    "preference with explicit turns": (
        "preference",
        {
            "prompt": [{"role": "user", "content": "2+2?"}],
            "chosen": [{"role": "assistant", "content": "4"}],
            "rejected": "5",
        },
        CTX,
        [
            {
                "prompt": _msgs((USER, "2+2?")),
                "chosen": _msgs((BOT, "4")),
                "rejected": _msgs((BOT, "5")),
            }
        ],
    ),
    "prompt completion strings": (
        "prompt_completion",
        {"prompt": "The sky is", "completion": " blue."},
        CTX,
        [{"prompt": "The sky is", "completion": " blue."}],
    ),
    "prompt completion turns": (
        "prompt_completion",
        {
            "prompt": [{"role": "user", "content": "2+2?"}],
            "completion": [{"role": "assistant", "content": "4"}],
        },
        CTX,
        [{"messages": _msgs((USER, "2+2?"), (BOT, "4")), "completion_start": 1}],
    ),
    "prompt completion turns with an earlier answer in the prompt": (
        "prompt_completion",
        {
            "prompt": _msgs((USER, "2+2?"), (BOT, "4"), (USER, "and 3+3?")),
            "completion": {"role": "assistant", "content": "6"},
            "system": "Be exact.",
        },
        CTX,
        [
            {
                "messages": _msgs(
                    ("system", "Be exact."),
                    (USER, "2+2?"),
                    (BOT, "4"),
                    (USER, "and 3+3?"),
                    (BOT, "6"),
                ),
                "completion_start": 4,
            }
        ],
    ),
    "openai content absent, arguments already an object, bare call, tools as one object": (
        "messages",
        {
            "messages": [
                {"role": "user", "content": "Weather?"},
                {"role": "assistant", "tool_calls": [{"name": "f", "arguments": {"x": 1}}]},
            ],
            "tools": {"name": "f", "parameters": {"type": "object"}},
        },
        CTX,
        [
            {
                "messages": [
                    {"role": "user", "content": "Weather?"},
                    {
                        "role": "assistant",
                        "content": "",
                        "tool_calls": [
                            {"type": "function", "function": {"name": "f", "arguments": {"x": 1}}}
                        ],
                    },
                ],
                "tools": [
                    {
                        "type": "function",
                        "function": {"name": "f", "parameters": {"type": "object"}},
                    }
                ],
            }
        ],
    ),
    "sharegpt parallel function calls as a JSON list, the turns as a JSON string": (
        "sharegpt",
        {
            "conversations": json.dumps(
                [
                    {"from": "user", "value": "Paris and Rome?"},
                    {
                        "from": "function_call",
                        "value": json.dumps(
                            [
                                {"name": "w", "arguments": {"city": "Paris"}},
                                {"name": "w", "arguments": {"city": "Rome"}},
                            ]
                        ),
                    },
                    {"from": "observation", "value": "20"},
                    {"from": "observation", "value": "25"},
                    {"from": "assistant", "value": "20 and 25."},
                ]
            )
        },
        CTX,
        [
            {
                "messages": [
                    {"role": "user", "content": "Paris and Rome?"},
                    {
                        "role": "assistant",
                        "content": "",
                        "tool_calls": [
                            {
                                "type": "function",
                                "function": {"name": "w", "arguments": {"city": c}},
                            }
                            for c in ("Paris", "Rome")
                        ],
                    },
                    {"role": "tool", "content": "20"},
                    {"role": "tool", "content": "25"},
                    {"role": "assistant", "content": "20 and 25."},
                ]
            }
        ],
    ),
    "sharegpt text then its function call is one assistant turn": (
        "sharegpt",
        {
            "conversations": [
                {"from": "human", "value": "q"},
                {"from": "gpt", "value": "Let me check."},
                {"from": "function_call", "value": '{"name": "f", "arguments": "{}"}'},
                {"from": "observation", "value": "r"},
                {"from": "gpt", "value": "done"},
            ]
        },
        CTX,
        [
            {
                "messages": [
                    {"role": "user", "content": "q"},
                    {
                        "role": "assistant",
                        "content": "Let me check.",
                        "tool_calls": [
                            {"type": "function", "function": {"name": "f", "arguments": {}}}
                        ],
                    },
                    {"role": "tool", "content": "r"},
                    {"role": "assistant", "content": "done"},
                ]
            }
        ],
    ),
    "preference with an implicit multi-turn prompt and a system turn": (
        "preference",
        {
            "chosen": _msgs(("system", "S"), (USER, "hi"), (BOT, "yo"), (USER, "2+2?"), (BOT, "4")),
            "rejected": _msgs(
                ("system", "S"), (USER, "hi"), (BOT, "yo"), (USER, "2+2?"), (BOT, "5"), (USER, "?")
            )[:5],
        },
        CTX,
        [
            {
                "prompt": _msgs(("system", "S"), (USER, "hi"), (BOT, "yo"), (USER, "2+2?")),
                "chosen": _msgs((BOT, "4")),
                "rejected": _msgs((BOT, "5")),
            }
        ],
    ),
    "preference with an implicit prompt and a tool call in the chosen answer": (
        "preference",
        {
            "chosen": [
                {"role": "user", "content": "Weather?"},
                {"role": "assistant", "content": None, "tool_calls": [{"name": "w"}]},
                {"role": "tool", "content": "20"},
                {"role": "assistant", "content": "20."},
            ],
            "rejected": _msgs((USER, "Weather?"), (BOT, "No idea.")),
            "tools": [{"name": "w"}],
        },
        CTX,
        [
            {
                "prompt": _msgs((USER, "Weather?")),
                "chosen": [
                    {
                        "role": "assistant",
                        "content": "",
                        "tool_calls": [
                            {"type": "function", "function": {"name": "w", "arguments": {}}}
                        ],
                    },
                    {"role": "tool", "content": "20"},
                    {"role": "assistant", "content": "20."},
                ],
                "rejected": _msgs((BOT, "No idea.")),
                "tools": [{"type": "function", "function": {"name": "w"}}],
            }
        ],
    ),
    "preference with an implicit prompt in sharegpt turns": (
        "preference",
        {
            "chosen": [{"from": "human", "value": "2+2?"}, {"from": "gpt", "value": "4"}],
            "rejected": [{"from": "human", "value": "2+2?"}, {"from": "gpt", "value": "5"}],
        },
        CTX,
        [
            {
                "prompt": _msgs((USER, "2+2?")),
                "chosen": _msgs((BOT, "4")),
                "rejected": _msgs((BOT, "5")),
            }
        ],
    ),
    "preference in the sharegpt layout with a system column": (
        "preference",
        {
            "conversations": [{"from": "human", "value": "2+2?"}],
            "chosen": {"from": "gpt", "value": "4"},
            "rejected": {"from": "gpt", "value": "5"},
            "system": "Be exact.",
        },
        CTX,
        [
            {
                "prompt": _msgs(("system", "Be exact."), (USER, "2+2?")),
                "chosen": _msgs((BOT, "4")),
                "rejected": _msgs((BOT, "5")),
            }
        ],
    ),
    "oasst tree as the row itself": (
        "oasst",
        {"role": "prompter", "text": "Q", "replies": [{"role": "assistant", "text": "A"}]},
        CTX,
        [{"messages": _msgs((USER, "Q"), (BOT, "A"))}],
    ),
    "plain text with a renamed column, numbers as text": (
        "plain_text",
        {"body": 42},
        FormatContext(Columns(text="body")),
        [{"text": "42"}],
    ),
    "mcq options as a JSON string (a CSV cell)": (
        "mcq",
        {"question": "Pick", "choices": '["x", "y"]', "answer": "A"},
        CTX,
        [
            {
                "messages": _msgs((USER, "Pick\nA) x\nB) y"), (BOT, "A")),
                "answer_letter": "A",
                "n_choices": 2,
            }
        ],
    ),
}

LONG = "x" * 5000
CALL_TURN = {"role": "assistant", "content": None, "tool_calls": [{"name": "f"}]}

# (format, row, the start of the error message, exactly): the field first, in row terms.
BAD: dict[str, tuple[str, Any, str]] = {
    "not an object": ("qa", ["q", "a"], "expected an object, got list"),
    "an mcq answer naming two choices": (
        "mcq",
        {"question": "q", "choices": ["x", "y", "z"], "answer": "A, C"},
        "answer: 'A, C' names more than one choice",
    ),
    "an mcq answer naming two choices with and": (
        "mcq",
        {"question": "q", "choices": ["x", "y"], "answer": "a and b"},
        "answer: 'a and b' names more than one choice",
    ),
    "a preference pair without a preference": (
        "preference",
        {"prompt": "q", "chosen": "same", "rejected": "same"},
        "rejected: the same completion as chosen",
    ),
    # NaN and Infinity are how a missing value leaves pandas or json.dumps, not an answer.
    "a NaN answer": ("qa", {"question": "q", "answer": float("nan")}, "answer: nan is not text"),
    "an infinite turn": (
        "messages",
        _chat({"content": float("inf")}),
        "messages[1].content: inf is not text",
    ),
    # A turn key nothing reads would drop what it meant: a turn not to learn from, a trace.
    "a turn's weight": (
        "messages",
        _chat({"content": "bad", "weight": 0}),
        "messages[1].weight: not supported (every assistant turn is trained",
    ),
    "a turn's reasoning": (
        "messages",
        _chat({"content": "a", "reasoning_content": "because"}),
        "messages[1].reasoning_content: not supported (put the reasoning into content",
    ),
    "a legacy function call": (
        "messages",
        _chat({"content": "", "function_call": {"name": "f"}}),
        "messages[1].function_call: not supported (the legacy OpenAI form: use tool_calls",
    ),
    "a user turn's name": (
        "messages",
        _chat({"content": "a"}, user={"name": "bob"}),
        "messages[0].name: not supported (only tool turns carry a name",
    ),
    "a ShareGPT turn's weight": (
        "sharegpt",
        {
            "conversations": [
                {"from": "human", "value": "q"},
                {"from": "gpt", "value": "bad", "weight": 0},
            ]
        },
        "conversations[1].weight: not supported",
    ),
    "missing output": ("instruction", {"instruction": "x"}, "column 'output' is missing"),
    # A gap in a Parquet or JSON export: the column is there, its value is not.
    "null output": (
        "instruction",
        {"instruction": "x", "output": None},
        "column 'output' is empty (null)",
    ),
    "null messages": ("messages", {"messages": None}, "column 'messages' is empty (null)"),
    "null rejected": (
        "preference",
        {"prompt": "p", "chosen": "a", "rejected": None},
        "column 'rejected' is empty (null); preference rows have one of:",
    ),
    "mcq options that are broken JSON": (
        "mcq",
        {"question": "q", "choices": '["a", "b"', "answer": "A"},
        'choices: not a JSON list of options: \'["a", "b"\'',
    ),
    "output that is a list, not text": (
        "instruction",
        {"instruction": "x", "output": ["a", "b"]},
        "output: expected text, got ['a', 'b']",
    ),
    "mcq answer out of range": (
        "mcq",
        {"question": "q", "choices": ["a", "b"], "answer": 5},
        "answer: index 5 is outside 0..1",
    ),
    "mcq answer not a letter": (
        "mcq",
        {"question": "q", "choices": ["a", "b"], "answer": "maybe"},
        "answer: 'maybe' is not a letter A-B or an index",
    ),
    "mcq with one option": (
        "mcq",
        {"question": "q", "choices": ["a"], "answer": "A"},
        "choices: must list at least two options, got ['a']",
    ),
    "sharegpt unknown speaker": (
        "sharegpt",
        {"conversations": [{"from": "alien", "value": "x"}]},
        "conversations[0].from: unknown speaker 'alien' (expected one of human, user, gpt,",
    ),
    "sharegpt speaker names the field": (
        "sharegpt",
        {"conversations": [{"from": "human", "value": "q"}, {"from": "bot2", "value": "a"}]},
        "conversations[1].from: unknown speaker 'bot2' (expected one of human, user, gpt,",
    ),
    "sharegpt column holding role/content turns": (
        "sharegpt",
        {"conversations": _msgs((USER, "q"), (BOT, "a"))},
        "conversations[0]: needs 'from' and 'value' (has ['content', 'role']) (role/content "
        "turns are dataset.format messages; set columns.messages to 'conversations'",
    ),
    "sharegpt without its column": (
        "sharegpt",
        {"messages": []},
        "column 'conversations' is missing (the row has ['messages'])",
    ),
    "sharegpt function call that is not JSON": (
        "sharegpt",
        {
            "conversations": [
                {"from": "human", "value": "q"},
                {"from": "function_call", "value": "get_weather(Paris)"},
            ]
        },
        'conversations[1].value: a function_call must be JSON {"name": ..., "arguments": '
        "{...}}, got 'get_weather(Paris)'",
    ),
    "conversation without a reply": (
        "messages",
        {"messages": [{"role": "user", "content": "hi"}]},
        "messages: the conversation has no assistant turn to learn from",
    ),
    "bad role": (
        "messages",
        {"messages": [{"role": "robot", "content": "x"}]},
        "messages[0].role: 'robot' is not one of system, user, assistant, tool",
    ),
    "sharegpt turns under format messages": (
        "messages",
        {"messages": [{"from": "human", "value": "q"}]},
        "messages[0]: a ShareGPT turn (from/value) where role/content turns are expected",
    ),
    "content missing without tool calls": (
        "messages",
        {"messages": [{"role": "user", "content": "q"}, {"role": "assistant"}]},
        "messages[1].content: missing (only a turn with tool_calls may omit it)",
    ),
    "an image_url part not in OpenAI's shape": (
        "messages",
        {"messages": [{"role": "user", "content": [{"type": "image_url", "url": "u"}]}]},
        "messages[0].content[0].image_url: expected {'url': ...}, got None",
    ),
    "an audio part": (
        "messages",
        {"messages": [{"role": "user", "content": [{"type": "input_audio", "data": "x"}]}]},
        "messages[0].content[0].type: 'input_audio' is not a text, image or image_url part",
    ),
    "tool call on a user turn": (
        "messages",
        {"messages": [{"role": "user", "content": "q", "tool_calls": [{"name": "f"}]}]},
        "messages[0].tool_calls: only assistant turns call tools",
    ),
    "tool call without a name": (
        "messages",
        {
            "messages": [
                {"role": "user", "content": "q"},
                {"role": "assistant", "tool_calls": [{"function": {"arguments": "{}"}}]},
            ]
        },
        "messages[1].tool_calls[0].function.name: missing",
    ),
    "arguments that are not JSON": (
        "messages",
        {
            "messages": [
                {"role": "user", "content": "q"},
                {
                    "role": "assistant",
                    "tool_calls": [{"function": {"name": "f", "arguments": "{city: Paris"}}],
                },
            ]
        },
        "messages[1].tool_calls[0].function.arguments: not JSON: '{city: Paris'",
    ),
    "arguments that are JSON but not an object": (
        "messages",
        {
            "messages": [
                {"role": "user", "content": "q"},
                {"role": "assistant", "tool_calls": [{"name": "f", "arguments": "[1, 2]"}]},
            ]
        },
        "messages[1].tool_calls[0].function.arguments: expected a JSON object, got [1, 2]",
    ),
    "tools column that is not JSON": (
        "messages",
        {"messages": [{"role": "user", "content": "q"}, CALL_TURN], "tools": "[{"},
        "tools: not a JSON list of tools",
    ),
    "a tool without a name": (
        "messages",
        {
            "messages": [{"role": "user", "content": "q"}, CALL_TURN],
            "tools": [{"description": "d"}],
        },
        "tools[0].name: missing (a tool is {'name', 'description', 'parameters'} or",
    ),
    "a wrapped tool without a name": (
        "messages",
        {"messages": [{"role": "user", "content": "q"}, CALL_TURN], "tools": [{"function": {}}]},
        "tools[0].function.name: missing (a tool needs a name)",
    ),
    "preference without rejected": (
        "preference",
        {"prompt": "p", "chosen": "a"},
        "column 'rejected' is missing (the row has ['chosen', 'prompt']; preference rows have "
        "one of: prompt/chosen/rejected",
    ),
    "empty preference prompt": (
        "preference",
        {"prompt": " ", "chosen": "a", "rejected": "b"},
        "prompt: empty [read as the explicit layout (prompt/chosen/rejected, strings or "
        "role/content turns) because the row has a 'prompt' column]",
    ),
    "sharegpt-style answers in the explicit layout": (
        "preference",
        {"prompt": "2+2?", "chosen": {"from": "gpt", "value": "4"}, "rejected": "5"},
        "chosen: a ShareGPT turn (from/value), got {'from': 'gpt', 'value': '4'} [read as the "
        "explicit layout",
    ),
    "sharegpt-style preference read without its conversations": (
        "preference",
        {"chosen": {"from": "gpt", "value": "a"}, "rejected": {"from": "gpt", "value": "b"}},
        "chosen: a whole conversation (a list of turns) is needed without a 'prompt' column, "
        "got {'from': 'gpt', 'value': 'a'} [read as the implicit layout (no prompt column: "
        "chosen/rejected are whole conversations that share the prompt turns) because the row "
        "has no 'prompt' or 'conversations'",
    ),
    "sharegpt layout with a plain string answer": (
        "preference",
        {"conversations": [{"from": "human", "value": "q"}], "chosen": "a", "rejected": "b"},
        "chosen: expected a turn {'from': 'gpt', 'value': ...} (or a list of turns), got 'a' "
        "[read as the sharegpt layout",
    ),
    "sharegpt layout whose answer is a human turn": (
        "preference",
        {
            "conversations": [{"from": "human", "value": "q"}],
            "chosen": {"from": "human", "value": "a"},
            "rejected": {"from": "gpt", "value": "b"},
        },
        "chosen: the completion must start with an assistant turn, not 'user' [read as the "
        "sharegpt layout",
    ),
    "implicit prompt with nothing shared": (
        "preference",
        {"chosen": _msgs((USER, "a"), (BOT, "x")), "rejected": _msgs((USER, "b"), (BOT, "y"))},
        "chosen and rejected share no prompt turns (they differ at turn 0)",
    ),
    "implicit prompt diverging before the last user turn": (
        "preference",
        {
            "chosen": _msgs((USER, "a"), (BOT, "x"), (USER, "b"), (BOT, "y")),
            "rejected": _msgs((USER, "a"), (BOT, "z"), (USER, "b"), (BOT, "y")),
        },
        "chosen and rejected differ before the last user turn (chosen[2] is a user turn after "
        "they part at turn 1)",
    ),
    "implicit prompt with an unanswered side": (
        "preference",
        {"chosen": _msgs((USER, "a"), (BOT, "x")), "rejected": _msgs((USER, "a"))},
        "rejected: the conversation ends with the shared prompt (no answer)",
    ),
    "prompt completion without completion": (
        "prompt_completion",
        {"prompt": "p"},
        "column 'completion' is missing (the row has ['prompt'])",
    ),
    "prompt completion whose completion is a user turn": (
        "prompt_completion",
        {"prompt": "p", "completion": [{"role": "user", "content": "c"}]},
        "completion: the completion must start with an assistant turn, not 'user'",
    ),
    "prompt completion strings with a system prompt": (
        "prompt_completion",
        {"prompt": "p", "completion": "c", "system": "s"},
        "a system prompt needs conversational rows",
    ),
    "long values are cut in messages": (
        "messages",
        {"messages": [{"role": "x" * 500, "content": "c"}]},
        "messages[0].role: '" + "x" * 76 + "... is not one of",
    ),
    "oasst without an answer": (
        "oasst",
        {"prompt": {"role": "prompter", "text": "Q"}},
        "prompt: the tree has no assistant reply",
    ),
    "oasst node names its path": (
        "oasst",
        {
            "prompt": {
                "role": "prompter",
                "text": "Q",
                "replies": [{"role": "assistant", "text": "A"}, {"role": "robot", "text": "B"}],
            }
        },
        "prompt.replies[1].role: unknown role 'robot' (expected prompter or assistant)",
    ),
    "prompt only without a prompt": (
        "prompt_only",
        {"question": "q"},
        "column 'prompt' is missing (the row has ['question'])",
    ),
}

# Values of shapes no converter foresaw, in every column a format reads: each must end as a
# RowError (a line in the data report), never as an exception that stops the data check.
ODD_VALUES = [None, 3, True, "", "[", "[1]", [], [None], [1, [2]], {}, {"a": None}, [{}],
              [{"from": None, "value": None}], [{"role": "assistant", "tool_calls": "x"}],
              [{"role": "assistant", "tool_calls": [{"function": "f"}]}]]  # fmt: skip
COLUMNS = ("text", "instruction", "output", "question", "answer", "choices", "messages",
           "conversations", "prompt", "completion", "chosen", "rejected", "tools",
           "system")  # fmt: skip


def test_null_turn_keys_are_what_arrow_adds_and_are_accepted() -> None:
    """Parquet and hub datasets give every turn each key any turn has, as null."""
    row = {"messages": [
        {"role": "user", "content": "q", "tool_calls": None, "name": None, "weight": None},
        {"role": "assistant", "content": "a", "tool_calls": None, "name": None, "weight": None},
    ]}  # fmt: skip
    assert convert_row("messages", row, CTX) == [{"messages": _msgs((USER, "q"), (BOT, "a"))}]


def test_every_format_is_registered() -> None:
    from typing import get_args

    from ftapi.v1alpha1.dataset import DatasetFormat

    assert set(FORMATS) == set(get_args(DatasetFormat))


@pytest.mark.parametrize(("fmt", "row", "ctx", "expected"), GOOD.values(), ids=list(GOOD))
def test_converts(fmt: str, row: dict[str, Any], ctx: FormatContext, expected: list[Any]) -> None:
    assert convert_row(fmt, row, ctx) == expected


@pytest.mark.parametrize(("fmt", "row", "message"), BAD.values(), ids=list(BAD))
def test_rejects_naming_the_field(fmt: str, row: Any, message: str) -> None:
    with pytest.raises(RowError) as caught:
        convert_row(fmt, row, CTX)
    assert str(caught.value).startswith(message)


@pytest.mark.parametrize("fmt", sorted(FORMATS))
def test_odd_values_are_row_errors_not_crashes(fmt: str) -> None:
    good = {
        "messages": _msgs((USER, "q"), (BOT, "a")),
        "conversations": [{"from": "human", "value": "q"}, {"from": "gpt", "value": "a"}],
    }
    for column in COLUMNS:
        for value in ODD_VALUES:
            row = {**good, column: value}
            with contextlib.suppress(RowError):
                convert_row(fmt, row, CTX)


@pytest.mark.parametrize(
    ("fmt", "row"),
    [
        ("messages", {"messages": [{"role": LONG, "content": "c"}]}),
        ("sharegpt", {"conversations": [{"from": LONG, "value": "v"}]}),
        ("sharegpt", {"conversations": [{"from": "function_call", "value": LONG}]}),
        ("preference", {"prompt": "p", "chosen": {"from": "gpt", "value": LONG}, "rejected": "r"}),
        ("mcq", {"question": "q", "choices": ["a", "b"], "answer": LONG}),
        ("oasst", {"prompt": {"role": LONG, "text": "t"}}),
        ("instruction", {"instruction": "i", "output": [LONG]}),
        ("messages", {"messages": _msgs((USER, "q"), (BOT, "a")), "tools": [LONG]}),
    ],
    ids=["role", "speaker", "function call", "preference turn", "mcq answer", "oasst role",
         "output", "tool"],
)  # fmt: skip
def test_errors_quote_at_most_80_characters_of_a_value(fmt: str, row: dict[str, Any]) -> None:
    with pytest.raises(RowError) as caught:
        convert_row(fmt, row, CTX)
    message = str(caught.value)
    assert "..." in message and max(len(run) for run in re.findall("x+", message)) < QUOTE
    assert len(message) < 500


def test_a_bad_row_is_reported_with_file_line_and_field(tmp_path: Path) -> None:
    from ftapi import parse_job
    from fttestkit.builders import make_job
    from fttrainer.data.prepare import DataError, prepare_data

    rows = [
        {"conversations": [{"from": "human", "value": "q"}, {"from": "gpt", "value": "a"}]},
        {"conversations": [{"from": "human", "value": "q"}, {"from": "gpt", "value": "b"}]},
        {"conversations": [{"from": "human", "value": "q"}, {"from": "gpt", "value": "a"},
                           {"from": "bot2", "value": "c"}]},
    ]  # fmt: skip
    path = tmp_path / "data.jsonl"
    path.write_text("".join(json.dumps(r) + "\n" for r in rows))
    job = parse_job(
        make_job().set("dataset", {"train": {"uri": str(path)}, "format": "sharegpt"}).obj()
    )
    with pytest.raises(DataError) as caught:
        prepare_data(job.spec)
    assert [str(p) for p in caught.value.problems] == [
        f"{path}:3: conversations[2].from: unknown speaker 'bot2' (expected one of human, user, "
        "gpt, assistant, chatgpt, bing, bard, model, system, function_call, observation, tool, "
        "function)"
    ]


def test_samples_reach_trl_datasets_unchanged() -> None:
    """Arrow would merge the argument objects of different tools into one struct (nulls for
    the other tools' arguments): as_dataset keeps every sample as it was."""
    from fttrainer.data.typed import as_dataset

    samples = [
        {
            "prompt": [
                {"role": "user", "content": "q"},
                {"role": "assistant", "content": "", "tool_calls": [
                    {"type": "function", "function": {"name": "f", "arguments": {"city": "P"}}}]},
            ],
            "chosen": _msgs((BOT, "a")),
            "rejected": _msgs((BOT, "b")),
            "tools": [{"type": "function", "function": {"name": "f", "parameters": {"x": 1}}}],
            "answer": "5",
        },
        {
            "prompt": [
                {"role": "user", "content": "q"},
                {"role": "assistant", "content": "", "tool_calls": [
                    {"type": "function", "function": {"name": "g", "arguments": {"n": 3}}}]},
                {"role": "tool", "content": "r", "tool_call_id": "1"},
            ],
            "chosen": _msgs((BOT, "a")),
            "rejected": _msgs((BOT, "b")),
            "answer": "6",
        },
    ]  # fmt: skip
    dataset = as_dataset(samples)
    assert [dataset[i] for i in range(2)] == [samples[0], {**samples[1], "tools": None}]
    assert dataset.features["answer"].dtype == "string"


def test_columns_arrow_cannot_type_reach_trl_as_they_were() -> None:
    """A reward column with a number on one row and a string on the next, or an integer
    beyond 64 bits, has no Arrow type: as_dataset keeps those values as they were instead
    of failing the run (GRPO's `answer` column, written by hand)."""
    from fttrainer.data.typed import as_dataset

    samples = [
        {"prompt": "2+2?", "answer": 4, "id": 123456789012345678901234, "score": 1},
        {"prompt": "half of 1?", "answer": "1/2", "id": 7, "score": 0.5},
        {"prompt": "none?", "answer": None, "id": None, "score": None},
    ]
    dataset = as_dataset(samples)
    assert dataset["answer"] == [4, "1/2", None]
    assert [str(value) for value in dataset["id"]] == ["123456789012345678901234", "7", "None"]
    assert dataset["score"] == [1.0, 0.5, None]  # numbers alone keep an Arrow type


@pytest.mark.parametrize(
    ("answer", "letter"),
    [("a", "A"), ("C)", "C"), ("B. because", "B"), (0, "A"), ("3", "D"),
     ("A) Paris, France", "A"), ("D, I think", "D")],
)  # fmt: skip
def test_answer_letter(answer: Any, letter: str) -> None:
    assert answer_letter(answer, 4) == letter


def test_an_unforeseen_exception_in_a_converter_is_a_row_error(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """The safety net: a shape nobody foresaw still becomes a located row error."""

    def broken(row: Any, ctx: FormatContext) -> list[dict[str, Any]]:
        return [{"text": row["missing"]}]

    monkeypatch.setitem(FORMATS, "qa", broken)
    with pytest.raises(RowError, match=r"^cannot read the row as qa \(KeyError: 'missing'\)$"):
        convert_row("qa", {"question": "q"}, CTX)


TOOL = {"type": "function", "function": {"name": "f", "parameters": {"type": "object"}}}
SHAREGPT = [{"from": "human", "value": "q"}, {"from": "gpt", "value": "a"}]
# A row per format with every column it may read, at the default names.
FULL_ROWS: dict[str, dict[str, Any]] = {
    "plain_text": {"text": "t"},
    "instruction": {"instruction": "<image>i", "input": "x", "output": "o", "system": "s",
                    "images": ["a.png"]},
    "qa": {"question": "<image>q", "answer": "a", "system": "s", "images": ["a.png"]},
    "mcq": {"question": "<image>q", "choices": ["x", "y"], "answer": "B", "system": "s",
            "images": ["a.png"]},
    "messages": {"messages": _msgs((USER, "<image>q"), (BOT, "a")), "tools": [TOOL],
                 "system": "s", "images": ["a.png"]},
    "sharegpt": {"conversations": [{"from": "human", "value": "<image>q"}, SHAREGPT[1]],
                 "tools": [TOOL], "system": "s", "images": ["a.png"]},
    "oasst": {"messages": {"role": "prompter", "text": "q", "replies": [
        {"role": "assistant", "text": "a"}]}, "system": "s"},
    "preference": {"prompt": "<image>p", "chosen": "c", "rejected": "r", "tools": [TOOL],
                   "system": "s", "images": ["a.png"]},
    "prompt_only": {"prompt": "<image>p", "system": "s", "answer": "4", "images": ["a.png"]},
    "prompt_completion": {"prompt": _msgs((USER, "<image>q")), "completion": _msgs((BOT, "a")),
                          "tools": [TOOL], "system": "s", "images": ["a.png"]},
}  # fmt: skip
DEFAULT_NAME = {
    ("messages", "sharegpt"): "conversations",
    ("messages", "preference"): "conversations",
}
EXTRA_ROWS = {("messages", "preference"): {
    "conversations": SHAREGPT[:1], "chosen": SHAREGPT[1], "rejected": {"from": "gpt", "value": "b"}
}}  # fmt: skip


@pytest.mark.parametrize("fmt", sorted(FULL_ROWS))
def test_the_api_allows_columns_entries_exactly_for_the_formats_that_read_them(fmt: str) -> None:
    """COLUMN_FORMATS (the API's rule) against the converters: renaming a column the
    format reads, with its `columns` entry, changes nothing; one it does not read is
    not looked at (so the API is right to refuse naming it)."""
    from ftapi.v1alpha1.dataset import COLUMN_FORMATS

    assert set(COLUMN_FORMATS) == set(Columns.model_fields)
    for column, formats in COLUMN_FORMATS.items():
        row = EXTRA_ROWS.get((column, fmt), FULL_ROWS[fmt])
        default = DEFAULT_NAME.get((column, fmt), column)
        expected = convert_row(fmt, row, CTX)
        renamed = {("renamed" if k == default else k): v for k, v in row.items()}
        if fmt in formats:
            assert default in row, (column, fmt)
            mapped = FormatContext(Columns(**{column: "renamed"}))
            assert convert_row(fmt, renamed, mapped) == expected, (column, fmt)
        else:
            mapped = FormatContext(Columns(**{column: "elsewhere"}))
            assert convert_row(fmt, row, mapped) == expected, (column, fmt)
