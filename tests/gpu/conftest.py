"""The GPU tier: real CUDA training of a small random-weight Llama (~90M parameters, bf16).

Every test here is marked `gpu` and skipped without a CUDA device; hack/gpu/run.sh runs the
tier on a lent GPU machine. The model is big enough for bitsandbytes' blocked formats and
real kernels (head_dim 128, GQA) and small enough that each test takes seconds.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest

REPO = Path(__file__).resolve().parents[2]


def cuda_available() -> bool:
    import torch

    return bool(torch.cuda.is_available())


def pytest_collection_modifyitems(items: list[pytest.Item]) -> None:
    here = Path(__file__).parent
    skip = pytest.mark.skipif(
        not cuda_available(), reason="needs a CUDA GPU (run on a GPU machine: hack/gpu/run.sh)"
    )
    for item in items:
        if here in Path(str(item.fspath)).parents:
            item.add_marker(pytest.mark.gpu)
            item.add_marker(skip)


@pytest.fixture(scope="session")
def small_llama(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """Llama architecture, 8 layers of width 1024 (head_dim 128, 16 query / 4 KV heads),
    random bf16 weights, the tiny tokenizer (vocabulary 512)."""
    import torch
    from transformers import AutoModelForCausalLM, LlamaConfig

    from fttrainer.tiny import build_tokenizer

    tokenizer = build_tokenizer()
    config = LlamaConfig(
        hidden_size=1024, intermediate_size=2816, num_hidden_layers=8,
        num_attention_heads=8, num_key_value_heads=2, head_dim=128,
        vocab_size=len(tokenizer), max_position_embeddings=2048,
        bos_token_id=tokenizer.bos_token_id, eos_token_id=tokenizer.eos_token_id,
        pad_token_id=tokenizer.pad_token_id, tie_word_embeddings=False,
    )  # fmt: skip
    torch.manual_seed(0)
    model = AutoModelForCausalLM.from_config(config, dtype=torch.bfloat16)
    path = tmp_path_factory.mktemp("models") / "small-llama"
    model.save_pretrained(path)
    tokenizer.save_pretrained(path)
    return path


@pytest.fixture(scope="session")
def chat_data(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """64 `messages` rows of very different lengths (padding and packing both matter)."""
    path = tmp_path_factory.mktemp("data") / "chat.jsonl"
    rows = []
    for i in range(64):
        answer = " ".join(["the quick brown fox jumps over the lazy dog"] * (1 + i % 9))
        rows.append({"messages": [
            {"role": "user", "content": f"Question {i}: what is {i} plus {i}?"},
            {"role": "assistant", "content": f"It is {2 * i}. {answer}"},
        ]})  # fmt: skip
    path.write_text("".join(json.dumps(r) + "\n" for r in rows))
    return path


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
