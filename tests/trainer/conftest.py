"""Shared fixtures of the trainer tier: a tiny random-weight Llama and a learnable QA set."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import pytest

from ftapi import parse_job
from fttrainer.recipe import Recipe
from fttrainer.tiny import save_tiny_model
from tests.builders import make_job


@pytest.fixture(scope="session")
def tiny_llama(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return save_tiny_model("llama", tmp_path_factory.mktemp("models") / "tiny-llama")


@pytest.fixture(scope="session")
def qa_data(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """40 rows of "What is i plus i?" -> "It is 2i.": a task a tiny model learns."""
    path = tmp_path_factory.mktemp("data") / "qa.jsonl"
    rows = [{"question": f"What is {i} plus {i}?", "answer": f"It is {2 * i}."} for i in range(40)]
    path.write_text("".join(json.dumps(r) + "\n" for r in rows))
    return path


def cpu_qa_recipe(model: Path, data: Path, output: Path, **training: Any) -> Recipe:
    """A set-up Recipe of a short CPU run on QA data, logging every step: what the
    "trains as the plain path does" tests compare two of (same seed, same batches)."""
    job = parse_job(
        make_job().set("model.name", str(model))
        .set("dataset", {"train": {"uri": str(data)}, "format": "qa", "maxSeqLength": 64})
        .set("training", {"device": "cpu", "maxSteps": 4, "batchSize": 4, "seed": 3, **training})
        .set("evaluation.strategy", "no").set("logging.steps", 1)
        .set("output.uri", str(output / "published")).obj()
    )  # fmt: skip
    recipe = Recipe(job, output)
    recipe.setup()
    return recipe


def step_losses(recipe: Recipe) -> list[float]:
    """Train, and the loss of every logged step."""
    return [m["loss"] for m in recipe.train().step_metrics if "loss" in m]
