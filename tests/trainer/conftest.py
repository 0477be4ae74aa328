"""Shared fixtures of the trainer tier: tiny random-weight models and a learnable QA set."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from fttrainer.tiny import save_tiny_model


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


@pytest.fixture(scope="session")
def tiny_models(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    """fttrainer.tiny's model of each family (a transformers model type), built when a test
    first asks for it."""
    root = tmp_path_factory.mktemp("families")

    class Built(dict[str, Path]):
        def __missing__(self, arch: str) -> Path:
            self[arch] = save_tiny_model(arch, root / arch)
            return self[arch]

    return Built()
