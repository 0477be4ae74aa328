"""Tiny random-weight vision-language models of real families, with their processors built
on the spot: the tiny BPE tokenizer with the family's image tokens, the family's own image
processor (Pillow backend) sized so that one image is a handful of tokens, and the family's
chat template as TRL bundles it (so that TRL's assistant-only loss knows it).

No hub is needed: the trainer tests fine-tune these on generated images. The model is the
family's real class (`AutoModelForImageTextToText`), so the vision tower, the projector and
the language model are where a 4B checkpoint has them.

    python -m fttrainer.tiny_vision --family gemma3 --output .quickstart/tiny-gemma3
"""

from __future__ import annotations

import argparse
from collections.abc import Callable, Iterable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from .tiny import DEFAULT_CORPUS

# The families built here (transformers model types) and the tokens each one's processor
# reads from its tokenizer.
FAMILY_TOKENS: dict[str, dict[str, str]] = {
    "gemma3": {"bos_token": "<bos>", "eos_token": "<eos>", "pad_token": "<pad>",
               "boi_token": "<start_of_image>", "eoi_token": "<end_of_image>",
               "image_token": "<image_soft_token>"},
    "idefics3": {"bos_token": "<|begin_of_text|>", "eos_token": "<end_of_utterance>",
                 "pad_token": "<|pad|>", "image_token": "<image>",
                 "fake_image_token": "<fake_token_around_image>",
                 "global_image_token": "<global-img>"},
    "mllama": {"bos_token": "<|begin_of_text|>", "eos_token": "<|eot_id|>",
               "pad_token": "<|finetune_right_pad_id|>", "image_token": "<|image|>"},
    "qwen2_5_vl": {"eos_token": "<|im_end|>", "pad_token": "<|endoftext|>",
                   "image_token": "<|image_pad|>", "video_token": "<|video_pad|>",
                   "vision_start_token": "<|vision_start|>",
                   "vision_end_token": "<|vision_end|>"},
    "smolvlm": {"bos_token": "<|begin_of_text|>", "eos_token": "<end_of_utterance>",
                "pad_token": "<|pad|>", "image_token": "<image>",
                "fake_image_token": "<fake_token_around_image>",
                "global_image_token": "<global-img>"},
}  # fmt: skip
FAMILY_TOKENS["qwen3_vl"] = FAMILY_TOKENS["qwen2_5_vl"]
# Further special tokens the family's chat template writes.
TEMPLATE_TOKENS: dict[str, tuple[str, ...]] = {
    "gemma3": ("<start_of_turn>", "<end_of_turn>"),
    "idefics3": ("<|im_start|>",),
    "mllama": ("<|start_header_id|>", "<|end_header_id|>", "<|python_tag|>"),
    "qwen2_5_vl": ("<|im_start|>",),
    "qwen3_vl": ("<|im_start|>",),
    "smolvlm": ("<|im_start|>",),
}
FAMILIES = tuple(FAMILY_TOKENS)
IMAGE_TOKENS = 4  # image tokens one image becomes (Mllama: 1 in the text, via cross-attention)
# initializer_range 0.2: a trained model's logit scale. At 0.02 the frozen head of a 64-wide
# model caps a logit near 1.3 (after the final norm), and no adapter could fit an answer.
TEXT = {
    "hidden_size": 64, "intermediate_size": 128, "num_hidden_layers": 2,
    "num_attention_heads": 4, "num_key_value_heads": 2, "max_position_embeddings": 2048,
    "initializer_range": 0.2,
}  # fmt: skip
VISION = {
    "hidden_size": 32,
    "intermediate_size": 64,
    "num_hidden_layers": 2,
    "num_attention_heads": 2,
}
# Qwen-VL: the vision tower's shape, each family's own settings, and rotary sections that sum
# to the text head_dim / 2 (Qwen3-VL's interleaved).
QWEN_VISION = {
    "depth": 2,
    "hidden_size": 32,
    "num_heads": 2,
    "intermediate_size": 64,
    "spatial_merge_size": 2,
    "temporal_patch_size": 2,
    "out_hidden_size": TEXT["hidden_size"],
}
QWEN_PATCH = {"qwen2_5_vl": 14, "qwen3_vl": 16}
QWEN_OWN: dict[str, dict[str, Any]] = {
    "qwen2_5_vl": {"fullatt_block_indexes": [1]},
    "qwen3_vl": {"num_position_embeddings": 16, "deepstack_visual_indexes": [0]},
}
QWEN_ROPE: dict[str, dict[str, Any]] = {
    "qwen2_5_vl": {"rope_type": "default", "mrope_section": [2, 3, 3], "rope_theta": 1e6},
    "qwen3_vl": {
        "rope_type": "default",
        "mrope_section": [4, 2, 2],
        "mrope_interleaved": True,
        "rope_theta": 5e6,
    },
}
# Llama 3.2 Vision's template as Meta ships it, with TRL's generation markers around the
# assistant's turns (TRL bundles no Mllama template).
MLLAMA_TEMPLATE = (
    "{%- macro content(message) %}"
    "{%- if message['content'] is string %}{{- message['content'] }}"
    "{%- else %}{%- for part in message['content'] %}"
    "{%- if part['type'] == 'image' %}{{- '<|image|>' }}"
    "{%- elif part['type'] == 'text' %}{{- part['text'] }}{%- endif %}"
    "{%- endfor %}{%- endif %}"
    "{%- endmacro %}"
    "{{- bos_token }}"
    "{%- for message in messages %}"
    "{{- '<|start_header_id|>' + message['role'] + '<|end_header_id|>\\n\\n' }}"
    "{%- if message['role'] == 'assistant' %}"
    "{% generation %}{{- content(message) + '<|eot_id|>' }}{% endgeneration %}"
    "{%- else %}{{- content(message) + '<|eot_id|>' }}{%- endif %}"
    "{%- endfor %}"
    "{%- if add_generation_prompt %}"
    "{{- '<|start_header_id|>assistant<|end_header_id|>\\n\\n' }}{%- endif %}"
)


@dataclass
class TinyVision:
    """A tiny vision-language model and the processor that feeds it."""

    family: str
    model: Any
    processor: Any

    def save(self, output: Path) -> Path:
        output.mkdir(parents=True, exist_ok=True)
        self.model.save_pretrained(output)
        self.processor.save_pretrained(output)
        return output


def build_tokenizer(
    family: str, corpus: Iterable[str] = DEFAULT_CORPUS, vocab_size: int = 512
) -> Any:
    """The tiny BPE tokenizer with `family`'s special tokens (each one id) and its
    processor's tokens set as attributes (`image_token`, `boi_token`, ...)."""
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers
    from transformers import PreTrainedTokenizerFast

    named = FAMILY_TOKENS[family]
    specials = [*dict.fromkeys([*named.values(), *TEMPLATE_TOKENS[family]])]
    tokenizer = Tokenizer(models.BPE())
    tokenizer.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    tokenizer.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(
        vocab_size=vocab_size,
        special_tokens=specials,
        initial_alphabet=pre_tokenizers.ByteLevel.alphabet(),
    )
    tokenizer.train_from_iterator(list(corpus) * 20, trainer)
    others = [t for t in specials if t not in named.values()]
    return PreTrainedTokenizerFast(  # type: ignore[no-untyped-call]
        tokenizer_object=tokenizer, extra_special_tokens=others, **named
    )


def build(family: str, *, corpus: Iterable[str] = DEFAULT_CORPUS, seed: int = 0) -> TinyVision:
    """A tiny model of `family` with its processor (its tokenizer trained on `corpus`)."""
    import torch
    from transformers import AutoModelForImageTextToText

    if family not in FAMILY_TOKENS:
        raise ValueError(f"unknown family {family!r}: choose from {', '.join(FAMILIES)}")
    tokenizer = build_tokenizer(family, corpus)
    config, processor = _BUILDERS[family](tokenizer)
    torch.manual_seed(seed)
    model = AutoModelForImageTextToText.from_config(config)  # type: ignore[no-untyped-call]
    _open_the_image_path(model)
    return TinyVision(family, model, processor)


def _open_the_image_path(model: Any) -> None:
    """What a trained checkpoint has and a fresh one lacks: Gemma 3 starts its image
    projection at zero and Mllama its cross-attention gates (tanh(0) = 0), so an untrained
    model ignores its images and a fine-tune of its language model alone could not learn
    from them."""
    import torch

    with torch.no_grad():
        for name, parameter in model.named_parameters():
            if name.endswith("mm_input_projection_weight"):
                parameter.normal_(0.0, 0.2)
            elif name.endswith(("cross_attn_attn_gate", "cross_attn_mlp_gate")):
                parameter.fill_(1.0)


def _ids(tokenizer: Any) -> dict[str, Any]:
    return {
        "vocab_size": len(tokenizer),
        "bos_token_id": tokenizer.bos_token_id,
        "eos_token_id": tokenizer.eos_token_id,
        "pad_token_id": tokenizer.pad_token_id,
    }


def _gemma3(tokenizer: Any) -> tuple[Any, Any]:
    from transformers.models.gemma3 import (
        Gemma3Config,
        Gemma3ImageProcessorPil,
        Gemma3Processor,
    )
    from trl.chat_template_utils import gemma3_chat_template

    config = Gemma3Config(
        text_config={
            **TEXT,
            **_ids(tokenizer),
            "head_dim": 16,
            "query_pre_attn_scalar": 16,
            "sliding_window": 16,
            "layer_types": ["sliding_attention", "full_attention"],
        },
        vision_config={**VISION, "image_size": 32, "patch_size": 8, "vision_use_head": False},
        mm_tokens_per_image=IMAGE_TOKENS,
        boi_token_index=tokenizer.convert_tokens_to_ids("<start_of_image>"),
        eoi_token_index=tokenizer.convert_tokens_to_ids("<end_of_image>"),
        image_token_index=tokenizer.convert_tokens_to_ids("<image_soft_token>"),
    )
    processor = Gemma3Processor(
        image_processor=Gemma3ImageProcessorPil(size={"height": 32, "width": 32}),
        tokenizer=tokenizer,
        chat_template=gemma3_chat_template,
        image_seq_length=IMAGE_TOKENS,
    )
    return config, processor


def _idefics3(tokenizer: Any, family: str = "idefics3") -> tuple[Any, Any]:
    """Idefics3, and SmolVLM (its successor: the same layout, plus a video processor)."""
    from transformers import AutoConfig
    from trl import chat_template_utils

    config = AutoConfig.for_model(
        family,
        text_config={"model_type": "llama", **TEXT, **_ids(tokenizer)},
        vision_config={**VISION, "image_size": 64, "patch_size": 16},  # 16 patches / 2^2 = 4
        scale_factor=2,
        image_token_id=tokenizer.convert_tokens_to_ids("<image>"),
    )
    image_class, processor_class, video = _idefics_classes(family)
    processor = processor_class(
        image_processor=image_class(
            size={"longest_edge": 64},
            max_image_size={"longest_edge": 64},
            do_image_splitting=False,
        ),
        tokenizer=tokenizer,
        image_seq_len=IMAGE_TOKENS,
        chat_template=getattr(chat_template_utils, f"{family}_chat_template"),
        **video,
    )
    return config, processor


def _idefics_classes(family: str) -> tuple[Any, Any, dict[str, Any]]:
    """(image processor class, processor class, the processor's video argument)."""
    if family == "smolvlm":
        from transformers.models.smolvlm import (
            SmolVLMImageProcessorPil,
            SmolVLMProcessor,
            SmolVLMVideoProcessor,
        )

        video = {"video_processor": SmolVLMVideoProcessor()}
        return SmolVLMImageProcessorPil, SmolVLMProcessor, video
    from transformers.models.idefics3 import Idefics3ImageProcessorPil, Idefics3Processor

    return Idefics3ImageProcessorPil, Idefics3Processor, {}


def _mllama(tokenizer: Any) -> tuple[Any, Any]:
    from transformers.models.mllama import (
        MllamaConfig,
        MllamaImageProcessorPil,
        MllamaProcessor,
    )

    config = MllamaConfig(
        text_config={
            **TEXT,
            **_ids(tokenizer),
            "num_hidden_layers": 3,
            "cross_attention_layers": [1],
        },
        vision_config={
            "hidden_size": 32,
            "attention_heads": 2,
            "num_hidden_layers": 2,
            "num_global_layers": 1,
            "intermediate_size": 64,
            "image_size": 32,
            "patch_size": 8,
            "max_num_tiles": 1,
            "supported_aspect_ratios": [[1, 1]],
            "intermediate_layers_indices": [0],
            "vision_output_dim": 64,
        },
        image_token_index=tokenizer.convert_tokens_to_ids("<|image|>"),
    )
    processor = MllamaProcessor(
        image_processor=MllamaImageProcessorPil(
            size={"height": 32, "width": 32}, max_image_tiles=1
        ),
        tokenizer=tokenizer,
        chat_template=MLLAMA_TEMPLATE,
    )
    return config, processor


def _qwen_vl(tokenizer: Any, family: str) -> tuple[Any, Any]:
    """Qwen2.5-VL and Qwen3-VL: patches of `patch` pixels merged 2x2 into one token, so a
    picture resized to 2x2 merged patches is 4 tokens; rotary sections sum to head_dim / 2."""
    from transformers import AutoConfig
    from transformers.models.qwen2_vl import Qwen2VLImageProcessorPil
    from trl import chat_template_utils

    qwen3 = family == "qwen3_vl"
    patch = QWEN_PATCH[family]
    side = patch * 2 * 2
    vision = {**QWEN_VISION, **QWEN_OWN[family], "patch_size": patch}
    if not qwen3:
        vision["window_size"] = side
    text = {**TEXT, **_ids(tokenizer), "head_dim": 16, "rope_parameters": QWEN_ROPE[family]}
    config = AutoConfig.for_model(
        family,
        text_config=text,
        vision_config=vision,
        **{
            f"{name}_id": tokenizer.convert_tokens_to_ids(FAMILY_TOKENS[family][name])
            for name in ("image_token", "video_token", "vision_start_token", "vision_end_token")
        },
    )
    processor_class, video_class = _qwen_processor_classes(qwen3)
    processor = processor_class(
        image_processor=Qwen2VLImageProcessorPil(
            patch_size=patch, size={"shortest_edge": side * side, "longest_edge": side * side}
        ),
        tokenizer=tokenizer,
        video_processor=video_class(patch_size=patch),
        chat_template=getattr(chat_template_utils, f"{family}_chat_template"),
    )
    return config, processor


def _qwen_processor_classes(qwen3: bool) -> tuple[Any, Any]:
    if qwen3:
        from transformers.models.qwen3_vl import Qwen3VLProcessor, Qwen3VLVideoProcessor

        return Qwen3VLProcessor, Qwen3VLVideoProcessor
    from transformers.models.qwen2_5_vl import Qwen2_5_VLProcessor
    from transformers.models.qwen2_vl import Qwen2VLVideoProcessor

    return Qwen2_5_VLProcessor, Qwen2VLVideoProcessor


_BUILDERS: dict[str, Callable[[Any], tuple[Any, Any]]] = {
    "gemma3": _gemma3,
    "idefics3": _idefics3,
    "mllama": _mllama,
    "qwen2_5_vl": lambda tokenizer: _qwen_vl(tokenizer, "qwen2_5_vl"),
    "qwen3_vl": lambda tokenizer: _qwen_vl(tokenizer, "qwen3_vl"),
    "smolvlm": lambda tokenizer: _idefics3(tokenizer, "smolvlm"),
}


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        prog="python -m fttrainer.tiny_vision",
        description="Write a tiny random-weight vision-language model and its processor.",
    )
    parser.add_argument("--family", choices=FAMILIES, default="gemma3")
    parser.add_argument("--output", type=Path, required=True, help="directory to write")
    args = parser.parse_args(argv)
    print(build(args.family).save(args.output))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
