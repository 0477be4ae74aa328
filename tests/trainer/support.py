"""The support table: what each family fttrainer.tiny builds does under each method.

tests/trainer/test_support_matrix.py runs every cell of it (a cell that trains is trained,
a refusal is checked to come before the weights load, with these words), and docs/trainer.md
shows it as `render()` writes it (tests/unit/repo/test_support_table.py holds them equal):

    python -m tests.trainer.support    # the table, as docs/trainer.md has it
"""

from __future__ import annotations

from fttrainer.tiny import DENSE_ARCHITECTURES, MOE_ARCHITECTURES

METHODS = ("lora", "dora", "qlora", "prefix", "prompt", "spectrum", "full")
TRAINS = "trains"
# Each refusal: the words the trainer gives it, and the legend under the table.
REFUSALS = {
    "use method lora, or list only attention modules":
        "DoRA: PEFT adapts fused experts in place (no DoRA form); DoRA on attention-only "
        "`targetModules` trains",
    "would stay in 16 bits":
        "QLoRA: bitsandbytes quantizes linear layers only, the fused experts would stay in 16 bits",
    "all-linear reaches only":
        "`all-linear` reaches a third of the blocks (stacked 2-D experts): list `targetModules`",
    "keep none; use lora or prompt":
        "prefix: linear-attention or Mamba layers keep no keys and values to prepend to",
    "(multi-head latent attention)":
        "prefix: multi-head latent attention compresses the keys and values",
    "keys dbrx's config does not have":
        "PEFT's prompt learning cannot read DBRX's config (`n_heads`, `n_layers`)",
    "from config.num_experts":
        "TRL 1.16 computes the balancing loss from `config.num_experts`, which this config "
        "lacks; LoRA (router frozen) trains",
}  # fmt: skip
_IN_PLACE, _UNQUANTIZED, _LAYOUT, _RECURRENT, _MLA, _KEYS, _NUM_EXPERTS = REFUSALS

FAMILY_NAMES = {
    "llama": "Llama", "gpt2": "GPT-2", "qwen2": "Qwen2", "qwen3": "Qwen3",
    "mistral": "Mistral", "gemma2": "Gemma 2", "gemma3_text": "Gemma 3", "phi3": "Phi-3",
    "olmo2": "OLMo 2", "gpt_neox": "GPT-NeoX", "qwen3_moe": "Qwen3-MoE",
    "qwen2_moe": "Qwen2-MoE", "mixtral": "Mixtral", "gpt_oss": "gpt-oss",
    "deepseek_v3": "DeepSeek-V3", "olmoe": "OLMoE", "llama4_text": "Llama 4 (text)",
    "granitemoe": "Granite MoE", "phimoe": "PhiMoE", "glm4_moe": "GLM-4.5",
    "ernie4_5_moe": "ERNIE 4.5 MoE", "qwen3_next": "Qwen3-Next", "jamba": "Jamba",
    "dbrx": "DBRX",
}  # fmt: skip

# Where a mixture of experts departs from "trains" (everything else in a MoE row trains).
MOE_EXCEPTIONS: dict[tuple[str, str], str] = {
    **{(arch, "dora"): _IN_PLACE for arch in MOE_ARCHITECTURES},
    **{(arch, "qlora"): _UNQUANTIZED for arch in MOE_ARCHITECTURES},
    **{("dbrx", method): _LAYOUT for method in ("lora", "dora", "qlora")},
    **{("dbrx", method): _KEYS for method in ("prefix", "prompt")},
    **{(arch, "prefix"): _RECURRENT for arch in ("qwen3_next", "jamba")},
    ("deepseek_v3", "prefix"): _MLA,
    **{(arch, "full"): _NUM_EXPERTS for arch in ("granitemoe", "phimoe")},
}


def outcome(arch: str, method: str) -> str | None:
    """ "trains", the refusal's words, or None where the matrix does not run the cell (a
    dense family runs LoRA + merge here; its other methods run on Llama elsewhere)."""
    if arch in MOE_ARCHITECTURES:
        return MOE_EXCEPTIONS.get((arch, method), TRAINS)
    return TRAINS if method == "lora" else None


def cells() -> list[tuple[str, str, str]]:
    return [
        (arch, method, result)
        for arch in (*DENSE_ARCHITECTURES, *MOE_ARCHITECTURES)
        for method in METHODS
        if (result := outcome(arch, method)) is not None
    ]


def render() -> str:
    """The markdown table docs/trainer.md carries, and its legend."""
    letters = {words: "abcdefghij"[i] for i, words in enumerate(REFUSALS)}
    header = "| family (model type) | " + " | ".join(METHODS) + " |"
    lines = [header, "|---" * (len(METHODS) + 1) + "|"]
    for arch in (*DENSE_ARCHITECTURES, *MOE_ARCHITECTURES):
        row = []
        for method in METHODS:
            result = outcome(arch, method)
            row.append("-" if result is None else "yes" if result == TRAINS
                       else f"refused ({letters[result]})")  # fmt: skip
        lines.append(f"| {FAMILY_NAMES[arch]} (`{arch}`) | " + " | ".join(row) + " |")
    lines.append("")
    lines.append("- `-`: not in this matrix (a dense family's other methods run on Llama in "
                 "tests/trainer/test_recipe.py)")  # fmt: skip
    lines += [f"- ({letters[words]}) {legend}" for words, legend in REFUSALS.items()]
    return "\n".join(lines)


if __name__ == "__main__":
    print(render())
