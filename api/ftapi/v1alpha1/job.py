"""The FineTuneJob resource: spec sections, and the rules that span sections."""

from __future__ import annotations

import re
from typing import ClassVar, Literal

from pydantic import ConfigDict

from ftapi.constants import (
    ENV_HF_TOKEN,
    MAX_NAME_LENGTH,
    NAME_PATTERN,
    S3_OPTIONAL_SECRET_KEYS,
    S3_SECRET_KEYS,
)

from ._base import ApiModel, Rule, cel_list, is_set, spoken_list
from .dataset import FORMATS_WITH_RESPONSES, DatasetSpec, Split
from .distributed import DistributedSpec
from .evaluation import EvaluationSpec
from .method import FULL_WEIGHT_METHODS, LORA_METHODS, MethodSpec
from .model import ModelSpec
from .output import OutputSpec
from .reporting import MLFLOW_TOKEN_ENV, WANDB_KEY_ENV, LoggingSpec
from .resources import ResourcesSpec
from .scheduling import RunPolicy, SchedulingSpec
from .status import FineTuneJobStatus
from .trainer import TrainerSpec
from .training import TrainingSpec
from .vision import VisionSpec

# dataset.format values SFT accepts: every format with a response, and plain text.
SFT_FORMATS = ("plain_text", *FORMATS_WITH_RESPONSES)
# Methods that can train a vision tower or a projector: LoRA on its linears, or every weight.
VISION_TRAINING_METHODS = ("full", "lora", "qlora", "dora")
SCORED_FORMATS = ("mcq", "qa")  # formats with a ground truth to score exact match against
# Processes in the job: torchrun starts one per GPU, or a single one on CPU nodes.
_CEL_PROCESSES = (
    "self.resources.nodes * (self.resources.gpusPerNode > 0 ? self.resources.gpusPerNode : 1)"
)
_CEL_GRPO_BATCHES_FIT = (
    "self.trainer.type != 'grpo' || !has(self.trainer.grpo) || ("
    f"self.training.batchSize * self.training.gradientAccumulationSteps * {_CEL_PROCESSES}"
    " % self.trainer.grpo.numGenerations == 0"
    " && (self.evaluation.strategy == 'no' || (has(self.evaluation.batchSize)"
    " ? self.evaluation.batchSize : self.training.batchSize)"
    f" * {_CEL_PROCESSES} % self.trainer.grpo.numGenerations == 0))"
)


def _grpo_batches_fit(spec: FineTuneJobSpec) -> bool:
    if spec.trainer.type != "grpo" or spec.trainer.grpo is None:
        return True
    group = spec.trainer.grpo.num_generations
    train = spec.training.batch_size * spec.training.gradient_accumulation_steps
    evaluation = spec.evaluation.batch_size or spec.training.batch_size
    return (train * spec.processes()) % group == 0 and (
        spec.evaluation.strategy == "no" or (evaluation * spec.processes()) % group == 0
    )


# Learning rates that suit each objective and kind of method when none is given.
_DEFAULT_LEARNING_RATES = {
    ("sft", "full"): 2e-5,
    ("sft", "peft"): 2e-4,
    ("sft", "prefix"): 1e-2,
    ("sft", "prompt"): 3e-2,
    ("dpo", "full"): 5e-7,
    ("dpo", "peft"): 5e-6,
    ("grpo", "full"): 1e-6,
    ("grpo", "peft"): 1e-5,
}


# Variables the operator fills from a Secret reference elsewhere in the spec. A resources.env
# entry of the same name would come after it in the pod and silently replace that Secret.
SECRET_FED_ENV = (
    ("model.hfTokenSecretRef", (ENV_HF_TOKEN,)),
    # botocore reads AWS_SECURITY_TOKEN before AWS_SESSION_TOKEN: it would replace it too.
    (
        "output.s3.credentialsSecretRef",
        S3_SECRET_KEYS + S3_OPTIONAL_SECRET_KEYS + ("AWS_SECURITY_TOKEN",),
    ),
    ("logging.mlflow.tokenSecretRef", (MLFLOW_TOKEN_ENV,)),
    ("logging.wandb.apiKeySecretRef", (WANDB_KEY_ENV,)),
)


def _env_not_fed_by(path: str, names: tuple[str, ...]) -> Rule:
    """Rule: resources.env does not name a variable that `path` (a Secret reference) sets."""
    parts = path.split(".")
    present = " && ".join(f"has(self.{'.'.join(parts[: i + 1])})" for i in range(len(parts)))
    listed = " || ".join(f"e.name == '{name}'" for name in names)

    def check(spec: FineTuneJobSpec) -> bool:
        node: object = spec
        for part in parts:  # by wire name: to_snake("s3") is "s_3"
            node = getattr(node, "__dict__", {}).get(_attribute(node, part))
            if node is None:
                return True
        return not any(variable.name in names for variable in spec.resources.env)

    return Rule(
        cel=f"!({present}) || !self.resources.env.exists(e, {listed})",
        message=f"resources.env may not set {spoken_list(names)}: {path} sets "
        f"{'it' if len(names) == 1 else 'them'} from its Secret "
        "(remove the entry, or the reference)",
        check=check,
        field=".resources.env",
    )


def _attribute(model: object, wire_name: str) -> str | None:
    fields = getattr(type(model), "model_fields", {})
    return next((name for name, f in fields.items() if f.alias == wire_name), None)


def _name_ok(name: str | None) -> bool:
    return name is None or (
        len(name) <= MAX_NAME_LENGTH and re.fullmatch(NAME_PATTERN, name) is not None
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
    vision: VisionSpec = VisionSpec()
    """A vision-language model's image side: train its tower or projector, bound the
    image size."""
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

    # What a running job may not change: a restart resumes checkpoints written under the old
    # values. scheduling and runPolicy stay mutable (suspend, maxRestarts, ttl, deadline).
    immutable: ClassVar[tuple[str, ...]] = (
        "model",
        "dataset",
        "method",
        "trainer",
        "training",
        "distributed",
        "evaluation",
        "vision",
        "output",
        "logging",
        "resources",
    )

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
            cel="!(self.vision.trainVisionTower || self.vision.trainProjector)"
            f" || self.method.type in {cel_list(VISION_TRAINING_METHODS)}",
            message="vision.trainVisionTower and vision.trainProjector need method.type full, "
            "lora, qlora or dora",
            check=lambda s: (
                not (s.vision.train_vision_tower or s.vision.train_projector)
                or s.method.type in VISION_TRAINING_METHODS
            ),
            field=".vision",
        ),
        Rule(
            cel="self.training.onNonFinite != 'skip' || self.distributed.strategy != 'deepspeed'",
            message="training.onNonFinite skip cannot work with DeepSpeed, which steps its "
            "optimizer inside backward; use stop or rollback",
            check=lambda s: (
                s.training.on_non_finite != "skip" or s.distributed.strategy != "deepspeed"
            ),
            field=".training.onNonFinite",
        ),
        Rule(
            cel="!self.evaluation.failIfWorseThanBase || (self.evaluation.compareBase"
            " && self.evaluation.strategy != 'no')",
            message="evaluation.failIfWorseThanBase needs the validation loss before and after "
            "training: evaluation.compareBase true and evaluation.strategy steps or epoch",
            check=lambda s: (
                not s.evaluation.fail_if_worse_than_base
                or (s.evaluation.compare_base and s.evaluation.strategy != "no")
            ),
            field=".evaluation.failIfWorseThanBase",
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
            cel=_CEL_GRPO_BATCHES_FIT,
            message="grpo: batchSize x gradientAccumulationSteps x processes (nodes x "
            "gpusPerNode) must be a multiple of trainer.grpo.numGenerations, and so must the "
            "evaluation batch x processes",
            check=_grpo_batches_fit,
            field=".trainer.grpo.numGenerations",
        ),
        Rule(
            cel="self.evaluation.strategy == 'no' || has(self.dataset.validation)"
            " || !has(self.dataset.split) || self.dataset.split.validation > 0.0",
            message="evaluation needs validation data: dataset.validation, "
            "dataset.split.validation > 0, or evaluation.strategy no",
            check=lambda s: (
                s.evaluation.strategy == "no"
                or s.dataset.validation is not None
                or s.dataset.split is None
                or s.dataset.split.validation > 0
            ),
            field=".evaluation.strategy",
        ),
        Rule(
            cel="!self.evaluation.metrics.exists(m, m == 'exact_match')"
            f" || self.dataset.format in {cel_list(SCORED_FORMATS)}",
            message="evaluation.metrics exact_match needs dataset.format mcq or qa",
            check=lambda s: (
                "exact_match" not in s.evaluation.metrics or s.dataset.format in SCORED_FORMATS
            ),
            field=".evaluation.metrics",
        ),
        Rule(
            cel="!self.evaluation.metrics.exists(m, m == 'accuracy')"
            " || self.dataset.format == 'mcq'",
            message="evaluation.metrics accuracy needs dataset.format mcq (the chosen letter "
            "is scored); for qa, exact_match scores the generated answer",
            check=lambda s: "accuracy" not in s.evaluation.metrics or s.dataset.format == "mcq",
            field=".evaluation.metrics",
        ),
        Rule(
            cel="!self.evaluation.metrics.exists(m, m == 'bleu' || m == 'rouge_l')"
            f" || self.dataset.format in {cel_list(FORMATS_WITH_RESPONSES)}",
            message="evaluation.metrics bleu and rouge_l need reference answers: a "
            "dataset.format with responses (not plain_text, preference or prompt_only)",
            check=lambda s: (
                not ({"bleu", "rouge_l"} & set(s.evaluation.metrics))
                or s.dataset.format in FORMATS_WITH_RESPONSES
            ),
            field=".evaluation.metrics",
        ),
        Rule(
            cel="!('perplexity' in self.evaluation.metrics) || self.trainer.type == 'sft'",
            message="evaluation.metrics perplexity needs trainer.type sft (exp of a DPO or "
            "GRPO loss is not a perplexity)",
            check=lambda s: "perplexity" not in s.evaluation.metrics or s.trainer.type == "sft",
            field=".evaluation.metrics",
        ),
        Rule(
            cel="!has(self.training.earlyStopping)"
            " || self.training.earlyStopping.metric != 'eval_accuracy'"
            " || 'accuracy' in self.evaluation.metrics",
            message="training.earlyStopping.metric eval_accuracy needs accuracy in "
            "evaluation.metrics",
            check=lambda s: (
                s.training.early_stopping is None
                or s.training.early_stopping.metric != "eval_accuracy"
                or "accuracy" in s.evaluation.metrics
            ),
            field=".training.earlyStopping.metric",
        ),
        Rule(
            cel="!self.dataset.packing || self.trainer.type == 'sft'",
            message="dataset.packing is only used by trainer.type sft",
            check=lambda s: not s.dataset.packing or s.trainer.type == "sft",
            field=".dataset.packing",
        ),
        Rule(
            cel="!has(self.dataset.paddingFree) || !self.dataset.paddingFree"
            " || (self.trainer.type == 'sft' && !self.dataset.packing)",
            message="dataset.paddingFree is for trainer.type sft without dataset.packing",
            check=lambda s: (
                not s.dataset.padding_free or (s.trainer.type == "sft" and not s.dataset.packing)
            ),
            field=".dataset.paddingFree",
        ),
        Rule(
            cel="!(self.model.dtype == 'float16' && self.training.precision == 'fp16'"
            f" && self.method.type in {cel_list(FULL_WEIGHT_METHODS)})",
            message="training.precision fp16 cannot update float16 weights (fp16 mixed "
            "precision needs float32 master weights): use model.dtype float32/auto or bf16",
            check=lambda s: (
                not (
                    s.model.dtype == "float16"
                    and s.training.precision == "fp16"
                    and s.method.type in FULL_WEIGHT_METHODS
                )
            ),
            field=".model.dtype",
        ),
        Rule(
            cel="!(has(self.method.quantization)"
            " && self.method.quantization.computeDtype == 'bfloat16'"
            " && self.training.precision == 'fp16')",
            message="method.quantization.computeDtype bfloat16 conflicts with "
            "training.precision fp16 (use computeDtype auto or float16)",
            check=lambda s: (
                not (
                    s.method.quantization is not None
                    and s.method.quantization.compute_dtype == "bfloat16"
                    and s.training.precision == "fp16"
                )
            ),
            field=".method.quantization.computeDtype",
        ),
        Rule(
            cel="!(has(self.training.gradientCheckpointing) && self.training.gradientCheckpointing"
            " && has(self.distributed.fsdp) && self.distributed.fsdp.activationCheckpointing)",
            message="use distributed.fsdp.activationCheckpointing or "
            "training.gradientCheckpointing, not both (FSDP's own avoids an extra all-gather)",
            check=lambda s: (
                not (
                    s.training.gradient_checkpointing
                    and s.distributed.fsdp is not None
                    and s.distributed.fsdp.activation_checkpointing
                )
            ),
            field=".training.gradientCheckpointing",
        ),
        Rule(
            cel="self.output.finalModel != 'best' || self.evaluation.strategy != 'no'",
            message="output.finalModel best needs evaluation (evaluation.strategy steps or epoch)",
            check=lambda s: s.output.final_model != "best" or s.evaluation.strategy != "no",
            field=".output.finalModel",
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
        Rule(
            cel="!has(self.model.registry) || self.model.name.startsWith('oci://')"
            " || (has(self.model.tokenizer) && self.model.tokenizer.startsWith('oci://'))"
            " || (has(self.method.adapter) && self.method.adapter.uri.startsWith('oci://'))",
            message="model.registry is for an oci:// model.name, model.tokenizer or "
            "method.adapter.uri, and none is one: remove it",
            check=lambda s: (
                s.model.registry is None
                or any(
                    (uri or "").startswith("oci://")
                    for uri in (
                        s.model.name,
                        s.model.tokenizer,
                        s.method.adapter.uri if s.method.adapter else None,
                    )
                )
            ),
            field=".model.registry",
        ),
        *(_env_not_fed_by(path, names) for path, names in SECRET_FED_ENV),
    )

    def processes(self) -> int:
        """Training processes in the job: torchrun starts one per GPU, one per CPU-only node."""
        return self.resources.nodes * max(self.resources.gpus_per_node, 1)

    def effective_split(self) -> Split:
        """The split applied to the train source: the explicit one; none when a validation
        file is given or nothing is evaluated; else 10% held out for validation."""
        if self.dataset.split is not None:
            return self.dataset.split
        if self.dataset.validation is not None or self.evaluation.strategy == "no":
            return Split(train=1.0)
        return Split(train=0.9, validation=0.1)

    def effective_learning_rate(self) -> float:
        """training.learningRate, or the documented default for this objective and method."""
        if self.training.learning_rate is not None:
            return self.training.learning_rate
        method = self.method.type
        kind = (
            "full"
            if method in FULL_WEIGHT_METHODS
            else method
            if method in ("prefix", "prompt") and self.trainer.type == "sft"
            else "peft"
        )
        return _DEFAULT_LEARNING_RATES[(self.trainer.type, kind)]


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
