"""The Hydra-style flags of the TRL training script (`--model --dataset --format
standard|conversational|preference --trainer SFT|DPO|GRPO --per-device-train-batch-size
...`), under the names its guide documents.

TRL's "standard" and "conversational" formats are families: the row shape (text,
prompt/completion, messages, conversations) picks the member, as TRL itself decides from the
columns, so the first row of a local file is read to choose; a remote dataset gets the
family's usual member and a note saying so.
"""

from __future__ import annotations

import csv
import json
from datetime import datetime
from pathlib import Path
from typing import Any

from .base import (
    Builder,
    Custom,
    KeyTable,
    To,
    Translation,
    boolean,
    complete_trackers,
    data_uri,
    integer,
    job_name,
    model_directory_name,
    number,
    one_of,
    stored,
    text,
    timestamp,
    trackers,
)

STYLE = "Hydra-style script flags (--model --dataset --format --trainer ...)"
FAMILIES = ("standard", "conversational", "preference")
TRAINERS = {"sft": "sft", "dpo": "dpo", "grpo": "grpo"}
STRATEGIES = {"fsdp": "fsdp", "ddp": "ddp", "deepspeed": "deepspeed"}


def _distributed(builder: Builder, key: str, value: Any) -> None:
    choice = str(value).strip().lower()
    if choice == "unsloth":
        builder.warn(
            key,
            "ignored: Unsloth is not used; one process trains, or DDP when "
            "the job has several (distributed.strategy auto)",
        )
        return
    builder.set("distributed.strategy", one_of(STRATEGIES)(choice), key)


# name -> (mapping, help shown by `finetune run --help`), in the guide's order.
KEYS: dict[str, tuple[Any, str]] = {
    "model": (To("model.name", text), "the model: hub id or local path"),
    "dataset": (To("dataset.train.uri", data_uri), "the dataset: hub id, local .json/.csv"),
    "format": (
        stored("format", one_of({f: f for f in FAMILIES})),
        "standard, conversational or preference (TRL's dataset formats)",
    ),
    "trainer": (stored("trainer", one_of(TRAINERS)), "SFT, DPO or GRPO"),
    "distributed-training": (Custom(_distributed), "unsloth (ignored), fsdp, ddp, deepspeed"),
    "per-device-train-batch-size": (To("training.batchSize", integer), "batch size per device"),
    "gradient-acc-steps": (
        To("training.gradientAccumulationSteps", integer),
        "gradient accumulation steps",
    ),
    "optim": (To("training.optimizer", text), "optimizer, e.g. adamw_torch_fused"),
    "learning-rate": (To("training.learningRate", number), "learning rate"),
    "num-train-epochs": (To("training.epochs", number), "passes over the data"),
    "lr-scheduler-type": (To("training.scheduler", text), "learning-rate schedule"),
    "save-steps": (To("output.saveSteps", integer), "checkpoint every N steps"),
    "max-completion-length": (
        stored("max_completion_length", integer),
        "tokens generated per completion (GRPO) or answer",
    ),
    "max-seq-length": (To("dataset.maxSeqLength", integer), "longest input in tokens"),
    "gradient-checkpointing": (
        To("training.gradientCheckpointing", boolean),
        "recompute activations to save memory",
    ),
    "report-to": (To("logging.reportTo", trackers), "wandb, mlflow, tensorboard or none"),
}
TABLE: KeyTable = {name: mapping for name, (mapping, _) in KEYS.items()}


def flag(name: str) -> str:
    return f"--{name}"


def translate(values: dict[str, Any], *, source: str, now: datetime) -> Translation:
    builder = Builder()
    builder.manifest["spec"]["resources"] = {"gpusPerNode": 0}
    builder.apply(TABLE, values, spell=flag)
    if not builder.has("model.name"):
        builder.error("--model", "required: the model to fine-tune")
    if not builder.has("dataset.train.uri"):
        builder.error("--dataset", "required: the dataset")
    trainer_key, trainer = builder.extra.get("trainer", ("--trainer", "sft"))
    builder.set("trainer.type", trainer, trainer_key, weak="trainer" not in builder.extra)
    _format(builder, trainer)
    _completion_length(builder, trainer)
    complete_trackers(builder, "--report-to")
    builder.no_holdout_without_validation("--dataset", "TRL's script")
    name = job_name(model_directory_name(str(builder.get("model.name", "model"))))
    builder.manifest["metadata"]["name"] = name
    builder.set("output.uri", f"results/{name}", "default of the Hydra style", weak=True)
    return builder.translation(STYLE, source, run_directory=f"results/{name}/{timestamp(now)}")


def _format(builder: Builder, trainer: str) -> None:
    key, family = builder.extra.get("format", ("--format", None))
    columns = first_row_keys(str(builder.get("dataset.train.uri", "")))
    if trainer == "dpo":
        if family == "standard" or family == "conversational":
            builder.info(key, f"{family} preference rows (chosen/rejected): format preference")
        builder.set("dataset.format", "preference", key)
        return
    if family == "preference":
        builder.error(key, f"preference data trains with --trainer DPO, not {trainer.upper()}")
        return
    if trainer == "grpo":
        builder.set("dataset.format", "prompt_only", key)
        builder.info(
            "--trainer",
            "GRPO needs reward functions, which these flags cannot name: "
            "add --set 'trainer.grpo.rewards=[{type: regex, pattern: \"...\"}]'",
        )
        return
    if family is None:
        family = "conversational" if columns & {"messages", "conversations"} else "standard"
        builder.info(key, f"not given: {family} (from the data's columns)")
    if family == "conversational":
        fmt = "sharegpt" if "conversations" in columns else "messages"
    elif "text" in columns and "completion" not in columns:
        fmt = "plain_text"
    else:
        fmt = "prompt_completion"
    if not columns:
        builder.info(key, f"the data's columns are not readable here: {fmt} assumed")
    builder.set("dataset.format", fmt, key)


def _completion_length(builder: Builder, trainer: str) -> None:
    pair = builder.extra.get("max_completion_length")
    if pair is None:
        return
    key, value = pair
    if trainer == "grpo":
        builder.set("trainer.grpo.maxCompletionLength", value, key)
    else:
        builder.set("evaluation.maxNewTokens", value, key)
        builder.info(key, "the answer length generated after training (evaluation.maxNewTokens)")


def first_row_keys(uri: str) -> set[str]:
    """Column names of the first row of a local .jsonl/.json/.csv/.parquet/.txt file (as
    fttrainer.data.sources reads them; empty when the data is remote or unreadable: the
    caller then assumes and says so)."""
    path = Path(uri)
    try:
        if not path.is_file():
            return set()
        suffix = path.suffix.lower()
        if suffix == ".txt":
            return {"text"}  # one sample per line
        if suffix == ".parquet":
            import pyarrow.parquet as pq

            return set(pq.read_schema(path).names)
        with path.open(encoding="utf-8-sig") as handle:
            if suffix == ".jsonl":
                line = next((line for line in handle if line.strip()), "{}")
                row = json.loads(line)
            elif suffix == ".json":
                data = json.load(handle)
                if isinstance(data, dict) and isinstance(data.get("data"), list):
                    data = data["data"]  # {"data": [...]}, as the reader takes it
                row = data[0] if isinstance(data, list) and data else data
            elif suffix == ".csv":
                row = dict.fromkeys(next(csv.reader(handle), []))
            else:
                return set()
    except (OSError, ValueError, StopIteration, ImportError):
        return set()
    return set(row) if isinstance(row, dict) else set()
