"""Data checks: what is wrong with the samples, counted and located. Pure functions.

The report always counts; `dataset.cleaning` decides what is dropped (duplicates, empty
responses, rows with PII) and whether PII fails the run.
"""

from __future__ import annotations

import hashlib
import json
import re
from collections import Counter
from dataclasses import dataclass, field
from typing import Any

# Bounded parts (RFC 5321's 64-character local part) and a match only at the start of a
# run of address characters: linear time, where the unbounded pattern was quadratic on a
# long token without an @ (a 200 kB base64 blob took minutes).
EMAIL = re.compile(
    r"(?<![A-Za-z0-9._%+-])[A-Za-z0-9._%+-]{1,64}@[A-Za-z0-9-]{1,63}(?:\.[A-Za-z0-9-]{1,63})*"
    r"\.[A-Za-z]{2,24}(?![A-Za-z])"
)
PHONE = re.compile(
    r"(?<![\w.])(?:\+\d{1,3}[\s.-]?)?(?:\(\d{2,4}\)[\s.-]?|\d{2,4}[\s.-])\d{3,4}[\s.-]\d{3,4}(?![\w.])"
)
CARD = re.compile(r"(?<!\d)(?:\d[ -]?){13,19}(?!\d)")
CONTROL = re.compile(r"[\x00-\x08\x0b\x0c\x0e-\x1f]")


@dataclass
class Findings:
    """Per-check lists of the origins (file:line) where something was found."""

    duplicates: list[str] = field(default_factory=list)
    empty: list[str] = field(default_factory=list)
    encoding: list[str] = field(default_factory=list)
    pii: dict[str, list[str]] = field(default_factory=dict)  # kind -> origins
    labels: Counter[str] = field(default_factory=Counter)


def sample_text(sample: dict[str, Any]) -> str:
    """All the text of a sample, for scanning."""
    parts: list[str] = []
    for key in ("text", "messages", "prompt", "chosen", "rejected"):
        value = sample.get(key)
        if isinstance(value, str):
            parts.append(value)
        elif isinstance(value, list):
            parts.extend(_turn_text(m) for m in value if isinstance(m, dict))
    if isinstance(sample.get("completion"), str):
        parts.append(sample["completion"])
    return "\n".join(parts)


def _turn_text(turn: dict[str, Any]) -> str:
    """A turn's text and its tool calls (what the model says either way)."""
    calls = turn.get("tool_calls") or []
    return " ".join([str(turn.get("content") or ""), *(json.dumps(c, default=str) for c in calls)])


def response_text(sample: dict[str, Any]) -> str | None:
    """What the model learns to produce; None for prompt-only samples."""
    if "text" in sample:
        return str(sample["text"])
    if isinstance(sample.get("completion"), str):
        return str(sample["completion"])
    if "messages" in sample:
        # A tool-call-only answer is not empty: its calls are what the model learns.
        replies = [_turn_text(m).strip() for m in sample["messages"] if m["role"] == "assistant"]
        return replies[-1] if replies else ""
    if "chosen" in sample:
        return " ".join(_turn_text(m) for m in sample["chosen"])
    return None


def pii_kinds(text: str) -> list[str]:
    kinds = []
    if "@" in text and EMAIL.search(text):
        kinds.append("email")
    if PHONE.search(CARD.sub(" ", text)):  # a card number is not also a phone number
        kinds.append("phone")
    if any(_luhn(re.sub(r"\D", "", m.group())) for m in CARD.finditer(text)):
        kinds.append("card")
    return kinds


class Inspector:
    """The checks, one sample at a time: what the streamed preparation (data/prepare.py)
    runs on each sample as it passes. Duplicates are found by 16-byte hashes of the
    samples, never by keeping the samples: `duplicate_positions()` once all are added."""

    def __init__(self, *, scan_pii: bool = True) -> None:
        self.findings = Findings()
        self.scan_pii = scan_pii
        self._hashes = bytearray()

    def add(self, sample: dict[str, Any], origin: str) -> None:
        # default=str: parquet timestamps, dates and decimals are not JSON types.
        key = json.dumps(sample, sort_keys=True, ensure_ascii=False, default=str)
        self._hashes += hashlib.blake2b(key.encode(), digest_size=16).digest()
        findings = self.findings
        response = response_text(sample)
        if response is not None and not response.strip():
            findings.empty.append(origin)
        text = sample_text(sample)
        if "\ufffd" in text or CONTROL.search(text):
            findings.encoding.append(origin)
        for kind in pii_kinds(text) if self.scan_pii else ():
            findings.pii.setdefault(kind, []).append(origin)
        if "answer_letter" in sample:
            findings.labels[str(sample["answer_letter"])] += 1

    def duplicate_positions(self) -> Any:
        """The positions (in the order added) of the samples equal to an earlier one."""
        import numpy as np

        hashes = np.frombuffer(bytes(self._hashes), dtype=np.uint64).reshape(-1, 2)
        duplicate = np.ones(len(hashes), dtype=bool)
        if len(hashes):
            _, first = np.unique(hashes, axis=0, return_index=True)
            duplicate[first] = False
        return np.flatnonzero(duplicate)


def inspect(samples: list[tuple[dict[str, Any], str]], *, scan_pii: bool = True) -> Findings:
    """Check (sample, origin) pairs; returns where each problem was seen. scan_pii: off
    when `dataset.cleaning.pii` is off (the scan is the costliest check)."""
    inspector = Inspector(scan_pii=scan_pii)
    for sample, origin in samples:
        inspector.add(sample, origin)
    findings = inspector.findings
    findings.duplicates = [samples[int(i)][1] for i in inspector.duplicate_positions()]
    return findings


def _luhn(digits: str) -> bool:
    if not 13 <= len(digits) <= 19:
        return False
    total = 0
    for i, char in enumerate(reversed(digits)):
        value = int(char) * (2 if i % 2 else 1)
        total += value - 9 if value > 9 else value
    return total % 10 == 0
