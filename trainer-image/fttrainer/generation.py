"""Asking a model for answers: the one place prompts are rendered and decoded greedily,
shared by the base-vs-tuned comparison and the task scores."""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager
from typing import Any


@contextmanager
def inference(model: Any) -> Iterator[None]:
    """Eval mode (no dropout, so answers do not vary) and no gradients; training mode is
    restored afterwards."""
    import torch

    was_training = model.training
    model.eval()
    try:
        with torch.no_grad():
            yield
    finally:
        model.train(was_training)


def encode_prompt(tokenizer: Any, messages: list[dict[str, str]]) -> Any:
    """The conversation so far, rendered to end where the assistant's answer starts."""
    if getattr(tokenizer, "chat_template", None):
        text = tokenizer.apply_chat_template(messages, tokenize=False, add_generation_prompt=True)
    else:
        text = "\n".join(m["content"] for m in messages)
    return tokenizer(text, return_tensors="pt", add_special_tokens=False)


def generate_answer(model: Any, tokenizer: Any, messages: list[dict[str, str]], *,
                    max_new_tokens: int) -> str:  # fmt: skip
    """Greedy answer; call inside `inference(model)`."""
    inputs = encode_prompt(tokenizer, messages).to(model.device)
    output = model.generate(**inputs, max_new_tokens=max_new_tokens, do_sample=False,
                            pad_token_id=tokenizer.pad_token_id)  # fmt: skip
    new_tokens = output[0][inputs["input_ids"].shape[1] :]
    return str(tokenizer.decode(new_tokens, skip_special_tokens=True))
