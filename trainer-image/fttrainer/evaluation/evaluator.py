"""Everything a run measures besides the training loss, in the order a run needs it.

    evaluator = Evaluator(spec, tokenizer, data, output_dir)
    evaluator.before_training(model)        # base answers to the prompts, base task scores
    hooks = evaluator.log_hooks()            # perplexity, MCQ scores at every evaluation
    before = evaluator.base_evaluation(trainer)      # validation loss of the untrained weights
    final = evaluator.after_training(trainer, history, step, before)   # the "after"
    tuned = evaluator.answer_prompts(model)  # model_comparison.json, with evaluator.comparison

Kept out of the recipe so that the recipe reads setup -> train -> save, and so the rules of
what is scored when (the base before training, the same samples after) live in one place.
"""

from __future__ import annotations

import os
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from ftapi.v1alpha1 import Columns, FineTuneJobSpec
from fttrainer.data.formats import FormatContext, convert_row
from fttrainer.data.images import ImageKeeper
from fttrainer.data.prepare import PreparedData
from fttrainer.data.sources import DataSourceError, read_source

from .comparison import Prompt, answer_prompts, read_prompts
from .harness import check_tasks, fetch_task_dir, run_harness
from .metrics import LogHook, best_scores, bleu, perplexity_hook, rouge_l
from .scoring import (
    exact_match,
    generate_answers,
    mcq_accuracy,
    mcq_scores,
    prompt_messages,
    qa_exact_match,
    reference_answer,
)

# What the untrained weights' validation pass reports next to the trained ones ("before").
BASE_METRICS = (
    "eval_loss",
    "eval_mean_token_accuracy",
    "eval_perplexity",
    "eval_accuracy",
    "eval_macro_f1",
    "eval_macro_precision",
    "eval_macro_recall",
)


class Evaluator:
    def __init__(
        self,
        spec: FineTuneJobSpec,
        tokenizer: Any,
        data: PreparedData,
        output_dir: Path,
        processor: Any = None,
    ) -> None:
        """`processor`: a vision-language model's (prompts with images need one)."""
        self.spec = spec
        self.tokenizer = tokenizer
        self.data = data
        self.output_dir = output_dir
        self.processor = processor
        self.prompts: list[Prompt] = []
        self.base_answers: list[str] = []
        self.benchmarks: dict[str, tuple[str, list[Any]]] = {}
        self.harness_tasks: Path | None = None
        self.base_scores: dict[str, float] = {}
        # split -> base / fine_tuned -> MCQ confusion, generated answers
        self.details: dict[str, dict[str, Any]] = {}
        self._s3_client: Any = None

    def load_inputs(self) -> None:
        """Read the evaluation prompts, benchmarks and harness tasks (local or s3://)
        before the model is loaded: a missing or malformed file fails in seconds, not
        after minutes of loading weights."""
        try:
            self.prompts = self._evaluation_prompts()
            self.benchmarks = self._load_benchmarks()
            self.harness_tasks = self._fetch_harness_tasks()
        except (DataSourceError, FileNotFoundError) as exc:
            # A missing file or an unreadable one is the manifest's fault: invalid input
            # (ValueError), not a failure a restart could fix.
            raise ValueError(str(exc)) from None
        harness = self.spec.evaluation.harness
        if harness is not None:
            check_tasks(harness, task_dir=self.harness_tasks)

    def _client_for(self, uri: str) -> Any:
        """The output's S3 client (its endpoint and credentials) for s3:// inputs."""
        if not uri.startswith("s3://"):
            return None
        if self._s3_client is None:
            from fttrainer.storage import s3_client

            self._s3_client = s3_client(self.spec.output.s3)
        return self._s3_client

    # -- before training ------------------------------------------------------------------

    def before_training(self, model: Any) -> None:
        """The base side of every comparison, while the weights are still the base's
        (load_inputs() has read what it compares on)."""
        if self.prompts:
            self.base_answers = self.answer_prompts(model)
        if self.spec.evaluation.compare_base:
            self.base_scores = self.task_scores(model, side="base")

    def base_evaluation(self, trainer: Any) -> dict[str, float]:
        """Validation loss and token accuracy (and MCQ scores) of the untrained weights
        (SFT): the "before" that `finetune run` prints next to the "after"."""
        evaluation = self.spec.evaluation
        if not (
            evaluation.compare_base
            and evaluation.strategy != "no"
            and self.data.validation
            and self.spec.trainer.type == "sft"
            and self.spec.distributed.strategy not in ("deepspeed", "fsdp")
        ):
            return {}
        metrics = trainer.evaluate()
        return {k: float(v) for k, v in metrics.items() if k in BASE_METRICS}

    # -- during training ------------------------------------------------------------------

    def log_hooks(self) -> list[LogHook]:
        """What completes each logged evaluation (Trainer.log, every rank)."""
        hooks: list[LogHook] = []
        sft = self.spec.trainer.type == "sft"
        if "perplexity" in self.spec.evaluation.metrics and sft:
            hooks.append(perplexity_hook)
        if self._mcq_during_training:
            hooks.append(self._mcq_scores_hook)
        return hooks

    @property
    def _mcq_during_training(self) -> bool:
        """MCQ data scores accuracy, macro F1, precision and recall at every evaluation (the
        CLI tools' users read them per epoch), whatever evaluation.metrics asks."""
        return (
            self.spec.dataset.format == "mcq"
            and self.spec.trainer.type == "sft"
            and self.spec.evaluation.strategy != "no"
            and bool(self.data.validation)
        )

    def _mcq_scores_hook(self, trainer: Any, logs: dict[str, Any]) -> None:
        if "eval_loss" not in logs or "eval_accuracy" in logs:
            return
        logs.update(mcq_scores(trainer.model, self.tokenizer, self.data.validation).metrics("eval"))

    # -- after training -------------------------------------------------------------------

    def after_training(
        self,
        trainer: Any,
        history: list[dict[str, Any]],
        step: int,
        before: dict[str, float],
        *,
        encoded_test: Any = None,
    ) -> dict[str, Any]:
        """The final weights' metrics, the best of each evaluation metric during training,
        the task scores, the base's scores as `<name>/base`, and the test split's."""
        final: dict[str, Any] = {}
        if self.data.validation and self.spec.evaluation.strategy != "no":
            final.update(self._final_evaluation(trainer, history, step))
            # The best of each evaluation metric during training (not the base's "before").
            during = [h for h in history if "eval_loss" in h and h.get("step", 0) > 0]
            final.update(best_scores(during))
        final.update(self.task_scores(trainer.model, side="fine_tuned"))
        final.update({f"{name}/base": score for name, score in self.base_scores.items()})
        final.update({f"{name}/base": value for name, value in before.items()})
        if self.data.test and self.spec.trainer.type == "sft":
            from datasets import Dataset

            test = encoded_test
            if test is None:
                test = Dataset.from_list(list(self.data.test))
            final.update(trainer.evaluate(eval_dataset=test, metric_key_prefix="test"))
        return final

    def _final_evaluation(
        self, trainer: Any, history: list[dict[str, Any]], step: int
    ) -> dict[str, Any]:
        """Validation metrics of the final weights: the trainer's own evaluation when it ran
        at the last step (strategy epoch usually does), else one more pass."""
        last = next((h for h in reversed(history) if "eval_loss" in h), None)
        if last is not None and last.get("step") == step:
            return {k: v for k, v in last.items() if k.startswith("eval_") or k == "epoch"}
        return dict(trainer.evaluate())

    def task_scores(self, model: Any, *, side: str) -> dict[str, float]:
        """Scores of `model` beyond the loss: the evaluation.metrics asked for on the
        validation (eval_*) and test (test_*) samples, the benchmarks and the harness tasks.
        `side` (base or fine_tuned) files the details under evaluation_details.json."""
        scores: dict[str, float] = {}
        for prefix, samples in self._scored_splits():
            split_scores, details = self._sample_scores(model, prefix, samples)
            scores.update(split_scores)
            if details:
                self.details.setdefault(prefix, {})[side] = details
        for name, (fmt, samples) in self.benchmarks.items():
            scores[f"benchmark/{name}"] = self._score(model, fmt, samples)
        harness = self.spec.evaluation.harness
        if harness is not None:
            batch_size = self.spec.evaluation.batch_size or self.spec.training.batch_size
            scores.update(
                run_harness(
                    model,
                    self.tokenizer,
                    harness,
                    task_dir=self.harness_tasks,
                    batch_size=batch_size,
                    seed=self.spec.training.seed,
                )
            )
        return scores

    def _scored_splits(self) -> list[tuple[str, Sequence[Any]]]:
        """(metric prefix, samples): validation when evaluating, test when there is one."""
        splits: list[tuple[str, Sequence[Any]]] = []
        if self.data.validation and self.spec.evaluation.strategy != "no":
            splits.append(("eval", self.data.validation))
        if self.data.test and self.spec.trainer.type == "sft":
            splits.append(("test", self.data.test))
        return splits

    def _sample_scores(
        self, model: Any, prefix: str, samples: Sequence[Any]
    ) -> tuple[dict[str, float], dict[str, Any]]:
        """The task metrics of one split, and what they were computed from."""
        evaluation, fmt = self.spec.evaluation, self.spec.dataset.format
        metrics = set(evaluation.metrics)
        scores: dict[str, float] = {}
        details: dict[str, Any] = {}
        if "accuracy" in metrics and fmt == "mcq":
            mcq = mcq_scores(model, self.tokenizer, samples)
            scores.update(mcq.metrics(prefix))
            details["mcq"] = mcq.details()
        wanted = {"bleu", "rouge_l"} | ({"exact_match"} if fmt in ("qa", "mcq") else set())
        generated = metrics & wanted
        if generated:
            # Generation is the slow part: at most generationLimit samples, the same ones
            # for the base and the tuned model.
            subset = samples[: evaluation.generation_limit]
            answers = generate_answers(
                model, self.tokenizer, subset, max_new_tokens=evaluation.max_new_tokens
            )
            references = [reference_answer(sample) for sample in subset]
            if "exact_match" in generated:
                scores[f"{prefix}_exact_match"] = exact_match(answers, references)
            if "bleu" in generated:
                scores[f"{prefix}_bleu"] = bleu(answers, references)
            if "rouge_l" in generated:
                scores[f"{prefix}_rouge_l"] = rouge_l(answers, references)
            details["answers"] = [
                {"prompt": prompt_messages(sample)[-1]["content"], "reference": ref, "answer": a}
                for sample, ref, a in zip(subset, references, answers, strict=True)
            ]
        return scores, details

    def _score(self, model: Any, fmt: str, samples: Sequence[Any]) -> float:
        if fmt == "mcq":
            return mcq_accuracy(model, self.tokenizer, samples)
        max_new_tokens = self.spec.evaluation.max_new_tokens
        return qa_exact_match(model, self.tokenizer, samples, max_new_tokens=max_new_tokens)

    # -- prompts, benchmarks, harness -----------------------------------------------------

    def answer_prompts(self, model: Any) -> list[str]:
        """Greedy answers to the evaluation prompts (none: an empty list)."""
        if not self.prompts:
            return []
        return answer_prompts(
            model,
            self.tokenizer,
            self.prompts,
            max_new_tokens=self.spec.evaluation.max_new_tokens,
            processor=self.processor,
            max_pixels=self.spec.vision.max_image_pixels,
        )

    def comparison(self, tuned: list[str]) -> list[dict[str, Any]]:
        """model_comparison.json: each prompt (and its images) with the base's and the
        tuned model's answer."""
        rows: list[dict[str, Any]] = []
        for prompt, base, fine_tuned in zip(self.prompts, self.base_answers, tuned, strict=True):
            images = {"images": list(prompt.images)} if prompt.images else {}
            rows.append({"prompt": prompt.text, **images, "base": base, "fine_tuned": fine_tuned})
        return rows

    def _evaluation_prompts(self) -> list[Prompt]:
        evaluation = self.spec.evaluation
        prompts = [Prompt(text) for text in evaluation.prompts]
        uri = evaluation.prompts_uri
        if uri:
            prompts += read_prompts(uri, self._client_for(uri), self._image_keeper)
        pictured = sum(1 for p in prompts if p.images)
        if pictured and self.processor is None:
            raise ValueError(
                f"evaluation.promptsUri: {pictured} prompt(s) carry images, and the model "
                f"{self.spec.model.name!r} reads text only (its config has no vision_config)"
            )
        return prompts

    def _scratch(self) -> Path:
        """This rank's own folder (ranks on one node must not write the same files)."""
        return self.output_dir / "trainer" / f"rank-{os.environ.get('RANK', '0')}"

    def _image_keeper(self) -> ImageKeeper:
        """Where the prompts' images are checked and kept (one folder per rank), read from
        S3 with the output's client, as the prompts are."""
        scratch = self._scratch()
        return ImageKeeper(scratch / "prompt-images", lambda: self._client_for("s3://"))

    def _load_benchmarks(self) -> dict[str, tuple[str, list[Any]]]:
        """name -> (format, samples), read once for the before and after scores."""
        context = FormatContext(Columns(), self.spec.dataset.system_prompt)
        benchmarks: dict[str, tuple[str, list[Any]]] = {}
        for benchmark in self.spec.evaluation.benchmarks:
            rows = read_source(benchmark.uri, s3_client=self._client_for(benchmark.uri)).rows
            samples = [s for row in rows for s in convert_row(benchmark.format, row.data, context)]
            benchmarks[benchmark.name] = (benchmark.format, samples)
        return benchmarks

    def _fetch_harness_tasks(self) -> Path | None:
        """The harness's task directory on local disk (downloaded when it is on S3)."""
        harness = self.spec.evaluation.harness
        if harness is None or harness.include_path is None:
            return None
        return fetch_task_dir(harness.include_path, self._scratch(), s3=self.spec.output.s3)
