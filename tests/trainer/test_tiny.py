"""The tiny models every trainer test and the quick start fine-tune: real architectures,
a tokenizer that knows when to stop, and a chat template that marks assistant turns."""

from __future__ import annotations

from pathlib import Path

import pytest

from fttrainer.tiny import ARCHITECTURES, save_tiny_model


@pytest.mark.parametrize("arch", ARCHITECTURES)
def test_tiny_model_round_trips_and_learns_a_step(arch: str, tmp_path: Path) -> None:
    import torch
    from transformers import AutoModelForCausalLM, AutoTokenizer

    path = save_tiny_model(arch, tmp_path / arch)
    tokenizer = AutoTokenizer.from_pretrained(path)
    model = AutoModelForCausalLM.from_pretrained(path)
    assert model.config.model_type == arch
    assert tokenizer.pad_token_id != tokenizer.eos_token_id

    batch = tokenizer(["Question: what is the capital of France? Answer: Paris."] * 2,
                      return_tensors="pt")  # fmt: skip
    optimizer = torch.optim.AdamW(model.parameters(), lr=1e-2)
    losses = []
    for _ in range(5):
        loss = model(**batch, labels=batch["input_ids"]).loss
        loss.backward()
        optimizer.step()
        optimizer.zero_grad()
        losses.append(loss.item())
    assert losses[-1] < losses[0]


def test_chat_template_marks_only_assistant_tokens(tmp_path: Path) -> None:
    from transformers import AutoTokenizer

    tokenizer = AutoTokenizer.from_pretrained(save_tiny_model("llama", tmp_path / "m"))
    messages = [
        {"role": "system", "content": "Be brief."},
        {"role": "user", "content": "hi"},
        {"role": "assistant", "content": "hello"},
    ]
    encoded = tokenizer.apply_chat_template(
        messages, tokenize=True, return_dict=True, return_assistant_tokens_mask=True
    )
    pairs = zip(encoded["input_ids"], encoded["assistant_masks"], strict=True)
    masked = [token for token, keep in pairs if keep]
    assert tokenizer.decode(masked) == "hello<|im_end|>"
