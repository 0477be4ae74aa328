"""The `finetune` CLI: help texts and the validate command, run as a user would."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest
import yaml

from fttrainer.cli import main
from tests.builders import make_job


def _finetune(*args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "fttrainer.cli", *args], capture_output=True, text=True, check=False
    )


@pytest.mark.parametrize("command", [[], ["validate"], ["run"]])
def test_help(command: list[str]) -> None:
    result = _finetune(*command, "--help")
    assert result.returncode == 0
    assert "usage: finetune" in result.stdout


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


def test_validate_missing_file(tmp_path: Path) -> None:
    result = _finetune("validate", str(tmp_path / "nope.yaml"))
    assert result.returncode == 1
    assert "No such file" in result.stderr
