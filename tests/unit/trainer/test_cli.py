"""The `finetune` CLI: help texts and the validate command, run as a user would."""

from __future__ import annotations

import os
import subprocess
import sys
import time
from pathlib import Path

import pytest
import yaml

from ftapi.contract import ENV_TERMINATION_LOG, EXIT_INVALID_INPUT, INVALID_INPUT_MARKER
from fttestkit.builders import make_job
from fttrainer.cli import main


def _finetune(*args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "fttrainer.cli", *args], capture_output=True, text=True, check=False
    )


@pytest.mark.parametrize("command", [[], ["validate"], ["run"], ["plan"], ["convert"], ["formats"]])
def test_help(command: list[str]) -> None:
    result = _finetune(*command, "--help")
    assert result.returncode == 0
    assert "usage: finetune" in result.stdout


def test_run_help_lists_every_style_flag() -> None:
    from fttrainer.configs import flat, hydra

    shown = _finetune("run", "--help").stdout
    for name in [*flat.FLAG_NAMES, *(f"{k}" for k in hydra.KEYS)]:
        assert f"--{name} V" in shown, name
    assert "--section.key VALUE" in shown
    top = _finetune("--help").stdout
    assert "TOML [fine_tuner] config" in top and "nested YAML config" in top


def test_unknown_flags_get_suggestions_from_every_style() -> None:
    result = _finetune("run", "--lora_rank", "8", "--per-device-batch-size", "2")
    assert result.returncode == 2
    assert "--lora_rank (did you mean --lora_r" in result.stderr
    assert "--per-device-batch-size (did you mean --per-device-train-batch-size" in result.stderr


def test_errors_name_the_users_own_key(tmp_path: Path) -> None:
    result = _finetune(
        "validate", "--spec-only", "--model_name", "./m", "--data_path", "d.jsonl",
        "--dataset_type", "plain_text", "--train_ratio", "0.5", "--val_ratio", "0.6",
    )  # fmt: skip
    assert result.returncode == 1
    assert "read command line as: flat CLI flags / .env file" in result.stderr
    assert "train + validation + test must sum to 1" in result.stderr
    assert "--train_ratio" in result.stderr and "--val_ratio" in result.stderr


def test_convert_writes_a_manifest_with_the_notes_as_comments(tmp_path: Path) -> None:
    config = tmp_path / "c.yaml"
    config.write_text(
        "model: {base_model: ./m, use_flash_attention: true}\n"
        "dataset: {train_path: d.json, format: alpaca}\n"
        "evaluation: {benchmarks: [human-eval]}\n"
    )
    target = tmp_path / "job.yaml"
    result = _finetune("convert", str(config), "-o", str(target), "--set", "training.epochs=2")
    assert result.returncode == 0, result.stderr
    text = target.read_text()
    assert "# Notes on the original keys:" in text
    assert "evaluation.benchmarks: human-eval: not run" in text
    job = yaml.safe_load(text)
    assert job["kind"] == "FineTuneJob" and job["spec"]["training"]["epochs"] == 2
    assert job["spec"]["model"]["attention"] == "auto"
    again = _finetune("validate", str(target), "--spec-only")
    assert again.returncode == 0 and "as: FineTuneJob manifest" in again.stderr


@pytest.mark.parametrize(
    ("distributed", "refusal"),
    [
        ({"strategy": "deepspeed", "deepspeed": {"zeroStage": 3}}, None),
        ({"strategy": "deepspeed", "deepspeed": {"zeroStage": 3, "config": {
            "zero_optimization": {"stage3_max_live_parameters": 1e9, "sub_group": 1}}}},
         "spec.distributed.deepspeed.config.zero_optimization.sub_group: Extra inputs"),
        ({"strategy": "fsdp"}, None),  # the pods have GPUs (gpusPerNode defaults to 1)
        ({"strategy": "fsdp"}, "distributed.strategy fsdp needs GPUs"),
    ],
)  # fmt: skip
def test_validate_runs_the_checks_a_run_starts_with(
    tmp_path: Path, capsys: pytest.CaptureFixture[str], distributed: dict[str, object],
    refusal: str | None,
) -> None:  # fmt: skip
    job = make_job("ds").set("distributed", distributed)
    if refusal and "fsdp" in refusal:
        job.set("resources.gpusPerNode", 0)
    path = tmp_path / "job.yaml"
    path.write_text(yaml.safe_dump(job.obj()))
    assert main(["validate", str(path), "--spec-only"]) == (1 if refusal else 0)
    if refusal:
        assert refusal in capsys.readouterr().err


def test_validate_accepts_an_example(repo: Path, capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["validate", str(repo / "examples" / "dpo.yaml")]) == 0
    assert "valid FineTuneJob 'zephyr-dpo' (dpo + lora" in capsys.readouterr().out


def test_validate_reports_each_field(tmp_path: Path) -> None:
    bad = make_job().set("method", {"type": "qlora", "quantization": {"bits": 8}})
    bad.set("training.epochs", -1)
    path = tmp_path / "bad.yaml"
    path.write_text(yaml.safe_dump(bad.obj()))
    result = _finetune("validate", str(path))
    assert result.returncode == 1
    assert "spec.training.epochs: must be > 0.0 (got -1)" in result.stderr
    assert "spec.method.quantization.bits: qlora needs 4-bit" in result.stderr


def test_validate_answers_in_seconds_on_a_parquet_decompression_bomb(tmp_path: Path) -> None:
    """1 KB on disk, 4 GiB decoded: refused with the file and row group, in bounded time and
    memory (the whole file was decoded into rows before)."""
    import numpy as np
    import pyarrow as pa
    import pyarrow.parquet as pq

    data = tmp_path / "bomb.parquet"
    text = pa.DictionaryArray.from_arrays(np.zeros(1024, dtype=np.int32), pa.array(["x" * 2**22]))
    pq.write_table(pa.table({"text": text}), data, compression="zstd",
                   dictionary_pagesize_limit=2**23, row_group_size=512)  # fmt: skip
    path = tmp_path / "job.yaml"
    job = make_job("bomb").set("dataset.train.uri", str(data)).set("dataset.format", "plain_text")
    path.write_text(yaml.safe_dump(job.obj()))
    started = time.monotonic()
    result = _finetune("validate", str(path))
    assert time.monotonic() - started < 30
    assert result.returncode == 1
    assert f"{data}:row group 0: the file decodes to more than 256.0 MiB" in result.stderr


def test_validate_missing_file(tmp_path: Path) -> None:
    result = _finetune("validate", str(tmp_path / "nope.yaml"))
    assert result.returncode == 1
    assert "No such file" in result.stderr


@pytest.mark.parametrize(
    ("name", "content", "flags", "message"),
    [
        ("latin.env", b"# mod\xe8le\nMODEL_NAME=x\n", [],
         "latin.env: not UTF-8 text (byte 5: invalid continuation byte); save it as UTF-8"),
        ("cp1252.yaml", b"model:\n  base_model: caf\xe9\n", [], "cp1252.yaml: not UTF-8 text"),
        ("bad.env", b"MODEL_NAME=x\nthis line is bad\n", [],
         "bad.env:2: expected KEY=value, got 'this line is bad'"),
        ("cycle.env", b"CONFIG=cycle.env\nMODEL_NAME=x\n", [], "CONFIG includes form a cycle"),
        ("include.env", b"CONFIG=missing.env\nMODEL_NAME=x\n", [],
         "missing.env: No such file or directory"),
        ("bad.toml", b'[fine_tuner]\nbase_model_id = "x\n', [], "bad.toml: not valid TOML"),
        ("nested.yaml", b"model:\n  base_model: x\n", ["--model.base_model.x", "1"],
         "--model.base_model.x: base_model is not a section"),
    ],
)  # fmt: skip
def test_an_unreadable_config_is_one_clear_error_not_a_traceback(
    tmp_path: Path, capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch,
    name: str, content: bytes, flags: list[str], message: str,
) -> None:  # fmt: skip
    (tmp_path / name).write_bytes(content)
    monkeypatch.chdir(tmp_path)
    assert main(["validate", name, *flags]) == 1
    assert message in capsys.readouterr().err


def test_formats_lists_every_format_with_an_example() -> None:
    from typing import get_args

    from ftapi.v1alpha1.dataset import DatasetFormat

    result = _finetune("formats")
    assert result.returncode == 0, result.stderr
    for fmt in get_args(DatasetFormat):
        assert f"\n{fmt}: " in result.stdout, fmt
    assert "<tool_call>" in result.stdout and "row:" in result.stdout


def test_set_wins_over_a_styles_default_but_not_over_the_users_own_key() -> None:
    flags = ["--model_name", "./m", "--data_path", "s3://b/d.jsonl", "--dataset_type", "qa"]
    dropped = _finetune("validate", *flags, "--set", "evaluation.strategy=no")
    assert dropped.returncode == 0, dropped.stderr
    assert "evaluation.steps: the style's default dropped" in dropped.stderr
    kept = _finetune("validate", *flags, "--eval_steps", "50", "--set", "evaluation.strategy=no")
    assert kept.returncode == 1
    assert "steps is only used with strategy steps" in kept.stderr and "--eval_steps" in kept.stderr


def test_convert_writes_what_validate_accepted(tmp_path: Path) -> None:
    """The style default --set conflicts with is gone from the written manifest too."""
    flags = ["--model_name", "./m", "--data_path", "s3://b/d.jsonl", "--dataset_type", "qa"]
    out = tmp_path / "job.yaml"
    converted = _finetune("convert", *flags, "--set", "evaluation.strategy=no", "-o", str(out))
    assert converted.returncode == 0, converted.stderr
    assert "steps" not in yaml.safe_load(out.read_text())["spec"]["evaluation"]
    assert _finetune("validate", str(out)).returncode == 0


def test_without_set_a_configs_own_errors_are_reported_as_they_are() -> None:
    """No --set: no style default is dropped, and the error is the one the config has."""
    flags = ["--model_name", "./m", "--data_path", "s3://b/d.jsonl", "--dataset_type", "qa",
             "--val_path", "s3://b/v.jsonl", "--val_ratio", "0.2"]  # fmt: skip
    result = _finetune("validate", *flags, "--spec-only")
    assert result.returncode == 1
    assert "split.validation must be 0 when a separate validation source is given" in (
        result.stderr
    )
    assert "default dropped" not in result.stderr


def _run_in_a_pod(
    manifest: dict[str, object], tmp_path: Path
) -> tuple[subprocess.CompletedProcess[str], str]:
    """`finetune run` as the pod runs it: with a termination log (what the kubelet mounts at
    /dev/termination-log). The result, and what the operator would read from the log."""
    path = tmp_path / "job.yaml"
    path.write_text(yaml.safe_dump(manifest))
    log = tmp_path / "termination-log"
    log.touch()
    result = subprocess.run(
        [sys.executable, "-m", "fttrainer.cli", "run", str(path)], capture_output=True,
        text=True, check=False, env={**os.environ, ENV_TERMINATION_LOG: str(log)},
    )  # fmt: skip
    return result, log.read_text()


@pytest.mark.parametrize(
    ("distributed", "refusal"),
    [
        ({"strategy": "deepspeed", "deepspeed": {"config": {"zero_optimization": {
            "overlap_comm": True, "contiguous_gradient": True}}}},
         "spec.distributed.deepspeed.config.zero_optimization.contiguous_gradient: Extra inputs "
         "are not permitted"),
        ({"strategy": "fsdp"}, "distributed.strategy fsdp needs GPUs"),
    ],
)  # fmt: skip
def test_run_refuses_distributed_settings_before_loading_anything(
    tmp_path: Path, distributed: dict[str, object], refusal: str
) -> None:
    """DeepSpeed and accelerate would refuse these only once training starts, after the data
    and the model: the model here does not exist, so any later check would say that first."""
    job = (
        make_job("early")
        .set("model.name", str(tmp_path / "no-such-model"))
        .set("dataset.train.uri", str(tmp_path / "no-such-data.jsonl"))
        .set("training.device", "cpu")
        .set("distributed", distributed)
        .set("output.uri", str(tmp_path / "out"))
        .set("resources.gpusPerNode", 0)
    )
    result, message = _run_in_a_pod(job.obj(), tmp_path)
    assert result.returncode == EXIT_INVALID_INPUT, result.stderr
    assert refusal in result.stderr
    assert refusal in message


def test_run_with_an_invalid_config_says_so_where_the_operator_reads_it(tmp_path: Path) -> None:
    result, message = _run_in_a_pod(make_job("bad").set("training.epochs", -1).obj(), tmp_path)
    assert result.returncode == EXIT_INVALID_INPUT
    assert "spec.training.epochs: must be > 0.0 (got -1)" in result.stderr
    assert message.startswith(INVALID_INPUT_MARKER)
    assert "spec.training.epochs: must be > 0.0 (got -1)" in message


def test_a_config_from_a_newer_operator_is_refused_naming_both_releases(tmp_path: Path) -> None:
    """An older trainer image (pinned by a job) given a ConfigMap that uses a field it
    predates: InvalidInput that names the field, the operator release that wrote it, and
    the cure; a config of another contract is refused the same way."""
    from ftapi.contract import ANNOTATION_CONTRACT, ANNOTATION_WRITTEN_BY, CONTRACT

    annotations = {
        ANNOTATION_CONTRACT: str(CONTRACT),
        ANNOTATION_WRITTEN_BY: "finetune-operator 9.9",
    }
    newer = make_job("skew").set("training.newKnob", 5).obj()
    newer["metadata"]["annotations"] = annotations
    result, message = _run_in_a_pod(newer, tmp_path)
    assert result.returncode == EXIT_INVALID_INPUT
    assert "spec.training.newKnob: unknown field" in result.stderr
    assert "written by finetune-operator 9.9" in result.stderr
    assert message.startswith(INVALID_INPUT_MARKER) and "finetune-operator 9.9" in message
    other = make_job("skew").obj()
    other["metadata"]["annotations"] = {**annotations, ANNOTATION_CONTRACT: str(CONTRACT + 1)}
    result, message = _run_in_a_pod(other, tmp_path)
    assert result.returncode == EXIT_INVALID_INPUT
    assert f"for contract {CONTRACT + 1}" in message
