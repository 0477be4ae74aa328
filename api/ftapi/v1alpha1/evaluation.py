"""spec.evaluation: what is measured during and after training."""

from __future__ import annotations

from typing import Annotated, Literal

from pydantic import Field

from ._base import ApiModel, Rule, required_for
from .common import ShortText, Text, Uri

Metric = Literal["loss", "perplexity", "token_accuracy", "accuracy", "exact_match"]


class Benchmark(ApiModel):
    """A held-out scored task run on the final model (base model too, for comparison)."""

    name: ShortText
    """Label in the metrics files and status."""
    uri: Uri
    """The benchmark data (local path, s3:// or hf://)."""
    format: Literal["mcq", "qa"] = "mcq"
    """mcq: score the chosen letter (accuracy); qa: exact match of the generated answer."""


class EvaluationSpec(ApiModel):
    """Evaluation during training (on the validation set) and after it (test set,
    benchmarks, base-vs-tuned answers to prompts)."""

    strategy: Literal["no", "steps", "epoch"] = "epoch"
    """When to evaluate on the validation set during training."""
    steps: Annotated[int, Field(ge=1)] | None = None
    """Evaluate every N optimizer steps (strategy steps)."""
    batch_size: Annotated[int, Field(ge=1, le=65536)] | None = None
    """Per-device evaluation batch size (default: training.batchSize)."""
    metrics: Annotated[
        list[Metric], Field(max_length=8, json_schema_extra={"x-kubernetes-list-type": "set"})
    ] = ["loss"]
    """Metrics computed at each evaluation. accuracy/exact_match apply to mcq/qa data."""
    prompts: Annotated[list[Text], Field(max_length=256)] = []
    """Prompts answered by the base and the fine-tuned model after training
    (model_comparison.json)."""
    prompts_uri: Uri | None = None
    """A file of such prompts (.txt one per line, or .jsonl with a prompt field)."""
    max_new_tokens: Annotated[int, Field(ge=1, le=32768)] = 128
    """Tokens generated per prompt (greedy decoding)."""
    benchmarks: Annotated[list[Benchmark], Field(max_length=32)] = []
    """Scored tasks run after training."""

    rules = (
        required_for("steps", "strategy", "steps", "strategy steps needs steps"),
        Rule(
            cel="!has(self.steps) || self.strategy == 'steps'",
            message="steps is only used with strategy steps",
            check=lambda e: e.steps is None or e.strategy == "steps",
            field=".strategy",
        ),
    )
