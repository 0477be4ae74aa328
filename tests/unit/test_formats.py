"""Each dataset.format turns its rows into TRL's standard shapes; bad rows say why."""

from __future__ import annotations

from typing import Any

import pytest

from ftapi.v1alpha1 import Columns
from fttrainer.data.formats import FORMATS, FormatContext, RowError, answer_letter, convert_row

CTX = FormatContext(Columns())
USER, BOT = "user", "assistant"


def _msgs(*turns: tuple[str, str]) -> list[dict[str, str]]:
    return [{"role": role, "content": content} for role, content in turns]


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
                "tools": [{"name": "get_weather", "parameters": {}}],
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
        [{"messages": _msgs((USER, "2+2?"), (BOT, "4"))}],
    ),
}

BAD: dict[str, tuple[str, Any, str]] = {
    "not an object": ("qa", ["q", "a"], "expected an object"),
    "missing output": ("instruction", {"instruction": "x"}, "'output' is missing"),
    "mcq answer out of range": (
        "mcq",
        {"question": "q", "choices": ["a", "b"], "answer": 5},
        "outside 0..1",
    ),
    "mcq answer not a letter": (
        "mcq",
        {"question": "q", "choices": ["a", "b"], "answer": "maybe"},
        "not a letter",
    ),
    "mcq with one option": ("mcq", {"question": "q", "choices": ["a"], "answer": "A"}, "two"),
    "sharegpt unknown speaker": (
        "sharegpt",
        {"conversations": [{"from": "alien", "value": "x"}]},
        "unknown speaker",
    ),
    "conversation without a reply": (
        "messages",
        {"messages": [{"role": "user", "content": "hi"}]},
        "no assistant turn",
    ),
    "bad role": (
        "messages",
        {"messages": [{"role": "robot", "content": "x"}]},
        r"messages\[0\]\.role: 'robot' is not one of system, user, assistant, tool",
    ),
    "content missing without tool calls": (
        "messages",
        {"messages": [{"role": "user", "content": "q"}, {"role": "assistant"}]},
        r"messages\[1\]\.content: missing",
    ),
    "tool call on a user turn": (
        "messages",
        {
            "messages": [
                {"role": "user", "content": "q", "tool_calls": [{"function": {"name": "f"}}]}
            ]
        },
        r"messages\[0\]\.tool_calls: only assistant turns call tools",
    ),
    "tool call without a name": (
        "messages",
        {
            "messages": [
                {"role": "user", "content": "q"},
                {
                    "role": "assistant",
                    "content": None,
                    "tool_calls": [{"function": {"arguments": "{}"}}],
                },
            ]
        },
        r"messages\[1\]\.tool_calls\[0\]\.function\.name: missing",
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
        r"tool_calls\[0\]\.function\.arguments: not JSON",
    ),
    "tools column that is not JSON": (
        "messages",
        {
            "messages": [{"role": "user", "content": "q"}, {"role": "assistant", "content": "a"}],
            "tools": "[{",
        },
        "tools: not a JSON list of tools",
    ),
    "sharegpt function call that is not JSON": (
        "sharegpt",
        {
            "conversations": [
                {"from": "human", "value": "q"},
                {"from": "function_call", "value": "get_weather(Paris)"},
            ]
        },
        r"conversations\[1\]\.value: a function_call must be JSON",
    ),
    "sharegpt speaker names the field": (
        "sharegpt",
        {"conversations": [{"from": "human", "value": "q"}, {"from": "bot2", "value": "a"}]},
        r"conversations\[1\]\.from: unknown speaker 'bot2'",
    ),
    "sharegpt-style preference read without its conversations": (
        "preference",
        {"chosen": {"from": "gpt", "value": "a"}, "rejected": {"from": "gpt", "value": "b"}},
        "no .conversations. column",
    ),
    "implicit prompt with nothing shared": (
        "preference",
        {
            "chosen": [{"role": "user", "content": "a"}, {"role": "assistant", "content": "x"}],
            "rejected": [{"role": "user", "content": "b"}, {"role": "assistant", "content": "y"}],
        },
        "share no prompt turns",
    ),
    "preference without rejected": (
        "preference",
        {"prompt": "p", "chosen": "a"},
        "column 'rejected' is missing",
    ),
    "prompt completion without completion": (
        "prompt_completion",
        {"prompt": "p"},
        "column 'completion' is missing",
    ),
    "long values are cut in messages": (
        "messages",
        {"messages": [{"role": "x" * 500, "content": "c"}]},
        r"'x{76}\.\.\. is not one of",
    ),
    "oasst without an answer": (
        "oasst",
        {"prompt": {"role": "prompter", "text": "Q"}},
        "no assistant",
    ),
    "empty preference prompt": (
        "preference",
        {"prompt": " ", "chosen": "a", "rejected": "b"},
        "prompt is empty",
    ),
}


def test_every_format_is_registered() -> None:
    from typing import get_args

    from ftapi.v1alpha1.dataset import DatasetFormat

    assert set(FORMATS) == set(get_args(DatasetFormat))


@pytest.mark.parametrize(("fmt", "row", "ctx", "expected"), GOOD.values(), ids=list(GOOD))
def test_converts(fmt: str, row: dict[str, Any], ctx: FormatContext, expected: list[Any]) -> None:
    assert convert_row(fmt, row, ctx) == expected


@pytest.mark.parametrize(("fmt", "row", "reason"), BAD.values(), ids=list(BAD))
def test_rejects_with_a_reason(fmt: str, row: Any, reason: str) -> None:
    with pytest.raises(RowError, match=reason):
        convert_row(fmt, row, CTX)


@pytest.mark.parametrize(
    ("answer", "letter"), [("a", "A"), ("C)", "C"), ("B. because", "B"), (0, "A"), ("3", "D")]
)
def test_answer_letter(answer: Any, letter: str) -> None:
    assert answer_letter(answer, 4) == letter
