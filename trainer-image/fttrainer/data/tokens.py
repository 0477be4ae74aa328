"""Token-level checks, run once the tokenizer is known and before any training step.

Two silent failures of fine-tuning stacks are made loud here:
- samples longer than maxSeqLength are counted and handled by `dataset.overlong`
  (truncate and report, drop and report, or fail listing every one);
- a sample whose trainable (assistant) tokens are all masked, e.g. because truncation cut
  the whole answer or the chat template cannot mark assistant turns, would train on
  nothing: TRL drops such rows quietly; we fail naming them;
- tools and tool calls a chat template does not render (many base-model templates ignore
  `tools`), or renders outside its generation markers (the model would see calls but never
  learn to make them), fail the run naming the template, and a template that cannot render
  a sample at all names the sample's file and line.
"""

from __future__ import annotations

import json
from dataclasses import dataclass, field
from typing import Any

from jinja2 import TemplateError

from ftapi.v1alpha1 import DatasetSpec, FineTuneJobSpec, ResponseMarkers

from .prepare import DataError, Located, PreparedData
from .sources import Problem

Encoded = dict[str, list[int]]  # input_ids and labels (-100 where the loss is off)
IGNORE = -100


@dataclass(frozen=True)
class Encoding:
    """How SFT samples become (input_ids, labels): the dataset's token-level settings."""

    responses_only: bool
    add_bos: bool | None = None
    add_eos: bool | None = None
    markers: ResponseMarkers | None = None

    @classmethod
    def of(cls, dataset: DatasetSpec, *, responses_only: bool) -> Encoding:
        return cls(responses_only, dataset.add_bos, dataset.add_eos, dataset.response_markers)


@dataclass
class TokenReport:
    longest: int = 0
    mean: float = 0.0
    overlong: dict[str, list[str]] = field(default_factory=dict)  # part -> origins
    action: str = "truncate"
    # For SFT: each kept sample as the trainer consumes it (truncated, labels masked), so
    # TRL need not tokenize again behind a main-process-first barrier.
    encoded: dict[str, list[Encoded]] = field(default_factory=dict)

    def render(self) -> str:
        count = sum(len(v) for v in self.overlong.values())
        line = f"  tokens: longest {self.longest}, mean {self.mean:.1f}"
        if count:
            verb = {"truncate": "truncated", "drop": "dropped", "fail": "refused"}[self.action]
            line += f"; {count} over maxSeqLength ({verb})"
        return line


def check_tokens(
    data: PreparedData, spec: FineTuneJobSpec, tokenizer: Any, *, responses_only: bool
) -> TokenReport:
    """Measure every sample; apply the overlong policy in place; fail on untrainable ones."""
    limit = spec.dataset.max_seq_length
    report = TokenReport(action=spec.dataset.overlong)
    encoding = Encoding.of(spec.dataset, responses_only=responses_only)
    _check_special_tokens(encoding, tokenizer)
    source = template_source(spec, tokenizer)
    check_tool_rendering(data, tokenizer, source)
    lengths: list[int] = []
    untrainable: list[Problem] = []
    unrenderable: list[Problem] = []
    calls_checked = not responses_only
    for part, located in data.parts.items():
        kept: list[Located] = []
        encoded: list[Encoded] = []
        for sample, origin in located:
            try:
                ids, labels = encode(sample, tokenizer, encoding)
            except (TemplateError, TypeError, KeyError) as error:  # the template's own
                unrenderable.append(Problem(origin, f"{source} cannot render it: {error}"))
                continue
            if not calls_checked and labels is not None and trained_call_names(sample):
                check_trained_calls(sample, tokenizer, labels, source)
                calls_checked = True
            length = len(ids)
            trainable = None if labels is None else sum(1 for x in labels[:limit] if x != -100)
            lengths.append(length)
            if length > limit:
                report.overlong.setdefault(part, []).append(origin)
                if spec.dataset.overlong == "drop":
                    continue
            if trainable == 0 and spec.dataset.overlong != "fail":
                why = (
                    f"no trainable tokens within maxSeqLength {limit} (the answer is cut off)"
                    if length > limit
                    else "no trainable tokens: the chat template marks no assistant turn"
                    " (give dataset.responseMarkers, or a chat template with generation markers)"
                )
                untrainable.append(Problem(origin, why))
            kept.append((sample, origin))
            if labels is not None:
                encoded.append({"input_ids": ids[:limit], "labels": labels[:limit]})
        data.parts[part] = kept
        if len(encoded) == len(kept):
            report.encoded[part] = encoded
    if unrenderable:
        raise DataError(unrenderable)
    report.longest = max(lengths, default=0)
    report.mean = sum(lengths) / len(lengths) if lengths else 0.0
    if spec.dataset.overlong == "fail" and report.overlong:
        problems = [
            Problem(origin, f"longer than maxSeqLength {limit} tokens")
            for origins in report.overlong.values()
            for origin in origins
        ]
        raise DataError(problems)
    if untrainable:
        raise DataError(untrainable)
    if not data.parts["train"]:
        raise DataError([Problem(spec.dataset.train.uri, "no training samples left")])
    return report


def template_source(spec: FineTuneJobSpec, tokenizer: Any) -> str:
    """Which chat template renders the conversations, in words for error messages."""
    from fttrainer.templates import CHAT_TEMPLATE

    if spec.dataset.chat_template:
        return "dataset.chatTemplate"
    if tokenizer.chat_template == CHAT_TEMPLATE:
        return "the built-in ChatML template (fttrainer/templates.py)"
    return f"the chat template of {spec.model.tokenizer or spec.model.name}"


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


def check_tool_rendering(data: PreparedData, tokenizer: Any, source: str) -> None:
    """Tool definitions and tool calls must reach the rendered text: a template that ignores
    them would train the model on answers without the calls (the silent loss this check
    exists for). Checked on the first sample with tools and the first with tool calls: each
    tool's name must appear in the text rendered with `tools=` more often than without
    them (a name the conversation mentions is no proof), and each call's name and argument
    names more often than in the conversation rendered with its calls left out."""
    samples = [sample for located in data.parts.values() for sample, _ in located]
    with_tools = next((s for s in samples if sample_tools(s)), None)
    with_calls = next((s for s in samples if tool_call_names(s)), None)
    if with_tools is not None:
        listed = sample_tools(with_tools) or []
        messages = sample_turns(with_tools)
        text = _render(tokenizer, messages, listed, source)
        without = _render(tokenizer, messages, None, source, baseline=True)
        names = [str(tool.get("function", tool)["name"]) for tool in listed]
        _require(names, text, without, source, "tools")
    if with_calls is not None:
        messages = sample_turns(with_calls)
        tools = sample_tools(with_calls)
        text = _render(tokenizer, messages, tools, source)
        without = _render(tokenizer, [_without_calls(m) for m in messages], tools, source,
                          baseline=True)  # fmt: skip
        wanted = [
            str(part)
            for m in messages
            for call in m.get("tool_calls") or []
            for part in (call["function"]["name"], *call["function"]["arguments"])
        ]
        _require(wanted, text, without, source, "tool calls")


def check_trained_calls(
    sample: dict[str, Any], tokenizer: Any, labels: list[int], source: str
) -> None:
    """With the loss on responses only, the assistant's tool calls must be among the trained
    tokens: a template whose generation markers stop before the calls would teach the model
    to describe tools but never to call them."""
    trained = str(tokenizer.decode([t for t in labels if t != IGNORE]))
    missing = [name for name in trained_call_names(sample) if name not in trained]
    if missing:
        raise ValueError(
            f"{source} renders tool calls outside the assistant's trained tokens (its "
            "{% generation %} markers, or dataset.responseMarkers, leave out "
            f"{', '.join(sorted(set(missing)))}): the model would never learn to call tools. "
            "Use a template whose generation markers cover the tool calls (the built-in one "
            "of fttrainer/templates.py does) in dataset.chatTemplate"
        )


def _render(
    tokenizer: Any,
    messages: list[dict[str, Any]],
    tools: Any,
    source: str,
    *,
    baseline: bool = False,
) -> str:
    """The text of a conversation; a template that refuses it is named. A baseline (the
    conversation without its tools or calls) some templates refuse just compares with ""."""
    try:
        return str(tokenizer.apply_chat_template(messages, tools=tools, tokenize=False))
    except (TemplateError, TypeError, KeyError) as error:
        if baseline:
            return ""
        raise ValueError(f"{source} cannot render a conversation with tools: {error}") from None


def _without_calls(message: dict[str, Any]) -> dict[str, Any]:
    return {k: v for k, v in message.items() if k != "tool_calls"}


def _require(wanted: list[str], text: str, without: str, source: str, what: str) -> None:
    """Each wanted string appears in `text` more often than in `without` (the rendering
    without the tools or calls), so a name the conversation itself mentions is no proof."""
    missing = [w for w in dict.fromkeys(wanted) if text.count(w) <= without.count(w)]
    if missing:
        shown = ", ".join(json.dumps(m) for m in missing[:5])
        raise ValueError(
            f"{source} does not render {what} (no trace of {shown} in the rendered "
            "conversation): the model would train without them. Use a tokenizer whose chat "
            "template supports tools, or set dataset.chatTemplate (the built-in template of "
            "fttrainer/templates.py renders them)"
        )


def _check_special_tokens(encoding: Encoding, tokenizer: Any) -> None:
    for wanted, token in ((encoding.add_bos, "bos"), (encoding.add_eos, "eos")):
        if wanted and getattr(tokenizer, f"{token}_token_id") is None:
            raise ValueError(f"dataset.add{token.title()}: the tokenizer has no {token} token")


def encode(
    sample: dict[str, Any], tokenizer: Any, encoding: Encoding
) -> tuple[list[int], list[int] | None]:
    """(input_ids, labels) for SFT-shaped samples; labels None for the other shapes (only
    measured). Mirrors TRL's SFT tokenization (the chat template with assistant masks for
    conversations, text + eos for language modelling), then applies addBos/addEos."""
    if "messages" in sample:
        messages, tools = sample["messages"], sample_tools(sample)
        ids, labels = _encode_conversation(messages, tokenizer, encoding, tools=tools)
        start = sample.get("completion_start")
        if (
            encoding.responses_only
            and start
            and any(m.get("role") == "assistant" for m in messages[:start])
        ):
            labels = _mask_prompt(labels, ids, messages[:start], tokenizer, tools)
        answer_last = messages[-1].get("role") == "assistant"
        train_eos = answer_last or not encoding.responses_only
    elif isinstance(sample.get("completion"), str):
        # TRL's standard prompt-completion rows: plain text, the loss on the completion.
        train_eos = True
        prompt = list(tokenizer(sample["prompt"])["input_ids"])
        completion = list(tokenizer(sample["completion"], add_special_tokens=False)["input_ids"])
        ids = prompt + completion
        labels = [IGNORE if encoding.responses_only else t for t in prompt] + completion
        if encoding.add_eos is None:  # the model must learn to stop after its answer
            encoding = Encoding(encoding.responses_only, encoding.add_bos, True)
    elif "text" in sample:
        train_eos = True
        ids = list(tokenizer(sample["text"])["input_ids"])
        labels = list(ids)
        if encoding.add_eos is None:  # language modelling: the model must learn to stop
            encoding = Encoding(encoding.responses_only, encoding.add_bos, True)
    else:
        messages = sample_turns(sample)
        if messages and isinstance(messages[0], dict):
            encoded = tokenizer.apply_chat_template(
                messages, tools=sample_tools(sample), tokenize=True, return_dict=True
            )
            return list(encoded["input_ids"]), None
        return [], None
    return _bos_eos(ids, labels, tokenizer, encoding, train_eos=train_eos)


def _encode_conversation(
    messages: list[dict[str, Any]], tokenizer: Any, encoding: Encoding, *, tools: Any = None
) -> tuple[list[int], list[int]]:
    if encoding.responses_only and encoding.markers is not None:
        return _mask_by_markers(messages, tokenizer, encoding.markers, tools=tools)
    encoded = tokenizer.apply_chat_template(
        messages,
        tools=tools,
        tokenize=True,
        return_dict=True,
        return_assistant_tokens_mask=encoding.responses_only,
    )
    ids = list(encoded["input_ids"])
    if not encoding.responses_only:
        return ids, list(ids)
    masks = encoded["assistant_masks"]
    return ids, [t if m else IGNORE for t, m in zip(ids, masks, strict=True)]


def _mask_prompt(
    labels: list[int],
    ids: list[int],
    prompt: list[dict[str, Any]],
    tokenizer: Any,
    tools: Any,
) -> list[int]:
    """prompt_completion turns: the assistant turns inside the prompt are context, so the
    labels are masked up to where the prompt's own rendering stops matching the sample's."""
    encoded = tokenizer.apply_chat_template(prompt, tools=tools, tokenize=True, return_dict=True)
    prefix = list(encoded["input_ids"])
    shared = 0
    while shared < min(len(prefix), len(ids)) and prefix[shared] == ids[shared]:
        shared += 1
    return [IGNORE] * shared + labels[shared:]


def _mask_by_markers(
    messages: list[dict[str, Any]], tokenizer: Any, markers: ResponseMarkers, *, tools: Any = None
) -> tuple[list[int], list[int]]:
    """Loss on the text after each response marker up to the next instruction marker: for
    chat templates without generation markers (the old completion-only collator's rule,
    applied to characters so a marker need not tokenize the same in context)."""
    text = tokenizer.apply_chat_template(messages, tools=tools, tokenize=False)
    spans = response_spans(text, markers)
    if not getattr(tokenizer, "is_fast", False):
        raise ValueError("dataset.responseMarkers needs a fast tokenizer (character offsets)")
    encoded = tokenizer(text, add_special_tokens=False, return_offsets_mapping=True)
    ids = list(encoded["input_ids"])
    labels = [
        token if any(start <= begin and end <= stop for start, stop in spans) and end > begin
        else IGNORE
        for token, (begin, end) in zip(ids, encoded["offset_mapping"], strict=True)
    ]  # fmt: skip
    return ids, labels


def response_spans(text: str, markers: ResponseMarkers) -> list[tuple[int, int]]:
    """Character ranges of the responses: after each response marker, up to the next
    instruction marker (or the end of the text)."""
    spans = []
    position = text.find(markers.response)
    while position != -1:
        start = position + len(markers.response)
        stop = text.find(markers.instruction, start)
        stop = len(text) if stop == -1 else stop
        spans.append((start, stop))
        position = text.find(markers.response, stop)
    return spans


def _bos_eos(
    ids: list[int], labels: list[int], tokenizer: Any, encoding: Encoding, *, train_eos: bool
) -> tuple[list[int], list[int]]:
    """addBos/addEos: true adds the token where it is missing, false removes it where the
    tokenizer or template put it. An added eos is trained when the sample ends with the
    answer: that is what teaches the model to stop."""
    bos, eos = tokenizer.bos_token_id, tokenizer.eos_token_id
    if encoding.add_bos and (not ids or ids[0] != bos):
        ids, labels = [bos, *ids], [IGNORE, *labels]
    elif encoding.add_bos is False and ids and ids[0] == bos:
        ids, labels = ids[1:], labels[1:]
    if encoding.add_eos and (not ids or ids[-1] != eos):
        ids, labels = [*ids, eos], [*labels, eos if train_eos else IGNORE]
    elif encoding.add_eos is False and ids and ids[-1] == eos:
        ids, labels = ids[:-1], labels[:-1]
    return ids, labels
