"""spec.evaluation: what is measured during and after training."""

from __future__ import annotations

from typing import Annotated, Literal

from pydantic import Field

from ._base import ApiModel, Rule, required_for
from .common import SET_LIST, ShortText, Text, UniqueItems, Uri

Metric = Literal[
    "loss", "perplexity", "token_accuracy", "accuracy", "exact_match", "bleu", "rouge_l"
]
# Metrics scored by generating answers (greedy) rather than from one forward pass.
GENERATION_METRICS = ("exact_match", "bleu", "rouge_l")


class Benchmark(ApiModel):
    """A held-out scored task run on the final model (base model too, for comparison)."""

    name: ShortText
    """Label in the metrics files and status."""
    uri: Uri
    """The benchmark data (local path, s3:// or hf://)."""
    format: Literal["mcq", "qa"] = "mcq"
    """mcq: score the chosen letter (accuracy); qa: exact match of the generated answer."""


class HarnessSpec(ApiModel):
    """lm-evaluation-harness tasks run on the final model (and the base model when
    compareBase), in the trainer's process on the model in memory. Results land in
    final_metrics.json as harness/<task>/<metric>."""

    tasks: Annotated[list[ShortText], Field(min_length=1, max_length=64)]
    """Task (or group) names: built-in lm-eval tasks, or tasks defined in includePath.
    Built-in tasks download their data from the Hugging Face Hub; tasks whose YAML uses
    `dataset_path: json` with local `data_files` need no network."""
    include_path: Uri | None = None
    """A directory of task YAML files (local path or s3://bucket/prefix, downloaded first).
    Relative data_files paths in them resolve against this directory."""
    limit: Annotated[int, Field(ge=1)] | None = None
    """Score at most this many documents per task (unset: all)."""
    num_fewshot: Annotated[int, Field(ge=0, le=128)] | None = None
    """Few-shot examples per prompt (unset: each task's own default)."""
    chat_template: bool = False
    """Render prompts with the tokenizer's chat template (instruction-tuned models)."""


class EvaluationSpec(ApiModel):
    """Evaluation during training (on the validation set) and after it (test set,
    benchmarks, lm-evaluation-harness tasks, base-vs-tuned answers to prompts)."""

    strategy: Literal["no", "steps", "epoch"] = "epoch"
    """When to evaluate on the validation set during training."""
    steps: Annotated[int, Field(ge=1)] | None = None
    """Evaluate every N optimizer steps (strategy steps)."""
    batch_size: Annotated[int, Field(ge=1, le=65536)] | None = None
    """Per-device evaluation batch size (default: training.batchSize)."""
    metrics: Annotated[
        list[Metric], Field(max_length=8, json_schema_extra=SET_LIST), UniqueItems
    ] = ["loss"]
    """Metrics reported for the validation set (eval_*) and the test set (test_*).
    loss and perplexity (exp of the loss, SFT only) at every evaluation; after training:
    accuracy for mcq data (also macro F1, precision and recall, from the log-likelihood
    of each choice letter), exact_match for mcq/qa, and bleu (sacreBLEU corpus BLEU, 0-100)
    and rouge_l (ROUGE-L F1, 0-1) of greedy answers against the reference answers."""
    generation_limit: Annotated[int, Field(ge=1, le=1000000)] = 200
    """At most this many validation (and test) samples are answered by generation for
    exact_match, bleu and rouge_l: each costs up to maxNewTokens decoding steps."""
    compare_base: bool = True
    """Score the base model too, before training, on the same samples, benchmarks and
    harness tasks (`<metric>/base` in final_metrics.json). false halves evaluation time."""
    fail_if_worse_than_base: bool = False
    """A validation loss after training above the one before it ends the job as Failed
    (WorseThanBase), the model published for inspection. Off: the job succeeds with the
    condition Improved=False and a Warning Event naming both figures."""
    prompts: Annotated[list[Text], Field(max_length=256)] = []
    """Prompts answered by the base and the fine-tuned model after training
    (model_comparison.json)."""
    prompts_uri: Uri | None = None
    """A file of such prompts (.txt one per line, or .jsonl with a prompt field). For a
    vision-language model a row may carry `images` (paths beside the file, s3:// URIs or
    data: URLs, as dataset rows do), checked before training."""
    max_new_tokens: Annotated[int, Field(ge=1, le=32768)] = 128
    """Tokens generated per prompt (greedy decoding)."""
    benchmarks: Annotated[list[Benchmark], Field(max_length=32)] = []
    """Scored tasks run after training."""
    harness: HarnessSpec | None = None
    """lm-evaluation-harness tasks run after training."""

    rules = (
        required_for("steps", "strategy", "steps", "strategy steps needs steps"),
        Rule(
            cel="!has(self.steps) || self.strategy == 'steps'",
            message="steps is only used with strategy steps",
            check=lambda e: e.steps is None or e.strategy == "steps",
            field=".strategy",
        ),
    )
