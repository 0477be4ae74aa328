"""Task scores beyond the loss: MCQ accuracy and QA exact match.

MCQ is scored the way MMLU-style harnesses do: after the question and its options, the
model's next-token logits for the option letters are compared and the largest wins (robust
even when the model would not produce a clean letter by generation). QA is scored by
greedy generation and the exact-match rule of the GRPO rewards (case, trailing
punctuation, numbers compared as numbers).
"""

from __future__ import annotations

from typing import Any

from .data.formats import LETTERS, Sample
from .generation import encode_prompt, generate_answer, inference
from .rewards import answers_match, final_answer


def prompt_messages(sample: Sample) -> list[dict[str, str]]:
    """The conversation up to (not including) the final assistant answer."""
    messages = list(sample["messages"])
    while messages and messages[-1]["role"] == "assistant":
        messages.pop()
    return messages


def reference_answer(sample: Sample) -> str:
    return str(sample["messages"][-1]["content"])


def mcq_accuracy(model: Any, tokenizer: Any, samples: list[Sample]) -> float:
    letter_ids = [_letter_token(tokenizer, letter) for letter in LETTERS]
    correct = 0
    with inference(model):
        for sample in samples:
            n_choices = int(sample.get("n_choices") or 4)
            inputs = encode_prompt(tokenizer, prompt_messages(sample)).to(model.device)
            scores = model(**inputs).logits[0, -1][letter_ids[:n_choices]]
            correct += LETTERS[int(scores.argmax())] == sample["answer_letter"]
    return correct / len(samples) if samples else 0.0


def qa_exact_match(model: Any, tokenizer: Any, samples: list[Sample], *,
                   max_new_tokens: int) -> float:  # fmt: skip
    hits = 0
    with inference(model):
        for sample in samples:
            answer = generate_answer(model, tokenizer, prompt_messages(sample),
                                     max_new_tokens=max_new_tokens)  # fmt: skip
            hits += answers_match(final_answer(answer), reference_answer(sample))
    return hits / len(samples) if samples else 0.0


def _letter_token(tokenizer: Any, letter: str) -> int:
    ids = tokenizer.encode(letter, add_special_tokens=False)
    return int(ids[0])
