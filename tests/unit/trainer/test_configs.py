"""Every config style is read under its tool's exact key names and becomes the FineTuneJob
its users mean; keys with no place are named, unknown keys get suggestions."""

from __future__ import annotations

from datetime import datetime
from pathlib import Path
from typing import Any

import pytest

from ftapi import parse_job
from fttrainer.configs import (
    ConfigError,
    StyleFlags,
    Translation,
    flat,
    hydra,
    load_config,
    toml_config,
    yaml_config,
)
from fttrainer.configs.base import Custom, Ignore, Refuse, To
from tests.seeds import documented_keys

NOW = datetime(2026, 11, 22, 9, 30, 5)


def _spec(translation: Translation) -> dict[str, Any]:
    translation.raise_errors()
    return parse_job(translation.manifest).spec.to_dict()


def _notes(translation: Translation, level: str) -> dict[str, str]:
    return {n.key: n.message for n in translation.notes if n.level == level}


# --- every key the tools document is in its style's table ----------------------------------


@pytest.mark.parametrize("style", list(documented_keys()))
def test_every_documented_key_has_a_place(style: str) -> None:
    documented, table = documented_keys()[style]
    assert len(documented) >= 12, f"the seed parser found too few keys: {documented}"
    assert not documented - table, f"{style}: keys its documents name but we do not read"


def test_the_seed_documents_keys_that_the_old_map_missed() -> None:
    keys = documented_keys()
    assert "fine_tuning.quantization.bnb_4bit_quant_type" in keys["yaml"][1]
    assert "fine_tuning.quantization.bnb_4bit_use_double_quant" in keys["yaml"][1]
    assert "dataset.preprocessing.add_eos_token" in keys["yaml"][1]
    assert "max-completion-length" in keys["hydra"][1]
    assert {"project_name", "train_data_path", "output_dir", "config"} <= keys["flat .env"][1]


def test_every_table_entry_is_a_known_kind() -> None:
    for table in (
        flat.TABLE,
        toml_config.FINE_TUNER,
        toml_config.MLFLOW,
        yaml_config.KEYS,
        hydra.TABLE,
    ):
        for key, mapping in table.items():
            assert isinstance(mapping, To | Ignore | Refuse | Custom), key


# --- the flat style ----------------------------------------------------------------------


def test_flat_defaults_are_the_tools_own() -> None:
    translation = load_config(
        None,
        StyleFlags(flat={"model_name": "./m", "data_path": "d.jsonl", "dataset_type": "mcq_jsonl"}),
        now=NOW,
    )
    spec = _spec(translation)
    assert spec["training"]["epochs"] == 3
    assert (spec["training"]["batchSize"], spec["training"]["gradientAccumulationSteps"]) == (4, 4)
    assert spec["training"]["learningRate"] == 3e-4
    assert spec["method"]["lora"] | {} == {
        "r": 8,
        "alpha": 16,
        "dropout": 0.1,
        "targetModules": ["all-linear"],
        "modulesToSave": [],
        "bias": "none",
        "rslora": False,
        "trainRouter": False,
    }
    assert spec["dataset"]["split"] == {"train": 0.8, "validation": 0.1, "test": 0.1, "seed": 42}
    assert (spec["evaluation"]["strategy"], spec["evaluation"]["steps"]) == ("steps", 100)
    assert spec["dataset"]["format"] == "mcq"
    assert translation.run_directory == "results/finetune/m/20261122_093005"


@pytest.mark.parametrize(
    ("given", "split"),
    [
        ({"train_ratio": "1.0", "val_ratio": "0.0"}, (1.0, 0.0, 0.0)),
        ({"train_ratio": "0.85", "val_ratio": "0.15"}, (0.85, 0.15, 0.0)),
        ({"train_ratio": "0.7", "val_ratio": "0.2", "test_ratio": "0.1"}, (0.7, 0.2, 0.1)),
        ({"val_path": "v.jsonl", "test_path": "t.jsonl"}, (1.0, 0.0, 0.0)),
        ({"train_ratio": "0.9", "test_ratio": "0.0"}, (0.9, 0.1, 0.0)),
    ],
    ids=["example 1", "example 3", "example 4", "separate files", "validation remainder"],
)
def test_flat_split_ratios_fill_up_to_one(given: dict[str, str], split: tuple[float, ...]) -> None:
    values = {"model_name": "./m", "data_path": "d.jsonl", "dataset_type": "plain_text", **given}
    spec = _spec(load_config(None, StyleFlags(flat=values), now=NOW))
    got = spec["dataset"].get("split", {})
    assert (got["train"], got["validation"], got["test"]) == split


def test_flat_without_validation_does_not_evaluate_and_says_so() -> None:
    values = {
        "model_name": "./m",
        "data_path": "d.jsonl",
        "dataset_type": "plain_text",
        "train_ratio": "1.0",
        "val_ratio": "0.0",
        "eval_steps": "50",
    }
    translation = load_config(None, StyleFlags(flat=values), now=NOW)
    assert _spec(translation)["evaluation"]["strategy"] == "no"
    assert "no validation data" in _notes(translation, "warning")["--eval_steps"]


def test_env_file_keys_includes_and_flags_over_the_file(tmp_path: Path) -> None:
    (tmp_path / "base.env").write_text("EPOCHS=7\nLORA_R=4\n")
    env = tmp_path / "my.env"
    env.write_text(
        "# comment\nCONFIG=base.env\nPROJECT_NAME=My Project\nMODEL_NAME=org/Model-1B\n"
        'TRAIN_DATA_PATH="./data/train.jsonl"\nDATASET_TYPE=instruction_jsonl\nLORA_R=16\n'
        "OUTPUT_DIR=./results/my_model  # where\nexport DEVICE=cuda\n"
    )
    translation = load_config(env, StyleFlags(flat={"epochs": "2"}), now=NOW)
    spec = _spec(translation)
    assert translation.style == flat.STYLE
    assert translation.manifest["metadata"]["name"] == "my-project"
    assert spec["training"]["epochs"] == 2  # the flag wins over both files
    assert spec["method"]["lora"]["r"] == 16  # the including file wins over the included
    assert spec["dataset"]["train"]["uri"] == "./data/train.jsonl"
    assert spec["training"]["device"] == "cuda"
    assert translation.run_directory == "./results/my_model/20261122_093005"


def test_env_file_values_lose_their_quotes_and_comments(tmp_path: Path) -> None:
    env = tmp_path / "quoted.env"
    env.write_text(
        "DATA_PATH=\"q.jsonl\"   # training data\nPROJECT_NAME='my # project'\n"
        'OUTPUT_DIR=./out # where\nMODEL_NAME="a"b"\nEMPTY=\'\'\n'
    )
    assert flat.read_env_file(env) == {
        "data_path": "q.jsonl", "project_name": "my # project", "output_dir": "./out",
        "model_name": '"a"b"', "empty": "",
    }  # fmt: skip


def test_env_file_errors_name_the_line(tmp_path: Path) -> None:
    env = tmp_path / "bad.env"
    env.write_text("MODEL_NAME=x\nnot a setting\n")
    with pytest.raises(ValueError, match=r"bad.env:2: expected KEY=value"):
        flat.read_env_file(env)
    env.write_text("CONFIG=bad.env\n")
    with pytest.raises(ValueError, match="cycle"):
        flat.read_env_file(env)


def test_unknown_keys_get_suggestions_in_the_styles_spelling(tmp_path: Path) -> None:
    env = tmp_path / "typo.env"
    env.write_text("MODEL_NAME=x\nDATA_PATH=d.jsonl\nDATASET_TYPE=plain_text\nLORA_RANK=8\n")
    errors = _notes(load_config(env, now=NOW), "error")
    assert list(errors) == ["LORA_RANK"]
    assert errors["LORA_RANK"].startswith("unknown setting; did you mean LORA_R or")


def test_hf_token_never_reaches_the_manifest() -> None:
    values = {
        "model_name": "./m",
        "data_path": "d.jsonl",
        "dataset_type": "plain_text",
        "hf_token": "hf_secret_value",
    }
    translation = load_config(None, StyleFlags(flat=values), now=NOW)
    assert "hf_secret_value" not in repr(translation.manifest)
    assert translation.environment == {"HF_TOKEN": "hf_secret_value"}


def test_bad_values_and_missing_required_keys_are_errors() -> None:
    translation = load_config(
        None, StyleFlags(flat={"dataset_type": "jsonl", "epochs": "many"}), now=NOW
    )
    errors = _notes(translation, "error")
    assert "is not one of plain_text, mcq_jsonl, instruction_jsonl" in errors["--dataset_type"]
    assert "expected a number" in errors["--epochs"]
    assert "required" in errors["--data_path"]
    with pytest.raises(ConfigError, match="--epochs"):
        translation.raise_errors()


# --- TOML --------------------------------------------------------------------------------


def _toml(tmp_path: Path, text: str) -> Translation:
    path = tmp_path / "config.toml"
    path.write_text(text)
    return load_config(path, now=NOW)


BASE_TOML = '[fine_tuner]\nbase_model_id = "./m"\ntraining_data_id = "data/qa.jsonl"\n'


def test_toml_qlora_columns_markers_and_nulls(tmp_path: Path) -> None:
    translation = _toml(
        tmp_path,
        BASE_TOML
        + (
            'load_in_4bit = true\nrank = 32\nlora_alpha = 16\ndtype = "null"\n'
            'validation_data_id = "null"\nquestion_column = "q"\nground_truth_column = "a"\n'
            'system_prompt_column = "null"\ntrain_on_responses_only = true\n'
            'question_part = "<|im_start|>user\\n"\nanswer_part = "<|im_start|>assistant\\n"\n'
            'use_gradient_checkpointing = "unsloth"\ndataset_num_proc = 4\nreport_to = "none"\n'
            'loftq_config = "null"\nwarmup_steps = 5\noptimizer = "paged_adamw_8bit"\n'
        ),
    )
    spec = _spec(translation)
    assert translation.style == toml_config.STYLE
    assert spec["method"]["type"] == "qlora" and spec["method"]["quantization"]["bits"] == 4
    assert (spec["method"]["lora"]["r"], spec["method"]["lora"]["alpha"]) == (32, 16)
    assert spec["dataset"]["format"] == "qa"
    assert spec["dataset"]["columns"] == {"question": "q", "answer": "a"}
    assert "validation" not in spec["dataset"] and spec["model"]["dtype"] == "auto"
    assert spec["dataset"]["responseMarkers"] == {
        "instruction": "<|im_start|>user\n",
        "response": "<|im_start|>assistant\n",
    }
    assert spec["training"]["gradientCheckpointing"] is True
    assert "unsloth" in _notes(translation, "warning")["[fine_tuner] use_gradient_checkpointing"]
    assert spec["dataset"]["numProc"] == 4 and spec["logging"]["reportTo"] == []
    assert translation.run_directory == "results/m/20261122_093005"


def test_toml_hub_ids_become_hf_uris_and_full_finetuning_drops_quantization(
    tmp_path: Path,
) -> None:
    translation = _toml(
        tmp_path,
        (
            '[fine_tuner]\nbase_model_id = "./m"\ntraining_data_id = "user/training-dataset"\n'
            "full_finetuning = true\nload_in_4bit = true\nrank = 16\n"
        ),
    )
    spec = _spec(translation)
    assert spec["dataset"]["train"]["uri"] == "hf://user/training-dataset"
    assert spec["method"]["type"] == "full" and "quantization" not in spec["method"]
    warnings = _notes(translation, "warning")
    assert "Unsloth turns quantized loading off" in warnings["[fine_tuner] load_in_4bit"]
    assert "no LoRA r" in warnings["[fine_tuner] rank"]


@pytest.mark.parametrize(
    ("mlflow", "run_name"),
    [
        ('run_name = "my-model"', "my-model"),
        ('run_name = "null"\nrun_name_prefix = "exp-"', "exp-20261122-093005"),
        ('run_name = "null"\nrun_name_suffix = "-v1"', "20261122-093005-v1"),
        ('run_name = "0.0.1"\nrun_name_prefix = "exp-"\nrun_name_suffix = "-v1"', "exp-0.0.1-v1"),
    ],
    ids=["explicit", "prefix", "suffix", "both"],
)
def test_toml_mlflow_run_names_as_the_tool_builds_them(
    tmp_path: Path, mlflow: str, run_name: str
) -> None:
    from ftapi import parse_job
    from fttrainer.reporting.tracking import mlflow_run_name

    translation = _toml(
        tmp_path,
        BASE_TOML + 'report_to = "mlflow"\n[mlflow]\n'
        'tracking_uri = "http://mlflow:5000"\nexperiment_name = "exp"\n' + mlflow,
    )
    job = parse_job(translation.manifest)
    assert job.spec.logging.mlflow is not None
    assert job.spec.logging.mlflow.tracking_uri == "http://mlflow:5000"
    assert mlflow_run_name(job.spec.logging, job.name) == run_name


def test_toml_errors(tmp_path: Path) -> None:
    translation = _toml(tmp_path, BASE_TOML + "ranks = 4\n[mlfow]\nx = 1\n")
    errors = _notes(translation, "error")
    assert "did you mean [fine_tuner] rank" in errors["[fine_tuner] ranks"]
    assert "did you mean [mlflow]" in errors["[mlfow]"]


def test_toml_push_to_hub_names_a_repository_after_the_job(tmp_path: Path) -> None:
    """The TOML style's `push_to_hub = true` names no repository; the tool pushes to the
    token owner's namespace. The job's name + -finetuned, a bare repoId, does the same."""
    translation = _toml(tmp_path, BASE_TOML + "push_to_hub = true\n")
    push = translation.manifest["spec"]["output"]["pushToHub"]
    name = translation.manifest["metadata"]["name"]
    assert push == {"repoId": f"{name}-finetuned",
                    "tokenSecretRef": {"name": "hf-token", "key": "HF_TOKEN"}}  # fmt: skip
    info = _notes(translation, "info")["[fine_tuner] push_to_hub"]
    assert f"<the token owner>/{name}-finetuned" in info and "pushToHub.repoId" in info
    off = _toml(tmp_path, BASE_TOML + "push_to_hub = false\n")
    assert "pushToHub" not in off.manifest["spec"].get("output", {})


# --- nested YAML -------------------------------------------------------------------------


def _yaml(tmp_path: Path, text: str, dotted: dict[str, str] | None = None) -> Translation:
    path = tmp_path / "config.yaml"
    path.write_text(text)
    return load_config(path, StyleFlags(dotted=dotted or {}), now=NOW)


def test_yaml_quantization_names_precedence_and_overrides(tmp_path: Path) -> None:
    translation = _yaml(
        tmp_path,
        (
            "model: {base_model: ./m, load_in_4bit: true, use_liger_kernels: true}\n"
            "fine_tuning:\n  method: qlora\n  lora: {r: 16, alpha: 32, task_type: CAUSAL_LM}\n"
            "  quantization: {bits: 4, bnb_4bit_compute_dtype: float16,"
            " bnb_4bit_quant_type: fp4, bnb_4bit_use_double_quant: false}\n"
            "training: {micro_batch_size: 2, gradient_accumulation_steps: 16,"
            " mixed_precision: 'no', max_seq_length: 512, learning_rate: 2.0e-4}\n"
            "dataset: {format: alpaca, train_path: data/train.json, preprocessing:"
            " {add_eos_token: true, add_bos_token: false, use_chat_template: true}}\n"
            "distributed: {gradient_accumulation_steps: 8}\n"
            "output: {output_dir: models/runs, eval_steps: 100}\n"
            "evaluation: {eval_strategy: steps, eval_steps: 200}\n"
        ),
        dotted={"training.learning_rate": "1e-4", "model.base_model": "./other"},
    )
    spec = _spec(translation)
    assert spec["model"]["name"] == "./other" and spec["training"]["learningRate"] == 1e-4
    assert spec["method"]["quantization"] == {
        "bits": 4,
        "type": "fp4",
        "computeDtype": "float16",
        "doubleQuant": False,
    }
    assert spec["training"]["precision"] == "fp32" and spec["training"]["ligerKernels"] is True
    assert spec["training"]["gradientAccumulationSteps"] == 16
    assert (spec["evaluation"]["strategy"], spec["evaluation"]["steps"]) == ("steps", 200)
    assert (spec["dataset"]["addEos"], spec["dataset"]["addBos"]) == (True, False)
    assert spec["dataset"]["format"] == "instruction" and spec["dataset"]["maxSeqLength"] == 512
    assert spec["output"]["uri"] == "models/runs" and translation.run_directory == "models/runs"
    warnings = _notes(translation, "warning")
    assert (
        "training.gradient_accumulation_steps"
        in warnings["distributed.gradient_accumulation_steps"]
    )
    assert "evaluation.eval_steps" in warnings["output.eval_steps"]


def test_yaml_spectrum_percentile_and_layer_lists(tmp_path: Path) -> None:
    base = "model: {base_model: ./m}\ndataset: {train_path: d.json}\n"
    percentile = _yaml(
        tmp_path,
        base + "fine_tuning: {method: spectrum, spectrum: "
        "{snr_threshold: 0.7, layers_to_finetune: auto}}\n",
    )
    assert _spec(percentile)["method"]["spectrum"]["topFraction"] == pytest.approx(0.3)
    layers = _yaml(
        tmp_path, base + "fine_tuning: {method: spectrum, spectrum: {layers_to_finetune: [0, 3]}}\n"
    )
    assert _spec(layers)["method"]["spectrum"]["targetParameters"] == [r"\.layers\.(0|3)\."]


def test_yaml_deepspeed_config_file_is_inlined(tmp_path: Path) -> None:
    (tmp_path / "ds.json").write_text(
        '{"zero_optimization": {"stage": 2}, "wall_clock_breakdown": true}'
    )
    translation = _yaml(
        tmp_path,
        "model: {base_model: ./m}\ndataset: {train_path: d.json}\n"
        "distributed: {use_deepspeed: true, deepspeed_config: ds.json,"
        " zero_stage: 3}\n",
    )
    deepspeed = _spec(translation)["distributed"]
    assert deepspeed["strategy"] == "deepspeed"
    assert deepspeed["deepspeed"]["zeroStage"] == 3
    assert deepspeed["deepspeed"]["config"]["wall_clock_breakdown"] is True


def test_yaml_unquoted_no_means_the_choice_no(tmp_path: Path) -> None:
    """PyYAML (YAML 1.1, as the tool itself reads its file) turns an unquoted `no` into
    false: `mixed_precision: no` and `eval_strategy: no` still mean the choice "no"."""
    config = tmp_path / "c.yaml"
    config.write_text(
        "model:\n  base_model: ./m\ndataset:\n  train_path: d.jsonl\n  format: alpaca\n"
        "training:\n  mixed_precision: no\nevaluation:\n  eval_strategy: no\n"
    )
    spec = _spec(load_config(config, StyleFlags(), now=NOW))
    assert spec["training"]["precision"] == "fp32"
    assert spec["evaluation"]["strategy"] == "no"


def test_yaml_unknown_keys_and_sections(tmp_path: Path) -> None:
    translation = _yaml(
        tmp_path,
        "model: {base_model: ./m, load_in_4bits: true}\n"
        "dataset: {train_path: d.json}\ntraining: {epoch: 2}\n",
    )
    errors = _notes(translation, "error")
    assert "did you mean model.load_in_4bit" in errors["model.load_in_4bits"]
    assert "did you mean training.epochs" in errors["training.epoch"]


# --- Hydra-style flags -------------------------------------------------------------------


@pytest.mark.parametrize(
    ("row", "trainer", "family", "fmt"),
    [
        ('{"text": "a b c"}', "SFT", "standard", "plain_text"),
        ('{"prompt": "p", "completion": "c"}', "SFT", "standard", "prompt_completion"),
        ('{"messages": [{"role": "user", "content": "x"}]}', "sft", "conversational", "messages"),
        (
            '{"conversations": [{"from": "human", "value": "x"}]}',
            "SFT",
            "conversational",
            "sharegpt",
        ),
        ('{"prompt": "p", "chosen": "a", "rejected": "b"}', "DPO", "preference", "preference"),
        ('{"prompt": "p"}', "GRPO", "standard", "prompt_only"),
    ],
    ids=["sft text", "sft prompt-completion", "sft messages", "sft sharegpt", "dpo", "grpo"],
)
def test_hydra_format_families_pick_the_row_shape(
    tmp_path: Path, row: str, trainer: str, family: str, fmt: str
) -> None:
    data = tmp_path / "d.jsonl"
    data.write_text(row + "\n")
    flags = {
        "model": "./m",
        "dataset": str(data),
        "trainer": trainer,
        "format": family,
        "per-device-train-batch-size": "2",
        "gradient-acc-steps": "2",
        "optim": "adamw_torch_fused",
        "learning-rate": "2e-4",
        "num-train-epochs": "1",
        "lr-scheduler-type": "cosine",
        "save-steps": "10",
        "max-completion-length": "32",
        "max-seq-length": "256",
        "gradient-checkpointing": "True",
        "report-to": "none",
        "distributed-training": "unsloth",
    }
    translation = load_config(None, StyleFlags(hydra=flags), now=NOW)
    translation.raise_errors()
    manifest = translation.manifest
    assert manifest["spec"]["dataset"]["format"] == fmt
    assert manifest["spec"]["trainer"]["type"] == trainer.lower()
    assert "Unsloth is not used" in _notes(translation, "warning")["--distributed-training"]
    if trainer == "GRPO":
        assert manifest["spec"]["trainer"]["grpo"]["maxCompletionLength"] == 32
    else:
        spec = _spec(translation)
        assert spec["evaluation"]["maxNewTokens"] == 32
        assert spec["training"]["optimizer"] == "adamw_torch_fused"
        assert spec["training"]["gradientCheckpointing"] is True


def test_hydra_reads_the_columns_of_every_file_type_the_reader_takes(tmp_path: Path) -> None:
    """Text lines, Parquet and {"data": [...]} JSON: the format comes from their columns,
    not from a prompt_completion guess every row then fails."""
    import pyarrow as pa
    import pyarrow.parquet as pq

    from fttrainer.configs.hydra import first_row_keys

    (tmp_path / "corpus.txt").write_text("one line\nanother\n")
    pq.write_table(pa.table({"text": ["a", "b"]}), tmp_path / "rows.parquet")
    (tmp_path / "wrapped.json").write_text('{"data": [{"messages": []}]}')
    assert first_row_keys(str(tmp_path / "corpus.txt")) == {"text"}
    assert first_row_keys(str(tmp_path / "rows.parquet")) == {"text"}
    assert first_row_keys(str(tmp_path / "wrapped.json")) == {"messages"}
    flags = {"model": "./m", "dataset": str(tmp_path / "corpus.txt"), "trainer": "SFT"}
    translation = load_config(None, StyleFlags(hydra=flags), now=NOW)
    assert translation.manifest["spec"]["dataset"]["format"] == "plain_text"


def test_hydra_report_to_wandb_gets_a_project() -> None:
    flags = {
        "model": "./m",
        "dataset": "hf://org/d",
        "report-to": "wandb",
        "format": "conversational",
    }
    spec = _spec(load_config(None, StyleFlags(hydra=flags), now=NOW))
    assert spec["logging"]["reportTo"] == ["wandb"] and spec["logging"]["wandb"]["project"]


def test_styles_that_evaluate_only_given_data_train_on_every_row_without_it(
    tmp_path: Path,
) -> None:
    """The API's default holds 10% out for evaluation; these tools train on all of it."""
    flags = {"model": "./m", "dataset": "hf://org/d", "format": "conversational"}
    hydra_run = load_config(None, StyleFlags(hydra=flags), now=NOW)
    toml_run = _toml(tmp_path, BASE_TOML)
    for translation in (hydra_run, toml_run):
        job = parse_job(translation.manifest)
        assert job.spec.evaluation.strategy == "no"
        assert job.spec.effective_split().train == 1.0
        assert any("every row trains" in m for m in _notes(translation, "info").values())
    with_validation = _toml(tmp_path, BASE_TOML + 'validation_data_id = "data/val.jsonl"\n')
    job = parse_job(with_validation.manifest)
    assert job.spec.evaluation.strategy != "no" and job.spec.dataset.validation is not None


# --- detection ---------------------------------------------------------------------------


def test_styles_are_detected_and_not_mixed(tmp_path: Path, repo: Path) -> None:
    assert load_config(repo / "examples" / "quickstart-cpu.yaml").style == "FineTuneJob manifest"
    with pytest.raises(ConfigError, match="cannot be mixed"):
        load_config(None, StyleFlags(flat={"epochs": "1"}, hydra={"model": "m"}))
    with pytest.raises(ConfigError, match="change it with --set"):
        load_config(repo / "examples" / "quickstart-cpu.yaml", StyleFlags(flat={"epochs": "1"}))
    odd = tmp_path / "odd.yaml"
    odd.write_text("hello: world\n")
    with pytest.raises(ConfigError, match="cannot tell its config style"):
        load_config(odd)
    settings = tmp_path / "settings"  # no extension, KEY=value lines: a .env file
    settings.write_text("MODEL_NAME=./m\nDATA_PATH=d.jsonl\nDATASET_TYPE=plain_text\n")
    assert load_config(settings).style == flat.STYLE


@pytest.mark.parametrize(
    ("given", "name"),
    [
        ("My Project", "my-project"),
        ("Qwen2.5-0.5B-Instruct-bnb-4bit", "qwen2-5-0-5b-instruct-bnb-4bit"),
        ("7b_model", "ft-7b-model"),
        ("x" * 80, "x" * 42),
        ("__", "finetune"),
    ],
)
def test_project_and_model_names_become_valid_job_names(given: str, name: str) -> None:
    from fttrainer.configs.base import job_name

    assert job_name(given) == name
    parse_job(
        {
            "metadata": {"name": name},
            "spec": {
                "model": {"name": "m"},
                "dataset": {"train": {"uri": "d.jsonl"}},
                "output": {"uri": "o"},
            },
        }
    )


def _field_schema(path: str) -> dict[str, Any]:
    from ftapi.crd import build_openapi_schema

    node = build_openapi_schema()["properties"]["spec"]
    for part in path.split("."):
        node = node.get("items", node)["properties"][part]
    return dict(node)


def _sample(schema: dict[str, Any]) -> Any:
    """A valid value of a field, as a flag/.env/TOML/YAML user would write it."""
    if "enum" in schema:
        return str(schema["enum"][-1])
    kind = schema.get("type")
    if kind == "integer":
        return 3
    if kind == "number":
        return 0.25
    if kind == "boolean":
        return True
    if kind == "array":
        items = schema.get("items", {})
        return [str(items["enum"][0])] if "enum" in items else ["q_proj", "v_proj"]
    return "somewhere/value.jsonl"


DIRECT_KEYS = [
    (style, key, mapping.path)
    for style, table in (("flat", flat.TABLE), ("toml", toml_config.FINE_TUNER),
                         ("yaml", yaml_config.KEYS), ("hydra", hydra.TABLE))
    for key, mapping in table.items()
    if isinstance(mapping, To)
]  # fmt: skip


@pytest.mark.parametrize(
    ("style", "key", "path"), DIRECT_KEYS, ids=[f"{s}:{k}" for s, k, _ in DIRECT_KEYS]
)
def test_every_direct_key_reaches_its_field(
    style: str, key: str, path: str, tmp_path: Path
) -> None:
    value = _sample(_field_schema(path))
    if style == "flat":
        values = {"model_name": "./m", "dataset_type": "plain_text"}
        if key != "train_data_path":
            values["data_path"] = "d.jsonl"
        values[key] = str(value) if not isinstance(value, list) else ",".join(value)
        translation = load_config(None, StyleFlags(flat=values), now=NOW)
    elif style == "hydra":
        values = {"model": "./m", "dataset": "hf://o/d", "format": "standard"}
        values[key] = str(value) if not isinstance(value, list) else ",".join(value)
        translation = load_config(None, StyleFlags(hydra=values), now=NOW)
    elif style == "toml":
        import json

        base = "".join(line + "\n" for line in BASE_TOML.splitlines() if not line.startswith(key))
        translation = _toml(tmp_path, base + f"{key} = {json.dumps(value)}\n")
    else:
        import yaml

        section, _, rest = key.partition(".")
        document: dict[str, Any] = {
            "model": {"base_model": "./m"},
            "dataset": {"train_path": "d.json"},
        }
        node = document.setdefault(section, {})
        *parents, leaf = rest.split(".")
        for parent in parents:
            node = node.setdefault(parent, {})
        node[leaf] = value
        translation = _yaml(tmp_path, yaml.safe_dump(document))
    assert not translation.errors, translation.errors
    got: Any = translation.manifest["spec"]
    for part in path.split("."):
        got = got[part]
    assert got == value or str(got) == str(value), (key, got, value)
