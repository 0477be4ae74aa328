"""The flat command-line style users know (`--model_name gpt2 --data_path d.jsonl ...`) and
`.env` files (`MODEL_NAME=gpt2`), mapped onto a FineTuneJob manifest.

One table, FLAGS, maps each flat name to the spec field that carries it (the same mapping
docs/parameters.md documents; a test keeps the two in agreement). A few flags need a
value translation (dataset_type, lora_target_modules=auto, eval_steps).
"""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path
from typing import Any

import yaml

from .overrides import apply_overrides, parse_value

# flat name -> dotted spec path
FLAGS: dict[str, str] = {
    "model_name": "model.name",
    "tokenizer": "model.tokenizer",
    "data_path": "dataset.train.uri",
    "dataset_type": "dataset.format",
    "val_path": "dataset.validation.uri",
    "test_path": "dataset.test.uri",
    "train_ratio": "dataset.split.train",
    "val_ratio": "dataset.split.validation",
    "test_ratio": "dataset.split.test",
    "split_seed": "dataset.split.seed",
    "technique": "method.type",
    "epochs": "training.epochs",
    "batch_size": "training.batchSize",
    "grad_acc_steps": "training.gradientAccumulationSteps",
    "learning_rate": "training.learningRate",
    "device": "training.device",
    "eval_steps": "evaluation.steps",
    "save_path": "output.uri",
    "lora_r": "method.lora.r",
    "lora_alpha": "method.lora.alpha",
    "lora_dropout": "method.lora.dropout",
    "lora_target_modules": "method.lora.targetModules",
    "prompts_file": "evaluation.promptsUri",
}
# Flags whose value is not the field's value as is.
DATASET_TYPES = {"plain_text": "plain_text", "mcq_jsonl": "mcq", "instruction_jsonl": "instruction"}
TRANSLATE: dict[str, Callable[[str], Any]] = {
    "dataset_type": lambda v: DATASET_TYPES.get(v, v),
    "lora_target_modules": lambda v: (
        ["all-linear"] if v in ("auto", "all-linear") else v.split(",")
    ),
}
# Credentials are never copied into a manifest: the trainer reads them from the environment.
SECRET_FLAGS = {"hf_token": "HF_TOKEN"}


def to_assignments(values: dict[str, str]) -> list[str]:
    """Flat name -> raw value pairs as `--set`-style assignments (unknown names refused)."""
    unknown = sorted(set(values) - set(FLAGS) - set(SECRET_FLAGS))
    if unknown:
        raise ValueError(f"unknown setting(s): {', '.join(unknown)}")
    assignments = []
    for flat, raw in values.items():
        if flat in SECRET_FLAGS:
            continue
        value = TRANSLATE[flat](raw) if flat in TRANSLATE else parse_value(raw)
        assignments.append(
            f"{FLAGS[flat]}={yaml.safe_dump(value, default_flow_style=True).strip()}"
        )
    if "eval_steps" in values:
        assignments.append("evaluation.strategy=steps")
    return assignments


def build_manifest(values: dict[str, str], *, name: str = "finetune") -> dict[str, Any]:
    """A FineTuneJob manifest from flat settings alone (local CPU/GPU run defaults)."""
    manifest: dict[str, Any] = {
        "apiVersion": "finetune.dev/v1alpha1",
        "kind": "FineTuneJob",
        "metadata": {"name": name},
        "spec": {"output": {"uri": f"results/{name}"}, "resources": {"gpusPerNode": 0}},
    }
    return apply_overrides(manifest, to_assignments(values))


def read_env_file(path: Path) -> dict[str, str]:
    """KEY=value lines (comments, blank lines, `export` and quotes allowed) -> flat names."""
    values: dict[str, str] = {}
    for number, line in enumerate(path.read_text().splitlines(), start=1):
        line = line.strip()
        if not line or line.startswith("#"):
            continue
        key, sep, value = line.removeprefix("export ").partition("=")
        if not sep:
            raise ValueError(f"{path}:{number}: expected KEY=value")
        values[key.strip().lower()] = value.strip().strip("\"'")
    return values


def secrets_to_environment(values: dict[str, str]) -> dict[str, str]:
    """Credentials given as flags, as the environment variables the libraries read."""
    return {SECRET_FLAGS[k]: v for k, v in values.items() if k in SECRET_FLAGS}
