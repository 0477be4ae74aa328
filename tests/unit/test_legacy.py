"""The flat CLI style and .env files map onto the same spec fields the docs promise."""

from __future__ import annotations

import re
from pathlib import Path

import pytest

from ftapi import parse_job
from fttrainer.cli import main, split_flat_flags
from fttrainer.legacy import FLAGS, build_manifest, read_env_file

DOC = Path(__file__).resolve().parents[2] / "docs" / "parameters.md"


def test_flags_map_where_docs_parameters_md_says() -> None:
    section = DOC.read_text().split("## 1.")[1].split("## 2.")[0]
    documented = dict(re.findall(r"^\| `--(\w+)` \| `spec\.([\w.]+)`", section, flags=re.M))
    assert documented.pop("hf_token") == "model.hfTokenSecretRef"  # a Secret, not a value
    assert documented == FLAGS


def test_flat_settings_become_a_valid_job() -> None:
    manifest = build_manifest({
        "model_name": "./m", "data_path": "d.jsonl", "dataset_type": "instruction_jsonl",
        "technique": "dora", "epochs": "2", "lora_r": "32", "lora_target_modules": "auto",
        "train_ratio": "0.8", "val_ratio": "0.2", "eval_steps": "50", "learning_rate": "1e-4",
    })  # fmt: skip
    spec = parse_job(manifest).spec
    assert (spec.dataset.format, spec.method.type, spec.training.epochs) == (
        "instruction",
        "dora",
        2,
    )
    assert spec.method.lora is not None and spec.method.lora.target_modules == ["all-linear"]
    assert (spec.evaluation.strategy, spec.evaluation.steps) == ("steps", 50)
    assert spec.training.learning_rate == 1e-4 and spec.dataset.split is not None


def test_unknown_setting_is_refused() -> None:
    with pytest.raises(ValueError, match="unknown setting"):
        build_manifest({"model_nme": "x"})


def test_env_file(tmp_path: Path) -> None:
    path = tmp_path / "job.env"
    path.write_text('# my run\nMODEL_NAME="./m"\nexport DATA_PATH=d.jsonl\n\nEPOCHS=1\n')
    assert read_env_file(path) == {"model_name": "./m", "data_path": "d.jsonl", "epochs": "1"}
    path.write_text("MODEL_NAME=x\noops\n")
    with pytest.raises(ValueError, match=r"job.env:2: expected KEY=value"):
        read_env_file(path)


def test_split_flat_flags() -> None:
    rest, flat = split_flat_flags(["run", "--epochs", "2", "--technique=lora", "--set", "a=1"])
    assert rest == ["run", "--set", "a=1"]
    assert flat == {"epochs": "2", "technique": "lora"}
    with pytest.raises(ValueError, match="needs a value"):
        split_flat_flags(["run", "--epochs"])


def test_validate_flat_style_and_env_file(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    flags = ["--model_name", "./m", "--data_path", "s3://b/d.jsonl", "--technique", "qlora"]
    assert main(["validate", *flags]) == 0
    assert "valid FineTuneJob 'finetune' (sft + qlora on ./m)" in capsys.readouterr().out
    env = tmp_path / "run.env"
    env.write_text("MODEL_NAME=./m\nDATA_PATH=s3://b/d.jsonl\nTECHNIQUE=lora\n")
    assert main(["validate", str(env), "--technique", "dora"]) == 0  # flags win over the file
    assert "(sft + dora on ./m)" in capsys.readouterr().out
