"""The nested YAML style (`model:` / `fine_tuning:` / `training:` / `dataset:` /
`distributed:` / `output:` / `evaluation:`) and its `--section.key value` overrides, under
the names that framework documents.

Where that framework names one setting twice (`output.eval_steps` and
`evaluation.eval_steps`; `training.gradient_accumulation_steps` and
`distributed.gradient_accumulation_steps`) the more specific section wins and a differing
value is reported. `fine_tuning.spectrum.snr_threshold` is a percentile there ("higher =
fewer layers"): it becomes `method.spectrum.topFraction = 1 - threshold`.
"""

from __future__ import annotations

import json
from datetime import datetime
from pathlib import Path
from typing import Any

from fttrainer.overrides import NotAMapping, parse_value, set_path

from .base import (
    Builder,
    ConfigError,
    Custom,
    KeyTable,
    To,
    Translation,
    boolean,
    data_uri,
    flash_attention,
    integer,
    is_null,
    job_name,
    model_directory_name,
    number,
    one_of,
    stored,
    target_modules,
    text,
    timestamp,
)

STYLE = "nested YAML config (model: / fine_tuning: / training: ...)"
SECTIONS = ("model", "fine_tuning", "training", "dataset", "distributed", "output", "evaluation")
FORMATS = {
    "alpaca": "instruction",
    "sharegpt": "sharegpt",
    "oasst": "oasst",
    "custom": "qa",
    # Our own names, for data this framework's users convert to them.
    **{
        n: n
        for n in (
            "instruction",
            "qa",
            "mcq",
            "messages",
            "plain_text",
            "preference",
            "prompt_only",
            "prompt_completion",
        )
    },
}
PRECISIONS = {"no": "fp32", "fp32": "fp32", "fp16": "fp16", "bf16": "bf16"}
COMPUTE_DTYPES = {"bfloat16": "bfloat16", "float16": "float16", "float32": "float32"}


def _trust_remote_code(builder: Builder, key: str, value: Any) -> None:
    builder.set("model.trustRemoteCode", boolean(value), key)
    if boolean(value):
        builder.warn(key, "true: Python code from the model repository runs in the trainer")


def _task_type(builder: Builder, key: str, value: Any) -> None:
    if str(value).upper() != "CAUSAL_LM":
        builder.error(key, f"{value!r}: only causal language models (CAUSAL_LM) are fine-tuned")


def _format(builder: Builder, key: str, value: Any) -> None:
    fmt = one_of(FORMATS)(value)
    builder.set("dataset.format", fmt, key)
    if str(value).lower() == "custom":
        builder.info(
            key,
            "custom rows are read as question/answer columns; name yours with "
            "--set dataset.columns.question=... / dataset.columns.answer=...",
        )


def _do_eval(builder: Builder, key: str, value: Any) -> None:
    if not boolean(value):
        builder.set("evaluation.strategy", "no", key)


def _benchmarks(builder: Builder, key: str, value: Any) -> None:
    if not isinstance(value, list):
        raise ValueError(f"expected a list, got {value!r}")
    usable = []
    for item in value:
        if isinstance(item, dict):
            usable.append(item)
        else:
            builder.warn(
                f"{key}: {item}",
                "not run: a benchmark name without data; give "
                "{name, uri, format} (mcq or qa files), or lm-eval tasks in "
                "--set evaluation.harness.tasks=[...]",
            )
    if usable:
        builder.set("evaluation.benchmarks", usable, key)


KEYS: KeyTable = {
    "model.base_model": To("model.name", text),
    "model.tokenizer": To("model.tokenizer", text),
    "model.load_in_8bit": stored("load_in_8bit", boolean),
    "model.load_in_4bit": stored("load_in_4bit", boolean),
    "model.trust_remote_code": Custom(_trust_remote_code),
    "model.use_flash_attention": Custom(flash_attention),
    "model.use_liger_kernels": To("training.ligerKernels", boolean),
    "fine_tuning.method": To(
        "method.type",
        one_of({m: m for m in ("full", "lora", "qlora", "spectrum", "dora", "prefix", "prompt")}),
    ),
    "fine_tuning.lora.r": stored("lora.r", integer),
    "fine_tuning.lora.alpha": stored("lora.alpha", integer),
    "fine_tuning.lora.dropout": stored("lora.dropout", number),
    "fine_tuning.lora.target_modules": stored("lora.targetModules", target_modules),
    "fine_tuning.lora.bias": stored(
        "lora.bias", one_of({"none": "none", "all": "all", "lora_only": "lora_only"})
    ),
    "fine_tuning.lora.task_type": Custom(_task_type),
    "fine_tuning.spectrum.snr_threshold": stored("spectrum.snr_threshold", number),
    "fine_tuning.spectrum.layers_to_finetune": stored("spectrum.layers", None),
    "fine_tuning.quantization.bits": stored("quant.bits", one_of({"4": 4, "8": 8})),
    "fine_tuning.quantization.bnb_4bit_compute_dtype": stored(
        "quant.computeDtype", one_of(COMPUTE_DTYPES)
    ),
    "fine_tuning.quantization.bnb_4bit_quant_type": stored(
        "quant.type", one_of({"nf4": "nf4", "fp4": "fp4"})
    ),
    "fine_tuning.quantization.bnb_4bit_use_double_quant": stored("quant.doubleQuant", boolean),
    "training.epochs": To("training.epochs", number),
    "training.micro_batch_size": To("training.batchSize", integer),
    "training.gradient_accumulation_steps": To("training.gradientAccumulationSteps", integer),
    "training.learning_rate": To("training.learningRate", number),
    "training.lr_scheduler_type": To("training.scheduler", text),
    "training.warmup_ratio": To("training.warmupRatio", number),
    "training.max_grad_norm": To("training.maxGradNorm", number),
    "training.optimizer": To("training.optimizer", text),
    "training.weight_decay": To("training.weightDecay", number),
    "training.max_seq_length": To("dataset.maxSeqLength", integer),
    "training.gradient_checkpointing": To("training.gradientCheckpointing", boolean),
    "training.mixed_precision": To("training.precision", one_of(PRECISIONS)),
    "dataset.format": Custom(_format),
    "dataset.train_path": To("dataset.train.uri", data_uri),
    "dataset.eval_path": To("dataset.validation.uri", data_uri),
    "dataset.preprocessing.add_eos_token": To("dataset.addEos", boolean),
    "dataset.preprocessing.add_bos_token": To("dataset.addBos", boolean),
    "dataset.preprocessing.use_chat_template": To("dataset.useChatTemplate", boolean),
    "distributed.use_deepspeed": stored("use_deepspeed", boolean),
    "distributed.deepspeed_config": stored("deepspeed_config", text),
    "distributed.zero_stage": stored("zero_stage", one_of({str(s): s for s in range(4)})),
    "distributed.gradient_accumulation_steps": To(
        "training.gradientAccumulationSteps", integer, weak=True
    ),
    "output.output_dir": stored("output_dir", text),
    "output.logging_steps": To("logging.steps", integer),
    "output.eval_steps": To("evaluation.steps", integer, weak=True),
    "output.save_steps": To("output.saveSteps", integer),
    "output.save_total_limit": To("output.saveTotalLimit", integer),
    "output.push_to_hub": stored("push_to_hub", boolean),
    "output.hub_model_id": stored("hub_model_id", text),
    "evaluation.do_eval": Custom(_do_eval),
    "evaluation.eval_batch_size": To("evaluation.batchSize", integer),
    "evaluation.eval_strategy": stored(
        "eval_strategy", one_of({"no": "no", "steps": "steps", "epoch": "epoch"})
    ),
    "evaluation.eval_steps": To("evaluation.steps", integer),
    "evaluation.benchmarks": Custom(_benchmarks),
}
# Keys whose value is itself a mapping or list (not walked into).
LEAF_MAPPINGS = {
    "evaluation.benchmarks",
    "fine_tuning.lora.target_modules",
    "fine_tuning.spectrum.layers_to_finetune",
}


def looks_like(document: Any) -> bool:
    """A mapping whose top-level keys are this framework's sections (and no `spec`)."""
    return (
        isinstance(document, dict)
        and bool(document)
        and "spec" not in document
        and "kind" not in document
        and any(key in SECTIONS for key in document)
    )


def flatten(document: dict[str, Any], prefix: str = "") -> dict[str, Any]:
    """{"training": {"epochs": 3}} → {"training.epochs": 3}; known keys keep their value."""
    flat: dict[str, Any] = {}
    for key, value in document.items():
        dotted = f"{prefix}{key}"
        if isinstance(value, dict) and dotted not in KEYS:
            flat.update(flatten(value, f"{dotted}."))
        else:
            flat[dotted] = value
    return flat


def apply_overrides(document: dict[str, Any], overrides: dict[str, str]) -> dict[str, Any]:
    """`--training.learning_rate 1e-4` style overrides, values parsed as YAML scalars."""
    result: dict[str, Any] = json.loads(json.dumps(document))
    for dotted, raw in overrides.items():
        try:
            set_path(result, dotted.split("."), parse_value(raw))
        except NotAMapping as exc:
            raise ConfigError(f"--{dotted}: {exc.part} is not a section") from None
        except ValueError as exc:
            raise ConfigError(f"--{dotted}: {exc}") from None
    return result


def translate(
    document: dict[str, Any], *, source: str, now: datetime, base_dir: Path | None = None
) -> Translation:
    builder = Builder()
    builder.manifest["spec"]["resources"] = {"gpusPerNode": 0}
    values = {k: v for k, v in flatten(document).items() if not (v is None or is_null(v))}
    builder.apply(KEYS, values, spell=str)
    _method(builder)
    _distributed(builder, base_dir)
    _evaluation(builder)
    model = str(builder.get("model.name", "model"))
    name = job_name(model_directory_name(model))
    builder.manifest["metadata"]["name"] = name
    if not builder.has("model.name"):
        builder.error("model.base_model", "required: a model id or local path")
    if not builder.has("dataset.train.uri"):
        builder.error("dataset.train_path", "required: the training data")
    if "output_dir" in builder.extra:
        key, directory = builder.extra["output_dir"]
        builder.set("output.uri", directory, key)
        run_directory = directory
    else:
        builder.set("output.uri", f"results/{name}", "default of the YAML style", weak=True)
        run_directory = f"results/{name}/{timestamp(now)}"
    _hub(builder)
    return builder.translation(STYLE, source, run_directory=run_directory)


def _method(builder: Builder) -> None:
    extra = builder.extra
    method = builder.get("method.type", "lora")
    four_key, four = extra.get("load_in_4bit", ("model.load_in_4bit", False))
    eight_key, eight = extra.get("load_in_8bit", ("model.load_in_8bit", False))
    quant = {n.removeprefix("quant."): v for n, v in extra.items() if n.startswith("quant.")}
    if four and eight:
        builder.error(eight_key, "load_in_4bit and load_in_8bit are both true: choose one")
        return
    if method in ("full", "spectrum"):
        for key, on in ((four_key, four), (eight_key, eight)):
            if on:
                builder.warn(
                    key,
                    f"ignored: {method} trains full-precision weights, which a "
                    "quantized base cannot update",
                )
        for key, _ in quant.values():
            builder.warn(key, f"ignored: no quantized base with method {method}")
    else:
        bits = 4 if four or method == "qlora" else 8 if eight else None
        if "bits" in quant:
            key, value = quant["bits"]
            if bits is not None and value != bits:
                builder.error(
                    key, f"{value} bits, but {four_key if four else eight_key} asks for {bits}"
                )
            bits = value
        if bits is None:
            for key, _ in quant.values():
                builder.warn(
                    key,
                    "ignored: the base is not loaded quantized "
                    "(load_in_4bit/load_in_8bit are false)",
                )
        else:
            if bits == 4 and method == "lora":
                builder.set("method.type", "qlora", four_key)
                builder.info(four_key, "LoRA on a 4-bit base: method qlora")
            builder.set("method.quantization.bits", bits, (quant.get("bits") or (four_key,))[0])
            for field, (key, value) in quant.items():
                if field != "bits":
                    if bits == 8:
                        builder.warn(key, "ignored: a bnb_4bit setting with an 8-bit base")
                    else:
                        builder.set(f"method.quantization.{field}", value, key)
    lora = {n.removeprefix("lora."): v for n, v in extra.items() if n.startswith("lora.")}
    lora_method = builder.get("method.type", "lora") in ("lora", "qlora", "dora")
    for field, (key, value) in lora.items():
        if lora_method:
            builder.set(f"method.lora.{field}", value, key)
        else:
            builder.warn(key, f"ignored: method {method} trains no LoRA matrices")
    _spectrum(builder, method)


def _spectrum(builder: Builder, method: str) -> None:
    extra = builder.extra
    threshold = extra.get("spectrum.snr_threshold")
    layers = extra.get("spectrum.layers")
    if method != "spectrum":
        for key, _ in (pair for pair in (threshold, layers) if pair is not None):
            builder.warn(key, f"ignored: method {method} is not spectrum")
        return
    if layers is not None and not (isinstance(layers[1], str) and layers[1].lower() == "auto"):
        key, value = layers
        if not isinstance(value, list) or not all(isinstance(i, int) for i in value):
            builder.error(key, f'expected "auto" or a list of layer indices, got {value!r}')
            return
        indices = "|".join(str(i) for i in value)
        builder.set("method.spectrum.targetParameters", [rf"\.layers\.({indices})\."], key)
        builder.info(key, "the listed layers are trained in full; no SNR scan")
        if threshold is not None:
            builder.warn(threshold[0], "ignored: layers_to_finetune lists the layers")
        return
    if threshold is not None:
        key, value = threshold
        if not 0.0 <= value < 1.0:
            builder.error(key, f"{value}: a percentile threshold between 0.0 and 1.0 (exclusive)")
            return
        fraction = round(1.0 - value, 6)
        builder.set("method.spectrum.topFraction", fraction, key)
        builder.info(
            key,
            f"matrices above the {value:.0%} SNR percentile of each module type "
            f"are trained: topFraction {fraction}",
        )


def _distributed(builder: Builder, base_dir: Path | None) -> None:
    extra = builder.extra
    use_key, use = extra.get("use_deepspeed", ("distributed.use_deepspeed", False))
    stage = extra.get("zero_stage")
    config = extra.get("deepspeed_config")
    if not use:
        for key, _ in (pair for pair in (stage, config) if pair is not None):
            builder.warn(key, "ignored: use_deepspeed is false")
        return
    builder.set("distributed.strategy", "deepspeed", use_key)
    if stage is not None:
        builder.set("distributed.deepspeed.zeroStage", stage[1], stage[0])
    else:
        builder.set("distributed.deepspeed", {}, use_key, weak=True)
    if config is None:
        return
    key, path_text = config
    candidates = [Path(path_text)] + ([base_dir / path_text] if base_dir else [])
    found = next((p for p in candidates if p.is_file()), None)
    if found is None:
        builder.warn(
            key,
            f"{path_text} not found: the generated ZeRO config is used "
            f"(zero_stage {builder.get('distributed.deepspeed.zeroStage', 2)})",
        )
        return
    try:
        content = json.loads(found.read_text())
    except ValueError as exc:
        builder.error(key, f"{found}: not valid JSON ({exc})")
        return
    builder.set("distributed.deepspeed.config", content, key)
    builder.info(key, f"{found} is merged over the generated config (inline in the manifest)")


def _evaluation(builder: Builder) -> None:
    strategy = builder.extra.get("eval_strategy")
    if builder.get("evaluation.strategy") == "no":
        if strategy is not None and strategy[1] != "no":
            builder.warn(strategy[0], "ignored: do_eval is false")
        if builder.has("evaluation.steps"):
            builder.warn("evaluation.eval_steps", "ignored: do_eval is false")
            del builder.spec["evaluation"]["steps"]
        return
    if strategy is not None:
        builder.set("evaluation.strategy", strategy[1], strategy[0])
    elif builder.has("evaluation.steps"):
        builder.set("evaluation.strategy", "steps", "evaluation.eval_steps")
    if builder.get("evaluation.strategy") != "steps" and builder.has("evaluation.steps"):
        key = builder.origin["evaluation.steps"][0]
        builder.warn(key, f"ignored: eval_strategy is {builder.get('evaluation.strategy')}")
        del builder.spec["evaluation"]["steps"]


def _hub(builder: Builder) -> None:
    push = builder.extra.get("push_to_hub")
    repo = builder.extra.get("hub_model_id")
    if push is None or not push[1]:
        if repo is not None:
            builder.warn(repo[0], "ignored: push_to_hub is false")
        return
    if repo is None:
        builder.error(push[0], "push_to_hub needs output.hub_model_id (org/name)")
        return
    builder.set("output.pushToHub.repoId", repo[1], repo[0])
