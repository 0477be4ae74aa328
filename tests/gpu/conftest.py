"""The GPU tier: real CUDA training of a small random-weight Llama (~90M parameters, bf16).

Every test here is marked `gpu` and skipped without a CUDA device; hack/gpu/run.sh runs the
tier on a lent GPU machine. The model is big enough for bitsandbytes' blocked formats and
real kernels (head_dim 128, GQA) and small enough that each test takes seconds.
"""

from __future__ import annotations

import json
from pathlib import Path

import pytest


def cuda_available() -> bool:
    import torch

    return bool(torch.cuda.is_available())


def pytest_collection_modifyitems(items: list[pytest.Item]) -> None:
    here = Path(__file__).parent
    skip = pytest.mark.skipif(
        not cuda_available(), reason="needs a CUDA GPU (run on a GPU machine: hack/gpu/run.sh)"
    )
    for item in items:
        if here in Path(str(item.fspath)).parents:
            item.add_marker(pytest.mark.gpu)
            item.add_marker(skip)


@pytest.fixture(scope="session")
def small_llama(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """Llama architecture, 8 layers of width 1024 (head_dim 128, 16 query / 4 KV heads),
    random bf16 weights, the tiny tokenizer (vocabulary 512)."""
    import torch
    from transformers import AutoModelForCausalLM, LlamaConfig

    from fttrainer.tiny import build_tokenizer

    tokenizer = build_tokenizer()
    config = LlamaConfig(
        hidden_size=1024, intermediate_size=2816, num_hidden_layers=8,
        num_attention_heads=8, num_key_value_heads=2, head_dim=128,
        vocab_size=len(tokenizer), max_position_embeddings=2048,
        bos_token_id=tokenizer.bos_token_id, eos_token_id=tokenizer.eos_token_id,
        pad_token_id=tokenizer.pad_token_id, tie_word_embeddings=False,
    )  # fmt: skip
    torch.manual_seed(0)
    model = AutoModelForCausalLM.from_config(config, dtype=torch.bfloat16)
    path = tmp_path_factory.mktemp("models") / "small-llama"
    model.save_pretrained(path)
    tokenizer.save_pretrained(path)
    return path


@pytest.fixture(scope="session")
def chat_data(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """64 `messages` rows of very different lengths (padding and packing both matter)."""
    path = tmp_path_factory.mktemp("data") / "chat.jsonl"
    rows = []
    for i in range(64):
        answer = " ".join(["the quick brown fox jumps over the lazy dog"] * (1 + i % 9))
        rows.append({"messages": [
            {"role": "user", "content": f"Question {i}: what is {i} plus {i}?"},
            {"role": "assistant", "content": f"It is {2 * i}. {answer}"},
        ]})  # fmt: skip
    path.write_text("".join(json.dumps(r) + "\n" for r in rows))
    return path
