"""training.optimizer auto picks torch's fused AdamW on GPUs: it must train to the same
weights and losses as the per-tensor AdamW (the plain path) from the same seed and batches.
torch has a fused CPU kernel too, so the check runs here."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest

from ftapi import parse_job
from fttrainer.recipe import Recipe
from tests.builders import make_job


def _train(
    model: Path, data: Path, output: Path, optimizer: str
) -> tuple[list[float], dict[str, Any], Recipe]:
    job = parse_job(
        make_job().set("model.name", str(model))
        .set("dataset", {"train": {"uri": str(data)}, "format": "qa", "maxSeqLength": 64})
        .set("training", {"device": "cpu", "maxSteps": 6, "batchSize": 4, "seed": 5,
                          "learningRate": 1e-2, "optimizer": optimizer})
        .set("evaluation.strategy", "no").set("logging.steps", 1)
        .set("output.uri", str(output / "published")).obj()
    )  # fmt: skip
    recipe = Recipe(job, output)
    recipe.setup()
    before = _adapter(recipe)
    result = recipe.train()
    return [m["loss"] for m in result.step_metrics if "loss" in m], before, recipe


def _adapter(recipe: Recipe) -> dict[str, Any]:
    return {
        name: parameter.detach().clone()
        for name, parameter in recipe.trainer.model.named_parameters()
        if parameter.requires_grad
    }


def test_fused_adamw_trains_to_the_plain_adamw_weights(
    tiny_llama: Path, qa_data: Path, tmp_path: Path
) -> None:
    import torch

    plain_losses, before, plain = _train(tiny_llama, qa_data, tmp_path / "plain", "adamw_torch")
    fused_losses, _, fused = _train(tiny_llama, qa_data, tmp_path / "fused", "adamw_torch_fused")
    assert fused.trainer.optimizer.optimizer.defaults["fused"] is True
    assert not plain.trainer.optimizer.optimizer.defaults.get("fused")
    assert len(fused_losses) == len(plain_losses) == 6
    assert fused_losses == pytest.approx(plain_losses, rel=1e-4, abs=1e-5)
    after_plain, after_fused = _adapter(plain), _adapter(fused)
    assert after_plain.keys() == after_fused.keys() and after_plain
    for name, weight in after_plain.items():
        moved = torch.linalg.norm(weight - before[name])
        apart = torch.linalg.norm(after_fused[name] - weight)
        # Six steps at lr 1e-2 move every adapter tensor; the two kernels agree far closer.
        assert moved > 0 and apart <= 1e-3 * moved + 1e-6, name
