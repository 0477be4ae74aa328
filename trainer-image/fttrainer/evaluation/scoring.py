"""Task scores beyond the loss: MCQ classification scores, and answers generated for exact
match, BLEU and ROUGE-L.

MCQ is scored the way MMLU-style harnesses do: after the question and its options, the
model's log-likelihood of each option letter as the answer's first token is compared and
the most likely letter is the prediction (robust even when the model would not produce a
clean letter by generation: no output is parsed). Accuracy, macro precision/recall/F1 and
the confusion of letters all come from these predictions. Generated answers are greedy;
exact match follows the GRPO rewards' rule (case, trailing punctuation, numbers compared as
numbers).
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

from fttrainer.data.formats import LETTERS, Sample
from fttrainer.rewards import answers_match, final_answer

from .generation import encode_prompt, generate_answer, inference
from .metrics import ClassificationScores, classification_scores


def prompt_messages(sample: Sample) -> list[dict[str, str]]:
    """The conversation up to (not including) the final assistant answer."""
    if _plain(sample):
        return [{"role": "user", "content": sample["prompt"]}]
    messages = list(sample["messages"])
    while messages and messages[-1]["role"] == "assistant":
        messages.pop()
    return messages


def reference_answer(sample: Sample) -> str:
    if _plain(sample):
        return str(sample["completion"])
    return str(sample["messages"][-1]["content"])


def _plain(sample: Sample) -> bool:
    """A plain-text prompt_completion sample: its prompt is text, not a conversation."""
    return isinstance(sample.get("completion"), str)


def mcq_predictions(model: Any, tokenizer: Any, samples: Sequence[Sample]) -> list[str]:
    """Per sample, the option letter the model finds most likely to start its answer."""
    import torch

    letter_ids = [_letter_token(tokenizer, letter) for letter in LETTERS]
    predictions = []
    with inference(model):
        for sample in samples:
            n_choices = int(sample.get("n_choices") or 4)
            inputs = encode_prompt(tokenizer, prompt_messages(sample)).to(model.device)
            log_probs = torch.log_softmax(model(**inputs).logits[0, -1].float(), dim=-1)
            predictions.append(LETTERS[int(log_probs[letter_ids[:n_choices]].argmax())])
    return predictions


def mcq_scores(model: Any, tokenizer: Any, samples: Sequence[Sample]) -> ClassificationScores:
    references = [str(sample["answer_letter"]) for sample in samples]
    return classification_scores(references, mcq_predictions(model, tokenizer, samples))


def mcq_accuracy(model: Any, tokenizer: Any, samples: Sequence[Sample]) -> float:
    return mcq_scores(model, tokenizer, samples).accuracy


def generate_answers(
    model: Any, tokenizer: Any, samples: Sequence[Sample], *, max_new_tokens: int
) -> list[str]:
    """Greedy answers to each sample's conversation (its final answer left out)."""
    with inference(model):
        return [
            generate_answer(
                model,
                tokenizer,
                s["prompt"] if _plain(s) else prompt_messages(s),
                max_new_tokens=max_new_tokens,
                tools=s.get("tools"),
            )
            for s in samples
        ]


def exact_match(predictions: list[str], references: list[str]) -> float:
    hits = sum(
        answers_match(final_answer(prediction), reference)
        for prediction, reference in zip(predictions, references, strict=True)
    )
    return hits / len(references) if references else 0.0


def qa_exact_match(
    model: Any, tokenizer: Any, samples: Sequence[Sample], *, max_new_tokens: int
) -> float:
    answers = generate_answers(model, tokenizer, samples, max_new_tokens=max_new_tokens)
    return exact_match(answers, [reference_answer(sample) for sample in samples])


def _letter_token(tokenizer: Any, letter: str) -> int:
    ids = tokenizer.encode(letter, add_special_tokens=False)
    return int(ids[0])
