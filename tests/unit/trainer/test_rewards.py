"""GRPO rewards: built-ins score strings as documented; python rewards load from a file."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest

from ftapi.v1alpha1 import Reward
from fttrainer.rewards import answers_match, build_rewards, load_function


def _score(reward: dict[str, Any], completions: list[Any], **columns: Any) -> list[float]:
    (func,), _ = build_rewards([Reward.model_validate(reward)])
    return func(prompts=[None] * len(completions), completions=completions, **columns)


def _chat(text: str) -> list[dict[str, str]]:
    return [{"role": "assistant", "content": text}]


def test_regex_format_reward_on_chat_completions() -> None:
    reward = {"type": "regex", "pattern": r"^<think>.*?</think>\s*\S"}
    assert _score(reward, [_chat("<think>a\nb</think> 4"), _chat("4")]) == [1.0, 0.0]


def test_exact_match_uses_the_answer_after_thinking() -> None:
    reward = {"type": "exact_match", "column": "answer"}
    completions = ["<think>2+2</think>The answer is 4.", "five", "<think>4</think> 5"]
    assert _score(reward, completions, answer=["4", "Five", "4"]) == [1.0, 1.0, 0.0]


@pytest.mark.parametrize(
    ("answer", "truth", "match"),
    [("42", 42, True), ("It is 42.0", "42", True), ("Paris!", "paris", True), ("41", "42", False)],
)
def test_answers_match(answer: str, truth: Any, match: bool) -> None:
    assert answers_match(answer, truth) is match


def test_contains_length_and_json() -> None:
    assert _score({"type": "contains", "text": "Paris"}, ["in paris", "rome"]) == [1.0, 0.0]
    assert _score(
        {"type": "contains", "column": "city"}, ["rome!", "x"], city=["Rome", "Oslo"]
    ) == [
        1.0,
        0.0,
    ]
    assert _score({"type": "length", "maxLength": 10}, ["short", "x" * 15, "x" * 40]) == [
        -0.0,
        -0.5,
        -1.0,
    ]
    assert _score({"type": "json"}, ['{"a": 1}', "<think>..</think> [1, 2]", "{oops"]) == [
        1.0,
        1.0,
        0.0,
    ]


def test_weights_and_names() -> None:
    funcs, weights = build_rewards(
        [Reward(type="json", name="valid_json", weight=0.5), Reward(type="regex", pattern="x")]
    )
    assert [f.__name__ for f in funcs] == ["valid_json", "regex"]
    assert weights == [0.5, 1.0]


def test_python_reward_from_a_file(tmp_path: Path) -> None:
    path = tmp_path / "my_rewards.py"
    path.write_text("def shorter(completions, **kw):\n    return [-len(c) for c in completions]\n")
    assert _score({"type": "python", "function": f"{path}:shorter"}, ["ab", "abcd"]) == [-2, -4]


@pytest.mark.parametrize(
    ("reference", "error"),
    [("nocolon", "expected module:name"), ("/no/such.py:f", "no such file"),
     ("json:not_a_function_here", "is not a function"),
     ("nosuchmod:f", "cannot import nosuchmod")],
)  # fmt: skip
def test_python_reward_errors(reference: str, error: str) -> None:
    with pytest.raises(ValueError, match=error):
        load_function(reference)


def test_a_reward_file_that_fails_to_load_is_invalid_input(tmp_path: Path) -> None:
    path = tmp_path / "broken.py"
    path.write_text("import nothing_called_this\n")
    with pytest.raises(ValueError, match=r"broken\.py fails to load: ModuleNotFoundError"):
        load_function(f"{path}:f")


def test_a_rewards_ground_truth_column_is_required_on_every_row() -> None:
    """GRPO's exact_match reward reads `column` from each row: a row without it is a row
    error (file and line in the data report), not a KeyError in the first training step."""
    from ftapi.v1alpha1 import Columns
    from fttrainer.data.formats import FormatContext, RowError, convert_row

    context = FormatContext(Columns(), required=(("answer", "the exact_match reward"),))
    assert convert_row("prompt_only", {"prompt": "2+2?", "answer": 4}, context)[0]["answer"] == 4
    with pytest.raises(RowError, match="column 'answer' is missing \\(the exact_match reward"):
        convert_row("prompt_only", {"prompt": "2+2?", "solution": 4}, context)


def test_a_pattern_that_does_not_compile_is_refused_with_the_job() -> None:
    from ftapi import InvalidSpecError, parse_job
    from fttestkit.builders import make_job

    job = (
        make_job()
        .set("dataset.format", "prompt_only")
        .set(
            "trainer", {"type": "grpo", "grpo": {"rewards": [{"type": "regex", "pattern": "(<a>"}]}}
        )
    )
    with pytest.raises(InvalidSpecError) as caught:
        parse_job(job.obj())
    assert "spec.trainer.grpo.rewards[0].pattern: '(<a>': not a valid regular expression" in str(
        caught.value
    )


def test_catastrophic_backtracking_is_bounded_in_time() -> None:
    import time

    from fttrainer import rewards

    (func,), _ = build_rewards([Reward(type="regex", pattern=r"^(a+)+$")])
    started = time.monotonic()
    scores = func(completions=["a" * 40 + "b", "aaaa"])
    assert scores == [0.0, 1.0]
    assert time.monotonic() - started < 4 * rewards.REGEX_TIMEOUT_SECONDS
