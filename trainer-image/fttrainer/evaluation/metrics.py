"""Evaluation metrics over plain values: perplexity from a loss, classification scores of
MCQ letters, BLEU and ROUGE-L of generated answers. No model in here (see scoring.py for
how predictions are obtained), so every formula is unit-tested on hand-made lists.

Conventions follow the libraries users compare against: BLEU is sacreBLEU's corpus BLEU
(0-100, its default 13a tokenizer), ROUGE-L is Google's rouge-score F1 (0-1, Porter
stemming, which needs no NLTK data), macro averages are scikit-learn's (over every label
that occurs in the references or the predictions; 0 where a ratio is 0/0).
"""

from __future__ import annotations

import math
from collections import Counter
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from typing import Any

# Trainer.log keys whose loss is a mean token negative log-likelihood: the validation set
# during training (eval) and the test set after it (test).
LOSS_PREFIXES = ("eval", "test")


def perplexity(loss: float) -> float:
    """exp(mean token NLL); inf rather than an overflow error for a diverged run."""
    return math.exp(loss) if loss < 700 else math.inf


def add_perplexity(logs: dict[str, Any]) -> None:
    """Add `<prefix>_perplexity` next to each `<prefix>_loss` (eval_, test_) in `logs`."""
    for prefix in LOSS_PREFIXES:
        loss = logs.get(f"{prefix}_loss")
        if isinstance(loss, int | float):
            logs[f"{prefix}_perplexity"] = perplexity(float(loss))


LogHook = Callable[[Any, dict[str, Any]], None]


def perplexity_hook(trainer: Any, logs: dict[str, Any]) -> None:
    add_perplexity(logs)


# Evaluation metrics where lower is better (the rest: higher is better).
LOWER_IS_BETTER = ("loss", "perplexity")
NOT_SCORES = (
    "_runtime",
    "_samples_per_second",
    "_steps_per_second",
    "_num_tokens",
    "_model_preparation_time",
    "_entropy",
)


def best_scores(history: Sequence[Mapping[str, Any]], prefix: str = "eval_") -> dict[str, float]:
    """The best value of each evaluation metric over a run's evaluations, and its step:
    best_eval_accuracy / best_eval_accuracy_step (lowest for losses and perplexities)."""
    best: dict[str, tuple[float, Any]] = {}
    for entry in history:
        for key, value in entry.items():
            if not key.startswith(prefix) or key.endswith(NOT_SCORES):
                continue
            if isinstance(value, bool) or not isinstance(value, int | float):
                continue
            if not math.isfinite(value):
                continue
            lower = key.endswith(LOWER_IS_BETTER)
            current = best.get(key)
            if current is None or (value < current[0] if lower else value > current[0]):
                best[key] = (float(value), entry.get("step"))
    found: dict[str, float] = {}
    for key, (value, step) in sorted(best.items()):
        found[f"best_{key}"] = value
        if step is not None:
            found[f"best_{key}_step"] = step
    return found


@dataclass(frozen=True)
class ClassificationScores:
    """Accuracy and macro precision/recall/F1 of predicted labels, with the confusion."""

    labels: list[str]
    confusion: list[list[int]]  # rows: reference label, columns: predicted label
    accuracy: float
    macro_precision: float
    macro_recall: float
    macro_f1: float
    per_label: dict[str, dict[str, float]]

    def metrics(self, prefix: str) -> dict[str, float]:
        return {
            f"{prefix}_accuracy": self.accuracy,
            f"{prefix}_macro_f1": self.macro_f1,
            f"{prefix}_macro_precision": self.macro_precision,
            f"{prefix}_macro_recall": self.macro_recall,
        }

    def details(self) -> dict[str, Any]:
        return {"labels": self.labels, "confusion": self.confusion, "per_label": self.per_label}


def classification_scores(
    references: Sequence[str], predictions: Sequence[str]
) -> ClassificationScores:
    """Scores of predicted labels against the references, as scikit-learn's
    accuracy_score and precision_recall_fscore_support(average="macro", zero_division=0)."""
    if len(references) != len(predictions):
        raise ValueError(f"{len(references)} references but {len(predictions)} predictions")
    labels = sorted(set(references) | set(predictions))
    pairs = Counter(zip(references, predictions, strict=True))
    confusion = [[pairs[(gold, guess)] for guess in labels] for gold in labels]
    per_label: dict[str, dict[str, float]] = {}
    for i, label in enumerate(labels):
        hits = confusion[i][i]
        predicted = sum(row[i] for row in confusion)
        support = sum(confusion[i])
        precision, recall = _ratio(hits, predicted), _ratio(hits, support)
        per_label[label] = {
            "precision": precision,
            "recall": recall,
            "f1": _ratio(2 * precision * recall, precision + recall),
            "support": support,
        }
    count = len(labels)
    return ClassificationScores(
        labels=labels,
        confusion=confusion,
        accuracy=_ratio(sum(confusion[i][i] for i in range(count)), len(references)),
        macro_precision=_mean([s["precision"] for s in per_label.values()]),
        macro_recall=_mean([s["recall"] for s in per_label.values()]),
        macro_f1=_mean([s["f1"] for s in per_label.values()]),
        per_label=per_label,
    )


def bleu(predictions: Sequence[str], references: Sequence[str]) -> float:
    """sacreBLEU corpus BLEU (0-100) with one reference per prediction."""
    import sacrebleu

    _same_length(predictions, references)
    if not predictions:
        return 0.0
    return float(sacrebleu.corpus_bleu(list(predictions), [list(references)]).score)


def rouge_l(predictions: Sequence[str], references: Sequence[str]) -> float:
    """Mean ROUGE-L F1 (0-1). rouge-score's tokenizer keeps only [a-z0-9] runs: text in
    other scripts scores 0, so use bleu (or a harness task) for such data."""
    from rouge_score import rouge_scorer

    _same_length(predictions, references)
    scorer = rouge_scorer.RougeScorer(["rougeL"], use_stemmer=True)
    scores = [
        scorer.score(reference, prediction)["rougeL"].fmeasure
        for prediction, reference in zip(predictions, references, strict=True)
    ]
    return _mean(scores)


def _same_length(predictions: Sequence[str], references: Sequence[str]) -> None:
    if len(predictions) != len(references):
        raise ValueError(f"{len(predictions)} predictions but {len(references)} references")


def _ratio(numerator: float, denominator: float) -> float:
    return numerator / denominator if denominator else 0.0


def _mean(values: Sequence[float]) -> float:
    return sum(values) / len(values) if values else 0.0
