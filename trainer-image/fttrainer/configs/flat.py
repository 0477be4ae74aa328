"""The flat CLI style (`python main.py --model_name gpt2 --data_path d.jsonl ...`) and its
`.env` files (`MODEL_NAME=gpt2`), as that tool documents them.

Defaults are the tool's own (3 epochs, batch 4 x 4 accumulation, learning rate 3e-4, LoRA
r 8 / alpha 16 / dropout 0.1, an 80/10/10 split, evaluation every 100 steps when there is
validation data, ./prompts.txt when it exists), so a command copied from its docs trains
what it trained there. Results go to `results/<project>/<model>/<YYYYMMDD_HHMMSS>/`, or
`<save_path>/<YYYYMMDD_HHMMSS>/` when `--save_path` / `OUTPUT_DIR` is given.

`CONFIG=other.env` inside a `.env` file includes that file first (the including file's
values win); `--config my.env` on the command line reads it, and flags override it.
"""

from __future__ import annotations

from datetime import datetime
from pathlib import Path
from typing import Any, get_args

from ftapi.v1alpha1.dataset import DatasetFormat
from ftapi.v1alpha1.method import MethodType

from .base import (
    Builder,
    ConfigError,
    Custom,
    KeyTable,
    To,
    Translation,
    data_uri,
    integer,
    job_name,
    model_directory_name,
    number,
    one_of,
    read_config_text,
    target_modules,
    text,
    timestamp,
)

STYLE = "flat CLI flags / .env file"
DATASET_TYPES = {
    "plain_text": "plain_text",
    "mcq_jsonl": "mcq",
    "instruction_jsonl": "instruction",
    # Our own format names are accepted too (the reader follows the file extension).
    **{name: name for name in get_args(DatasetFormat) if name != "plain_text"},
}
TECHNIQUES = get_args(MethodType)
LORA_TECHNIQUES = ("lora", "qlora", "dora")
DEVICES = ("auto", "cpu", "cuda", "mps")
DEFAULT_MODEL = "gpt2"
DEFAULT_PROMPTS = "./prompts.txt"


def _hf_token(builder: Builder, key: str, value: Any) -> None:
    builder.environment["HF_TOKEN"] = text(value)
    builder.info(
        key,
        "used as HF_TOKEN for this run only; never written to a manifest (in a cluster: "
        "spec.model.hfTokenSecretRef names a Secret)",
    )


def _save_path(builder: Builder, key: str, value: Any) -> None:
    builder.extra["save_path"] = (key, text(value))


def _project(builder: Builder, key: str, value: Any) -> None:
    builder.extra["project"] = text(value)
    builder.manifest["metadata"]["name"] = job_name(text(value))


def _eval_steps(builder: Builder, key: str, value: Any) -> None:
    builder.set("evaluation.steps", integer(value), key)


def _include(builder: Builder, key: str, value: Any) -> None:
    # Only reached when CONFIG appears among flags after the files were read: read_env_file
    # resolves includes itself.
    builder.error(key, "CONFIG names a .env file to read: give it as the FILE argument")


# name -> (mapping, help shown by `finetune run --help`); the order of the tool's docs.
KEYS: dict[str, tuple[Any, str]] = {
    "model_name": (To("model.name", text), "base model: hub id or local path [gpt2]"),
    "tokenizer": (To("model.tokenizer", text), "tokenizer, when it differs from the model"),
    "hf_token": (Custom(_hf_token), "Hugging Face token (this run only; never stored)"),
    "data_path": (To("dataset.train.uri", data_uri), "training data file (required)"),
    "dataset_type": (
        To("dataset.format", one_of(DATASET_TYPES)),
        "plain_text, mcq_jsonl or instruction_jsonl (required)",
    ),
    "val_path": (To("dataset.validation.uri", data_uri), "separate validation file"),
    "test_path": (To("dataset.test.uri", data_uri), "separate test file"),
    "train_ratio": (To("dataset.split.train", number), "training share of data_path [0.8]"),
    "val_ratio": (To("dataset.split.validation", number), "validation share [0.1]"),
    "test_ratio": (To("dataset.split.test", number), "test share [0.1]"),
    "split_seed": (To("dataset.split.seed", integer), "seed of the split [42]"),
    "technique": (
        To("method.type", one_of({t: t for t in TECHNIQUES})),
        "lora, qlora, dora or adapter (also full, spectrum, prefix, prompt) [lora]",
    ),
    "epochs": (To("training.epochs", number), "passes over the training data [3]"),
    "batch_size": (To("training.batchSize", integer), "samples per device per step [4]"),
    "grad_acc_steps": (
        To("training.gradientAccumulationSteps", integer),
        "gradient accumulation steps [4]",
    ),
    "learning_rate": (To("training.learningRate", number), "peak learning rate [3e-4]"),
    "device": (To("training.device", one_of({d: d for d in DEVICES})), "cpu, cuda, mps, auto"),
    "eval_steps": (Custom(_eval_steps), "evaluate every N steps (with validation data) [100]"),
    "save_path": (Custom(_save_path), "results directory; a timestamped run directory is made"),
    "lora_r": (To("method.lora.r", integer), "LoRA rank [8]"),
    "lora_alpha": (To("method.lora.alpha", integer), "LoRA alpha [16]"),
    "lora_dropout": (To("method.lora.dropout", number), "LoRA dropout [0.1]"),
    "lora_target_modules": (
        To("method.lora.targetModules", target_modules),
        "auto, or module names: q_proj,v_proj [auto]",
    ),
    "prompts_file": (
        To("evaluation.promptsUri", text),
        "prompts answered by the base and the tuned model [./prompts.txt when present]",
    ),
}
# Names only the .env files use (the flags' equivalents in brackets).
ENV_ONLY: dict[str, tuple[Any, str]] = {
    "project_name": (Custom(_project), "project: results/<project>/<model>/<time>/"),
    "train_data_path": (To("dataset.train.uri", data_uri), "[data_path]"),
    "output_dir": (Custom(_save_path), "[save_path]"),
    "config": (Custom(_include), "another .env file to read first"),
}
TABLE: KeyTable = {name: mapping for name, (mapping, _) in {**KEYS, **ENV_ONLY}.items()}
FLAG_NAMES = (*KEYS, "project_name", "train_data_path", "output_dir")


def flag(name: str) -> str:
    return f"--{name}"


def env_key(name: str) -> str:
    return name.upper()


def read_env_file(path: Path, *, seen: tuple[Path, ...] = ()) -> dict[str, str]:
    """KEY=value lines (comments, blank lines, `export` and quotes allowed) → lowercase
    names; `CONFIG=base.env` reads that file first (relative to this one)."""
    resolved = path.resolve()
    if resolved in seen:
        chain = " -> ".join(str(p) for p in (*seen, resolved))
        raise ConfigError(f"{path}: CONFIG includes form a cycle ({chain})")
    values: dict[str, str] = {}
    own: dict[str, str] = {}
    for number_, line in enumerate(read_config_text(path).splitlines(), start=1):
        line = line.strip()
        if not line or line.startswith("#"):
            continue
        key, sep, value = line.removeprefix("export ").partition("=")
        if not sep or not key.strip():
            raise ConfigError(f"{path}:{number_}: expected KEY=value, got {line[:80]!r}")
        value = value.strip()
        quote = value[:1]
        end = value.find(quote, 1) if quote in ("'", '"') else -1
        if end > 0 and (not value[end + 1 :].strip() or value[end + 1 :].lstrip()[:1] == "#"):
            value = value[1:end]  # a quoted value, perhaps followed by a comment
        elif " #" in value:  # an unquoted trailing comment
            value = value.split(" #", 1)[0].rstrip()
        own[key.strip().lower()] = value
    include = own.pop("config", None)
    if include:
        values.update(read_env_file(path.parent / include, seen=(*seen, resolved)))
    values.update(own)
    return values


def translate(
    values: dict[str, Any],
    *,
    source: str,
    now: datetime,
    cwd: Path | None = None,
    from_file: frozenset[str] = frozenset(),
) -> Translation:
    """Flat settings (from a .env file and/or flags, flags already merged over the file);
    keys in `from_file` are named as the file spells them (LORA_R, not --lora_r)."""
    builder = Builder()
    builder.manifest["spec"]["resources"] = {"gpusPerNode": 0}
    builder.apply(
        TABLE, values, spell=lambda k: env_key(k) if k in from_file or k not in KEYS else flag(k)
    )
    _defaults(builder, values, cwd or Path.cwd())
    model = str(builder.get("model.name", DEFAULT_MODEL))
    project = builder.extra.get("project", "finetune")
    if "save_path" in builder.extra:
        root = builder.extra["save_path"][1].rstrip("/") or "."
    else:
        root = f"results/{project}/{model_directory_name(model)}"
    builder.spec["output"] = {"uri": root, **builder.spec.get("output", {})}
    builder.info(
        "output",
        f"results go to {root}/{timestamp(now)}/ (a new timestamped directory per run)",
    )
    return builder.translation(STYLE, source, run_directory=f"{root}/{timestamp(now)}")


def _defaults(builder: Builder, values: dict[str, Any], cwd: Path) -> None:
    """The tool's documented defaults, for what the user did not set."""
    default = "default of the flat style"
    if not builder.has("dataset.train.uri") and not {"data_path", "train_data_path"} & set(values):
        builder.error("--data_path", "required: the training data file")
    if not builder.has("dataset.format") and "dataset_type" not in values:
        builder.error("--dataset_type", "required: plain_text, mcq_jsonl or instruction_jsonl")
    builder.setdefault("model.name", DEFAULT_MODEL, default)
    builder.setdefault("method.type", "lora", default)
    if builder.get("method.type") in LORA_TECHNIQUES:
        builder.setdefault("method.lora.r", 8, default)
        builder.setdefault("method.lora.alpha", 16, default)
        builder.setdefault("method.lora.dropout", 0.1, default)
        builder.setdefault("method.lora.targetModules", ["all-linear"], default)
    elif builder.has("method.lora"):
        builder.error(
            "--lora_r", f"LoRA settings do not apply to technique {builder.get('method.type')}"
        )
    builder.setdefault("training.epochs", 3, default)
    builder.setdefault("training.batchSize", 4, default)
    builder.setdefault("training.gradientAccumulationSteps", 4, default)
    builder.setdefault("training.learningRate", 3e-4, default)
    _split_defaults(builder)
    has_validation = builder.has("dataset.validation") or (
        builder.get("dataset.split.validation", 0) > 0
    )
    if has_validation:
        builder.set("evaluation.strategy", "steps", default, weak=True)
        builder.setdefault("evaluation.steps", 100, default)
    elif builder.has("evaluation.steps"):
        builder.warn("--eval_steps", "ignored: there is no validation data to evaluate on")
        del builder.spec["evaluation"]["steps"]
        builder.origin.pop("evaluation.steps", None)
        builder.set("evaluation.strategy", "no", default)
    else:
        builder.set("evaluation.strategy", "no", default)
    if not builder.has("evaluation.promptsUri") and (cwd / DEFAULT_PROMPTS).is_file():
        builder.set("evaluation.promptsUri", DEFAULT_PROMPTS, default)
        builder.info("--prompts_file", f"{DEFAULT_PROMPTS} exists: its prompts are compared")


def _split_defaults(builder: Builder) -> None:
    """Missing ratios are filled so the three sum to 1, as the tool does: 80/10/10 when none
    is given; a share given as a separate file is 0; the test share takes the remainder."""
    split = builder.get("dataset.split", {})
    default = "default of the flat style"
    validation = split.get("validation")
    if validation is None:
        validation = 0.0 if builder.has("dataset.validation") else 0.1
    if "train" in split and "test" not in split:
        test = max(0.0, round(1.0 - split["train"] - validation, 6))
        train = split["train"]
    elif "test" in split and "train" not in split:
        test = split["test"]
        train = round(1.0 - validation - test, 6)
    elif "train" in split and "test" in split:
        train, test = split["train"], split["test"]
        if "validation" not in split:
            validation = max(0.0, round(1.0 - train - test, 6))
    else:
        test = 0.0 if builder.has("dataset.test") else 0.1
        train = round(1.0 - validation - test, 6)
    for part, value in (("train", train), ("validation", validation), ("test", test)):
        builder.setdefault(f"dataset.split.{part}", value, default)
