"""GPU runs of the recipe: in this process (the model stays inspectable) or as `finetune run`
(DeepSpeed and FSDP need a process of their own), and what a trained adapter looks like."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path
from typing import Any

from fttestkit.paths import REPO


def manifest(model: Path, data: Path, output: Path) -> dict[str, Any]:
    """A one-GPU LoRA SFT job of 4 steps; tests change it with dotted overrides."""
    return {
        "apiVersion": "finetune.dev/v1alpha1",
        "kind": "FineTuneJob",
        "metadata": {"name": "gpu-tier"},
        "spec": {
            "model": {"name": str(model)},
            "dataset": {"train": {"uri": str(data)}, "format": "messages", "maxSeqLength": 256},
            "method": {"type": "lora", "lora": {"r": 8, "alpha": 16}},
            "training": {"maxSteps": 4, "batchSize": 4, "learningRate": 1.0e-3},
            "evaluation": {"strategy": "no"},
            "logging": {"steps": 1},
            "output": {"uri": str(output), "saveSteps": 2},
            "resources": {"gpusPerNode": 1},
        },
    }


def recipe(model: Path, data: Path, tmp_path: Path, *sets: str, train: bool = True) -> Any:
    """`finetune run` in this process (setup, train, save): the model stays inspectable."""
    from ftapi import parse_job
    from fttrainer.overrides import apply_overrides
    from fttrainer.recipe import Recipe

    document = apply_overrides(manifest(model, data, tmp_path / "published"), list(sets))
    job = parse_job(document, "gpu-tier")
    run = Recipe(job, tmp_path / "out")
    run.setup()
    if train:
        result = run.train()
        run.save(result)
        run.result = result
    return run


def finetune(model: Path, data: Path, tmp_path: Path, *sets: str, output: str = "out",
             ) -> subprocess.CompletedProcess[str]:  # fmt: skip
    """`finetune run` as a user types it (DeepSpeed/FSDP need a process of their own)."""
    spec = tmp_path / "job.yaml"  # JSON is YAML
    spec.write_text(json.dumps(manifest(model, data, tmp_path / "published")))
    return subprocess.run(
        [sys.executable, "-m", "fttrainer.cli", "run", str(spec), "--output",
         str(tmp_path / output), *[arg for s in sets for arg in ("--set", s)]],
        cwd=REPO, capture_output=True, text=True, check=False, timeout=600,
        env={**os.environ, "PYTHONUNBUFFERED": "1"},
    )  # fmt: skip


def load_safetensors(path: Path) -> dict[str, Any]:
    from safetensors.torch import load_file

    return load_file(str(path))


def assert_adapter_trained(folder: Path) -> None:
    """LoRA pairs are there and B left its zero initialisation."""
    adapter = load_safetensors(folder / "adapter_model.safetensors")
    lora_b = [name for name in adapter if "lora_B" in name]
    assert lora_b, sorted(adapter)[:10]
    assert any(bool(adapter[name].float().abs().sum() > 0) for name in lora_b)
