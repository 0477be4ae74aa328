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


@dataclass
class TokenReport:
    longest: int = 0
    mean: float = 0.0
    overlong: dict[str, list[str]] = field(default_factory=dict)  # part -> origins
    action: str = "truncate"

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
        for sample, origin in located:
            length, trainable = _measure(sample, tokenizer, limit, responses_only=responses_only)
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
        data.parts[part] = kept
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


def _measure(
    sample: dict[str, Any], tokenizer: Any, limit: int, *, responses_only: bool
) -> tuple[int, int | None]:
    """(token length, trainable tokens within the limit or None when not applicable)."""
    if "messages" in sample:
        encoded = tokenizer.apply_chat_template(
            sample["messages"],
            tokenize=True,
            return_dict=True,
            return_assistant_tokens_mask=responses_only,
        )
        ids = encoded["input_ids"]
        if not responses_only:
            return len(ids), None
        return len(ids), sum(encoded["assistant_masks"][:limit])
    if "text" in sample:
        return len(tokenizer(sample["text"])["input_ids"]) + 1, None  # + eos
    messages = list(sample.get("prompt", [])) + list(sample.get("chosen", []))
    if messages and isinstance(messages[0], dict):
        encoded = tokenizer.apply_chat_template(messages, tokenize=True, return_dict=True)
        return len(encoded["input_ids"]), None
    return 0, None
