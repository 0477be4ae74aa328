"""Every cell of the support table (tests/trainer/support.py), run on tiny random-weight
models of each family: a cell that trains is trained for two steps (LoRA also merged and
compared with PEFT's own reload of the adapter); a refused one fails before the weights
load, under `finetune validate` and the run alike, with its reason."""

from __future__ import annotations

import json
import math
import shutil
from pathlib import Path
from typing import Any

import pytest
import yaml

from ftapi import parse_job
from fttestkit.builders import make_job
from fttrainer.recipe import Recipe
from fttrainer.tiny import MOE_ARCHITECTURES
from tests.trainer.support import TRAINS, cells


def _manifest(model: Path, data: Path, out: Path, method: str) -> dict[str, Any]:
    job = (
        make_job("matrix")
        .set("model.name", str(model))
        .set("dataset", {"train": {"uri": str(data)}, "format": "qa", "maxSeqLength": 48})
        .set("training", {"maxSteps": 2, "batchSize": 2, "learningRate": 1e-2, "device": "cpu"})
        .set("method.type", method)
        .set("evaluation.strategy", "no")
        .set("logging.steps", 1)
        .set("output", {"uri": str(out), "mergeAdapter": method == "lora"})
    )
    return job.obj()


@pytest.mark.parametrize(("arch", "method", "result"), cells())
def test_the_support_table(
    arch: str, method: str, result: str, tiny_models: dict[str, Path], qa_data: Path,
    tmp_path: Path, capsys: pytest.CaptureFixture[str],
) -> None:  # fmt: skip
    if result == TRAINS:
        _trains(arch, method, tiny_models[arch], qa_data, tmp_path)
    else:
        _refused(method, result, tiny_models[arch], qa_data, tmp_path, capsys)


def _trains(arch: str, method: str, model: Path, data: Path, out: Path) -> None:
    recipe = Recipe(parse_job(_manifest(model, data, out, method)), out)
    recipe.setup()
    result = recipe.train()
    recipe.save(result)
    losses = [step["loss"] for step in result.step_metrics if "loss" in step]
    assert len(losses) == 2 and all(math.isfinite(loss) for loss in losses)
    if method == "lora":
        _check_lora(arch, recipe, model, out)
    elif method in ("full", "spectrum"):
        from safetensors.torch import load_file

        before = load_file(model / "model.safetensors")
        after = load_file(out / "final" / "model.safetensors")
        changed = {n for n in before if n in after and not before[n].equal(after[n])}
        assert changed, "no weight moved"
        routers = recipe.plan.moe and [f"{r}." for r in _routers(recipe)]
        if method == "spectrum" and routers:
            assert not any(name.startswith(tuple(routers)) for name in changed)
    else:  # prefix, prompt: virtual tokens, saved as the adapter
        assert (out / "final" / "adapter_model.safetensors").stat().st_size > 0


def _check_lora(arch: str, recipe: Recipe, model: Path, out: Path) -> None:
    """The experts adapted and no router; PEFT counts what the plan counted; the merged
    model is the adapter, as stock PEFT reloads it."""
    import torch
    from peft import PeftModel
    from safetensors.torch import load_file
    from transformers import AutoModelForCausalLM

    summary = json.loads((out / "result.json").read_text())["adapter"]
    trainable = sum(p.numel() for p in recipe.trainer.model.parameters() if p.requires_grad)
    assert trainable == summary["loraParameters"]
    assert summary["blockShare"] > 0.9
    adapter = load_file(out / "final" / "adapter_model.safetensors")
    lora_b = [t for name, t in adapter.items() if "lora_B" in name]
    assert lora_b and all(t.abs().sum() > 0 for t in lora_b), "an adapter did not train"
    if arch in MOE_ARCHITECTURES:
        experts = [name for name in adapter if ".experts." in name and "lora_B" in name]
        assert len(experts) == summary["expertMatrices"] > 0
        routers = _routers(recipe)
        assert summary["routers"] == len(routers) > 0 and summary["routersTrained"] == 0
        assert not [name for name in adapter if any(f"{r}." in name for r in routers)]
        assert recipe.trainer.router_aux_loss_coef == 0.0  # a frozen router: no balancing loss
    merged = AutoModelForCausalLM.from_pretrained(out / "merged")
    base = AutoModelForCausalLM.from_pretrained(model)
    # The trainer adds a pad token to a tokenizer whose pad is its eos (Qwen2's).
    base.resize_token_embeddings(merged.get_input_embeddings().weight.shape[0])
    adapted = PeftModel.from_pretrained(base, str(out / "final"))
    base = AutoModelForCausalLM.from_pretrained(model)
    base.resize_token_embeddings(merged.get_input_embeddings().weight.shape[0])
    ids = torch.tensor([[1, 20, 30, 40, 50, 60]])
    with torch.no_grad():
        assert torch.allclose(merged(ids).logits, adapted(ids).logits, atol=1e-4)
        assert not torch.allclose(merged(ids).logits, base(ids).logits, atol=1e-4)


def _routers(recipe: Recipe) -> tuple[str, ...]:
    return recipe.plan.targets.routers if recipe.plan.targets else ()


def _refused(
    method: str, reason: str, model: Path, data: Path, out: Path,
    capsys: pytest.CaptureFixture[str],
) -> None:  # fmt: skip
    from fttrainer.cli import main

    # No weights in the folder: a refusal that came after loading them would not be this.
    config_only = out / "model"
    shutil.copytree(model, config_only, ignore=shutil.ignore_patterns("*.safetensors"))
    manifest = _manifest(config_only, data, out, method)
    path = out / "job.yaml"
    path.write_text(yaml.safe_dump(manifest))
    assert main(["validate", str(path)]) == 1
    assert reason in capsys.readouterr().err
    recipe = Recipe(parse_job(manifest), out / "run")
    with pytest.raises(ValueError, match=r"^spec\.method: ") as refused:
        recipe.setup()
    assert reason in str(refused.value)
    assert recipe.model is None
