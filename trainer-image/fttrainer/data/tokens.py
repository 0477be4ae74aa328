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

from ftapi.v1alpha1 import FineTuneJobSpec

from .prepare import DataError, Located, PreparedData
from .sources import Problem

Encoded = dict[str, list[int]]  # input_ids and labels (-100 where the loss is off)


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
    lengths: list[int] = []
    untrainable: list[Problem] = []
    for part, located in data.parts.items():
        kept: list[Located] = []
        encoded: list[Encoded] = []
        for sample, origin in located:
            ids, labels = _encode(sample, tokenizer, responses_only=responses_only)
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


def _encode(
    sample: dict[str, Any], tokenizer: Any, *, responses_only: bool
) -> tuple[list[int], list[int] | None]:
    """(input_ids, labels) for SFT-shaped samples; labels None for the other shapes (only
    measured). Mirrors TRL's SFT tokenization: the chat template with assistant masks for
    conversations, text + eos for language modelling."""
    if "messages" in sample:
        encoded = tokenizer.apply_chat_template(
            sample["messages"],
            tokenize=True,
            return_dict=True,
            return_assistant_tokens_mask=responses_only,
        )
        ids = list(encoded["input_ids"])
        if not responses_only:
            return ids, list(ids)
        masks = encoded["assistant_masks"]
        return ids, [t if m else -100 for t, m in zip(ids, masks, strict=True)]
    if "text" in sample:
        ids = list(tokenizer(sample["text"])["input_ids"])
        if not ids or ids[-1] != tokenizer.eos_token_id:
            ids.append(tokenizer.eos_token_id)
        return ids, list(ids)
    messages = list(sample.get("prompt", [])) + list(sample.get("chosen", []))
    if messages and isinstance(messages[0], dict):
        encoded = tokenizer.apply_chat_template(messages, tokenize=True, return_dict=True)
        return list(encoded["input_ids"]), None
    return [], None
