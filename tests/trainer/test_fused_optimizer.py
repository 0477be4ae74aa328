"""training.optimizer auto picks torch's fused AdamW on GPUs: it must train to the same
weights and losses as the per-tensor AdamW (the plain path) from the same seed and batches.
torch has a fused CPU kernel too, so the check runs here."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest

from fttrainer.recipe import Recipe
from tests.trainer.recipes import cpu_qa_recipe, step_losses


def _train(
    model: Path, data: Path, output: Path, optimizer: str
) -> tuple[list[float], dict[str, Any], Recipe]:
    recipe = cpu_qa_recipe(model, data, output, maxSteps=6, seed=5, learningRate=1e-2,
                           optimizer=optimizer)  # fmt: skip
    before = _adapter(recipe)
    return step_losses(recipe), before, recipe


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
