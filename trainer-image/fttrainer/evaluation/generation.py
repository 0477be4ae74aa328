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


def encode_prompt(
    tokenizer: Any, messages: list[dict[str, Any]] | str, *, tools: list[Any] | None = None
) -> Any:
    """The conversation so far, rendered to end where the assistant's answer starts, with
    the tool definitions it was trained with; a string is a plain-text prompt (TRL's
    prompt-completion rows), tokenized as in training."""
    if isinstance(messages, str):
        return tokenizer(messages, return_tensors="pt")
    if getattr(tokenizer, "chat_template", None):
        text = tokenizer.apply_chat_template(
            messages, tools=tools, tokenize=False, add_generation_prompt=True
        )
    else:
        text = "\n".join(m["content"] for m in messages)
    return tokenizer(text, return_tensors="pt", add_special_tokens=False)


def encode_image_prompt(processor: Any, messages: list[dict[str, Any]]) -> Any:
    """A conversation whose parts hold pictures, rendered by a vision-language model's
    processor to end where the assistant's answer starts (pixels included)."""
    return processor.apply_chat_template(
        messages, add_generation_prompt=True, tokenize=True, return_dict=True, return_tensors="pt"
    )


def generate_answer(
    model: Any,
    tokenizer: Any,
    messages: list[dict[str, Any]] | str,
    *,
    max_new_tokens: int,
    tools: list[Any] | None = None,
) -> str:
    """Greedy answer, up to the end of the assistant's turn; call inside `inference(model)`."""
    inputs = encode_prompt(tokenizer, messages, tools=tools)
    return decode_answer(model, tokenizer, inputs, max_new_tokens=max_new_tokens)


def decode_answer(model: Any, tokenizer: Any, inputs: Any, *, max_new_tokens: int) -> str:
    """Greedy answer to encoded `inputs`, up to the end of the assistant's turn."""
    inputs = inputs.to(model.device)
    output = model.generate(
        **inputs,
        max_new_tokens=max_new_tokens,
        do_sample=False,
        pad_token_id=tokenizer.pad_token_id,
        eos_token_id=stop_token_ids(model, tokenizer),
    )
    new_tokens = output[0][inputs["input_ids"].shape[1] :]
    return str(tokenizer.decode(new_tokens, skip_special_tokens=True))


# End-of-turn tokens of common chat templates (ChatML, Llama 3, Gemma, Phi-3).
END_OF_TURN_TOKENS = ("<|im_end|>", "<|eot_id|>", "<end_of_turn>", "<|end|>")


def stop_token_ids(model: Any, tokenizer: Any) -> list[int]:
    """The model's eos ids plus its chat template's end-of-turn token. A base model given
    our ChatML template ends its turns with <|im_end|> but only stops at its eos: without
    this its answers run on past the turn (and BLEU/ROUGE score the run-on)."""
    config = getattr(model, "generation_config", None)
    eos = getattr(config, "eos_token_id", None)
    if eos is None:
        eos = tokenizer.eos_token_id
    ids = [eos] if isinstance(eos, int) else list(eos or [])
    template = getattr(tokenizer, "chat_template", None) or ""
    for token in END_OF_TURN_TOKENS:
        if token not in template:
            continue
        token_id = tokenizer.convert_tokens_to_ids(token)
        known = isinstance(token_id, int) and token_id != tokenizer.unk_token_id
        if known and token_id not in ids:
            ids.append(token_id)
    return ids
