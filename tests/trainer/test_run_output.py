"""`finetune run` writes a run's results once, where the config says: a local output.uri is
the run directory itself (no published second copy), and --output moves it there."""

from __future__ import annotations

import contextlib
import io
from pathlib import Path

import yaml

from fttestkit.builders import make_job
from fttrainer.cli import main


def _job(tmp_path: Path, model: Path, data: Path, output: Path) -> Path:
    job = (
        make_job("once")
        .set("model.name", str(model))
        .set("dataset", {"train": {"uri": str(data)}, "format": "qa", "maxSeqLength": 64})
        .set("training", {"maxSteps": 2, "batchSize": 8, "device": "cpu"})
        .set("evaluation.strategy", "no")
        .set("resources.gpusPerNode", 0)
        .set("output.uri", str(output))
    )
    path = tmp_path / "job.yaml"
    path.write_text(yaml.safe_dump(job.obj()))
    return path


def _run(*args: str) -> str:
    out = io.StringIO()
    with contextlib.redirect_stdout(out), contextlib.redirect_stderr(io.StringIO()):
        assert main(["run", *args]) == 0
    return out.getvalue()


def test_a_local_output_is_written_once(tiny_llama: Path, qa_data: Path, tmp_path: Path) -> None:
    output = tmp_path / "results" / "once"
    stdout = _run(str(_job(tmp_path, tiny_llama, qa_data, output)))
    assert "published" not in stdout  # nothing copied onto itself or elsewhere
    assert (output / "final" / "adapter_model.safetensors").is_file()
    # The results exist once (the checkpoints/ protocol copy and the trainer's local
    # checkpoint are for resuming, not results).
    assert [p.relative_to(tmp_path) for p in tmp_path.rglob("final_metrics.json")] == [
        Path("results/once/final_metrics.json")
    ]
    assert len(list(tmp_path.rglob("final/adapter_model.safetensors"))) == 1


def test_output_flag_moves_a_local_output(tiny_llama: Path, qa_data: Path, tmp_path: Path) -> None:
    named = tmp_path / "named-in-spec"
    moved = tmp_path / "moved"
    _run(str(_job(tmp_path, tiny_llama, qa_data, named)), "--output", str(moved))
    assert (moved / "final" / "adapter_model.safetensors").is_file()
    assert not named.exists()
    assert (moved / "result.json").read_text().count(str(moved)) >= 1


# Lines every run printed before fttrainer/quiet.py, none of them about the run.
LIBRARY_NOISE = (
    "kernels-community",  # bitsandbytes' optional CPU kernel
    "Setting accelerator to CPU",  # DeepSpeed's accelerator detection
    "is_gradient_checkpointing",  # a transformers deprecation inside TRL/PEFT
    "Loading weights",  # a progress bar, into a file
)


def test_a_run_prints_what_it_does_and_no_library_noise(
    tiny_llama: Path, qa_data: Path, tmp_path: Path
) -> None:
    """A fresh process, as a user runs it (the libraries print at import, once per process),
    with its output going to a file as in a pod or CI log."""
    import subprocess
    import sys

    output = tmp_path / "results"
    finetune = Path(sys.executable).parent / "finetune"
    done = subprocess.run(
        [str(finetune), "run", str(_job(tmp_path, tiny_llama, qa_data, output))],
        capture_output=True, text=True, timeout=600, check=False,
    )  # fmt: skip
    printed = done.stdout + done.stderr
    assert done.returncode == 0, printed[-3000:]
    assert [noise for noise in LIBRARY_NOISE if noise in printed] == [], printed[:3000]
    assert "data report:" in printed and f"done: {output / 'final'}" in printed
