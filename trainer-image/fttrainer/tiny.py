"""Tiny random-weight models of real architectures, with a tokenizer trained on the spot.

No model hub is needed: the quick start and the tests fine-tune these. They are real
transformers models (Llama, GPT-2, Qwen2, and the mixture-of-experts families), so every code
path (PEFT target modules, chat templates, quantization config, saving) is the one a 7B
model takes, just ~100k parameters.

    python -m fttrainer.tiny --arch llama --output .quickstart/tiny-llama
"""

from __future__ import annotations

import argparse
from collections.abc import Iterable
from pathlib import Path
from typing import Any

from .templates import CHAT_TEMPLATE

DENSE_ARCHITECTURES = (
    "llama",
    "gpt2",
    "qwen2",
    "qwen3",
    "mistral",
    "gemma2",
    "gemma3_text",
    "phi3",
    "olmo2",
    "gpt_neox",
)
# Mixture-of-experts families (transformers model types), each with a dense first layer or
# shared experts where the family has them, so every kind of MLP is in the tiny model.
MOE_ARCHITECTURES = (
    "qwen3_moe",
    "qwen2_moe",
    "mixtral",
    "gpt_oss",
    "deepseek_v3",
    "olmoe",
    "llama4_text",
    "granitemoe",
    "phimoe",
    "glm4_moe",
    "ernie4_5_moe",
    "qwen3_next",
    "jamba",
    "dbrx",
)
ARCHITECTURES = DENSE_ARCHITECTURES + MOE_ARCHITECTURES
# A tiny size for every field any family has (set where the family's config has the field).
TINY = {
    "hidden_size": 64, "intermediate_size": 64, "moe_intermediate_size": 32,
    "shared_expert_intermediate_size": 32, "intermediate_size_mlp": 64, "num_hidden_layers": 2,
    "num_attention_heads": 4, "num_key_value_heads": 2, "head_dim": 16,
    "max_position_embeddings": 1024, "num_local_experts": 4, "num_experts": 4,
    "n_routed_experts": 4, "moe_num_experts": 4, "num_experts_per_tok": 2, "moe_k": 2,
    "n_shared_experts": 1, "moe_num_shared_experts": 1, "first_k_dense_replace": 1,
    "moe_layer_start_index": 1, "n_group": 1, "topk_group": 1, "kv_lora_rank": 16,
    "q_lora_rank": 32, "qk_rope_head_dim": 16, "qk_nope_head_dim": 16, "v_head_dim": 16,
    "sliding_window": 16, "linear_num_value_heads": 4, "linear_num_key_heads": 2,
    "linear_key_head_dim": 16, "linear_value_head_dim": 16, "use_mamba_kernels": False,
    "mamba_d_state": 8, "mamba_dt_rank": 8, "attn_layer_period": 2, "attn_layer_offset": 1,
    "expert_layer_period": 1, "expert_layer_offset": 0, "tie_word_embeddings": False,
}  # fmt: skip
# What a family needs besides: per-layer kinds, MLA's one K/V per head.
TINY_FAMILY: dict[str, dict[str, Any]] = {
    "gpt_oss": {"layer_types": ["sliding_attention", "full_attention"]},
    "qwen3_next": {"layer_types": ["linear_attention", "full_attention"]},
    "deepseek_v3": {"num_key_value_heads": 4},
}
TINY_DBRX = {  # DBRX nests its settings; transformers 5.23 reads rope_theta and clip_qkv
    "d_model": 64,
    "n_heads": 4,
    "n_layers": 2,
    "max_seq_len": 1024,
    "attn_config": {"kv_n_heads": 2, "rope_theta": 10000.0, "clip_qkv": 8.0},
    "ffn_config": {"ffn_hidden_size": 32, "moe_num_experts": 4, "moe_top_k": 2},
}
PAD, BOS, EOS = "<|pad|>", "<|bos|>", "<|eos|>"
IM_START, IM_END = "<|im_start|>", "<|im_end|>"
DEFAULT_CORPUS = (
    "Fine-tuning adapts a pretrained language model to a task with a small dataset.",
    "The quick brown fox jumps over the lazy dog. Answer: A, B, C or D.",
    "Question: what is the capital of France? Answer: Paris.",
    "<think>Let me work it out step by step.</think> The answer is 42.",
    '{"name": "value", "list": [1, 2, 3]} user assistant system',
)


def build_tokenizer(corpus: Iterable[str] = DEFAULT_CORPUS, vocab_size: int = 512) -> Any:
    """A byte-level BPE tokenizer with distinct pad/bos/eos (pad == eos would stop the model
    from learning to stop) and a ChatML chat template."""
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers
    from transformers import PreTrainedTokenizerFast

    tokenizer = Tokenizer(models.BPE())
    tokenizer.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    tokenizer.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(
        vocab_size=vocab_size,
        special_tokens=[PAD, BOS, EOS, IM_START, IM_END],
        initial_alphabet=pre_tokenizers.ByteLevel.alphabet(),
    )
    tokenizer.train_from_iterator(list(corpus) * 20, trainer)
    fast = PreTrainedTokenizerFast(  # type: ignore[no-untyped-call]
        tokenizer_object=tokenizer,
        bos_token=BOS,
        eos_token=EOS,
        pad_token=PAD,
        additional_special_tokens=[IM_START, IM_END],
    )
    fast.chat_template = CHAT_TEMPLATE
    return fast


def build_model(
    arch: str, tokenizer: Any, *, hidden: int = 64, layers: int = 2, seed: int = 0
) -> Any:
    """A randomly initialised causal LM of the given architecture, sized for a CPU."""
    import torch
    from transformers import AutoModelForCausalLM, GPT2Config, LlamaConfig, Qwen2Config

    ids = {
        "vocab_size": len(tokenizer),
        "bos_token_id": tokenizer.bos_token_id,
        "eos_token_id": tokenizer.eos_token_id,
        "pad_token_id": tokenizer.pad_token_id,
    }
    config: Any
    if arch == "llama":
        config = LlamaConfig(
            hidden_size=hidden,
            intermediate_size=2 * hidden,
            num_hidden_layers=layers,
            num_attention_heads=4,
            num_key_value_heads=2,
            max_position_embeddings=1024,
            **ids,
        )
    elif arch == "qwen2":
        config = Qwen2Config(
            hidden_size=hidden,
            intermediate_size=2 * hidden,
            num_hidden_layers=layers,
            num_attention_heads=4,
            num_key_value_heads=2,
            max_position_embeddings=1024,
            **ids,
        )
    elif arch == "gpt2":
        config = GPT2Config(n_embd=hidden, n_layer=layers, n_head=4, n_positions=1024, **ids)
    elif arch in ARCHITECTURES:
        config = family_config(arch, ids)
    else:
        raise ValueError(f"unknown architecture {arch!r}: choose from {ARCHITECTURES}")
    torch.manual_seed(seed)
    return AutoModelForCausalLM.from_config(config)  # type: ignore[no-untyped-call]


def family_config(arch: str, ids: dict[str, Any]) -> Any:
    """A two-layer config of the family `arch` (a transformers model type); four experts,
    two per token, for a mixture of experts."""
    from transformers import AutoConfig

    if arch == "dbrx":
        return AutoConfig.for_model(arch, **TINY_DBRX, **ids)
    defaults = AutoConfig.for_model(arch)
    kwargs: dict[str, Any] = {k: v for k, v in TINY.items() if hasattr(defaults, k)}
    kwargs.update(TINY_FAMILY.get(arch, {}))
    return AutoConfig.for_model(arch, **kwargs, **ids)


def save_tiny_model(arch: str, output: Path, *, corpus: Iterable[str] = DEFAULT_CORPUS) -> Path:
    """Write model + tokenizer to `output` (a directory `model.name` can point at)."""
    tokenizer = build_tokenizer(corpus)
    model = build_model(arch, tokenizer)
    output.mkdir(parents=True, exist_ok=True)
    model.save_pretrained(output)
    tokenizer.save_pretrained(output)
    return output


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        prog="python -m fttrainer.tiny", description="Write a tiny random-weight model."
    )
    parser.add_argument("--arch", choices=ARCHITECTURES, default="llama")
    parser.add_argument("--output", type=Path, required=True, help="directory to write")
    args = parser.parse_args(argv)
    print(save_tiny_model(args.arch, args.output))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
