"""Row shapes → TRL's standard dataset shapes.

Every `dataset.format` is one function from a raw row (a dict from a file) to a sample in
the shape TRL trainers consume:

- language modelling:  {"text": str}
- prompt-completion:   {"prompt": str, "completion": str} (plain text, loss on the completion)
- conversational SFT:  {"messages": [{"role", "content"}, ...], "tools"?: [...],
                        "completion_start"?: int (prompt_completion turns: the loss starts here)}
- preference (DPO):    {"prompt": [msgs], "chosen": [msgs], "rejected": [msgs], "tools"?: [...]}
- prompt only (GRPO):  {"prompt": [msgs], **other columns (for rewards)}

Tool use survives conversion: an assistant turn keeps its `tool_calls` (with or without
text; `content` null becomes ""), a `tool` turn its `tool_call_id`/`name`, and a row's
`tools` travels with the sample so the chat template renders them (data/tokens.py). Both are
normalised to what Hugging Face chat templates expect: a tool call's `arguments` is an
object (a JSON string is parsed), and a tool definition is wrapped as
`{"type": "function", "function": {...}}` when a row gives the bare function schema (the
glaive / LLaMA-Factory layout).

Images (data/images.py has the layouts): a sample that has any holds one `<image>`
placeholder in its turns' text where each goes, and `images`, their references in that
order; images go in user turns only (the model reads them, it does not write them).

A row that cannot be converted raises `RowError` naming the field (`messages[2].role: ...`);
the caller attaches the file and line. Values quoted in messages are cut to QUOTE
characters. Pure functions, no tokenizer: chat templates are applied later.
"""

from __future__ import annotations

import json
import math
import re
from collections.abc import Callable, Mapping
from contextvars import ContextVar
from dataclasses import dataclass
from typing import Any

from ftapi.v1alpha1 import Columns, DatasetSpec

from . import images
from .images import PLACEHOLDER, ImageError

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
    # prompt_only: column -> what reads it (GRPO rewards' ground truth), required per row.
    required: tuple[tuple[str, str], ...] = ()

    @classmethod
    def from_spec(
        cls, spec: DatasetSpec, required: tuple[tuple[str, str], ...] = ()
    ) -> FormatContext:
        return cls(spec.columns or Columns(), spec.system_prompt, spec.system_prompt_mode, required)

    def column(self, name: str, default: str | None = None) -> str:
        return getattr(self.columns, name) or default or name


Converter = Callable[[Mapping[str, Any], FormatContext], list[Sample]]
FORMATS: dict[str, Converter] = {}
# The image references of the row being converted, in the order its content parts give
# them (_part); None outside convert_row, where no image is read.
_ROW_IMAGES: ContextVar[list[str] | None] = ContextVar("row_images", default=None)


def register(name: str) -> Callable[[Converter], Converter]:
    def add(converter: Converter) -> Converter:
        FORMATS[name] = converter
        return converter

    return add


def convert_row(fmt: str, row: Mapping[str, Any], context: FormatContext) -> list[Sample]:
    """One raw row → its samples (oasst trees give several; every other format one).

    Only RowError leaves: a value of a shape no converter foresaw still becomes a row error
    (with the file and line the caller attaches) instead of a stack trace that stops the
    whole data check."""
    if not isinstance(row, Mapping):
        raise RowError(f"expected an object, got {type(row).__name__}")
    refs: list[str] = []
    token = _ROW_IMAGES.set(refs)
    try:
        return [with_images(s, refs, row, context) for s in FORMATS[fmt](row, context)]
    except RowError:
        raise
    except (TypeError, KeyError, AttributeError, IndexError, ValueError) as error:
        raise RowError(
            f"cannot read the row as {fmt} ({type(error).__name__}: {_cut(str(error))})"
        ) from None
    finally:
        _ROW_IMAGES.reset(token)


# A sample's text fields that are turns (lists of messages) or plain strings, in order.
_TURN_FIELDS = ("messages", "prompt", "chosen", "rejected", "completion")


def with_images(
    sample: Sample, refs: list[str], row: Mapping[str, Any], ctx: FormatContext
) -> Sample:
    """The sample with its images: `<image>` placeholders in its text and `images` in the
    same order, taken from its content parts' own references (`refs`, which the marks in
    its text index) or from the images column. A row without either is left as it is (a
    literal `<image>` in a text-only row is text)."""
    name = ctx.column("images")
    if "text" in sample:  # plain_text reads its text column only
        return sample
    column = _image_column(row.get(name), name)
    if not refs and not column:
        return sample
    texts = _texts(sample)
    placeholders = sum(text.count(PLACEHOLDER) for _, _, text in texts)
    marks = [i for _, _, text in texts for i in images.inline_marks(text)]
    if refs and column:
        raise RowError(
            f"{name}: the row's content parts carry their own images too: give each image "
            "once, in the parts or in the column"
        )
    if refs and placeholders:
        raise RowError(
            f"{placeholders} {PLACEHOLDER} placeholder(s) or bare image parts beside parts that "
            f"carry their own image: with no {name!r} column, every image part needs its image"
        )
    if column and placeholders != len(column):
        raise RowError(
            f"{name}: {len(column)} image(s), but the turns hold {placeholders} {PLACEHOLDER} "
            "placeholder(s) or bare image parts (one each, in order)"
        )
    for where, role, text in texts:
        if role != "user" and (PLACEHOLDER in text or images.has_mark(text)):
            raise RowError(
                f"{where}: an image in a {role} turn: images go in user turns (the model "
                "reads them, it does not write them)"
            )
    out = {k: v for k, v in sample.items() if k != name}
    for key in _TURN_FIELDS:
        value = out.get(key)
        if isinstance(value, list):
            out[key] = [_unmarked(turn) for turn in value]
        elif isinstance(value, str):
            out[key] = images.without_marks(value)
    chosen = column or [refs[i] for i in marks]
    if chosen:
        out["images"] = chosen
    return out


def _texts(sample: Sample) -> list[tuple[str, str, str]]:
    """(where, role, text) of every text in a sample that may hold an image."""
    found: list[tuple[str, str, str]] = []
    for key in _TURN_FIELDS:
        value = sample.get(key)
        if isinstance(value, str):
            found.append((key, "assistant" if key == "completion" else "user", value))
        elif isinstance(value, list):
            for i, turn in enumerate(value):
                if isinstance(turn, Mapping) and isinstance(turn.get("content"), str):
                    found.append((f"{key}[{i}].content", str(turn["role"]), turn["content"]))
    return found


def _unmarked(turn: Any) -> Any:
    if isinstance(turn, Mapping) and isinstance(turn.get("content"), str):
        return {**turn, "content": images.without_marks(turn["content"])}
    return turn


def _image_column(value: Any, name: str) -> list[str]:
    """The images column of a row: a list of references (or one), or a JSON string of a
    list (CSV cells); empty when the row has none."""
    if value is None or value == "" or value == []:
        return []
    if isinstance(value, str) and value.lstrip().startswith("["):
        parsed = _json_or_none(value)
        if not isinstance(parsed, list):
            raise RowError(f"{name}: not a JSON list of images: {_quote(value)}")
        value = parsed
    listed = value if isinstance(value, list) else [value]
    try:
        return [images.reference(v, f"{name}[{i}]") for i, v in enumerate(listed)]
    except ImageError as error:
        raise RowError(str(error)) from None


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
    name = ctx.column("answer")
    letter = answer_letter(row.get(name), len(choices), name=name)
    options = "\n".join(f"{LETTERS[i]}) {choice}" for i, choice in enumerate(choices))
    sample = _conversation(row, ctx, f"{question}\n{options}", letter)
    sample["answer_letter"] = letter
    sample["n_choices"] = len(choices)
    return [sample]


@register("sharegpt")
def _sharegpt(row: Mapping[str, Any], ctx: FormatContext) -> list[Sample]:
    name = ctx.column("messages", "conversations")
    messages = sharegpt_turns(_turn_list(row, name), name)
    return [_with_tools({"messages": _with_system(_checked(messages, name), row, ctx)}, row, ctx)]


def sharegpt_turns(turns: list[Any], name: str) -> list[Message]:
    """ShareGPT turns (`from`/`value`) as chat messages; a `function_call` turn becomes an
    assistant turn with tool_calls (its value: one call or a list of parallel calls, as
    JSON), an `observation` a tool turn."""
    messages: list[Message] = []
    for i, turn in enumerate(turns):
        where = f"{name}[{i}]"
        if not isinstance(turn, Mapping):
            raise RowError(
                f"{where}: expected an object with 'from' and 'value', got {_quote(turn)}"
            )
        if "value" not in turn or "from" not in turn:
            hint = (
                " (role/content turns are dataset.format messages; set columns.messages to "
                f"{name!r} to read them)"
                if "role" in turn
                else ""
            )
            raise RowError(f"{where}: needs 'from' and 'value' (has {sorted(turn)}){hint}")
        _refuse_unknown_keys(turn, ("from", "value"), where)
        speaker = str(turn["from"]).lower()
        role = SHAREGPT_ROLES.get(speaker)
        if role is None:
            raise RowError(
                f"{where}.from: unknown speaker {_quote(turn['from'])} "
                f"(expected one of {', '.join(SHAREGPT_ROLES)})"
            )
        if speaker == "function_call":
            calls = _calls_from_json(turn["value"], f"{where}.value")
            messages.append({"role": "assistant", "content": "", "tool_calls": calls})
        else:
            messages.append({"role": role, "content": _content(turn["value"], f"{where}.value")})
    return _merge_calls(messages)


@register("messages")
def _messages(row: Mapping[str, Any], ctx: FormatContext) -> list[Sample]:
    name = ctx.column("messages")
    messages = chat_turns(_turn_list(row, name), name)
    return [_with_tools({"messages": _with_system(_checked(messages, name), row, ctx)}, row, ctx)]


def chat_turns(turns: list[Any], name: str) -> list[Message]:
    """OpenAI-style turns, tool calls and tool results included; every problem names the
    turn and the field."""
    messages: list[Message] = []
    for i, turn in enumerate(turns):
        where = f"{name}[{i}]"
        if not isinstance(turn, Mapping):
            raise RowError(f"{where}: expected an object with role and content, got {_quote(turn)}")
        if "role" not in turn and "from" in turn:
            raise RowError(
                f"{where}: a ShareGPT turn (from/value) where role/content turns are expected "
                f"(got {_quote(dict(turn))})"
            )
        role = turn.get("role")
        if role not in CHAT_ROLES:
            raise RowError(f"{where}.role: {_quote(role)} is not one of {', '.join(CHAT_ROLES)}")
        _refuse_unknown_keys(turn, CHAT_TURN_KEYS[role == "tool"], where)
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


CHAT_TURN_KEYS = (("role", "content", "tool_calls"), ("role", "content", "tool_call_id", "name"))
"""Keys a chat turn may carry: [other turns, tool turns]."""
_TURN_KEY_HINTS = {
    "weight": "every assistant turn is trained (with trainOnResponsesOnly, only those); "
    "drop the turns not to learn from, or end the conversation before them",
    "reasoning_content": "put the reasoning into content (e.g. <think>...</think> before the "
    "answer) so the chat template renders it",
    "thinking": "put the reasoning into content (e.g. <think>...</think> before the answer)",
    "function_call": "the legacy OpenAI form: use tool_calls "
    '[{"type": "function", "function": {"name": ..., "arguments": ...}}]',
    "name": "only tool turns carry a name (the tool's)",
}


def _refuse_unknown_keys(turn: Mapping[str, Any], known: tuple[str, ...], where: str) -> None:
    """A turn key nothing reads would be dropped, and what it meant (a turn not to train on,
    a reasoning trace, a call) lost without a word. Null values are allowed: Arrow gives every
    turn of a Parquet/hub dataset each key any turn has."""
    for key, value in turn.items():
        if key not in known and value is not None:
            hint = _TURN_KEY_HINTS.get(str(key), f"a turn has only {', '.join(known)}")
            raise RowError(f"{where}.{key}: not supported ({hint})")


@register("oasst")
def _oasst(row: Mapping[str, Any], ctx: FormatContext) -> list[Sample]:
    """An OpenAssistant message tree: every path from the root to an assistant reply
    becomes one conversation (a tree with three answers gives three samples). The tree is
    the `columns.messages` column, else a `prompt` or `messages` column, else the row."""
    name = ctx.columns.messages or next((n for n in ("prompt", "messages") if n in row), None)
    root = row if name is None else row.get(name)
    if root is None:
        raise _missing(row, name)
    paths: list[list[Message]] = []
    _walk_tree(root, [], paths, name or "the row")
    if not paths:
        raise RowError(f"{name or 'the message tree'}: the tree has no assistant reply")
    return [{"messages": _with_system(path, row, ctx)} for path in paths]


PREFERENCE_LAYOUTS = {
    "explicit": "prompt/chosen/rejected, strings or role/content turns",
    "implicit": "no prompt column: chosen/rejected are whole conversations that share the "
    "prompt turns",
    "sharegpt": "conversations (from/value turns) plus chosen/rejected turns",
}


@register("preference")
def _preference(row: Mapping[str, Any], ctx: FormatContext) -> list[Sample]:
    """Three layouts, told apart by their columns: an explicit prompt (`prompt` column);
    ShareGPT style (a `conversations` column, `chosen`/`rejected` as `{from, value}` turns);
    else TRL's implicit prompt (`chosen`/`rejected` are whole conversations sharing their
    start). Every error says which layout the row was read as, and why."""
    names = _PreferenceNames.of(ctx)
    for needed in (names.chosen, names.rejected):
        if row.get(needed) is None:
            layouts = "; ".join(PREFERENCE_LAYOUTS.values())
            raise _missing(row, needed, f"preference rows have one of: {layouts}")
    if row.get(names.prompt) is not None:
        layout, why = "explicit", f"the row has a {names.prompt!r} column"
    elif row.get(names.conversations) is not None:
        layout, why = "sharegpt", f"the row has a {names.conversations!r} column"
    else:
        layout, why = "implicit", f"the row has no {names.prompt!r} or {names.conversations!r}"
    try:
        prompt, chosen, rejected = _PREFERENCE_READERS[layout](row, names)
        for name, completion in ((names.chosen, chosen), (names.rejected, rejected)):
            if completion[0]["role"] != "assistant":
                raise RowError(
                    f"{name}: the completion must start with an assistant turn, "
                    f"not {completion[0]['role']!r}"
                )
        if chosen == rejected:
            raise RowError(
                f"{names.rejected}: the same completion as {names.chosen} (a pair without a "
                "preference teaches nothing: its DPO loss is log 2 whatever the model does)"
            )
    except RowError as error:
        raise RowError(
            f"{error} [read as the {layout} layout ({PREFERENCE_LAYOUTS[layout]}) because {why}]"
        ) from None
    sample = {"prompt": _with_system(prompt, row, ctx), "chosen": chosen, "rejected": rejected}
    return [_with_tools(sample, row, ctx)]


@dataclass(frozen=True)
class _PreferenceNames:
    prompt: str
    chosen: str
    rejected: str
    conversations: str

    @classmethod
    def of(cls, ctx: FormatContext) -> _PreferenceNames:
        return cls(
            ctx.column("prompt"),
            ctx.column("chosen"),
            ctx.column("rejected"),
            ctx.column("messages", "conversations"),
        )


Triple = tuple[list[Message], list[Message], list[Message]]


def _explicit_preference(row: Mapping[str, Any], names: _PreferenceNames) -> Triple:
    return (
        _as_messages(row[names.prompt], "user", names.prompt),
        _as_messages(row[names.chosen], "assistant", names.chosen),
        _as_messages(row[names.rejected], "assistant", names.rejected),
    )


def _sharegpt_preference(row: Mapping[str, Any], names: _PreferenceNames) -> Triple:
    def completion(name: str) -> list[Message]:
        value = row[name]
        turns = [value] if isinstance(value, Mapping) else value
        if not isinstance(turns, list) or not turns:
            raise RowError(
                f"{name}: expected a turn {{'from': 'gpt', 'value': ...}} (or a list of "
                f"turns), got {_quote(value)}"
            )
        return sharegpt_turns(turns, name)

    prompt = sharegpt_turns(_turn_list(row, names.conversations), names.conversations)
    return prompt, completion(names.chosen), completion(names.rejected)


def _implicit_preference(row: Mapping[str, Any], names: _PreferenceNames) -> Triple:
    """TRL's implicit-prompt rows: the turns both conversations share are the prompt, the
    rest the two completions. The prompt must reach the last user turn: conversations that
    differ earlier are not two answers to one prompt."""
    conversations = []
    for name in (names.chosen, names.rejected):
        value = row[name]
        if not isinstance(value, list):
            raise RowError(
                f"{name}: a whole conversation (a list of turns) is needed without a "
                f"{names.prompt!r} column, got {_quote(value)}"
            )
        reader = sharegpt_turns if value and _is_sharegpt_turn(value[0]) else chat_turns
        conversations.append(reader(_turn_list(row, name), name))
    chosen, rejected = conversations
    shared = 0
    while shared < min(len(chosen), len(rejected)) and chosen[shared] == rejected[shared]:
        shared += 1
    while shared and chosen[shared - 1]["role"] == "assistant":
        shared -= 1  # the completions start at the first differing assistant turn
    if shared == 0:
        raise RowError(
            f"{names.chosen} and {names.rejected} share no prompt turns (they differ at turn "
            f"0): give a {names.prompt!r} column, or conversations that start the same"
        )
    for name, conversation in ((names.chosen, chosen), (names.rejected, rejected)):
        later_user = next(
            (i for i in range(shared, len(conversation)) if conversation[i]["role"] == "user"),
            None,
        )
        if later_user is not None:
            raise RowError(
                f"{names.chosen} and {names.rejected} differ before the last user turn "
                f"({name}[{later_user}] is a user turn after they part at turn {shared}): "
                "only what follows a shared prompt may differ"
            )
    if len(chosen) == shared or len(rejected) == shared:
        short = names.chosen if len(chosen) == shared else names.rejected
        raise RowError(f"{short}: the conversation ends with the shared prompt (no answer)")
    return chosen[:shared], chosen[shared:], rejected[shared:]


_PREFERENCE_READERS: dict[str, Callable[[Mapping[str, Any], _PreferenceNames], Triple]] = {
    "explicit": _explicit_preference,
    "sharegpt": _sharegpt_preference,
    "implicit": _implicit_preference,
}


@register("prompt_completion")
def _prompt_completion(row: Mapping[str, Any], ctx: FormatContext) -> list[Sample]:
    """TRL's prompt-completion rows: strings are plain text (no chat template, loss on the
    completion), lists of turns a conversation whose loss starts at the completion
    (`completion_start`: assistant turns inside the prompt are context, not targets)."""
    prompt_name, completion_name = ctx.column("prompt"), ctx.column("completion")
    for needed in (prompt_name, completion_name):
        if row.get(needed) is None:
            raise _missing(row, needed)
    prompt, completion = row[prompt_name], row[completion_name]
    if isinstance(prompt, str) and isinstance(completion, str):
        system = _optional_text(row, ctx.column("system"))
        if system or ctx.system_prompt:
            raise RowError(
                "a system prompt needs conversational rows (prompt and completion as lists "
                "of turns); string rows are plain text without a chat template"
            )
        if not completion:
            raise RowError(f"{completion_name}: empty")
        return [{"prompt": prompt, "completion": completion}]
    prompt_turns = _as_messages(prompt, "user", prompt_name)
    completion_turns = _as_messages(completion, "assistant", completion_name)
    if completion_turns[0]["role"] != "assistant":
        raise RowError(
            f"{completion_name}: the completion must start with an assistant turn, "
            f"not {completion_turns[0]['role']!r}"
        )
    messages = _with_system([*prompt_turns, *completion_turns], row, ctx)
    sample: Sample = {
        "messages": messages,
        "completion_start": len(messages) - len(completion_turns),
    }
    return [_with_tools(sample, row, ctx)]


@register("prompt_only")
def _prompt_only(row: Mapping[str, Any], ctx: FormatContext) -> list[Sample]:
    name = ctx.column("prompt")
    if row.get(name) is None:
        raise _missing(row, name)
    prompt = _with_system(_as_messages(row[name], "user", name), row, ctx)
    # Every other column travels along: GRPO rewards read ground truth from them.
    extra = {k: v for k, v in row.items() if k not in (name, ctx.column("system"))}
    for column, reader in ctx.required:
        if extra.get(column) is None:
            raise RowError(
                f"column {column!r} is missing ({reader} reads it; the row has {sorted(row)})"
            )
    return [{"prompt": prompt, **extra}]


# What follows a first letter when the answer lists several: "A, B", "A and C", "B/D".
_SECOND_LETTER = re.compile(r"\s*(?:[,;/&+]|\bAND\b|\bOR\b)\s*(?:AND\s+|OR\s+)?(?P<letter>[A-Z])\b")


def answer_letter(answer: Any, n_choices: int, *, name: str = "answer") -> str:
    """An MCQ answer given as a letter ("c", "C)", "C. text") or an index (2 or "2") → "C"."""
    if isinstance(answer, bool) or answer is None:
        raise RowError(f"column {name!r} is missing" if answer is None else f"{name}: {answer}")
    if isinstance(answer, int) or (isinstance(answer, str) and answer.strip().isdigit()):
        index = int(answer)
        if not 0 <= index < n_choices:
            raise RowError(f"{name}: index {index} is outside 0..{n_choices - 1}")
        return LETTERS[index]
    text = str(answer).strip().upper()
    if text and text[0] in LETTERS[:n_choices] and (len(text) == 1 or not text[1].isalpha()):
        other = _SECOND_LETTER.match(text[1:])
        if other and other["letter"] in LETTERS[:n_choices]:
            raise RowError(
                f"{name}: {_quote(answer)} names more than one choice; an mcq row has one "
                "correct answer"
            )
        return text[0]
    raise RowError(
        f"{name}: {_quote(answer)} is not a letter A-{LETTERS[n_choices - 1]} or an index"
    )


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


def _walk_tree(node: Any, path: list[Message], paths: list[list[Message]], where: str) -> bool:
    """Add the conversations of `node`'s subtree to `paths`: each path that ends in an
    assistant reply with no longer answered path below it (a follow-up question nobody
    answered does not cost the answer before it). Deleted messages (`"deleted": true` in
    OpenAssistant's exports) and what hangs below them are left out. True when it added any."""
    if not isinstance(node, Mapping) or "text" not in node:
        raise RowError(f"{where}: a message tree node needs 'text' and 'role', got {_quote(node)}")
    role = OASST_ROLES.get(str(node.get("role", "")).lower())
    if role is None:
        raise RowError(
            f"{where}.role: unknown role {_quote(node.get('role'))} (expected prompter or "
            "assistant)"
        )
    if node.get("deleted") is True:
        return False
    here = [*path, {"role": role, "content": _content(node["text"], f"{where}.text")}]
    replies = node.get("replies") or []
    if not isinstance(replies, list):
        raise RowError(f"{where}.replies: expected a list of nodes, got {_quote(replies)}")
    added = [
        _walk_tree(reply, here, paths, f"{where}.replies[{i}]") for i, reply in enumerate(replies)
    ]
    if any(added):
        return True
    if role == "assistant":
        paths.append(here)
        return True
    return False


def _as_messages(value: Any, role: str, name: str) -> list[Message]:
    """A plain string, one turn object, or an already conversational list of turns."""
    if isinstance(value, str):
        if not value.strip():
            raise RowError(f"{name}: empty")
        return [{"role": role, "content": value}]
    if isinstance(value, Mapping) and "role" in value:
        value = [value]
    if isinstance(value, list) and value:
        return chat_turns(value, name)
    if _is_sharegpt_turn(value):
        raise RowError(f"{name}: a ShareGPT turn (from/value), got {_quote(value)}")
    raise RowError(
        f"{name}: expected a string or a list of role/content turns, got {_quote(value)}"
    )


def _is_sharegpt_turn(value: Any) -> bool:
    return isinstance(value, Mapping) and "from" in value and "role" not in value


def _with_tools(sample: Sample, row: Mapping[str, Any], ctx: FormatContext) -> Sample:
    """The row's tool definitions (a list, or a JSON string of one), for the template."""
    name = ctx.column("tools")
    value = row.get(name)
    if value is None or value == "" or value == []:
        return sample
    if isinstance(value, str):
        try:
            value = json.loads(value)
        except (ValueError, RecursionError) as error:
            raise RowError(f"{name}: not a JSON list of tools ({error})") from None
    if isinstance(value, Mapping):
        value = [value]  # one tool given on its own
    if not isinstance(value, list):
        raise RowError(f"{name}: expected a list of tool definitions, got {_quote(value)}")
    tools = [_tool_definition(tool, f"{name}[{i}]") for i, tool in enumerate(value)]
    return {**sample, "tools": tools} if tools else sample


def _tool_definition(tool: Any, where: str) -> dict[str, Any]:
    """OpenAI's {"type": "function", "function": {"name", ...}} as it is; a bare function
    schema {"name", "description", "parameters"} (glaive, LLaMA-Factory) wrapped into it,
    which is what transformers' chat templates and get_json_schema use."""
    if not isinstance(tool, Mapping):
        raise RowError(f"{where}: expected a tool definition object, got {_quote(tool)}")
    if "function" in tool:
        function = tool["function"]
        if not isinstance(function, Mapping) or not function.get("name"):
            raise RowError(f"{where}.function.name: missing (a tool needs a name)")
        return {**tool, "type": tool.get("type") or "function", "function": dict(function)}
    if not tool.get("name"):
        raise RowError(
            f"{where}.name: missing (a tool is {{'name', 'description', 'parameters'}} or "
            f"{{'type': 'function', 'function': {{...}}}}, got {_quote(dict(tool))})"
        )
    return {"type": "function", "function": dict(tool)}


def _tool_call(call: Any, where: str) -> dict[str, Any]:
    """OpenAI's {"type": "function", "function": {"name", "arguments"}} (or a bare
    {"name", "arguments"}); arguments as an object, which chat templates render as JSON."""
    if not isinstance(call, Mapping):
        raise RowError(f"{where}: expected an object, got {_quote(call)}")
    function = call.get("function", call)
    if not isinstance(function, Mapping) or not function.get("name"):
        raise RowError(f"{where}.function.name: missing")
    arguments = function.get("arguments")
    if arguments is None or (isinstance(arguments, str) and not arguments.strip()):
        arguments = {}
    elif isinstance(arguments, str):
        try:
            arguments = json.loads(arguments)
        except (ValueError, RecursionError):
            raise RowError(f"{where}.function.arguments: not JSON: {_quote(arguments)}") from None
    if not isinstance(arguments, Mapping):
        raise RowError(
            f"{where}.function.arguments: expected a JSON object, got {_quote(arguments)}"
        )
    result: dict[str, Any] = {
        "type": "function",
        "function": {"name": str(function["name"]), "arguments": dict(arguments)},
    }
    if call.get("id") is not None:
        result["id"] = str(call["id"])
    return result


def _calls_from_json(value: Any, where: str) -> list[dict[str, Any]]:
    """A ShareGPT function_call value: a JSON string (or object) {"name", "arguments"}, or
    a list of them for parallel calls."""
    if isinstance(value, str):
        try:
            value = json.loads(value)
        except (ValueError, RecursionError):
            raise RowError(
                f'{where}: a function_call must be JSON {{"name": ..., "arguments": {{...}}}}, '
                f"got {_quote(value)}"
            ) from None
    if isinstance(value, list):
        if not value:
            raise RowError(f"{where}: an empty list of function calls")
        return [_tool_call(call, f"{where}[{i}]") for i, call in enumerate(value)]
    return [_tool_call(value, where)]


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
        return _scalar_text(value, where)
    if isinstance(value, list) and all(isinstance(p, Mapping) for p in value):
        return "".join(_part(p, f"{where}[{j}]") for j, p in enumerate(value))  # content parts
    raise RowError(f"{where}: expected text, got {_quote(value)}")


def _part(part: Mapping[str, Any], where: str) -> str:
    """A content part as text: its text, or an image's place in it."""
    kind = part.get("type")
    if kind == "text":
        return str(part.get("text", ""))
    if kind not in ("image", "image_url"):
        raise RowError(f"{where}.type: {_quote(kind)} is not a text, image or image_url part")
    refs = _ROW_IMAGES.get()
    if refs is None:
        raise RowError(f"{where}: an image where only text is read")
    try:
        ref = images.part_reference(part, where)
    except ImageError as error:
        raise RowError(str(error)) from None
    if ref is None:
        return PLACEHOLDER  # TRL's layout: its image is the next one in the images column
    if ref not in refs:  # the same image read twice (a shared prompt) marks the same
        refs.append(ref)
    return images.inline(refs.index(ref))


def _seq(value: Any, where: str) -> list[Any]:
    if not isinstance(value, list):
        raise RowError(f"{where}: expected a list, got {_quote(value)}")
    return value


def _quote(value: Any) -> str:
    """A value as an error message shows it: its repr, cut to QUOTE characters."""
    return _cut(repr(value))


def _cut(text: str) -> str:
    return text if len(text) <= QUOTE else text[: QUOTE - 3] + "..."


def _choices(row: Mapping[str, Any], name: str) -> list[str]:
    value = row.get(name)
    if isinstance(value, str) and value.lstrip().startswith(("[", "{")):
        parsed = _json_or_none(value)  # a CSV cell holding the options as JSON
        if parsed is None:
            raise RowError(f"{name}: not a JSON list of options: {_quote(value)}")
        value = parsed
    if isinstance(value, Mapping):  # {"A": "...", "B": "..."}
        value = [value[k] for k in sorted(value, key=str)]
    if value is None:
        raise _missing(row, name)
    if not isinstance(value, list) or len(value) < 2:
        raise RowError(f"{name}: must list at least two options, got {_quote(value)}")
    if len(value) > len(LETTERS):
        raise RowError(f"{name}: more than {len(LETTERS)} options ({len(value)})")
    return [_content(v, f"{name}[{i}]") for i, v in enumerate(value)]


def _turn_list(row: Mapping[str, Any], name: str) -> list[Any]:
    """A column of turns: a list, or a JSON string of one (CSV cells, some exports)."""
    value = row.get(name)
    if value is None:
        raise _missing(row, name)
    if isinstance(value, str) and value.lstrip().startswith("["):
        parsed = _json_or_none(value)
        if parsed is None:
            raise RowError(f"{name}: not a JSON list of turns: {_quote(value)}")
        value = parsed
    if not isinstance(value, list) or not value:
        raise RowError(f"{name}: expected a non-empty list of turns, got {_quote(value)}")
    return value


def _json_or_none(text: str) -> Any:
    try:
        return json.loads(text)
    except (ValueError, RecursionError):
        return None


def _missing(row: Mapping[str, Any], name: str | None, hint: str = "") -> RowError:
    """A required column the row lacks: absent, or present but null (a gap in a Parquet or
    JSON export), which "missing" alone would leave the user puzzled by."""
    if name in row:
        return RowError(f"column {name!r} is empty (null)" + (f"; {hint}" if hint else ""))
    listed = f"the row has {sorted(row)}" + (f"; {hint}" if hint else "")
    return RowError(f"column {name!r} is missing ({listed})")


def _text(row: Mapping[str, Any], name: str) -> str:
    if row.get(name) is None:
        raise _missing(row, name)
    return _scalar_text(row[name], name)


def _optional_text(row: Mapping[str, Any], name: str) -> str:
    value = row.get(name)
    return "" if value is None else _scalar_text(value, name)


def _scalar_text(value: Any, name: str) -> str:
    """Text, or a number/boolean written as text (as JSON spells it: true, not Python's
    True); a list or object is an error, not its Python repr trained on, and so is NaN or
    Infinity, which is how a missing value leaves pandas or json.dumps."""
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, float) and not math.isfinite(value):
        raise RowError(f"{name}: {value} is not text (a missing value?)")
    if isinstance(value, str | int | float):
        return str(value)
    raise RowError(f"{name}: expected text, got {_quote(value)}")


# -- what a converted sample holds (read by the checks and the token checks) ------------


def sample_tools(sample: dict[str, Any]) -> list[dict[str, Any]] | None:
    """The tool definitions a sample is rendered with: SFT conversations and preference
    pairs carry them (data/formats.py); a prompt-only row's `tools` column is a reward
    column (TRL's GRPO takes its tools as Python functions, not per row)."""
    tools = sample.get("tools")
    rendered = "messages" in sample or "chosen" in sample
    return tools if rendered and isinstance(tools, list) and tools else None


def sample_turns(sample: dict[str, Any]) -> list[dict[str, Any]]:
    """The conversation a sample renders to (a preference pair: prompt + chosen)."""
    if "messages" in sample:
        return list(sample["messages"])
    prompt = sample.get("prompt")
    if not isinstance(prompt, list):
        return []
    return [*prompt, *sample.get("chosen", [])]


def tool_call_names(sample: dict[str, Any]) -> list[str]:
    """The names of the tools a sample's rendered conversation calls."""
    return [
        call["function"]["name"]
        for turn in sample_turns(sample)
        if isinstance(turn, dict)
        for call in turn.get("tool_calls") or []
    ]


def trained_call_names(sample: dict[str, Any]) -> list[str]:
    """The tool calls of an SFT sample's answers (not of the prompt part of a
    prompt_completion conversation, which is context)."""
    if "messages" not in sample:
        return []
    answers = sample["messages"][sample.get("completion_start") or 0 :]
    return tool_call_names({"messages": answers})
