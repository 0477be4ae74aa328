"""Short CPU runs of the recipe: two to compare (same seed, same batches), and the quick
start run as a pod runs it, for the tests of how a run ends."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path
from typing import Any

from ftapi import parse_job
from ftapi.contract import ENV_TERMINATION_LOG
from fttestkit.builders import make_job
from fttestkit.paths import REPO
from fttestkit.ports import free_port
from fttrainer.checkpointing.protocol import CHECKPOINTS, MANIFEST
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


def run_quickstart(
    model: Path, data: Path, out: Path, *settings: str, env: dict[str, str] | None = None,
    processes: int = 1,
) -> tuple[subprocess.CompletedProcess[str], str]:  # fmt: skip
    """`finetune run` of the quick start on `model` and QA `data` (5 steps of 4 rows unless
    `settings`, more `--set`s, say otherwise) into `out`, as a pod runs it: with a
    termination log, whose text is returned with the process; under torchrun (DDP over gloo)
    with several `processes`."""
    log = out.parent / f"{out.name}-termination-log"
    log.write_text("")
    sets = [
        f"model.name={model}", f"dataset.train.uri={data}", "dataset.format=qa",
        "dataset.maxSeqLength=64", "training.maxSteps=5", "training.batchSize=4",
        "evaluation.strategy=no", *settings,
    ]  # fmt: skip
    environ = {k: v for k, v in os.environ.items() if not k.startswith(("HF_", "FINETUNE_"))}
    launcher = [sys.executable]
    if processes > 1:
        launcher = [str(Path(sys.executable).parent / "torchrun"), "--nproc-per-node",
                    str(processes), "--master-addr", "127.0.0.1", "--master-port",
                    str(free_port())]  # fmt: skip
        environ["OMP_NUM_THREADS"] = "1"
    result = subprocess.run(
        [*launcher, "-m", "fttrainer.cli", "run", str(REPO / "examples/quickstart-cpu.yaml"),
         *(a for s in sets for a in ("--set", s)), "--output", str(out)],
        cwd=REPO, capture_output=True, text=True, check=False, timeout=900,
        env={**environ, ENV_TERMINATION_LOG: str(log), **(env or {})},
    )  # fmt: skip
    return result, log.read_text()


def committed_steps(out: Path) -> list[int]:
    """Steps whose checkpoint has a manifest in `out` (what a restart may resume from)."""
    manifests = out.glob(f"{CHECKPOINTS}/*/checkpoint-*/{MANIFEST}")
    return sorted(int(p.parent.name.removeprefix("checkpoint-")) for p in manifests)
