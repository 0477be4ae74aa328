"""Evaluation on real tiny-model runs: perplexity during training, MCQ classification scores,
BLEU/ROUGE-L of generated answers, lm-evaluation-harness tasks, base vs fine-tuned."""

from __future__ import annotations

import json
import math
from pathlib import Path
from typing import Any

import pytest

from ftapi import parse_job
from fttestkit.builders import make_job
from fttrainer.recipe import Recipe


def _write(path: Path, rows: list[dict[str, Any]]) -> Path:
    path.write_text("".join(json.dumps(row) + "\n" for row in rows))
    return path


def _run(model: Path, out: Path, dataset: dict[str, Any], evaluation: dict[str, Any],
         **training: Any) -> dict[str, Any]:  # fmt: skip
    """Full fine-tuning: it learns a question-dependent answer in a few steps, LoRA on a
    random 2-layer model does not."""
    job = (
        make_job("evaluation")
        .set("model.name", str(model))
        .set("dataset", {"maxSeqLength": 64, **dataset})
        .set("method.type", "full")
        .set("training", {"maxSteps": 12, "batchSize": 8, "learningRate": 1e-3, **training})
        .set("evaluation", evaluation)
        .set("logging.steps", 2)
        .set("output.uri", str(out / "published"))
        .set("resources.gpusPerNode", 0)
    )
    recipe = Recipe(parse_job(job.obj()), out)
    recipe.setup()
    recipe.save(recipe.train())
    return dict(json.loads((out / "final_metrics.json").read_text()))


def test_perplexity_is_logged_at_each_evaluation_and_in_the_final_metrics(
    tiny_llama: Path, tmp_path: Path
) -> None:
    rows = [{"question": f"What is {i} plus {i}?", "answer": f"It is {2 * i}."} for i in range(40)]
    data = _write(tmp_path / "qa.jsonl", rows)
    dataset = {"train": {"uri": str(data)}, "format": "qa",
               "split": {"train": 0.8, "validation": 0.1, "test": 0.1}}  # fmt: skip
    evaluation = {"strategy": "steps", "steps": 3, "metrics": ["loss", "perplexity"]}
    final = _run(tiny_llama, tmp_path / "out", dataset, evaluation, maxSteps=6)
    evaluations = json.loads((tmp_path / "out" / "epoch_metrics.json").read_text())
    assert [e["step"] for e in evaluations] == [3, 6]
    for logged in evaluations:
        assert logged["eval_perplexity"] == pytest.approx(math.exp(logged["eval_loss"]))
    assert evaluations[1]["eval_perplexity"] < evaluations[0]["eval_perplexity"]  # it learns
    assert final["eval_perplexity"] == pytest.approx(math.exp(final["eval_loss"]))
    assert final["test_perplexity"] == pytest.approx(math.exp(final["test_loss"]))


def test_perplexity_only_when_asked(tiny_llama: Path, tmp_path: Path) -> None:
    rows = [{"question": f"Q{i}?", "answer": "yes"} for i in range(20)]
    data = _write(tmp_path / "qa.jsonl", rows)
    dataset = {"train": {"uri": str(data)}, "format": "qa"}
    final = _run(tiny_llama, tmp_path / "out", dataset, {"strategy": "epoch"}, maxSteps=2)
    assert "eval_loss" in final and "eval_perplexity" not in final


def test_mcq_scores_come_from_the_letters_likelihood(tiny_llama: Path, tmp_path: Path) -> None:
    # The colour named in the question decides the letter: a model that ignores the
    # question (or a parser of generated text that never sees a letter) cannot score 1.
    choices = ["red", "green", "blue", "black"]
    picks = [("red", "A"), ("blue", "C")]
    rows = [
        {
            "question": f"Q{i}: pick {picks[i % 2][0]}.",
            "choices": choices,
            "answer": picks[i % 2][1],
        }
        for i in range(48)
    ]
    data = _write(tmp_path / "mcq.jsonl", rows)
    dataset = {"train": {"uri": str(data)}, "format": "mcq",
               "split": {"train": 0.75, "validation": 0.25}}  # fmt: skip
    evaluation = {"strategy": "steps", "steps": 20, "metrics": ["loss", "accuracy"]}
    final = _run(tiny_llama, tmp_path / "out", dataset, evaluation, maxSteps=20)
    details = json.loads((tmp_path / "out" / "evaluation_details.json").read_text())["eval"]
    tuned, base = details["fine_tuned"]["mcq"], details["base"]["mcq"]
    # 12 validation questions; every one answered with its own colour's letter.
    assert tuned["labels"] == ["A", "C"] and sum(map(sum, tuned["confusion"])) == 12
    assert tuned["confusion"][0][1] == tuned["confusion"][1][0] == 0
    for name in ("accuracy", "macro_f1", "macro_precision", "macro_recall"):
        assert final[f"eval_{name}"] == 1.0
    # The base model's scores are the macro averages of its own confusion matrix.
    base_f1 = [base["per_label"][label]["f1"] for label in base["labels"]]
    assert final["eval_macro_f1/base"] == pytest.approx(sum(base_f1) / len(base_f1))
    assert final["eval_accuracy/base"] < 1.0


def test_mcq_scores_at_every_evaluation_without_opting_in(tiny_llama: Path, tmp_path: Path) -> None:
    """MCQ data reports accuracy, macro F1, precision and recall at each evaluation (in
    epoch_metrics.json and the progress report), the best of each run and the resolved
    configuration in final_metrics.json, with evaluation.metrics left at its default."""
    rows = [
        {"question": f"Q{i}: pick {'red' if i % 2 else 'blue'}.",
         "choices": ["red", "green", "blue"], "answer": "A" if i % 2 else "C"}
        for i in range(32)
    ]  # fmt: skip
    data = _write(tmp_path / "mcq.jsonl", rows)
    dataset = {"train": {"uri": str(data)}, "format": "mcq",
               "split": {"train": 0.75, "validation": 0.25}}  # fmt: skip
    out = tmp_path / "out"
    job = (
        make_job("mcq-every-eval")
        .set("model.name", str(tiny_llama))
        .set("dataset", {"maxSeqLength": 64, **dataset})
        .set("method.type", "full")
        .set("training", {"maxSteps": 6, "batchSize": 8, "learningRate": 1e-3})
        .set("evaluation", {"strategy": "steps", "steps": 2})
        .set("logging.steps", 2)
        .set("output.uri", str(out / "published"))
        .set("resources.gpusPerNode", 0)
    )
    from fttrainer.reporting.progress import ProgressReport, ProgressReporter

    reports: list[ProgressReport] = []

    class Recorder:  # the report as the operator would receive it
        def send(self, report: ProgressReport) -> None:
            reports.append(report)

    reporter = ProgressReporter(Recorder(), attempt=1, interval=0.0, background=False)
    recipe = Recipe(parse_job(job.obj()), out, progress=reporter)
    recipe.setup()
    recipe.save(recipe.train())
    scores = ("eval_accuracy", "eval_macro_f1", "eval_macro_precision", "eval_macro_recall")
    evaluations = json.loads((out / "epoch_metrics.json").read_text())
    during = [e for e in evaluations if e.get("step", 0) > 0]
    assert [e["step"] for e in during] == [2, 4, 6]
    for entry in evaluations:
        assert set(scores) <= set(entry), entry
        assert all(0.0 <= entry[name] <= 1.0 for name in scores)
    assert any(set(scores) <= set(r.metrics) for r in reports if r.stage == "training")
    final = json.loads((out / "final_metrics.json").read_text())
    assert final["best_eval_accuracy"] == max(e["eval_accuracy"] for e in during)
    assert final["best_eval_loss"] == min(e["eval_loss"] for e in during)
    assert final["best_eval_accuracy_step"] in (2, 4, 6)
    assert final["config"]["dataset"]["format"] == "mcq"
    assert final["config"]["evaluation"]["metrics"] == ["loss"]  # nothing was opted into


ANSWER = "The quick brown fox jumps over the lazy dog."  # 10 tokens of the tiny vocabulary


def test_bleu_and_rouge_l_of_generated_answers_before_and_after(
    tiny_llama: Path, tmp_path: Path
) -> None:
    rows = [
        {"instruction": f"Describe item {i}.", "input": "", "output": ANSWER} for i in range(40)
    ]
    data = _write(tmp_path / "instructions.jsonl", rows)
    dataset = {"train": {"uri": str(data)}, "format": "instruction",
               "split": {"train": 0.8, "validation": 0.1, "test": 0.1}}  # fmt: skip
    evaluation = {"strategy": "steps", "steps": 20, "metrics": ["loss", "bleu", "rouge_l"],
                  "maxNewTokens": 16, "generationLimit": 3}  # fmt: skip
    final = _run(tiny_llama, tmp_path / "out", dataset, evaluation, maxSteps=20)
    answers = json.loads((tmp_path / "out" / "evaluation_details.json").read_text())
    assert len(answers["eval"]["fine_tuned"]["answers"]) == 3  # generationLimit
    assert answers["test"]["fine_tuned"]["answers"][0]["reference"] == ANSWER
    for split in ("eval", "test"):
        assert final[f"{split}_bleu"] == pytest.approx(100.0)  # it learnt the answer
        assert final[f"{split}_rouge_l"] == pytest.approx(1.0)
        assert final[f"{split}_bleu/base"] < 5.0  # random weights say something else
        assert final[f"{split}_rouge_l/base"] < 0.5


TASK_YAML = """\
task: tiny_capital
dataset_path: json
dataset_kwargs:
  data_files:
    test: docs.jsonl
test_split: test
output_type: multiple_choice
doc_to_text: "{{question}}"
doc_to_choice: ["Paris", "fox", "dog", "model"]
doc_to_target: 0
target_delimiter: ""
metric_list:
  - metric: acc
"""


def test_harness_task_from_local_files_scores_the_model_in_memory(
    tiny_llama: Path, tmp_path: Path
) -> None:
    # Every choice is two tokens of the tiny vocabulary, so none wins by being short.
    rows = [
        {"question": f"What is the capital of country {i}?", "answer": "Paris"} for i in range(40)
    ]
    data = _write(tmp_path / "qa.jsonl", rows)
    tasks = tmp_path / "tasks"
    tasks.mkdir()
    (tasks / "tiny_capital.yaml").write_text(TASK_YAML)
    # docs.jsonl is found relative to the task directory, not the working directory.
    _write(tasks / "docs.jsonl", [{"question": f"Capital of place {i}?"} for i in range(10)])
    harness = {"tasks": ["tiny_capital"], "includePath": str(tasks), "limit": 6,
               "numFewshot": 0, "chatTemplate": True}  # fmt: skip
    final = _run(tiny_llama, tmp_path / "out", {"train": {"uri": str(data)}, "format": "qa"},
                 {"strategy": "no", "harness": harness}, maxSteps=12)  # fmt: skip
    assert final["harness/tiny_capital/acc"] == 1.0  # trained to say Paris
    assert final["harness/tiny_capital/acc/base"] < 1.0
    assert "harness/tiny_capital/acc_stderr" in final


@pytest.mark.parametrize(
    ("evaluation", "message"),
    [
        ({"harness": {"tasks": ["arc_easy", "arc_eazy"]}},
         "lm-eval knows no task 'arc_eazy' (did you mean arc_easy"),
        ({"promptsUri": "/nonexistent/prompts.txt"}, "/nonexistent/prompts.txt: no such file"),
        ({"benchmarks": [{"name": "b", "uri": "/nonexistent/b.jsonl", "format": "mcq"}]},
         "/nonexistent/b.jsonl: no such file"),
    ],
)  # fmt: skip
def test_evaluation_inputs_that_cannot_work_are_refused_before_the_model_loads(
    tiny_llama: Path, qa_data: Path, tmp_path: Path, evaluation: dict[str, Any], message: str
) -> None:
    """A typo in a harness task or a missing evaluation file is invalid input (ValueError:
    exit 65, no restart), found at setup, not after training."""
    job = (
        make_job("evaluation").set("model.name", str(tiny_llama))
        .set("dataset", {"train": {"uri": str(qa_data)}, "format": "qa"})
        .set("evaluation", {"strategy": "no", **evaluation})
        .set("output.uri", str(tmp_path / "published"))
    )  # fmt: skip
    recipe = Recipe(parse_job(job.obj()), tmp_path / "out")
    with pytest.raises(ValueError, match=message.replace("(", r"\(")):
        recipe.setup()
    assert recipe.model is None  # refused before the weights were loaded
