"""GRPO reward functions declared in `spec.trainer.grpo.rewards`.

Every reward is a callable with TRL's signature, `(prompts, completions, **columns) ->
list[float]`, where `columns` holds the dataset's extra columns (ground truth) batched
alongside. Built-ins are pure string functions; `python` loads yours.

What the model "answered" is the completion after a closing `</think>` when there is one,
so a reasoning trace does not count against exact_match or json.
"""

from __future__ import annotations

import hashlib
import importlib
import importlib.util
import json
import logging
import re
import tempfile
from collections.abc import Callable
from pathlib import Path
from typing import Any

from ftapi.v1alpha1 import Reward, S3Spec

RewardFunc = Callable[..., list[float]]
log = logging.getLogger("fttrainer")
NUMBER = re.compile(r"-?\d+(?:\.\d+)?")


def build_rewards(
    rewards: list[Reward], s3: S3Spec | None = None
) -> tuple[list[RewardFunc], list[float]]:
    """The callables and their weights, in declaration order. `s3`: how to reach a python
    reward file named by an s3:// URI (where `finetune submit` uploads a local one)."""
    funcs = [_build(reward, s3) for reward in rewards]
    return funcs, [reward.weight for reward in rewards]


def completion_text(completion: Any) -> str:
    """Plain text of a completion (a string, or a list of chat messages)."""
    if isinstance(completion, str):
        return completion
    return "".join(str(m.get("content", "")) for m in completion if isinstance(m, dict))


def final_answer(text: str) -> str:
    return text.rsplit("</think>", 1)[-1].strip()


def _normalise(text: str) -> str:
    return re.sub(r"[\s.,;:!]+$", "", text.strip().lower())


def answers_match(answer: str, truth: Any) -> bool:
    """Exact match after normalising case and trailing punctuation; numbers compare as
    numbers (the last number in the answer, so "The answer is 42." matches 42)."""
    expected = _normalise(str(truth))
    if _normalise(answer) == expected:
        return True
    numbers = NUMBER.findall(answer)
    if numbers and NUMBER.fullmatch(expected):
        return float(numbers[-1]) == float(expected)
    return False


def _build(reward: Reward, s3: S3Spec | None) -> RewardFunc:
    name = reward.name or reward.type
    if reward.type == "python":
        assert reward.function is not None
        func = load_function(reward.function, s3=s3)
    else:
        func = _BUILTINS[reward.type](reward)
    if reward.name or reward.type != "python":
        func.__name__ = name  # TRL logs rewards/<__name__>/mean
    return func


# A completion gets this long to be matched: a pattern with catastrophic backtracking
# (`(a+)+$`) on a long generation must not stall every rank of a GPU job.
REGEX_TIMEOUT_SECONDS = 1.0


def _regex(reward: Reward) -> RewardFunc:
    # The `regex` engine in its re-compatible mode (V0) is the one with a match timeout; the
    # API checked the pattern with `re`, whose syntax V0 accepts.
    import regex

    pattern = regex.compile(reward.pattern or "", regex.DOTALL | regex.V0)
    warned = False

    def matches(text: str) -> float:
        nonlocal warned
        try:
            return 1.0 if pattern.search(text, timeout=REGEX_TIMEOUT_SECONDS) else 0.0
        except TimeoutError:
            if not warned:
                log.warning(
                    "reward %s: the pattern took over %.0f s on a completion of %d "
                    "characters; such completions score 0",
                    reward.name or "regex",
                    REGEX_TIMEOUT_SECONDS,
                    len(text),
                )
                warned = True
            return 0.0

    def score(completions: list[Any], **_: Any) -> list[float]:
        return [matches(completion_text(c)) for c in completions]

    return score


def _exact_match(reward: Reward) -> RewardFunc:
    column = reward.column or "answer"

    def score(completions: list[Any], **columns: Any) -> list[float]:
        truths = _column(columns, column, len(completions))
        return [
            1.0 if answers_match(final_answer(completion_text(c)), t) else 0.0
            for c, t in zip(completions, truths, strict=True)
        ]

    return score


def _contains(reward: Reward) -> RewardFunc:
    def score(completions: list[Any], **columns: Any) -> list[float]:
        needles = (
            _column(columns, reward.column, len(completions))
            if reward.column
            else [reward.text] * len(completions)
        )
        return [
            1.0 if str(n).lower() in completion_text(c).lower() else 0.0
            for c, n in zip(completions, needles, strict=True)
        ]

    return score


def _length(reward: Reward) -> RewardFunc:
    limit = reward.max_length or 1

    def score(completions: list[Any], **_: Any) -> list[float]:
        return [-min(1.0, max(0, len(completion_text(c)) - limit) / limit) for c in completions]

    return score


def _json(reward: Reward) -> RewardFunc:
    def score(completions: list[Any], **_: Any) -> list[float]:
        result = []
        for completion in completions:
            try:
                json.loads(final_answer(completion_text(completion)))
                result.append(1.0)
            except ValueError:
                result.append(0.0)
        return result

    return score


_BUILTINS: dict[str, Callable[[Reward], RewardFunc]] = {
    "regex": _regex,
    "exact_match": _exact_match,
    "contains": _contains,
    "length": _length,
    "json": _json,
}


def load_function(reference: str, *, s3: S3Spec | None = None) -> RewardFunc:
    """`package.module:name` (importable), `path/to/file.py:name`, or
    `s3://bucket/key/file.py:name` (downloaded first)."""
    target, sep, attribute = reference.rpartition(":")
    if not sep or not target or not attribute or target == "s3":
        raise ValueError(f"reward function {reference!r}: expected module:name or file.py:name")
    if target.startswith("s3://") and target.endswith(".py"):
        target = fetch_reward_file(target, s3, reference)
    if target.endswith(".py"):
        path = Path(target)
        spec = importlib.util.spec_from_file_location(f"finetune_reward_{path.stem}", path)
        if spec is None or spec.loader is None or not path.is_file():
            raise ValueError(f"reward function {reference!r}: no such file {path}")
        module = importlib.util.module_from_spec(spec)
        try:
            spec.loader.exec_module(module)
        except Exception as exc:  # the user's file: a syntax error, a failing import...
            raise ValueError(
                f"reward function {reference!r}: {path} fails to load: {type(exc).__name__}: {exc}"
            ) from None
    else:
        try:
            module = importlib.import_module(target)
        except ImportError as exc:
            raise ValueError(
                f"reward function {reference!r}: cannot import {target} ({exc})"
            ) from None
    func = getattr(module, attribute, None)
    if not callable(func):
        raise ValueError(f"reward function {reference!r}: {attribute} is not a function")
    return func  # type: ignore[no-any-return]


def fetch_reward_file(uri: str, s3: S3Spec | None, reference: str) -> str:
    """The reward file at `uri`, downloaded under TMPDIR (per URI: the uploads are
    content-addressed, so one URI is one content); its local path."""
    from fttrainer.storage import StorageError, open_store

    parent, _, name = uri.rpartition("/")
    folder = (
        Path(tempfile.gettempdir())
        / "finetune-rewards"
        / hashlib.sha256(uri.encode()).hexdigest()[:16]
    )
    try:
        data = open_store(parent, s3=s3).read_bytes(name)
    except StorageError as exc:
        raise ValueError(f"reward function {reference!r}: cannot read {uri}: {exc}") from None
    folder.mkdir(parents=True, exist_ok=True)
    (folder / name).write_bytes(data)
    return str(folder / name)


def _column(columns: dict[str, Any], name: str | None, size: int) -> list[Any]:
    if name not in columns:
        raise KeyError(f"reward needs dataset column {name!r}; columns: {sorted(columns)}")
    values = columns[name]
    if len(values) != size:
        raise ValueError(f"column {name!r} has {len(values)} values for {size} completions")
    return list(values)
