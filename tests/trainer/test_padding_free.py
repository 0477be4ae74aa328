"""Padding-free batches compute the loss padded batches compute: rows concatenated, positions
restarting per row, attention kept inside each row (on CPU through transformers' block mask;
the GPU tier checks the varlen kernel the same way)."""

from __future__ import annotations

from pathlib import Path

import pytest

from ftapi import parse_job
from fttestkit.builders import make_job
from fttrainer.recipe import Recipe


def _recipe(model: Path, data: Path, output: Path, padding_free: bool) -> Recipe:
    job = parse_job(
        make_job().set("model.name", str(model))
        .set("dataset", {"train": {"uri": str(data)}, "format": "qa", "maxSeqLength": 64,
                         "paddingFree": padding_free})
        .set("training.device", "cpu").set("evaluation.strategy", "no").obj()
    )  # fmt: skip
    recipe = Recipe(job, output)
    recipe.setup()
    return recipe


def _loss(recipe: Recipe, rows: list[dict[str, object]]) -> tuple[float, dict[str, object]]:
    import torch

    batch = recipe.trainer.data_collator(rows)
    with torch.no_grad():
        return float(recipe.trainer.model(**batch).loss), batch


def test_padding_free_batches_give_the_padded_loss(
    tiny_llama: Path, qa_data: Path, tmp_path: Path
) -> None:
    padded = _recipe(tiny_llama, qa_data, tmp_path / "padded", padding_free=False)
    packed = _recipe(tiny_llama, qa_data, tmp_path / "packed", padding_free=True)
    assert packed.trainer.args.padding_free and not padded.trainer.args.padding_free
    rows = [padded.trainer.train_dataset[i] for i in (0, 11, 25, 39)]
    lengths = [len(r["input_ids"]) for r in rows]
    assert len(set(lengths)) > 1, lengths  # the padded batch really pads
    expected, padded_batch = _loss(padded, rows)
    loss, batch = _loss(packed, rows)
    assert padded_batch["input_ids"].shape == (4, max(lengths))
    assert batch["input_ids"].shape == (1, sum(lengths))  # no padding at all
    assert loss == pytest.approx(expected, rel=1e-5)


def test_attention_crossing_rows_would_change_the_loss(
    tiny_llama: Path, qa_data: Path, tmp_path: Path
) -> None:
    """The check above can fail: the same concatenated rows without their boundaries (one
    long sequence) give another loss."""
    import torch

    packed = _recipe(tiny_llama, qa_data, tmp_path / "packed", padding_free=True)
    rows = [packed.trainer.train_dataset[i] for i in (0, 11, 25, 39)]
    separated, batch = _loss(packed, rows)
    total = batch["input_ids"].shape[1]
    joined = {k: batch[k] for k in ("input_ids", "labels")}
    joined["position_ids"] = torch.arange(total)[None]
    with torch.no_grad():
        crossing = float(packed.trainer.model(**joined).loss)
    assert crossing != pytest.approx(separated, rel=1e-5)  # the tolerance used above
