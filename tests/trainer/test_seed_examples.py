"""Every example command and config of the tools our users come from (../shared/seeds) runs
as it is with `finetune run` on a tiny local model, and `finetune convert` turns it into a
manifest that validates and means the same job.

The examples are read from the documents themselves (tests/seeds.py), so a new example in a
seed document is tested without anyone writing it down here. Only the model (a hub id) and
the data files are swapped for local ones; each run is capped at 2 steps with --set.
"""

from __future__ import annotations

import contextlib
import io
import json
import os
import re
import subprocess
import sys
import tempfile
from collections.abc import Iterator
from pathlib import Path

import pytest
import yaml

from ftapi import parse_job
from fttestkit.hub import StandInHub
from fttrainer.cli import main, parse_arguments
from fttrainer.configs import StyleFlags, load_config
from tests.seeds import Example, seed_examples

CAP = ["--set", "training.maxSteps=2"]
with tempfile.TemporaryDirectory() as _scratch:
    NAMES = [example.name for example in seed_examples(Path(_scratch), "model")]
# One example per style also runs from its converted manifest: both runs must record the
# same resolved configuration.
ROUND_TRIP_RUNS = ("command 2", "my_config.env", "toml block 1", "yaml block 2", "hydra flags")


@pytest.fixture(scope="module")
def examples(tmp_path_factory: pytest.TempPathFactory, tiny_llama: Path) -> dict[str, Example]:
    workdir = tmp_path_factory.mktemp("seeds")
    return {example.name: example for example in seed_examples(workdir, str(tiny_llama))}


@contextlib.contextmanager
def _inside(directory: Path) -> Iterator[None]:
    previous = Path.cwd()
    os.chdir(directory)
    try:
        yield
    finally:
        os.chdir(previous)


@pytest.fixture(scope="module")
def hub() -> Iterator[StandInHub]:
    """Where the examples that push to the Hub (seed 001's `push_to_hub = true`) push."""
    with StandInHub() as running:
        yield running


def _finetune(
    args: list[str], *, fresh_process: bool = False, env: dict[str, str] | None = None
) -> tuple[int, str, str]:
    """`finetune ARGS` in the current directory: in this process (fast), or in a fresh one
    for DeepSpeed runs (DeepSpeed keeps process-wide state after a run) and Hub pushes
    (huggingface_hub reads its endpoint when imported)."""
    if fresh_process:
        done = subprocess.run(
            [sys.executable, "-m", "fttrainer.cli", *args], capture_output=True, text=True,
            check=False, timeout=900, env={**os.environ, **(env or {})},
        )  # fmt: skip
        return done.returncode, done.stdout, done.stderr
    out, err = io.StringIO(), io.StringIO()
    with contextlib.redirect_stdout(out), contextlib.redirect_stderr(err):
        code = main(args)
    return code, out.getvalue(), err.getvalue()


def _final_dir(stdout: str) -> Path:
    found = re.search(r"^done: (.+) \(train loss", stdout, flags=re.M)
    assert found, stdout[-2000:]
    return Path(found.group(1))


@pytest.mark.parametrize("name", NAMES)
def test_seed_example_runs_as_is_and_converts(
    name: str, examples: dict[str, Example], hub: StandInHub
) -> None:
    example = examples[name]
    with _inside(example.cwd):
        direct = load_config(*_split(example.args))
        direct.raise_errors()
        deepspeed = direct.manifest["spec"].get("distributed", {}).get("strategy") == "deepspeed"
        push = direct.manifest["spec"].get("output", {}).get("pushToHub")
        hub_env = {"HF_ENDPOINT": hub.endpoint, "HF_TOKEN": "hf_stand_in_token_0123456789",
                   "HF_HUB_DISABLE_XET": "1"}  # fmt: skip

        code, stdout, stderr = _finetune(["run", *example.args, *CAP],
                                         fresh_process=deepspeed or push is not None,
                                         env=hub_env if push else None)  # fmt: skip
        assert code == 0, stderr[-3000:]
        assert f"as: {direct.style}" in stderr
        final = _final_dir(stdout)
        weights = {p.name for p in final.iterdir()}
        assert weights & {"adapter_model.safetensors", "model.safetensors"}, weights
        if push is not None:  # pushed, unchanged, to the repository the style derives
            pushed = hub.files(f"stand-in-user/{push['repoId']}")
            assert {n: pushed.get(n) for n in weights} == {
                n: (final / n).read_bytes() for n in weights
            }, sorted(pushed)
        run_dir = final.parent
        if direct.run_directory is not None:  # the tool's own layout, and only there
            expected = direct.run_directory.rsplit("/", 1)[0]
            assert Path(run_dir).parent.resolve() == Path(expected).resolve()
        metrics = json.loads((run_dir / "final_metrics.json").read_text())
        assert metrics["global_step"] == 2

        manifest_path = Path(f"converted-{name.replace(' ', '-')}.yaml")
        code, _, stderr = _finetune(["convert", *example.args, "-o", str(manifest_path)])
        assert code == 0, stderr
        converted = yaml.safe_load(manifest_path.read_text())
        assert parse_job(converted).spec == parse_job(direct.manifest).spec
        code, _, stderr = _finetune(["validate", str(manifest_path), "--spec-only"])
        assert code == 0, stderr

        if name in ROUND_TRIP_RUNS:
            code, stdout, stderr = _finetune(
                ["run", str(manifest_path), *CAP], fresh_process=deepspeed
            )
            assert code == 0, stderr[-3000:]
            again = _final_dir(stdout).parent
            first = json.loads((run_dir / "final_metrics.json").read_text())
            second = json.loads((again / "final_metrics.json").read_text())
            if "config" in first:  # the resolved configuration, output location aside
                for config in (first["config"], second["config"]):
                    config["output"].pop("uri")
                assert first["config"] == second["config"]


def _split(args: list[str]) -> tuple[Path | None, StyleFlags]:
    """The config file and style flags of an example, read as `finetune run` reads them."""
    parsed = parse_arguments(["run", *args])
    return parsed.file, parsed.flags
