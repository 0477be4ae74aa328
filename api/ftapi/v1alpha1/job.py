"""The FineTuneJob resource: spec sections, and the rules that span sections."""

from __future__ import annotations

import re
from typing import Any, Literal

from pydantic import ConfigDict

from ftapi.constants import MAX_NAME_LENGTH, NAME_PATTERN

from ._base import ApiModel, Rule, cel_list, is_set
from .dataset import FORMATS_WITH_RESPONSES, DatasetSpec
from .distributed import DistributedSpec
from .evaluation import EvaluationSpec
from .method import LORA_METHODS, MethodSpec
from .model import ModelSpec
from .output import OutputSpec
from .reporting import LoggingSpec
from .resources import ResourcesSpec
from .scheduling import RunPolicy, SchedulingSpec
from .status import FineTuneJobStatus
from .trainer import TrainerSpec
from .training import TrainingSpec

# dataset.format values SFT accepts: every format with a response, and plain text.
SFT_FORMATS = ("plain_text", *FORMATS_WITH_RESPONSES)


def _name_ok(name: str | None) -> bool:
    return name is None or (
        len(name) <= MAX_NAME_LENGTH and re.match(NAME_PATTERN, name) is not None
    )


class FineTuneJobSpec(ApiModel):
    """What to fine-tune, on what data, how, on which hardware, and where the result goes."""

    model: ModelSpec
    """The base model."""
    dataset: DatasetSpec
    """Training (and optional validation/test) data and its preparation."""
    method: MethodSpec = MethodSpec()
    """Which weights are trained: full, lora, qlora, dora, adapter, spectrum, prefix, prompt."""
    trainer: TrainerSpec = TrainerSpec()
    """The objective: sft, dpo or grpo."""
    training: TrainingSpec = TrainingSpec()
    """Optimisation hyperparameters."""
    distributed: DistributedSpec = DistributedSpec()
    """Parallelism across processes: DDP, FSDP or DeepSpeed."""
    evaluation: EvaluationSpec = EvaluationSpec()
    """What is measured during and after training."""
    output: OutputSpec
    """Where checkpoints and the final model go."""
    logging: LoggingSpec = LoggingSpec()
    """Metric logging and experiment trackers."""
    resources: ResourcesSpec = ResourcesSpec()
    """Pods: count, GPUs, CPU/memory, placement, image."""
    scheduling: SchedulingSpec = SchedulingSpec()
    """Queueing and suspension."""
    run_policy: RunPolicy = RunPolicy()
    """Restarts, deadline, cleanup."""

    rules = (
        Rule(
            cel="self.trainer.type != 'dpo' || self.dataset.format == 'preference'",
            message="trainer.type dpo needs dataset.format preference (prompt/chosen/rejected)",
            check=lambda s: s.trainer.type != "dpo" or s.dataset.format == "preference",
            field=".dataset.format",
        ),
        Rule(
            cel="self.trainer.type != 'grpo' || self.dataset.format == 'prompt_only'",
            message="trainer.type grpo needs dataset.format prompt_only",
            check=lambda s: s.trainer.type != "grpo" or s.dataset.format == "prompt_only",
            field=".dataset.format",
        ),
        Rule(
            cel=f"self.trainer.type != 'sft' || self.dataset.format in {cel_list(SFT_FORMATS)}",
            message="trainer.type sft cannot use dataset.format preference or prompt_only "
            "(use dpo or grpo)",
            check=lambda s: s.trainer.type != "sft" or s.dataset.format in SFT_FORMATS,
            field=".dataset.format",
        ),
        Rule(
            cel=f"!self.output.mergeAdapter || self.method.type in {cel_list(LORA_METHODS)}",
            message="output.mergeAdapter needs a LoRA method.type (lora, qlora, dora, adapter)",
            check=lambda s: not s.output.merge_adapter or s.method.type in LORA_METHODS,
            field=".output.mergeAdapter",
        ),
        Rule(
            cel="!has(self.training.earlyStopping) || self.evaluation.strategy != 'no'",
            message="training.earlyStopping needs evaluation.strategy steps or epoch",
            check=lambda s: s.training.early_stopping is None or s.evaluation.strategy != "no",
            field=".training.earlyStopping",
        ),
        Rule(
            cel="!(has(self.training.gradientCheckpointing) && self.training.gradientCheckpointing"
            " && self.method.type == 'prefix')",
            message="training.gradientCheckpointing breaks method.type prefix "
            "(attention-mask mismatch); leave it unset or false",
            check=lambda s: not (s.training.gradient_checkpointing and s.method.type == "prefix"),
            field=".training.gradientCheckpointing",
        ),
        Rule(
            cel="!has(self.output.pushToHub) || has(self.output.pushToHub.tokenSecretRef)"
            " || has(self.model.hfTokenSecretRef)",
            message="output.pushToHub needs a token: pushToHub.tokenSecretRef or "
            "model.hfTokenSecretRef",
            check=lambda s: (
                s.output.push_to_hub is None
                or is_set(s.output.push_to_hub.token_secret_ref)
                or is_set(s.model.hf_token_secret_ref)
            ),
            field=".output.pushToHub",
        ),
    )


class ObjectMeta(ApiModel):
    """The parts of metav1.ObjectMeta the API reads; everything else passes through."""

    model_config = ConfigDict(extra="allow")

    name: str | None = None
    generate_name: str | None = None
    namespace: str | None = None
    labels: dict[str, str] = {}
    annotations: dict[str, str] = {}
    generation: int | None = None
    uid: str | None = None


class FineTuneJob(ApiModel):
    """A fine-tuning run of a large language model: `kubectl apply` it and the operator runs
    it as torchrun Jobs on GPU nodes, resuming from S3 checkpoints after failures.
    `finetune run` runs the same manifest locally."""

    api_version: Literal["finetune.dev/v1alpha1"] = "finetune.dev/v1alpha1"
    """finetune.dev/v1alpha1"""
    kind: Literal["FineTuneJob"] = "FineTuneJob"
    """FineTuneJob"""
    metadata: ObjectMeta = ObjectMeta()
    """Standard object metadata."""
    spec: FineTuneJobSpec
    """Desired state."""
    status: FineTuneJobStatus | None = None
    """Observed state, written by the operator."""

    rules = (
        Rule(
            cel=f"size(self.metadata.name) <= {MAX_NAME_LENGTH}"
            f" && self.metadata.name.matches('{NAME_PATTERN}')",
            message=f"metadata.name must be a DNS-1035 label of at most {MAX_NAME_LENGTH} "
            "characters (lower case letters, digits, '-'; starting with a letter): it names the "
            "job's Service, Jobs and pods",
            check=lambda j: _name_ok(j.metadata.name),
            field="",
        ),
    )

    @property
    def name(self) -> str:
        return self.metadata.name or "finetune"

    @classmethod
    def from_manifest(cls, manifest: dict[str, Any]) -> FineTuneJob:
        return cls.model_validate(manifest)
