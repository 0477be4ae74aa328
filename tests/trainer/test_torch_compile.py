"""training.torchCompile: the compiled model trains to the losses the eager one does (same
seed, same batches), on CPU through inductor as on a GPU."""

from __future__ import annotations

from pathlib import Path

import pytest

from fttrainer.recipe import Recipe
from tests.trainer.recipes import cpu_qa_recipe, step_losses


def _train(model: Path, data: Path, output: Path, *, compiled: bool) -> tuple[list[float], Recipe]:
    recipe = cpu_qa_recipe(model, data, output, torchCompile=compiled)
    return step_losses(recipe), recipe


def test_a_compiled_model_trains_to_the_eager_losses(
    tiny_llama: Path, qa_data: Path, tmp_path: Path
) -> None:
    import torch

    eager, plain = _train(tiny_llama, qa_data, tmp_path / "eager", compiled=False)
    compiled, recipe = _train(tiny_llama, qa_data, tmp_path / "compiled", compiled=True)
    assert recipe.trainer.args.torch_compile is True and plain.trainer.args.torch_compile is False
    # What trained was the compiled module (accelerate wraps the model in torch.compile).
    assert isinstance(recipe.trainer.model_wrapped, torch._dynamo.eval_frame.OptimizedModule)
    assert len(compiled) == len(eager) == 4
    assert compiled == pytest.approx(eager, rel=1e-3, abs=1e-4)
