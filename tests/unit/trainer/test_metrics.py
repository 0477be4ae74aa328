"""Evaluation formulas on hand-made values: perplexity, MCQ classification scores (checked
against scikit-learn), BLEU/ROUGE-L, and the flattening of lm-eval results."""

from __future__ import annotations

import math
import random

import pytest

from fttrainer.evaluation.harness import flatten_results
from fttrainer.evaluation.metrics import add_perplexity, bleu, classification_scores, rouge_l


def test_perplexity_is_added_next_to_eval_and_test_losses_only() -> None:
    logs = {"loss": 2.0, "eval_loss": 1.0, "test_loss": 0.5, "eval_runtime": 3.0}
    add_perplexity(logs)
    assert logs["eval_perplexity"] == pytest.approx(math.e)
    assert logs["test_perplexity"] == pytest.approx(math.exp(0.5))
    assert "perplexity" not in logs and "train_perplexity" not in logs
    diverged = {"eval_loss": 1e6}
    add_perplexity(diverged)
    assert diverged["eval_perplexity"] == math.inf


def test_classification_scores_by_hand() -> None:
    # Always answering C on data that is 3/4 C: accuracy looks fine, macro scores do not.
    scores = classification_scores(["C", "C", "C", "A"], ["C", "C", "C", "C"])
    assert scores.labels == ["A", "C"]
    assert scores.confusion == [[0, 1], [0, 3]]  # rows: reference A, C; columns: predicted
    assert scores.accuracy == 0.75
    assert scores.macro_recall == pytest.approx((0 + 1) / 2)
    assert scores.macro_precision == pytest.approx((0 + 0.75) / 2)
    assert scores.macro_f1 == pytest.approx((0 + 2 * 0.75 / 1.75) / 2)
    assert scores.per_label["A"] == {"precision": 0.0, "recall": 0.0, "f1": 0.0, "support": 1}
    assert scores.metrics("eval") == {
        "eval_accuracy": 0.75,
        "eval_macro_f1": scores.macro_f1,
        "eval_macro_precision": scores.macro_precision,
        "eval_macro_recall": scores.macro_recall,
    }


@pytest.mark.parametrize("seed", range(5))
def test_classification_scores_agree_with_scikit_learn(seed: int) -> None:
    from sklearn.metrics import accuracy_score, confusion_matrix, precision_recall_fscore_support

    rng = random.Random(seed)
    references = [rng.choice("ABCD") for _ in range(40)]
    predictions = [rng.choice("ABCDE") for _ in range(40)]  # E: a letter never the answer
    ours = classification_scores(references, predictions)
    precision, recall, f1, _ = precision_recall_fscore_support(
        references, predictions, average="macro", zero_division=0
    )
    assert ours.accuracy == pytest.approx(accuracy_score(references, predictions))
    assert (ours.macro_precision, ours.macro_recall, ours.macro_f1) == pytest.approx(
        (precision, recall, f1)
    )
    expected = confusion_matrix(references, predictions, labels=ours.labels).tolist()
    assert ours.confusion == expected


def test_bleu_and_rouge_l() -> None:
    same = ["the cat sat on the mat", "It is 4."]
    assert bleu(same, same) == pytest.approx(100.0)
    assert rouge_l(same, same) == pytest.approx(1.0)
    assert bleu(["completely different words here"], ["the cat sat on the mat"]) == 0.0
    # One word of six replaced: LCS 5 of 6 on both sides.
    assert rouge_l(["the cat is on the mat"], ["the cat sat on the mat"]) == pytest.approx(5 / 6)
    # Stemming: "cats" and "cat" match (Porter, no NLTK data needed).
    assert rouge_l(["cats"], ["cat"]) == pytest.approx(1.0)
    assert 0 < bleu(["the cat sat on a mat"], ["the cat sat on the mat"]) < 100
    assert bleu([], []) == 0.0 and rouge_l([], []) == 0.0
    with pytest.raises(ValueError, match="1 predictions but 2 references"):
        bleu(["a"], ["a", "b"])


def test_harness_results_are_flattened_to_numbers() -> None:
    results = {
        "arc": {"alias": "arc", "acc,none": 0.5, "acc_stderr,none": 0.1, "sample_len": 4},
        "gsm": {"exact_match,strict-match": 0.25, "exact_match_stderr,strict-match": "N/A"},
        "nan": {"acc,none": float("nan")},
    }
    assert flatten_results(results) == {
        "harness/arc/acc": 0.5,
        "harness/arc/acc_stderr": 0.1,
        "harness/gsm/exact_match_strict-match": 0.25,
    }


def test_generation_stops_at_the_chat_templates_end_of_turn() -> None:
    from types import SimpleNamespace

    from fttrainer.evaluation.generation import stop_token_ids
    from fttrainer.tiny import build_tokenizer

    tokenizer = build_tokenizer()  # ChatML: turns end with <|im_end|>, eos is <|eos|>
    model = SimpleNamespace(generation_config=SimpleNamespace(eos_token_id=2))
    end_of_turn = tokenizer.convert_tokens_to_ids("<|im_end|>")
    assert stop_token_ids(model, tokenizer) == [2, end_of_turn]
    tokenizer.chat_template = None
    assert stop_token_ids(model, tokenizer) == [2]
