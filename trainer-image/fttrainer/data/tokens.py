"""Token-level checks, run once the tokenizer is known and before any training step.

Two silent failures of fine-tuning stacks are made loud here:
- samples longer than maxSeqLength are counted and handled by `dataset.overlong`
  (truncate and report, drop and report, or fail listing every one);
- a sample whose trainable (assistant) tokens are all masked, e.g. because truncation cut
  the whole answer or the chat template cannot mark assistant turns, would train on
  nothing: TRL drops such rows quietly; we fail naming them.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

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
    check_tool_rendering(data, tokenizer, template_source(spec, tokenizer))
    lengths: list[int] = []
    untrainable: list[Problem] = []
    for part, located in data.parts.items():
        kept: list[Located] = []
        encoded: list[Encoded] = []
        for sample, origin in located:
            ids, labels = encode(sample, tokenizer, encoding)
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


def check_tool_rendering(data: PreparedData, tokenizer: Any, source: str) -> None:
    """Tool definitions and tool calls must reach the rendered text: a template that ignores
    them would train the model on answers without the calls (the silent loss this check
    exists for). Checked on the first sample with tools and the first with tool calls."""
    samples = [sample for located in data.parts.values() for sample, _ in located]
    with_tools = next((s for s in samples if s.get("tools")), None)
    with_calls = next((s for s in samples if _calls(s)), None)
    for sample, what in ((with_tools, "tools"), (with_calls, "tool calls")):
        if sample is None:
            continue
        turns: Any = sample.get("messages", sample.get("prompt", []))
        messages: list[dict[str, Any]] = [*turns, *sample.get("chosen", [])]
        text = tokenizer.apply_chat_template(messages, tools=sample.get("tools"), tokenize=False)
        names = (
            [t.get("function", t)["name"] for t in sample["tools"]]
            if what == "tools"
            else [c["function"]["name"] for m in messages for c in m.get("tool_calls", [])]
        )
        missing = [name for name in names if name not in text]
        if missing:
            raise ValueError(
                f"{source} does not render {what} (no trace of {', '.join(missing)} in the "
                "rendered conversation): the model would train without them. Use a "
                "tokenizer whose chat template supports tools, or set dataset.chatTemplate "
                "(the built-in template of fttrainer/templates.py renders them)"
            )


def _calls(sample: dict[str, Any]) -> bool:
    turns = [*sample.get("messages", []), *sample.get("chosen", []), *sample.get("rejected", [])]
    return any(isinstance(m, dict) and m.get("tool_calls") for m in turns)


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
        ids, labels = _encode_conversation(
            sample["messages"], tokenizer, encoding, tools=sample.get("tools")
        )
        answer_last = sample["messages"][-1].get("role") == "assistant"
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
        messages = list(sample.get("prompt", [])) + list(sample.get("chosen", []))
        if messages and isinstance(messages[0], dict):
            encoded = tokenizer.apply_chat_template(
                messages, tools=sample.get("tools"), tokenize=True, return_dict=True
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
