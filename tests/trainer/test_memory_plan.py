"""The memory plan on a real 7B architecture (config only, instantiated on the meta device):
shapes match the published figures, and the suggestions make a too-big job fit."""

from __future__ import annotations

import itertools
import json
import subprocess
import sys
from pathlib import Path

import pytest

from ftapi import parse_job
from fttestkit.builders import make_job
from fttestkit.paths import REPO
from fttrainer.model.memory_plan import (
    GIB,
    RECOMPUTE_MARGIN,
    ModelShape,
    estimate_memory,
    recomputed_layers_to_fit,
    suggest,
)


@pytest.fixture(scope="module")
def llama2_7b(tmp_path_factory: pytest.TempPathFactory) -> Path:
    from transformers import LlamaConfig

    path = tmp_path_factory.mktemp("llama2-7b-config")
    LlamaConfig(hidden_size=4096, intermediate_size=11008, num_hidden_layers=32,
                num_attention_heads=32, num_key_value_heads=32, vocab_size=32000,
                max_position_embeddings=4096).save_pretrained(path)  # fmt: skip
    return path


@pytest.fixture(scope="module")
def shape(llama2_7b: Path) -> ModelShape:
    return ModelShape.from_pretrained(str(llama2_7b))


def test_shape_matches_llama_2_7b(shape: ModelShape) -> None:
    assert shape.parameters == 6_738_415_616
    assert (shape.layers, shape.hidden, shape.vocab) == (32, 4096, 32000)
    assert len(shape.linears) == 32 * 7


def test_lora_trainable_parameters_match_peft(shape: ModelShape) -> None:
    spec = parse_job(make_job().obj()).spec  # r=16 on all linear layers
    assert estimate_memory(shape, spec).trainable == 39_976_960  # PEFT's count for this setup
    attention = parse_job(make_job().set("method.lora", {"targetModules": ["q_proj", "v_proj"]})
                          .obj()).spec  # fmt: skip
    assert estimate_memory(shape, attention).trainable == 32 * 2 * 16 * (4096 + 4096)


def test_qlora_saves_the_base_weights_memory(shape: ModelShape) -> None:
    lora = parse_job(make_job().set("training.batchSize", 2).obj()).spec
    qlora = parse_job(
        make_job().set("method.type", "qlora").set("training.batchSize", 2).obj()
    ).spec
    # The frozen base dominates: 13.5 GB in bf16 against ~3.7 GB in NF4.
    assert estimate_memory(shape, lora).total - estimate_memory(shape, qlora).total > 9 * GIB
    assert estimate_memory(shape, qlora).total < 8 * GIB
    assert 3.0 * GIB < estimate_memory(shape, qlora).parts["weights"] < 4.0 * GIB


def test_a_gpu_run_checkpoints_the_fewest_layers_that_fit(shape: ModelShape) -> None:
    """Unset checkpointing on a GPU: none when everything fits, all when nothing does, and in
    between the fewest layers whose estimate fits the margin of the device."""
    spec = parse_job(make_job().set("training.batchSize", 8).obj()).spec  # 8 x 1024 tokens
    by_layers = [estimate_memory(shape, spec, recomputed_layers=n).total for n in range(33)]
    # Each checkpointed layer keeps its input instead of its activations (34 -> 2 bytes per
    # token and hidden unit): 8,192 tokens x 4,096 x 32 bytes = 1 GiB less per layer. The
    # last one gains nothing: backward recomputes one layer's worth at a time anyway.
    steps = [before - after for before, after in itertools.pairwise(by_layers)]
    assert steps[:31] == pytest.approx([GIB] * 31)
    assert steps[31] == -2 * 8192 * 4096
    assert by_layers[32] == estimate_memory(shape, spec).total  # unset means all, as before

    assert recomputed_layers_to_fit(shape, spec, 1000 * GIB) == (0, by_layers[0])
    assert recomputed_layers_to_fit(shape, spec, 10 * GIB) == (32, by_layers[32])
    assert recomputed_layers_to_fit(shape, spec, by_layers[31] / RECOMPUTE_MARGIN)[0] == 31
    budget = by_layers[20] / RECOMPUTE_MARGIN + 0.5 * GIB  # fits 20, not 19
    assert recomputed_layers_to_fit(shape, spec, budget) == (20, by_layers[20])
    partial = estimate_memory(shape, spec, recomputed_layers=20)
    assert "activation recompute on 20 of 32 layers" in partial.notes


def test_full_fine_tune_needs_sharding_and_suggestions_make_it_fit(shape: ModelShape) -> None:
    spec = parse_job(
        make_job().set("method.type", "full").set("resources", {"nodes": 1, "gpusPerNode": 8})
        .set("training.batchSize", 8).obj()
    ).spec  # fmt: skip
    assert estimate_memory(shape, spec).total > 80 * GIB  # ~16 bytes/param without sharding
    changes = suggest(shape, spec, 80 * GIB)
    assert "distributed.strategy=deepspeed distributed.deepspeed.zeroStage=3" in changes
    assert not any(c.startswith("still about") for c in changes)


def test_plan_cli(llama2_7b: Path) -> None:
    result = subprocess.run(
        [sys.executable, "-m", "fttrainer.cli", "plan", str(REPO / "examples/lora-gpu.yaml"),
         "--set", f"model.name={llama2_7b}", "--set", "model.hfTokenSecretRef=null",
         "--gpu-memory", "12"],
        capture_output=True, text=True, check=False, cwd=REPO,
    )  # fmt: skip
    assert result.returncode == 0, result.stderr[-2000:]
    assert "learningRate: 0.0002" in result.stdout
    assert "trainable parameters: 39,976,960" in result.stdout
    assert "does not fit 12 GiB; try, in this order:" in result.stdout
    assert "--set method.type=qlora (4-bit base)" in result.stdout
    assert "gradientCheckpointing unset: on 12 GiB a GPU run recomputes 32 of 32 layers" in (
        result.stdout
    )


def test_the_plans_lora_dropout_memory_is_what_autograd_keeps(tmp_path: Path) -> None:
    """LoRA dropout > 0 makes PEFT keep a dropped-out copy of every adapted layer's input and
    its mask for backward. Measured here as the bytes autograd saves in one bf16-autocast
    forward (what a GPU run does), with dropout 0.05 against 0: the plan's difference is
    within 20% of the measured one."""
    import torch
    from peft import LoraConfig, get_peft_model
    from transformers import AutoModelForCausalLM, LlamaConfig

    config = LlamaConfig(hidden_size=256, intermediate_size=896, num_hidden_layers=2,
                         num_attention_heads=8, num_key_value_heads=2, vocab_size=512)  # fmt: skip
    config.save_pretrained(tmp_path)
    tokens = 256

    def saved_bytes(dropout: float) -> int:
        torch.manual_seed(0)
        model = AutoModelForCausalLM.from_config(config, dtype=torch.bfloat16)
        lora = LoraConfig(r=16, lora_alpha=32, lora_dropout=dropout, target_modules="all-linear",
                          task_type="CAUSAL_LM")  # fmt: skip
        model = get_peft_model(model, lora).train()
        return _saved_outside_weights(model, tokens)

    def planned(dropout: float) -> float:
        job = (make_job().set("method.lora.dropout", dropout).set("training.batchSize", 1)
               .set("dataset.maxSeqLength", tokens)
               .set("training.gradientCheckpointing", False))  # fmt: skip
        shape = ModelShape.from_pretrained(str(tmp_path))
        return estimate_memory(shape, parse_job(job.obj()).spec).parts["activations"]

    measured = saved_bytes(0.05) - saved_bytes(0.0)
    assert measured > 0
    assert planned(0.05) - planned(0.0) == pytest.approx(measured, rel=0.2)


def test_the_plan_says_what_lora_dropout_costs(shape: ModelShape) -> None:
    job = make_job().set("method.lora.dropout", 0.1).set("training.gradientCheckpointing", False)
    notes = estimate_memory(shape, parse_job(job.obj()).spec).notes
    # Llama 2 7B, every linear layer adapted (35,584 input features per layer), batch 4 x
    # 1024 tokens: 4 bytes x 32 layers x 35,584 x 4,096 tokens.
    assert "LoRA dropout keeps 17.4 GiB of activations; dropout 0 would not" in notes
    without = estimate_memory(shape, parse_job(job.set("method.lora.dropout", 0).obj()).spec)
    assert not any("dropout" in note for note in without.notes)


def test_plan_exits_1_when_the_data_has_bad_rows(
    tiny_llama: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    from fttrainer.cli import main

    data = tmp_path / "bad.jsonl"
    data.write_text('{"question": "q", "answer": "a"}\n{"question": "q"}\n')
    job = (make_job().set("model.name", str(tiny_llama))
           .set("dataset", {"train": {"uri": str(data)}, "format": "qa"}))  # fmt: skip
    manifest = tmp_path / "job.yaml"
    manifest.write_text(json.dumps(job.obj()))
    assert main(["plan", str(manifest)]) == 1
    printed = capsys.readouterr()
    assert "bad.jsonl:2" in printed.out + printed.err
    assert "GPU memory per device" in printed.out  # the plan still prints


@pytest.mark.parametrize(
    ("config", "total", "active"),
    [
        # Qwen3-30B-A3B: 30.5B parameters, 3.3B active (its model card).
        ({"model_type": "qwen3_moe", "hidden_size": 2048, "intermediate_size": 6144,
          "moe_intermediate_size": 768, "num_hidden_layers": 48, "num_attention_heads": 32,
          "num_key_value_heads": 4, "head_dim": 128, "num_experts": 128,
          "num_experts_per_tok": 8, "vocab_size": 151936}, 30.5e9, 3.3e9),
        # gpt-oss-20b: 20.9B parameters, 3.6B active (OpenAI's model card, which leaves the
        # input embedding out of the active count; Qwen's counts it, as this plan does).
        ({"model_type": "gpt_oss", "hidden_size": 2880, "intermediate_size": 2880,
          "num_hidden_layers": 24, "num_attention_heads": 64, "num_key_value_heads": 8,
          "head_dim": 64, "num_local_experts": 32, "num_experts_per_tok": 4,
          "vocab_size": 201088}, 20.9e9, 3.6e9 + 201088 * 2880),
    ],
)  # fmt: skip
def test_a_mixture_of_experts_counts_its_experts_and_active_share(
    config: dict[str, object], total: float, active: float, tmp_path: Path
) -> None:
    from transformers import AutoConfig

    from fttrainer.model.adapters import resolve_targets
    from fttrainer.model.meta import meta_model
    from fttrainer.model.moe import moe_config

    model_type = config.pop("model_type")
    AutoConfig.for_model(model_type, **config).save_pretrained(tmp_path)
    shape = ModelShape.from_pretrained(str(tmp_path))
    assert shape.parameters == pytest.approx(total, rel=0.01)
    assert shape.active_parameters == pytest.approx(active, rel=0.03)
    spec = parse_job(make_job().obj()).spec  # LoRA r=16, all-linear
    estimate = estimate_memory(shape, spec)
    meta = meta_model(str(tmp_path))
    # The plan counts what the trainer will adapt: the attention and every expert.
    assert (
        estimate.trainable
        == resolve_targets(meta, spec, moe_config(meta.config, meta)).lora_parameters
    )
    assert any("mixture of experts" in note for note in estimate.notes)


MOE_SHAPES = {
    "qwen3_moe": {"moe_intermediate_size": 256, "num_experts": 8},
    "mixtral": {"intermediate_size": 512, "num_local_experts": 8},
    # A clamped SwiGLU with biases: its gate keeps twice SwiGLU's bytes.
    "gpt_oss": {"intermediate_size": 256, "num_local_experts": 8,
                "layer_types": ["full_attention"] * 2},
    # Multi-head latent attention, a shared expert, grouped routing.
    "deepseek_v3": {"moe_intermediate_size": 256, "n_routed_experts": 8, "n_shared_experts": 1,
                    "first_k_dense_replace": 0, "n_group": 1, "topk_group": 1,
                    "num_key_value_heads": 4, "q_lora_rank": 64, "kv_lora_rank": 32,
                    "qk_rope_head_dim": 16, "head_dim": 16, "qk_nope_head_dim": 32,
                    "v_head_dim": 32},
}  # fmt: skip


def _saved_outside_weights(model: object, tokens: int) -> int:
    """Bytes autograd saves in one bf16-autocast forward of `tokens` random ids, the model's
    own weights left out (saved by reference, they cost nothing more)."""
    import torch

    assert isinstance(model, torch.nn.Module)
    weights = {p.untyped_storage().data_ptr() for p in model.parameters()}
    storages: dict[int, int] = {}

    def keep(tensor: torch.Tensor) -> torch.Tensor:
        storage = tensor.untyped_storage()
        if storage.data_ptr() not in weights:
            storages[storage.data_ptr()] = storage.nbytes()
        return tensor

    ids = torch.randint(0, 512, (1, tokens))
    with (
        torch.autocast("cpu", dtype=torch.bfloat16),
        torch.autograd.graph.saved_tensors_hooks(keep, lambda tensor: tensor),
    ):
        model(input_ids=ids, labels=ids)
    return sum(storages.values())


def _layer_bytes(
    model_type: str, config: dict[str, object], tokens: int, targets: list[str], tmp_path: Path
) -> tuple[int, float]:
    """(measured, planned) bytes of activations one decoder layer adds: the bytes autograd
    saves in a 16-bit forward (weights left out: they are the model's own), and the plan's
    activation part, each for two layers less one. The adapter is the trainer's: targets
    resolved by `plan_model`, PEFT's config from `peft_config_kwargs`."""
    import peft
    import torch
    from transformers import AutoConfig, AutoModelForCausalLM

    from fttrainer.arguments import peft_config_kwargs
    from fttrainer.model.adapters import plan_model

    job = (
        make_job()
        .set("training.batchSize", 1)
        .set("dataset.maxSeqLength", tokens)
        .set("training.gradientCheckpointing", False)
        .set("method.lora", {"dropout": 0, "targetModules": targets})
    )
    spec = parse_job(job.obj()).spec
    measured, planned = [], []
    for layers in (1, 2):
        values = dict(config, num_hidden_layers=layers)
        if "layer_types" in values:
            values["layer_types"] = values["layer_types"][:layers]  # type: ignore[index]
        folder = tmp_path / f"{model_type}-{layers}"  # rewritten by every call
        AutoConfig.for_model(model_type, **values).save_pretrained(folder)
        torch.manual_seed(0)
        config_read = AutoConfig.from_pretrained(folder)
        model = AutoModelForCausalLM.from_config(config_read, dtype=torch.bfloat16)
        name, kwargs = peft_config_kwargs(spec, plan_model(model, spec).targets)
        model = peft.get_peft_model(model, getattr(peft, name)(**kwargs))
        measured.append(_saved_outside_weights(model, tokens))
        shape = ModelShape.from_pretrained(str(folder))
        planned.append(estimate_memory(shape, spec).parts["activations"])
    return measured[1] - measured[0], planned[1] - planned[0]


@pytest.mark.parametrize("model_type", list(MOE_SHAPES))
def test_the_plans_moe_activations_are_what_autograd_keeps(model_type: str, tmp_path: Path) -> None:
    """An MoE layer's activations, measured as the bytes autograd saves (bf16, CPU, the
    trainer's LoRA), against the plan, each within 10%: (1) what a token keeps per expert it
    is routed to (2 against 4 experts per token), with the experts adapted (all-linear) and
    frozen (o_proj only); (2) the token-independent part LoRA on the experts adds (the
    merged expert weights; fitted over two sequence lengths, against o_proj only). (3) The
    whole layer reads no lower against the measurement than the dense formula does on a
    dense Llama."""
    base = {
        "hidden_size": 256,
        "intermediate_size": 688,
        "num_attention_heads": 4,
        "num_key_value_heads": 2,
        "head_dim": 64,
        "vocab_size": 512,
    }
    config = {**base, **MOE_SHAPES[model_type]}
    short, long = 128, 256
    layer: dict[tuple[str, int, int], tuple[int, float]] = {}
    for target in ("all-linear", "o_proj"):
        for per_token, tokens in ((2, short), (2, long), (4, long)):
            values = {**config, "num_experts_per_tok": per_token}
            layer[target, per_token, tokens] = _layer_bytes(
                model_type, values, tokens, [target], tmp_path
            )

    def routed(target: str, side: int) -> float:
        return layer[target, 4, long][side] - layer[target, 2, long][side]

    def fixed(target: str, side: int) -> float:
        slope = (layer[target, 2, long][side] - layer[target, 2, short][side]) / (long - short)
        return layer[target, 2, short][side] - slope * short

    for target in ("all-linear", "o_proj"):
        assert routed(target, 1) == pytest.approx(routed(target, 0), rel=0.1), target
    assert routed("o_proj", 0) < routed("all-linear", 0)  # frozen experts keep no inputs
    merged_measured = fixed("all-linear", 0) - fixed("o_proj", 0)
    merged_planned = fixed("all-linear", 1) - fixed("o_proj", 1)
    assert merged_measured > 0
    assert merged_planned == pytest.approx(merged_measured, rel=0.1)

    measured, planned = layer["all-linear", 2, long]
    dense_measured, dense_planned = _layer_bytes("llama", base, long, ["all-linear"], tmp_path)
    assert planned / measured >= dense_planned / dense_measured
