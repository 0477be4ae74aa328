"""examples/quickstart-cluster.ipynb, executed as a user runs it (nbclient, a real kernel):
the Python client submits the quick start's local manifest to the cluster, follows its log
until it ends, and plots the loss from `.metrics()`."""

from __future__ import annotations

import base64
from pathlib import Path

import nbformat
import pytest
from nbclient import NotebookClient

from fttestkit.finetunejobs import read_ftj
from fttestkit.paths import REPO
from fttestkit.release import Release
from fttrainer.tiny import save_tiny_model
from tests.e2e.realnode import Bucket, FinetuneCli

NOTEBOOK = REPO / "examples/quickstart-cluster.ipynb"


def test_the_notebook_submits_the_quickstart_follows_it_and_plots_its_loss(
    operator_release: Release, bucket: Bucket, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    # The tiny model `make quickstart-cluster` writes before the notebook runs (its first
    # cell says so); from a fresh clone nothing else may have written it yet.
    if not (REPO / ".quickstart/tiny-llama/config.json").is_file():
        save_tiny_model("llama", REPO / ".quickstart/tiny-llama")
    secret = bucket.credentials_secret(operator_release.watched, f"s3-{bucket.name}")
    user = FinetuneCli(operator_release, tmp_path / "home", bucket=bucket, secret=secret)
    for key, value in user.env.items():  # the kernel inherits the environment
        monkeypatch.setenv(key, value)
    notebook = nbformat.read(NOTEBOOK, as_version=4)
    NotebookClient(notebook, timeout=600, kernel_name="python3",
                   resources={"metadata": {"path": str(NOTEBOOK.parent)}}).execute()  # fmt: skip
    code = [cell for cell in notebook.cells if cell.cell_type == "code"]
    text = ["".join(o.get("text", "") for o in cell.outputs) for cell in code]
    name = next(line.split()[-1] for line in text[0].splitlines() if line.startswith("namespace"))
    assert name == operator_release.watched
    assert "spec.model.name: .quickstart/tiny-llama -> s3://" in text[1]
    assert "'loss'" in text[2] and "Succeeded s3://" in text[2], text[2][-2000:]
    job_name = text[1].split("/outputs/")[1].split("/")[1]
    assert (
        read_ftj(operator_release.cluster, operator_release.watched, job_name)["status"]["phase"]
        == "Succeeded"
    )
    rows = int(text[3].split(" training rows")[0].split()[-1])
    assert rows >= 2, text[3]
    images = [o["data"]["image/png"] for o in code[3].outputs if "image/png" in o.get("data", {})]
    assert images and base64.b64decode(images[0]).startswith(b"\x89PNG")
