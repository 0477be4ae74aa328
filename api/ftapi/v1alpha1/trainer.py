"""spec.trainer: the training objective (TRL's SFT, DPO or GRPO)."""

from __future__ import annotations

import re
from typing import Annotated, Literal

from pydantic import Field, field_validator

from ._base import ApiModel, Rule, compiled, is_set, only_for, required_for
from .common import ShortText, Text, Uri

TrainerType = Literal["sft", "dpo", "grpo"]
# trl 1.16 DPOConfig.loss_type values.
DpoLoss = Literal[
    "sigmoid", "sigmoid_norm", "hinge", "ipo", "exo_pair", "nca_pair", "robust", "bco_pair",
    "sppo_hard", "aot", "aot_unpaired", "apo_zero", "apo_down", "discopop", "sft",
]  # fmt: skip
GrpoLoss = Literal["dapo", "grpo", "dr_grpo", "bnpo", "cispo", "sapo"]
RewardType = Literal["regex", "exact_match", "contains", "length", "json", "python"]
Length = Annotated[int, Field(ge=1, le=1048576)]


class DpoSpec(ApiModel):
    """Direct Preference Optimization settings. Sequences (prompt + completion) are capped at
    dataset.maxSeqLength, keeping their start."""

    beta: Annotated[float, Field(gt=0.0)] = 0.1
    """Strength of the pull towards the reference model (higher = stay closer)."""
    loss_type: Annotated[list[DpoLoss], Field(min_length=1, max_length=4)] = ["sigmoid"]
    """DPO loss(es); several are summed with lossWeights (e.g. [sigmoid, sft] is RPO).
    sigmoid is the original paper's."""
    loss_weights: Annotated[list[float], Field(min_length=1, max_length=4)] | None = None
    """Weights of the losses in lossType (default: 1 each)."""
    label_smoothing: Annotated[float, Field(ge=0.0, le=0.49)] = 0.0
    """Assumed fraction of flipped preference labels (conservative/robust DPO)."""
    precompute_ref_log_probs: bool = False
    """Compute the reference model's log-probabilities once before training, so the
    reference need not stay in memory (worth it for full fine-tuning)."""
    reference_model: Uri | None = None
    """Reference model; unset: the starting point (the base model, or the adapter being
    continued, frozen)."""

    rules = (
        Rule(
            cel="!has(self.lossWeights) || size(self.lossWeights) == size(self.lossType)",
            message="lossWeights needs one weight per entry of lossType",
            check=lambda d: d.loss_weights is None or len(d.loss_weights) == len(d.loss_type),
            field=".lossWeights",
        ),
    )


class Reward(ApiModel):
    """One GRPO reward function; rewards are summed with their weights.

    regex: `pattern` matches the completion (e.g. `^<think>.*?</think>` for a format reward);
    exact_match: the extracted answer equals the row's `column`;
    contains: the completion contains `text` (or the row's `column` value);
    length: penalty growing past `maxLength` characters;
    json: the completion parses as JSON;
    python: your function `module.path:name` or `path/to/file.py:name` with TRL's reward
    signature (prompts, completions, **columns) -> list[float]."""

    type: RewardType
    """Which built-in (or python) reward."""
    name: ShortText | None = None
    """Label in logs and metrics (default: the type)."""
    weight: float = 1.0
    """Multiplier for this reward in the sum."""
    pattern: Text | None = None
    """regex: the regular expression (Python syntax, DOTALL)."""
    column: ShortText | None = None
    """exact_match, contains: the dataset column holding the ground truth."""
    text: Text | None = None
    """contains: the literal text to look for."""
    max_length: Annotated[int, Field(ge=1)] | None = None
    """length: completions up to this many characters score 0, longer ones less."""
    function: ShortText | None = None
    """python: `package.module:function` or `file.py:function`."""

    @field_validator("pattern")
    @classmethod
    def _pattern_compiles(cls, pattern: str | None) -> str | None:
        return None if pattern is None else compiled(pattern, re.DOTALL)

    rules = (
        required_for("pattern", "type", "regex", "a regex reward needs pattern"),
        required_for(
            "column",
            "type",
            "exact_match",
            "an exact_match reward needs column (the ground-truth column)",
        ),
        Rule(
            cel="self.type != 'contains' || has(self.text) != has(self.column)",
            message="a contains reward needs exactly one of text or column",
            check=lambda r: r.type != "contains" or is_set(r.text) != is_set(r.column),
            field=".text",
        ),
        required_for("maxLength", "type", "length", "a length reward needs maxLength"),
        required_for(
            "function",
            "type",
            "python",
            "a python reward needs function (module:name or file.py:name)",
        ),
        # Another type's field would be ignored: `type: contains` with `pattern` scores text.
        *(
            only_for(field, "type", types, noun="")
            for field, types in (
                ("pattern", ("regex",)),
                ("column", ("exact_match", "contains")),
                ("text", ("contains",)),
                ("maxLength", ("length",)),
                ("function", ("python",)),
            )
        ),
    )


class GrpoSpec(ApiModel):
    """Group Relative Policy Optimization settings. Prompts are capped at
    dataset.maxSeqLength."""

    rewards: Annotated[list[Reward], Field(min_length=1, max_length=16)]
    """Reward functions scoring each completion."""
    num_generations: Annotated[int, Field(ge=2, le=256)] = 4
    """Completions sampled per prompt (the group). batchSize x gradientAccumulationSteps x
    processes must be a multiple of it (and so must the evaluation batch)."""
    max_completion_length: Length = 256
    """Tokens generated per completion."""
    temperature: Annotated[float, Field(gt=0.0, le=10.0)] = 1.0
    """Sampling temperature for the generations."""
    top_p: Annotated[float, Field(gt=0.0, le=1.0)] = 1.0
    """Nucleus sampling for the generations."""
    top_k: Annotated[int, Field(ge=0)] = 0
    """Top-k sampling for the generations (0: off)."""
    beta: Annotated[float, Field(ge=0.0)] = 0.0
    """KL penalty towards the reference model (0 skips loading a reference)."""
    loss_type: GrpoLoss = "dapo"
    """Loss normalisation: dapo (TRL's default; token-level over the global batch), grpo
    (the paper's per-sequence mean), dr_grpo, bnpo, cispo, sapo."""
    scale_rewards: Literal["group", "batch", "none"] = "group"
    """Divide advantages by the reward standard deviation of the group, of the batch, or not
    at all (Dr. GRPO)."""
    epsilon: Annotated[float, Field(gt=0.0, lt=1.0)] = 0.2
    """Clipping range of the policy ratio."""
    num_iterations: Annotated[int, Field(ge=1, le=64)] = 1
    """Optimisation passes over each batch of generations."""
    mask_truncated_completions: bool = False
    """Leave completions cut off at maxCompletionLength out of the loss."""


class TrainerSpec(ApiModel):
    """The objective. sft needs supervised rows, dpo preference rows, grpo prompts and
    rewards (checked against dataset.format)."""

    type: TrainerType = "sft"
    """sft (supervised fine-tuning), dpo (preference pairs), grpo (reward-driven RL)."""
    dpo: DpoSpec | None = None
    """DPO settings (type dpo; defaults when omitted)."""
    grpo: GrpoSpec | None = None
    """GRPO settings (type grpo; required, it names the rewards)."""

    rules = (
        only_for("dpo", "type", ("dpo",)),
        Rule(
            cel="(self.type == 'grpo') == has(self.grpo)",
            message="type grpo needs grpo.rewards, and grpo is only used by type grpo",
            check=lambda t: (t.type == "grpo") == is_set(t.grpo),
            field=".grpo",
        ),
    )
