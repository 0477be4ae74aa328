"""The documents of the tools our users come from (../shared/seeds), read by tests: the keys
each config style documents, and the examples it shows."""

from __future__ import annotations

import json
import re
import shlex
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import yaml

from fttrainer.configs import flat, hydra, toml_config, yaml_config

SEEDS = Path(__file__).resolve().parents[2] / "shared" / "seeds"


def seed_text(prefix: str) -> str:
    """The seed document whose file name starts with `prefix` (000 ... 004)."""
    return next(SEEDS.glob(f"{prefix}_*.txt")).read_text()


def documented_keys() -> dict[str, tuple[set[str], set[str]]]:
    """style -> (keys in its documents, keys of our table), read from ../shared/seeds."""
    cli = seed_text("000")
    flags = set(re.findall(r"\*\*--(\w+):\*\*", cli))
    env = {k.lower() for k in re.findall(r"^([A-Z_]+)=", cli, flags=re.M)}
    toml_doc = seed_text("001")
    toml_keys: set[str] = set()
    for block in re.findall(r"```toml\n(.*?)```", toml_doc, flags=re.S):
        section = "fine_tuner"
        for line in block.splitlines():
            header = re.match(r"\[(\w+)\]", line)
            if header:
                section = header.group(1)
            key = re.match(r"(\w+)\s*=", line)
            if key:
                toml_keys.add(f"{section}.{key.group(1)}")
    toml_keys |= {f"fine_tuner.{k}" for k in re.findall(r"^\| `(\w+)` \|", toml_doc, re.M)}
    yaml_doc = seed_text("002")
    yaml_keys = set()
    for block in re.findall(r"```yaml\n(.*?)```", yaml_doc, flags=re.S):
        yaml_keys |= set(yaml_config.flatten(yaml.safe_load(block)))
    section_tables = re.split(r"^## ", yaml_doc, flags=re.M)
    prefixes = {
        "Model": "model",
        "Training Parameters": "training",
        "Dataset": "dataset",
        "Distributed": "distributed",
        "Output": "output",
        "Evaluation": "evaluation",
    }
    for part in section_tables:
        for title, prefix in prefixes.items():
            if part.startswith(title):
                for key in re.findall(r"^\| `([\w.]+)` \|", part, flags=re.M):
                    yaml_keys.add(key if key.startswith(f"{prefix}.") else f"{prefix}.{key}")
    hydra_doc = seed_text("003")
    hydra_keys = set(re.findall(r"```-{2,3}([\w-]+)", hydra_doc))
    return {
        "flat flags": (flags, set(flat.KEYS)),
        "flat .env": (env, set(flat.TABLE)),
        "toml": (
            toml_keys,
            {f"fine_tuner.{k}" for k in toml_config.FINE_TUNER}
            | {f"mlflow.{k}" for k in toml_config.MLFLOW},
        ),
        "yaml": (yaml_keys, set(yaml_config.KEYS)),
        "hydra": (hydra_keys, set(hydra.KEYS)),
    }


# --- the examples the documents show, made runnable here -----------------------------------

MODEL_IDS = re.compile(r"(?:meta-llama|mistralai|unsloth|Writer)/[\w.-]+|\bdistilgpt2\b|\bgpt2\b")


@dataclass(frozen=True)
class Example:
    """One example of a seed document, as `finetune` arguments (run in `workdir`)."""

    name: str
    args: list[str]
    cwd: Path  # relative paths in `args` and in the config resolve here


def _rows(kind: str, count: int = 24) -> list[dict[str, Any]]:
    if kind == "mcq":
        return [
            {
                "question": f"What is {i} plus {i}?",
                "choices": [str(i), str(2 * i), "7", "9"],
                "answer": "B",
            }
            for i in range(count)
        ]
    if kind == "qa":
        return [{"question": f"What is {i} plus {i}?", "answer": f"{2 * i}"} for i in range(count)]
    if kind == "text":
        return [{"text": f"{i} plus {i} is {2 * i}."} for i in range(count)]
    return [
        {"instruction": f"Add {i} and {i}.", "input": "", "output": f"{2 * i}"}
        for i in range(count)
    ]


def write_data(path: Path, kind: str) -> None:
    """A small learnable dataset of `kind` (mcq, qa, text, instruction) at `path`."""
    path.parent.mkdir(parents=True, exist_ok=True)
    rows = _rows(kind)
    if path.suffix == ".json":
        path.write_text(json.dumps(rows))
    else:
        path.write_text("".join(json.dumps(row) + "\n" for row in rows))


def _flat_examples(workdir: Path, model: str) -> list[Example]:
    doc = seed_text("000")
    kinds = {"mcq_jsonl": "mcq", "instruction_jsonl": "instruction", "plain_text": "text"}
    examples = []
    commands = re.findall(r"python main\.py \\\n((?:.*\\\n)*.*)", doc)
    for number, command in enumerate(commands, start=1):
        args = shlex.split(command.replace("\\\n", " "))
        here = workdir / f"command-{number}"
        values = dict(zip(args[::2], args[1::2], strict=True))
        kind = kinds[values["--dataset_type"]]
        for flag in ("--data_path", "--val_path", "--test_path"):
            if flag in values:
                write_data(here / values[flag], kind)
        if "--prompts_file" in values:
            (here / values["--prompts_file"]).write_text("What is 2 plus 2?\n\nSay hi.\n")
        values["--model_name"] = model
        args = [t for kv in values.items() for t in kv]
        examples.append(Example(f"command {number}", args, here))
    blocks = re.findall(r"((?:^[A-Z_]+=.*\n)+)", doc, flags=re.M)
    names = ["my_config.env", "production.env"]
    for name, block in zip(names, blocks, strict=True):
        here = workdir / name.removesuffix(".env")
        settings = dict(line.split("=", 1) for line in block.splitlines())
        write_data(here / settings["TRAIN_DATA_PATH"], kinds[settings["DATASET_TYPE"]])
        settings["MODEL_NAME"] = model
        (here / name).write_text("".join(f"{k}={v}\n" for k, v in settings.items()))
    examples.append(Example("my_config.env", ["--config", "my_config.env"], workdir / "my_config"))
    run_with = re.search(r"python main\.py (--config production\.env.*)", doc)
    assert run_with is not None
    args = shlex.split(run_with.group(1))
    examples.append(Example("production.env", args, workdir / "production"))
    return examples


def _toml_examples(workdir: Path, model: str) -> list[Example]:
    doc = seed_text("001")
    write_data(workdir / "data" / "qa.jsonl", "qa")
    write_data(workdir / "data" / "qa-validation.jsonl", "qa")
    examples = []
    for number, block in enumerate(re.findall(r"```toml\n(.*?)```", doc, flags=re.S), start=1):
        text = MODEL_IDS.sub(model, block)
        text = text.replace("your-huggingface-username/training-dataset", "data/qa.jsonl")
        text = re.sub(
            r'"your-(?:huggingface-)?username/validation-dataset"',
            '"data/qa-validation.jsonl"',
            text,
        )
        text = text.replace(
            "https://your-mlflow-tracking-uri", f"sqlite:///{workdir / 'mlflow.db'}"
        )
        if "[fine_tuner]" not in text:
            text = "[fine_tuner]\n" + text if "[mlflow]" not in text else text
        if "base_model_id" not in text:
            text = text.replace("[fine_tuner]\n", f'[fine_tuner]\nbase_model_id = "{model}"\n', 1)
        if "training_data_id" not in text:
            text = text.replace(
                "[fine_tuner]\n", '[fine_tuner]\ntraining_data_id = "data/qa.jsonl"\n', 1
            )
        if "[fine_tuner]" not in text:
            text = (
                f'[fine_tuner]\nbase_model_id = "{model}"\n'
                'training_data_id = "data/qa.jsonl"\nreport_to = "mlflow"\n' + text
            )
        if "[mlflow]" in text and "report_to" not in text:
            text = text.replace("[fine_tuner]\n", '[fine_tuner]\nreport_to = "mlflow"\n', 1)
        path = workdir / f"fine_tuner_{number}.toml"
        path.write_text(text)
        examples.append(Example(f"toml block {number}", [path.name], workdir))
    return examples


def _yaml_examples(workdir: Path, model: str) -> list[Example]:
    doc = seed_text("002")
    write_data(workdir / "data" / "train.json", "instruction")
    write_data(workdir / "data" / "eval.json", "instruction")
    examples = []
    for number, block in enumerate(re.findall(r"```yaml\n(.*?)```", doc, flags=re.S), start=1):
        document = yaml.safe_load(MODEL_IDS.sub(model, block))
        document.setdefault("dataset", {}).setdefault("train_path", "data/train.json")
        path = workdir / f"config_{number}.yaml"
        path.write_text(yaml.safe_dump(document))
        examples.append(Example(f"yaml block {number}", [path.name], workdir))
    override = re.search(r"python src/train\.py --config config\.yaml (--model\.base_model.*)", doc)
    assert override is not None
    args = shlex.split(MODEL_IDS.sub(model, override.group(1)))
    examples.append(Example("yaml overrides", ["--config", "config_1.yaml", *args], workdir))
    return examples


def _hydra_examples(workdir: Path, model: str) -> list[Example]:
    """The guide shows no full command: every flag it documents, with values it suggests."""
    doc = seed_text("003")
    flags = re.findall(r"```-{2,3}([\w-]+)", doc)
    path = workdir / "data" / "chat.jsonl"
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(
        "".join(
            json.dumps(
                {
                    "messages": [
                        {"role": "user", "content": f"What is {i} plus {i}?"},
                        {"role": "assistant", "content": f"{2 * i}"},
                    ]
                }
            )
            + "\n"
            for i in range(24)
        )
    )
    values = {
        "model": model,
        "dataset": "data/chat.jsonl",
        "format": "conversational",
        "trainer": "SFT",
        "distributed-training": "unsloth",
        "per-device-train-batch-size": "2",
        "gradient-acc-steps": "1",
        "optim": "adamw_torch_fused",
        "learning-rate": "2e-4",
        "num-train-epochs": "1",
        "lr-scheduler-type": "cosine",
        "save-steps": "10",
        "max-completion-length": "16",
        "max-seq-length": "2048",
        "gradient-checkpointing": "True",
        "report-to": "tensorboard",
    }
    assert set(flags) == set(values), "the guide's flags changed: update the example"
    args = [t for k, v in values.items() for t in (f"--{k}", v)]
    return [Example("hydra flags", args, workdir)]


def seed_examples(workdir: Path, model: str) -> list[Example]:
    """Every example command and config of the seed documents, with the tiny local `model`
    for their hub models and small local files (written to `workdir`) for their data."""
    return [
        *_flat_examples(workdir, model),
        *_toml_examples(workdir, model),
        *_yaml_examples(workdir, model),
        *_hydra_examples(workdir, model),
    ]
