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
        "instruction", {"instruction": "Say hi", "output": "hi"}, CTX,
        [{"messages": _msgs((USER, "Say hi"), (BOT, "hi"))}]),
    "alpaca with input": (
        "instruction", {"instruction": "Translate", "input": "chat", "output": "cat"}, CTX,
        [{"messages": _msgs((USER, "Translate\n\nchat"), (BOT, "cat"))}]),
    "qa with mapped columns and a system column": (
        "qa", {"q": "2+2?", "a": "4", "sys": "Be exact."},
        FormatContext(Columns(question="q", answer="a", system="sys")),
        [{"messages": _msgs(("system", "Be exact."), (USER, "2+2?"), (BOT, "4"))}]),
    "system prompt override replaces the row's": (
        "qa", {"question": "q", "answer": "a", "system": "row"},
        FormatContext(Columns(), "spec", "override"),
        [{"messages": _msgs(("system", "spec"), (USER, "q"), (BOT, "a"))}]),
    "system prompt fallback keeps the row's": (
        "qa", {"question": "q", "answer": "a", "system": "row"},
        FormatContext(Columns(), "spec", "fallback"),
        [{"messages": _msgs(("system", "row"), (USER, "q"), (BOT, "a"))}]),
    "system prompt fallback fills in": (
        "qa", {"question": "q", "answer": "a"}, FormatContext(Columns(), "spec", "fallback"),
        [{"messages": _msgs(("system", "spec"), (USER, "q"), (BOT, "a"))}]),
    "mcq with a letter": (
        "mcq", {"question": "Pick", "choices": ["x", "y"], "answer": "b"}, CTX,
        [{"messages": _msgs((USER, "Pick\nA) x\nB) y"), (BOT, "B")), "answer_letter": "B",
          "n_choices": 2}]),
    "mcq with an index and a mapping of options": (
        "mcq", {"question": "Pick", "choices": {"A": "x", "B": "y", "C": "z"}, "answer": 2}, CTX,
        [{"messages": _msgs((USER, "Pick\nA) x\nB) y\nC) z"), (BOT, "C")),
          "answer_letter": "C", "n_choices": 3}]),
    "sharegpt": (
        "sharegpt", {"conversations": [{"from": "system", "value": "S"},
                                       {"from": "human", "value": "hi"},
                                       {"from": "gpt", "value": "yo"}]}, CTX,
        [{"messages": _msgs(("system", "S"), (USER, "hi"), (BOT, "yo"))}]),
    "openai messages": (
        "messages", {"messages": _msgs((USER, "hi"), (BOT, "yo"), (USER, "bye"), (BOT, "ok"))},
        CTX, [{"messages": _msgs((USER, "hi"), (BOT, "yo"), (USER, "bye"), (BOT, "ok"))}]),
    "oasst tree with two answers": (
        "oasst", {"prompt": {"role": "prompter", "text": "Q", "replies": [
            {"role": "assistant", "text": "A1"},
            {"role": "assistant", "text": "A2", "replies": [
                {"role": "prompter", "text": "Why?", "replies": [
                    {"role": "assistant", "text": "Because"}]}]}]}}, CTX,
        [{"messages": _msgs((USER, "Q"), (BOT, "A1"))},
         {"messages": _msgs((USER, "Q"), (BOT, "A2"), (USER, "Why?"), (BOT, "Because"))}]),
    "preference from strings": (
        "preference", {"prompt": "p", "chosen": "good", "rejected": "bad"}, CTX,
        [{"prompt": _msgs((USER, "p")), "chosen": _msgs((BOT, "good")),
          "rejected": _msgs((BOT, "bad"))}]),
    "prompt only keeps the other columns": (
        "prompt_only", {"prompt": "2+2?", "answer": "4"}, CTX,
        [{"prompt": _msgs((USER, "2+2?")), "answer": "4"}]),
}  # fmt: skip

BAD: dict[str, tuple[str, Any, str]] = {
    "not an object": ("qa", ["q", "a"], "expected an object"),
    "missing output": ("instruction", {"instruction": "x"}, "'output' is missing"),
    "mcq answer out of range": (
        "mcq", {"question": "q", "choices": ["a", "b"], "answer": 5}, "outside 0..1"),
    "mcq answer not a letter": (
        "mcq", {"question": "q", "choices": ["a", "b"], "answer": "maybe"}, "not a letter"),
    "mcq with one option": ("mcq", {"question": "q", "choices": ["a"], "answer": "A"}, "two"),
    "sharegpt unknown speaker": (
        "sharegpt", {"conversations": [{"from": "alien", "value": "x"}]}, "unknown speaker"),
    "conversation without a reply": (
        "messages", {"messages": [{"role": "user", "content": "hi"}]}, "no assistant turn"),
    "bad role": ("messages", {"messages": [{"role": "robot", "content": "x"}]}, "needs a role"),
    "oasst without an answer": (
        "oasst", {"prompt": {"role": "prompter", "text": "Q"}}, "no assistant"),
    "empty preference prompt": (
        "preference", {"prompt": " ", "chosen": "a", "rejected": "b"}, "prompt is empty"),
}  # fmt: skip


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
