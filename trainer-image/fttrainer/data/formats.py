"""Row shapes → TRL's standard dataset shapes.

Every `dataset.format` is one function from a raw row (a dict from a file) to a sample in
the shape TRL trainers consume:

- language modelling:  {"text": str}
- conversational SFT:  {"messages": [{"role", "content"}, ...]}
- preference (DPO):    {"prompt": [msgs], "chosen": [msgs], "rejected": [msgs]}
- prompt only (GRPO):  {"prompt": [msgs], **other columns (for rewards)}

A row that cannot be converted raises `RowError` with a reason; the caller attaches the
file and line. Pure functions, no tokenizer: chat templates are applied later.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from dataclasses import dataclass
from typing import Any

from ftapi.v1alpha1 import Columns, DatasetSpec

Message = dict[str, str]
Sample = dict[str, Any]
LETTERS = "ABCDEFGHIJKLMNOPQRSTUVWXYZ"
SHAREGPT_ROLES = {
    "human": "user", "user": "user", "gpt": "assistant", "assistant": "assistant",
    "chatgpt": "assistant", "bing": "assistant", "bard": "assistant", "model": "assistant",
    "system": "system",
}  # fmt: skip
OASST_ROLES = {"prompter": "user", "user": "user", "assistant": "assistant"}
CHAT_ROLES = ("system", "user", "assistant", "tool")


class RowError(ValueError):
    """A row that does not fit its declared format (the message says which field)."""


@dataclass(frozen=True)
class FormatContext:
    """What converters need besides the row: column names and the system prompt policy."""

    columns: Columns
    system_prompt: str | None = None
    system_prompt_mode: str = "override"

    @classmethod
    def from_spec(cls, spec: DatasetSpec) -> FormatContext:
        return cls(spec.columns or Columns(), spec.system_prompt, spec.system_prompt_mode)

    def column(self, name: str, default: str | None = None) -> str:
        return getattr(self.columns, name) or default or name


Converter = Callable[[Mapping[str, Any], FormatContext], list[Sample]]
FORMATS: dict[str, Converter] = {}


def register(name: str) -> Callable[[Converter], Converter]:
    def add(converter: Converter) -> Converter:
        FORMATS[name] = converter
        return converter

    return add


def convert_row(fmt: str, row: Mapping[str, Any], context: FormatContext) -> list[Sample]:
    """One raw row → its samples (oasst trees give several; every other format one)."""
    if not isinstance(row, Mapping):
        raise RowError(f"expected an object, got {type(row).__name__}")
    return FORMATS[fmt](row, context)


@register("plain_text")
def _plain_text(row: Mapping[str, Any], ctx: FormatContext) -> list[Sample]:
    return [{"text": _text(row, ctx.column("text"))}]


@register("instruction")
def _instruction(row: Mapping[str, Any], ctx: FormatContext) -> list[Sample]:
    instruction = _text(row, ctx.column("instruction"))
    extra = _optional_text(row, ctx.column("input"))
    user = f"{instruction}\n\n{extra}" if extra else instruction
    return [_conversation(row, ctx, user, _text(row, ctx.column("output")))]


@register("qa")
def _qa(row: Mapping[str, Any], ctx: FormatContext) -> list[Sample]:
    question = _text(row, ctx.column("question"))
    return [_conversation(row, ctx, question, _text(row, ctx.column("answer")))]


@register("mcq")
def _mcq(row: Mapping[str, Any], ctx: FormatContext) -> list[Sample]:
    question = _text(row, ctx.column("question"))
    choices = _choices(row, ctx.column("choices"))
    letter = answer_letter(row.get(ctx.column("answer")), len(choices))
    options = "\n".join(f"{LETTERS[i]}) {choice}" for i, choice in enumerate(choices))
    sample = _conversation(row, ctx, f"{question}\n{options}", letter)
    sample["answer_letter"] = letter
    sample["n_choices"] = len(choices)
    return [sample]


@register("sharegpt")
def _sharegpt(row: Mapping[str, Any], ctx: FormatContext) -> list[Sample]:
    turns = _list(row, ctx.column("messages", "conversations"))
    messages = []
    for i, turn in enumerate(turns):
        if not isinstance(turn, Mapping) or "value" not in turn:
            raise RowError(f"conversations[{i}] needs 'from' and 'value'")
        role = SHAREGPT_ROLES.get(str(turn.get("from", "")).lower())
        if role is None:
            raise RowError(f"conversations[{i}]: unknown speaker {turn.get('from')!r}")
        messages.append({"role": role, "content": str(turn["value"])})
    return [{"messages": _with_system(_checked(messages), row, ctx)}]


@register("messages")
def _messages(row: Mapping[str, Any], ctx: FormatContext) -> list[Sample]:
    turns = _list(row, ctx.column("messages"))
    messages = []
    for i, turn in enumerate(turns):
        if not isinstance(turn, Mapping) or turn.get("role") not in CHAT_ROLES:
            raise RowError(f"messages[{i}] needs a role in {CHAT_ROLES} and content")
        messages.append({"role": str(turn["role"]), "content": str(turn.get("content") or "")})
    return [{"messages": _with_system(_checked(messages), row, ctx)}]


@register("oasst")
def _oasst(row: Mapping[str, Any], ctx: FormatContext) -> list[Sample]:
    """An OpenAssistant message tree: every path from the root to an assistant reply
    becomes one conversation (a tree with three answers gives three samples)."""
    root = row.get("prompt", row)
    paths: list[list[Message]] = []
    _walk_tree(root, [], paths)
    if not paths:
        raise RowError("the message tree has no assistant reply")
    return [{"messages": _with_system(path, row, ctx)} for path in paths]


@register("preference")
def _preference(row: Mapping[str, Any], ctx: FormatContext) -> list[Sample]:
    prompt = row.get(ctx.column("prompt"))
    prompt_messages = _as_messages(prompt, "user", ctx.column("prompt"))
    return [
        {
            "prompt": _with_system(prompt_messages, row, ctx),
            "chosen": _as_messages(row.get(ctx.column("chosen")), "assistant", "chosen"),
            "rejected": _as_messages(row.get(ctx.column("rejected")), "assistant", "rejected"),
        }
    ]


@register("prompt_only")
def _prompt_only(row: Mapping[str, Any], ctx: FormatContext) -> list[Sample]:
    name = ctx.column("prompt")
    prompt = _with_system(_as_messages(row.get(name), "user", name), row, ctx)
    # Every other column travels along: GRPO rewards read ground truth from them.
    extra = {k: v for k, v in row.items() if k not in (name, ctx.column("system"))}
    return [{"prompt": prompt, **extra}]


def answer_letter(answer: Any, n_choices: int) -> str:
    """An MCQ answer given as a letter ("c", "C)", "C. text") or an index (2 or "2") → "C"."""
    if isinstance(answer, bool) or answer is None:
        raise RowError("answer is missing")
    if isinstance(answer, int) or (isinstance(answer, str) and answer.strip().isdigit()):
        index = int(answer)
        if not 0 <= index < n_choices:
            raise RowError(f"answer index {index} is outside 0..{n_choices - 1}")
        return LETTERS[index]
    text = str(answer).strip().upper()
    if text and text[0] in LETTERS[:n_choices] and (len(text) == 1 or not text[1].isalpha()):
        return text[0]
    raise RowError(f"answer {answer!r} is not a letter A-{LETTERS[n_choices - 1]} or an index")


def _conversation(row: Mapping[str, Any], ctx: FormatContext, user: str, reply: str) -> Sample:
    messages = [{"role": "user", "content": user}, {"role": "assistant", "content": reply}]
    return {"messages": _with_system(messages, row, ctx)}


def _with_system(
    messages: list[Message], row: Mapping[str, Any], ctx: FormatContext
) -> list[Message]:
    """Apply the system prompt policy: the row's own system prompt (a column or a leading
    system turn) is kept in fallback mode and replaced in override mode."""
    own = _optional_text(row, ctx.column("system"))
    if messages and messages[0]["role"] == "system":
        own = own or messages[0]["content"]
        messages = messages[1:]
    if ctx.system_prompt is not None and (ctx.system_prompt_mode == "override" or not own):
        own = ctx.system_prompt
    return [{"role": "system", "content": own}, *messages] if own else messages


def _checked(messages: list[Message]) -> list[Message]:
    if not any(m["role"] == "assistant" for m in messages):
        raise RowError("the conversation has no assistant turn to learn from")
    return messages


def _walk_tree(node: Any, path: list[Message], paths: list[list[Message]]) -> None:
    if not isinstance(node, Mapping) or "text" not in node:
        raise RowError("every node of a message tree needs 'text' and 'role'")
    role = OASST_ROLES.get(str(node.get("role", "")).lower())
    if role is None:
        raise RowError(f"unknown role {node.get('role')!r} in the message tree")
    here = [*path, {"role": role, "content": str(node["text"])}]
    replies = node.get("replies") or []
    if role == "assistant" and not any(
        OASST_ROLES.get(str(r.get("role", "")).lower()) == "user"
        for r in replies
        if isinstance(r, Mapping)
    ):
        paths.append(here)
    for reply in replies:
        _walk_tree(reply, here, paths)


def _as_messages(value: Any, role: str, name: str) -> list[Message]:
    """A plain string, or an already conversational list of turns."""
    if isinstance(value, str):
        if not value.strip():
            raise RowError(f"{name} is empty")
        return [{"role": role, "content": value}]
    if (
        isinstance(value, list)
        and value
        and all(isinstance(m, Mapping) and "role" in m for m in value)
    ):
        return [{"role": str(m["role"]), "content": str(m.get("content") or "")} for m in value]
    raise RowError(f"{name} must be a string or a list of role/content turns")


def _choices(row: Mapping[str, Any], name: str) -> list[str]:
    value = row.get(name)
    if isinstance(value, Mapping):  # {"A": "...", "B": "..."}
        value = [value[k] for k in sorted(value)]
    if not isinstance(value, list) or len(value) < 2:
        raise RowError(f"{name} must list at least two options")
    if len(value) > len(LETTERS):
        raise RowError(f"{name} has more than {len(LETTERS)} options")
    return [str(v) for v in value]


def _list(row: Mapping[str, Any], name: str) -> list[Any]:
    value = row.get(name)
    if not isinstance(value, list) or not value:
        raise RowError(f"column {name!r} must be a non-empty list")
    return value


def _text(row: Mapping[str, Any], name: str) -> str:
    if name not in row or row[name] is None:
        raise RowError(f"column {name!r} is missing")
    return str(row[name])


def _optional_text(row: Mapping[str, Any], name: str) -> str:
    value = row.get(name)
    return "" if value is None else str(value)
