"""The memory plan on a real 7B architecture (config only, instantiated on the meta device):
shapes match the published figures, and the suggestions make a too-big job fit."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest

from ftapi import parse_job
from fttrainer.plan import GIB, ModelShape, estimate_memory, suggest
from tests.builders import make_job

REPO = Path(__file__).resolve().parents[2]


@pytest.fixture(scope="module")
def llama2_7b(tmp_path_factory: pytest.TempPathFactory) -> Path:
    from transformers import LlamaConfig

    path = tmp_path_factory.mktemp("llama2-7b-config")
    LlamaConfig(hidden_size=4096, intermediate_size=11008, num_hidden_layers=32,
                num_attention_heads=32, num_key_value_heads=32, vocab_size=32000,
                max_position_embeddings=4096).save_pretrained(path)  # fmt: skip
    return path


@pytest.fixture(scope="module")
def shape(llama2_7b: Path) -> ModelShape:
    return ModelShape.from_pretrained(str(llama2_7b))


def test_shape_matches_llama_2_7b(shape: ModelShape) -> None:
    assert shape.parameters == 6_738_415_616
    assert (shape.layers, shape.hidden, shape.vocab) == (32, 4096, 32000)
    assert len(shape.linears) == 32 * 7


def test_lora_trainable_parameters_match_peft(shape: ModelShape) -> None:
    spec = parse_job(make_job().obj()).spec  # r=16 on all linear layers
    assert estimate_memory(shape, spec).trainable == 39_976_960  # PEFT's count for this setup
    attention = parse_job(make_job().set("method.lora", {"targetModules": ["q_proj", "v_proj"]})
                          .obj()).spec  # fmt: skip
    assert estimate_memory(shape, attention).trainable == 32 * 2 * 16 * (4096 + 4096)


def test_qlora_saves_the_base_weights_memory(shape: ModelShape) -> None:
    lora = parse_job(make_job().set("training.batchSize", 2).obj()).spec
    qlora = parse_job(
        make_job().set("method.type", "qlora").set("training.batchSize", 2).obj()
    ).spec
    # The frozen base dominates: 13.5 GB in bf16 against ~3.7 GB in NF4.
    assert estimate_memory(shape, lora).total - estimate_memory(shape, qlora).total > 9 * GIB
    assert estimate_memory(shape, qlora).total < 8 * GIB
    assert 3.0 * GIB < estimate_memory(shape, qlora).parts["weights"] < 4.0 * GIB


def test_full_fine_tune_needs_sharding_and_suggestions_make_it_fit(shape: ModelShape) -> None:
    spec = parse_job(
        make_job().set("method.type", "full").set("resources", {"nodes": 1, "gpusPerNode": 8})
        .set("training.batchSize", 8).obj()
    ).spec  # fmt: skip
    assert estimate_memory(shape, spec).total > 80 * GIB  # ~16 bytes/param without sharding
    changes = suggest(shape, spec, 80 * GIB)
    assert "distributed.strategy=deepspeed distributed.deepspeed.zeroStage=3" in changes
    assert not any(c.startswith("still about") for c in changes)


def test_plan_cli(llama2_7b: Path) -> None:
    result = subprocess.run(
        [sys.executable, "-m", "fttrainer.cli", "plan", str(REPO / "examples/lora-gpu.yaml"),
         "--set", f"model.name={llama2_7b}", "--set", "model.hfTokenSecretRef=null",
         "--gpu-memory", "12"],
        capture_output=True, text=True, check=False, cwd=REPO,
    )  # fmt: skip
    assert result.returncode == 0, result.stderr[-2000:]
    assert "learningRate: 0.0002" in result.stdout
    assert "trainable parameters: 39,976,960" in result.stdout
    assert "does not fit 12 GiB; try, in this order:" in result.stdout
    assert "--set method.type=qlora (4-bit base)" in result.stdout
