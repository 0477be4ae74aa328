"""Short CPU runs of the recipe that tests compare two of (same seed, same batches)."""

from __future__ import annotations

from pathlib import Path
from typing import Any

from ftapi import parse_job
from fttestkit.builders import make_job
from fttrainer.recipe import Recipe


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
