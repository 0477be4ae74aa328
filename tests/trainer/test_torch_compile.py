"""training.torchCompile: the compiled model trains to the losses the eager one does (same
seed, same batches), on CPU through inductor as on a GPU."""

from __future__ import annotations

from pathlib import Path

import pytest

from ftapi import parse_job
from fttrainer.recipe import Recipe
from tests.builders import make_job


def _train(model: Path, data: Path, output: Path, *, compiled: bool) -> tuple[list[float], Recipe]:
    job = parse_job(
        make_job().set("model.name", str(model))
        .set("dataset", {"train": {"uri": str(data)}, "format": "qa", "maxSeqLength": 64})
        .set("training", {"device": "cpu", "maxSteps": 4, "batchSize": 4, "seed": 3,
                          "torchCompile": compiled})
        .set("evaluation.strategy", "no").set("logging.steps", 1)
        .set("output.uri", str(output / "published")).obj()
    )  # fmt: skip
    recipe = Recipe(job, output)
    recipe.setup()
    result = recipe.train()
    return [m["loss"] for m in result.step_metrics if "loss" in m], recipe


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
