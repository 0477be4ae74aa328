"""Row shapes → TRL's standard dataset shapes.

Every `dataset.format` is one function from a raw row (a dict from a file) to a sample in
the shape TRL trainers consume:

- language modelling:  {"text": str}
- prompt-completion:   {"prompt": str, "completion": str} (loss on the completion)
- conversational SFT:  {"messages": [{"role", "content"}, ...], "tools"?: [...]}
- preference (DPO):    {"prompt": [msgs], "chosen": [msgs], "rejected": [msgs]}
- prompt only (GRPO):  {"prompt": [msgs], **other columns (for rewards)}

Tool use survives conversion: an assistant turn keeps its `tool_calls` (with or without
text), a `tool` turn its `tool_call_id`/`name`, and a row's `tools` (a list, or a JSON
string of one) travels with the sample so the chat template renders them (data/tokens.py).

A row that cannot be converted raises `RowError` naming the field (`messages[2].role: ...`);
the caller attaches the file and line. Values quoted in messages are cut to QUOTE
characters. Pure functions, no tokenizer: chat templates are applied later.
"""

from __future__ import annotations

import json
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from typing import Any

from ftapi.v1alpha1 import Columns, DatasetSpec

Message = dict[str, Any]
Sample = dict[str, Any]
QUOTE = 80  # characters of a value an error message quotes
LETTERS = "ABCDEFGHIJKLMNOPQRSTUVWXYZ"
SHAREGPT_ROLES = {
    "human": "user",
    "user": "user",
    "gpt": "assistant",
    "assistant": "assistant",
    "chatgpt": "assistant",
    "bing": "assistant",
    "bard": "assistant",
    "model": "assistant",
    "system": "system",
    # Function calling (glaive / LLaMA-Factory layout): the model's call and its result.
    "function_call": "assistant",
    "observation": "tool",
    "tool": "tool",
    "function": "tool",
}
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
    name = ctx.column("messages", "conversations")
    messages = sharegpt_turns(_list(row, name), name)
    return [_with_tools({"messages": _with_system(_checked(messages, name), row, ctx)}, row, ctx)]


def sharegpt_turns(turns: list[Any], name: str) -> list[Message]:
    """ShareGPT turns (`from`/`value`) as chat messages; a `function_call` turn becomes an
    assistant turn with tool_calls, an `observation` a tool turn."""
    messages: list[Message] = []
    for i, turn in enumerate(turns):
        where = f"{name}[{i}]"
        if not isinstance(turn, Mapping):
            raise RowError(
                f"{where}: expected an object with 'from' and 'value', got {_quote(turn)}"
            )
        if "value" not in turn or "from" not in turn:
            raise RowError(f"{where}: needs 'from' and 'value' (has {sorted(turn)})")
        speaker = str(turn["from"]).lower()
        role = SHAREGPT_ROLES.get(speaker)
        if role is None:
            raise RowError(
                f"{where}.from: unknown speaker {_quote(turn['from'])} "
                f"(expected one of {', '.join(SHAREGPT_ROLES)})"
            )
        if speaker == "function_call":
            messages.append(
                {
                    "role": "assistant",
                    "content": "",
                    "tool_calls": [_call_from_json(turn["value"], f"{where}.value")],
                }
            )
        else:
            messages.append({"role": role, "content": _content(turn["value"], f"{where}.value")})
    return _merge_calls(messages)


@register("messages")
def _messages(row: Mapping[str, Any], ctx: FormatContext) -> list[Sample]:
    name = ctx.column("messages")
    messages = chat_turns(_list(row, name), name)
    return [_with_tools({"messages": _with_system(_checked(messages, name), row, ctx)}, row, ctx)]


def chat_turns(turns: list[Any], name: str) -> list[Message]:
    """OpenAI-style turns, tool calls and tool results included; every problem names the
    turn and the field."""
    messages: list[Message] = []
    for i, turn in enumerate(turns):
        where = f"{name}[{i}]"
        if not isinstance(turn, Mapping):
            raise RowError(f"{where}: expected an object with role and content, got {_quote(turn)}")
        role = turn.get("role")
        if role not in CHAT_ROLES:
            raise RowError(f"{where}.role: {_quote(role)} is not one of {', '.join(CHAT_ROLES)}")
        message: Message = {"role": str(role)}
        calls = turn.get("tool_calls")
        if calls:
            if role != "assistant":
                raise RowError(f"{where}.tool_calls: only assistant turns call tools")
            message["tool_calls"] = [
                _tool_call(call, f"{where}.tool_calls[{j}]")
                for j, call in enumerate(_seq(calls, f"{where}.tool_calls"))
            ]
        content = turn.get("content")
        if content is None and not calls:
            raise RowError(f"{where}.content: missing (only a turn with tool_calls may omit it)")
        message["content"] = "" if content is None else _content(content, f"{where}.content")
        if role == "tool":
            for key in ("tool_call_id", "name"):
                if turn.get(key) is not None:
                    message[key] = str(turn[key])
        messages.append(message)
    return messages


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
    """Three layouts: an explicit prompt (`prompt`/`chosen`/`rejected`, strings or turns);
    TRL's implicit prompt (`chosen`/`rejected` are whole conversations sharing their start);
    ShareGPT style (`conversations` plus `chosen`/`rejected` turns `{from, value}`)."""
    prompt_name, chosen_name = ctx.column("prompt"), ctx.column("chosen")
    rejected_name = ctx.column("rejected")
    conversation_name = ctx.column("messages", "conversations")
    for needed in (chosen_name, rejected_name):
        if row.get(needed) is None:
            raise RowError(
                f"column {needed!r} is missing ({_PREFERENCE_LAYOUTS}; the row has {sorted(row)})"
            )
    chosen, rejected = row[chosen_name], row[rejected_name]
    if prompt_name in row and row[prompt_name] is not None:
        prompt = _as_messages(row[prompt_name], "user", prompt_name)
        pair = (
            _as_messages(chosen, "assistant", chosen_name),
            _as_messages(rejected, "assistant", rejected_name),
        )
    elif conversation_name in row:
        prompt = sharegpt_turns(_list(row, conversation_name), conversation_name)
        pair = (
            sharegpt_turns(
                [chosen] if isinstance(chosen, Mapping) else _seq(chosen, chosen_name), chosen_name
            ),
            sharegpt_turns(
                [rejected] if isinstance(rejected, Mapping) else _seq(rejected, rejected_name),
                rejected_name,
            ),
        )
    elif isinstance(chosen, list) and isinstance(rejected, list):
        prompt, pair = _implicit_prompt(
            chat_turns(chosen, chosen_name),
            chat_turns(rejected, rejected_name),
            chosen_name,
            rejected_name,
        )
    else:
        raise RowError(
            f"column {prompt_name!r} is missing, and no {conversation_name!r} column or "
            f"whole conversations in {chosen_name!r}/{rejected_name!r} give a prompt "
            f"({_PREFERENCE_LAYOUTS})"
        )
    for name, completion in zip((chosen_name, rejected_name), pair, strict=True):
        if not completion or completion[0]["role"] != "assistant":
            raise RowError(f"{name}: the completion must start with an assistant turn")
    return [
        _with_tools(
            {"prompt": _with_system(prompt, row, ctx), "chosen": pair[0], "rejected": pair[1]},
            row,
            ctx,
        )
    ]


_PREFERENCE_LAYOUTS = (
    "preference rows have prompt/chosen/rejected, or chosen/rejected conversations sharing "
    "their prompt, or conversations plus chosen/rejected turns"
)


def _implicit_prompt(
    chosen: list[Message], rejected: list[Message], chosen_name: str, rejected_name: str
) -> tuple[list[Message], tuple[list[Message], list[Message]]]:
    """TRL's implicit-prompt preference rows: the turns both conversations share are the
    prompt, the rest are the two completions."""
    shared = 0
    while shared < min(len(chosen), len(rejected)) and chosen[shared] == rejected[shared]:
        shared += 1
    while shared and chosen[shared - 1]["role"] == "assistant":
        shared -= 1  # the completions start at the first differing assistant turn
    if shared == 0:
        raise RowError(
            f"{chosen_name} and {rejected_name} share no prompt turns: give a "
            "'prompt' column, or conversations that start the same"
        )
    return chosen[:shared], (chosen[shared:], rejected[shared:])


@register("prompt_completion")
def _prompt_completion(row: Mapping[str, Any], ctx: FormatContext) -> list[Sample]:
    """TRL's prompt-completion rows: strings are plain text (no chat template, loss on the
    completion), lists of turns a conversation."""
    prompt_name, completion_name = ctx.column("prompt"), ctx.column("completion")
    for needed in (prompt_name, completion_name):
        if row.get(needed) is None:
            raise RowError(f"column {needed!r} is missing (the row has {sorted(row)})")
    prompt, completion = row[prompt_name], row[completion_name]
    if isinstance(prompt, str) and isinstance(completion, str):
        system = _optional_text(row, ctx.column("system"))
        if system or ctx.system_prompt:
            raise RowError("a system prompt needs conversational rows (lists of turns)")
        return [{"prompt": prompt, "completion": completion}]
    messages = [
        *_as_messages(prompt, "user", prompt_name),
        *_as_messages(completion, "assistant", completion_name),
    ]
    return [
        _with_tools(
            {"messages": _with_system(_checked(messages, completion_name), row, ctx)}, row, ctx
        )
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


def _checked(messages: list[Message], name: str = "messages") -> list[Message]:
    if not any(m["role"] == "assistant" for m in messages):
        raise RowError(f"{name}: the conversation has no assistant turn to learn from")
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
    """A plain string, one turn object, or an already conversational list of turns."""
    if isinstance(value, str):
        if not value.strip():
            raise RowError(f"{name} is empty")
        return [{"role": role, "content": value}]
    if isinstance(value, Mapping) and "role" in value:
        value = [value]
    if isinstance(value, list) and value:
        return chat_turns(value, name)
    raise RowError(
        f"{name}: expected a string or a list of role/content turns, got {_quote(value)}"
    )


def _with_tools(sample: Sample, row: Mapping[str, Any], ctx: FormatContext) -> Sample:
    """The row's tool definitions (a list, or a JSON string of one), for the template."""
    name = ctx.column("tools")
    value = row.get(name)
    if value is None or value == "" or value == []:
        return sample
    if isinstance(value, str):
        try:
            value = json.loads(value)
        except ValueError as error:
            raise RowError(f"{name}: not a JSON list of tools ({error})") from None
    if not isinstance(value, list) or not all(isinstance(t, Mapping) for t in value):
        raise RowError(f"{name}: expected a list of tool definitions, got {_quote(value)}")
    for i, tool in enumerate(value):
        function = tool.get("function", tool)
        if not isinstance(function, Mapping) or not function.get("name"):
            raise RowError(f"{name}[{i}]: a tool needs a name (or function.name)")
    return {**sample, "tools": [dict(t) for t in value]}


def _tool_call(call: Any, where: str) -> dict[str, Any]:
    """OpenAI's {"type": "function", "function": {"name", "arguments"}} (or a bare
    {"name", "arguments"}); arguments as an object, which chat templates render as JSON."""
    if not isinstance(call, Mapping):
        raise RowError(f"{where}: expected an object, got {_quote(call)}")
    function = call.get("function", call)
    if not isinstance(function, Mapping) or not function.get("name"):
        raise RowError(f"{where}.function.name: missing")
    arguments = function.get("arguments", {})
    if isinstance(arguments, str):
        try:
            arguments = json.loads(arguments) if arguments.strip() else {}
        except ValueError:
            raise RowError(f"{where}.function.arguments: not JSON: {_quote(arguments)}") from None
    result: dict[str, Any] = {
        "type": "function",
        "function": {"name": str(function["name"]), "arguments": arguments},
    }
    if call.get("id") is not None:
        result["id"] = str(call["id"])
    return result


def _call_from_json(value: Any, where: str) -> dict[str, Any]:
    """A ShareGPT function_call value: a JSON string (or object) {"name", "arguments"}."""
    if isinstance(value, str):
        try:
            value = json.loads(value)
        except ValueError:
            raise RowError(
                f'{where}: a function_call must be JSON {{"name": ..., "arguments": {{...}}}}, '
                f"got {_quote(value)}"
            ) from None
    return _tool_call(value, where)


def _merge_calls(messages: list[Message]) -> list[Message]:
    """An assistant text turn directly followed by its function_call turn is one turn."""
    merged: list[Message] = []
    for message in messages:
        previous = merged[-1] if merged else None
        if (
            previous is not None
            and message.get("tool_calls")
            and previous["role"] == "assistant"
            and not previous.get("tool_calls")
        ):
            previous["tool_calls"] = message["tool_calls"]
        else:
            merged.append(message)
    return merged


def _content(value: Any, where: str) -> str:
    if isinstance(value, str):
        return value
    if isinstance(value, int | float) and not isinstance(value, bool):
        return str(value)
    if isinstance(value, list) and all(
        isinstance(p, Mapping) and p.get("type") == "text" for p in value
    ):
        return "".join(str(p.get("text", "")) for p in value)  # OpenAI content parts, text only
    raise RowError(f"{where}: expected text, got {_quote(value)}")


def _seq(value: Any, where: str) -> list[Any]:
    if not isinstance(value, list):
        raise RowError(f"{where}: expected a list, got {_quote(value)}")
    return value


def _quote(value: Any) -> str:
    """A value as an error message shows it: its repr, cut to QUOTE characters."""
    text = repr(value)
    return text if len(text) <= QUOTE else text[: QUOTE - 3] + "..."


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
    if value is None:
        raise RowError(f"column {name!r} is missing (the row has {sorted(row)})")
    if not isinstance(value, list) or not value:
        raise RowError(f"{name}: expected a non-empty list of turns, got {_quote(value)}")
    return value


def _text(row: Mapping[str, Any], name: str) -> str:
    if name not in row or row[name] is None:
        raise RowError(f"column {name!r} is missing")
    return str(row[name])


def _optional_text(row: Mapping[str, Any], name: str) -> str:
    value = row.get(name)
    return "" if value is None else str(value)
