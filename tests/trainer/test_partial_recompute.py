"""A GPU run whose memory plan needs activation checkpointing on only some decoder layers
leaves the others unchecked (fttrainer.model.recompute). The plan decides on GPUs
only (tests/gpu covers that wiring); here the same callback runs on CPU on a run with
checkpointing on, as the recipe adds it."""

from __future__ import annotations

import itertools
from pathlib import Path

import pytest

from fttrainer.callbacks import RecomputeFirstLayers
from fttrainer.model.recompute import decoder_layers, recomputed_layers
from fttrainer.recipe import Recipe
from tests.trainer.recipes import cpu_qa_recipe, step_losses


@pytest.fixture(scope="module")
def four_layer_llama(tmp_path_factory: pytest.TempPathFactory) -> Path:
    from fttrainer.tiny import build_model, build_tokenizer

    tokenizer = build_tokenizer()
    path = tmp_path_factory.mktemp("models") / "four-layer-llama"
    build_model("llama", tokenizer, layers=4).save_pretrained(path)
    tokenizer.save_pretrained(path)
    return path


def _train(
    model: Path, data: Path, output: Path, *, checkpointing: bool, first: int | None = None
) -> tuple[list[float], Recipe]:
    recipe = cpu_qa_recipe(model, data, output, learningRate=1e-2,
                           gradientCheckpointing=checkpointing)  # fmt: skip
    if first is not None:
        recipe.trainer.add_callback(RecomputeFirstLayers(first))
    return step_losses(recipe), recipe


def test_checkpointing_the_first_layers_trains_as_the_plain_path(
    four_layer_llama: Path, qa_data: Path, tmp_path: Path
) -> None:
    plain, plain_run = _train(four_layer_llama, qa_data, tmp_path / "plain", checkpointing=False)
    partial, run = _train(
        four_layer_llama, qa_data, tmp_path / "partial", checkpointing=True, first=2
    )
    assert recomputed_layers(plain_run.trainer.model) == (0, 4)
    assert recomputed_layers(run.trainer.model) == (2, 4)
    flags = [layer.gradient_checkpointing for layer in decoder_layers(run.trainer.model)]
    assert flags == [True, True, False, False]  # the first ones (module docstring)
    assert len(partial) == len(plain) == 4
    assert partial == pytest.approx(plain, rel=1e-5, abs=1e-6)


def test_each_layer_left_unchecked_keeps_its_activations(four_layer_llama: Path) -> None:
    """The bytes autograd keeps for backward in one training forward, with 0 to 4 layers
    checkpointed: each checkpointed layer drops the same amount (one layer's activations),
    which is what the plan counts per layer (fttrainer.model.memory_plan.estimate_memory)."""
    import torch
    from peft import LoraConfig, get_peft_model
    from transformers import AutoModelForCausalLM

    torch.manual_seed(0)
    model = AutoModelForCausalLM.from_pretrained(four_layer_llama)
    model = get_peft_model(model, LoraConfig(r=8, target_modules="all-linear"))
    model.train()
    ids = torch.randint(0, model.config.vocab_size, (2, 48))

    def saved_bytes(first: int) -> int:
        model.activation_checkpointing_enable()  # what the Trainer does before the callback
        RecomputeFirstLayers(first).on_train_begin(None, None, None, model=model)
        assert recomputed_layers(model) == (first, 4)
        storages: dict[int, int] = {}

        def keep(tensor: torch.Tensor) -> torch.Tensor:
            storage = tensor.untyped_storage()
            storages[storage.data_ptr()] = storage.nbytes()
            return tensor

        with torch.autograd.graph.saved_tensors_hooks(keep, lambda tensor: tensor):
            model(input_ids=ids, labels=ids)
        return sum(storages.values())

    saved = [saved_bytes(first) for first in range(5)]
    drops = [before - after for before, after in itertools.pairwise(saved)]
    assert all(drop > 0 for drop in drops), saved
    assert max(drops) <= 1.05 * min(drops), drops
