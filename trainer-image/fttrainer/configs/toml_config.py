"""The TOML style of the Unsloth-based fine-tuner: a `[fine_tuner]` section and an optional
`[mlflow]` section, under the names that tool documents.

`"null"` (or an empty string) means unset. Rows are question/answer pairs read from
`question_column` / `ground_truth_column` (format qa). The base is loaded in 4 bits when
`load_in_4bit` (QLoRA), 8 bits with `load_in_8bit`, in full with `full_finetuning` (which,
as in Unsloth, turns quantized loading off). An MLflow run without `run_name` is named
after the start time, `<prefix>YYYYMMDD-HHMMSS<suffix>`, as that tool names it.
"""

from __future__ import annotations

import tomllib
from collections.abc import Callable
from datetime import datetime
from pathlib import Path
from typing import Any

from .base import (
    RUN_NAME_TIME,
    Builder,
    ConfigError,
    Custom,
    KeyTable,
    To,
    Translation,
    boolean,
    complete_trackers,
    data_uri,
    flash_attention,
    integer,
    is_null,
    job_name,
    model_directory_name,
    number,
    one_of,
    read_config_text,
    stored,
    target_modules,
    text,
    timestamp,
    trackers,
    unknown_key_message,
)

STYLE = "TOML [fine_tuner] config"
SECTIONS = ("fine_tuner", "mlflow")
DTYPES = {"float16": "float16", "bfloat16": "bfloat16", "float32": "float32", "auto": "auto"}
SCHEDULERS = {
    name: name
    for name in (
        "linear",
        "cosine",
        "cosine_with_restarts",
        "polynomial",
        "constant",
        "constant_with_warmup",
        "inverse_sqrt",
    )
}


def _recompute(builder: Builder, key: str, value: Any) -> None:
    if isinstance(value, str) and value.strip().lower() == "unsloth":
        builder.set("training.gradientCheckpointing", True, key)
        builder.warn(
            key,
            '"unsloth" (its CPU-offloaded variant) runs as standard activation '
            "recompute: same results, more GPU memory than Unsloth",
        )
    else:
        builder.set("training.gradientCheckpointing", boolean(value), key)


def _loftq(builder: Builder, key: str, value: Any) -> None:
    if not isinstance(value, dict):
        raise ValueError(
            f"expected a table such as {{loftq_bits = 4, loftq_iter = 1}}, got {value!r}"
        )
    names = {
        "loftq_bits": "bits",
        "bits": "bits",
        "loftq_iter": "iterations",
        "iter": "iterations",
        "iterations": "iterations",
    }
    loftq: dict[str, int] = {}
    for name, item in value.items():
        if name not in names:
            raise ValueError(unknown_key_message(name, names, str))
        loftq[names[name]] = integer(item)
    builder.set("method.lora.loftq", loftq, key)


def _push_to_hub(builder: Builder, key: str, value: Any) -> None:
    """The style names no repository: `_hub_repository` derives one once the job's name is
    known (the tool pushes to the token owner's namespace, as a bare repoId does)."""
    if boolean(value):
        builder.extra["push_to_hub"] = (key, True)


HUB_SUFFIX = "-finetuned"
# The tool reads its token from the environment; a FineTuneJob names a Secret for the pods
# (locally, HF_TOKEN or FINETUNE_HUB_PUSH_TOKEN is read as before).
HUB_TOKEN_SECRET = {"name": "hf-token", "key": "HF_TOKEN"}


def _hub_repository(builder: Builder, name: str) -> None:
    key, push = builder.extra.get("push_to_hub", ("", False))
    if not push:
        return
    repository = f"{name}{HUB_SUFFIX}"
    builder.set("output.pushToHub.repoId", repository, key)
    builder.set("output.pushToHub.tokenSecretRef", HUB_TOKEN_SECRET, key)
    builder.info(
        key,
        f"pushes to <the token owner>/{repository} (the job's name + {HUB_SUFFIX}; "
        "--set output.pushToHub.repoId=<org/name> to choose), with HF_TOKEN "
        "(in a cluster: the Secret hf-token, key HF_TOKEN)",
    )


FINE_TUNER: KeyTable = {
    "base_model_id": To("model.name", text),
    "max_sequence_length": To("dataset.maxSeqLength", integer),
    "dtype": To("model.dtype", one_of(DTYPES)),
    "load_in_4bit": stored("load_in_4bit", boolean),
    "load_in_8bit": stored("load_in_8bit", boolean),
    "full_finetuning": stored("full_finetuning", boolean),
    "rank": stored("lora.r", integer),
    "lora_alpha": stored("lora.alpha", integer),
    "lora_dropout": stored("lora.dropout", number),
    "target_modules": stored("lora.targetModules", target_modules),
    "bias": stored("lora.bias", one_of({"none": "none", "all": "all", "lora_only": "lora_only"})),
    "use_rslora": stored("lora.rslora", boolean),
    "loftq_config": Custom(_loftq),
    "training_data_id": To("dataset.train.uri", data_uri),
    "validation_data_id": To("dataset.validation.uri", data_uri),
    "dataset_num_proc": To("dataset.numProc", integer),
    "question_column": stored("question_column", text),
    "ground_truth_column": stored("ground_truth_column", text),
    "system_prompt_column": To("dataset.columns.system", text),
    "system_prompt_override_text": To("dataset.systemPrompt", text),
    "epochs": To("training.epochs", number),
    "learning_rate": To("training.learningRate", number),
    "device_train_batch_size": To("training.batchSize", integer),
    "device_validation_batch_size": To("evaluation.batchSize", integer),
    "grad_accumulation": To("training.gradientAccumulationSteps", integer),
    "warmup_steps": To("training.warmupSteps", integer),
    "lr_scheduler_type": To("training.scheduler", one_of(SCHEDULERS)),
    "optimizer": To("training.optimizer", text),
    "weight_decay": To("training.weightDecay", number),
    "seed": To("training.seed", integer),
    "use_gradient_checkpointing": Custom(_recompute),
    "use_flash_attention": Custom(flash_attention),
    "packing": To("dataset.packing", boolean),
    "train_on_responses_only": stored("train_on_responses_only", boolean),
    "question_part": stored("question_part", text),
    "answer_part": stored("answer_part", text),
    "log_steps": To("logging.steps", integer),
    "log_first_step": To("logging.firstStep", boolean),
    "report_to": To("logging.reportTo", trackers),
    "save_steps": To("output.saveSteps", integer),
    "save_total_limit": To("output.saveTotalLimit", integer),
    "push_to_hub": Custom(_push_to_hub),
}
MLFLOW: KeyTable = {
    "tracking_uri": stored("mlflow.trackingUri", text),
    "experiment_name": stored("mlflow.experiment", text),
    "run_name": stored("mlflow.runName", text),
    "run_name_prefix": stored("mlflow.runNamePrefix", text),
    "run_name_suffix": stored("mlflow.runNameSuffix", text),
}
TABLES = {"fine_tuner": FINE_TUNER, "mlflow": MLFLOW}


def looks_like(document: Any) -> bool:
    return isinstance(document, dict) and "fine_tuner" in document


def read(path: Path) -> dict[str, Any]:
    try:
        return tomllib.loads(read_config_text(path))
    except tomllib.TOMLDecodeError as exc:
        raise ConfigError(f"{path}: not valid TOML: {exc}") from None


def translate(document: dict[str, Any], *, source: str, now: datetime) -> Translation:
    builder = Builder()
    builder.manifest["spec"]["resources"] = {"gpusPerNode": 0}
    for section, values in document.items():
        if section not in TABLES:
            builder.error(f"[{section}]", unknown_key_message(section, TABLES, lambda s: f"[{s}]"))
            continue
        if not isinstance(values, dict):
            builder.error(section, "expected a [section] of key = value lines")
            continue
        present = {k: v for k, v in values.items() if not is_null(v)}
        builder.apply(TABLES[section], present, spell=_speller(section))
    _finish(builder, now)
    model = str(builder.get("model.name", "model"))
    name = job_name(model_directory_name(model))
    builder.manifest["metadata"]["name"] = name
    _hub_repository(builder, name)
    root = f"results/{name}"
    builder.spec.setdefault("output", {})["uri"] = root
    return builder.translation(STYLE, source, run_directory=f"{root}/{timestamp(now)}")


def _speller(section: str) -> Callable[[str], str]:
    """Keys as the user wrote them: `[fine_tuner] rank`."""
    return lambda key: f"[{section}] {key}"


def _finish(builder: Builder, now: datetime) -> None:
    extra = builder.extra

    def take(name: str, default: Any = None) -> tuple[str, Any]:
        pair: tuple[str, Any] = extra.get(name, (f"[fine_tuner] {name}", default))
        return pair

    if not builder.has("model.name"):
        builder.error("[fine_tuner] base_model_id", "required: a model id or local path")
    if not builder.has("dataset.train.uri"):
        builder.error("[fine_tuner] training_data_id", "required: the training dataset")
    _method(builder, take)
    builder.no_holdout_without_validation("[fine_tuner] validation_data_id", "the TOML style")
    question_key, question = take("question_column", "question")
    answer_key, answer = take("ground_truth_column", "answer")
    builder.set("dataset.format", "qa", "[fine_tuner] question_column", weak=True)
    builder.set("dataset.columns.question", question, question_key)
    builder.set("dataset.columns.answer", answer, answer_key)
    if builder.has("dataset.systemPrompt"):
        builder.set(
            "dataset.systemPromptMode", "override", "[fine_tuner] system_prompt_override_text"
        )
    responses_key, responses_only = take("train_on_responses_only")
    if responses_only is not None:
        builder.set("dataset.trainOnResponsesOnly", responses_only, responses_key)
    markers = [take("question_part"), take("answer_part")]
    if any(value is not None for _, value in markers):
        if responses_only is False:
            for key, value in markers:
                if value is not None:
                    builder.warn(key, "ignored: train_on_responses_only is false")
        elif None in (value for _, value in markers):
            builder.error(markers[0][0], "question_part and answer_part go together")
        else:
            builder.set("dataset.responseMarkers.instruction", markers[0][1], markers[0][0])
            builder.set("dataset.responseMarkers.response", markers[1][1], markers[1][0])
    _mlflow(builder, take, now)


def _method(builder: Builder, take: Any) -> None:
    four_key, four = take("load_in_4bit", False)
    eight_key, eight = take("load_in_8bit", False)
    full_key, full = take("full_finetuning", False)
    lora = {
        name.removeprefix("lora."): value
        for name, value in builder.extra.items()
        if name.startswith("lora.")
    }
    if full:
        builder.set("method.type", "full", full_key)
        for key, on in ((four_key, four), (eight_key, eight)):
            if on:
                builder.warn(
                    key,
                    "ignored: full_finetuning loads the base unquantized "
                    "(Unsloth turns quantized loading off too)",
                )
        for field, (key, _) in lora.items():
            builder.warn(key, f"ignored: full_finetuning trains every weight (no LoRA {field})")
        return
    if four and eight:
        builder.error(eight_key, "load_in_4bit and load_in_8bit are both true: choose one")
        return
    if four:
        builder.set("method.type", "qlora", four_key)
        builder.set("method.quantization.bits", 4, four_key)
    elif eight:
        builder.set("method.type", "lora", eight_key)
        builder.set("method.quantization.bits", 8, eight_key)
    else:
        builder.set("method.type", "lora", "default of the TOML style", weak=True)
    for field, (key, value) in lora.items():
        builder.set(f"method.lora.{field}", value, key)


def _mlflow(builder: Builder, take: Any, now: datetime) -> None:
    settings = {
        name.removeprefix("mlflow."): pair
        for name, pair in builder.extra.items()
        if name.startswith("mlflow.")
    }
    if "mlflow" not in builder.get("logging.reportTo", []):
        for key, _ in settings.values():
            builder.warn(key, "ignored: report_to does not include mlflow")
        complete_trackers(builder, "[fine_tuner] report_to")
        return
    for field, (key, value) in settings.items():
        builder.set(f"logging.mlflow.{field}", value, key)
    complete_trackers(builder, "[fine_tuner] report_to")
    if "runName" not in settings:
        # The tool's automatic name: the start time, between the prefix and the suffix.
        builder.set("logging.mlflow.runName", timestamp(now, RUN_NAME_TIME), "[mlflow] run_name")
        builder.info("[mlflow] run_name", "unset: the run is named after its start time")
