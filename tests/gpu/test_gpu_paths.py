"""What users run on GPUs, for real on one: quantized loading, bf16, the PEFT variants,
the attention kernels, the GPU optimizers, DeepSpeed and FSDP, GRPO and merging."""

from __future__ import annotations

import json
import math
from pathlib import Path

import pytest

from tests.gpu.runs import assert_adapter_trained, finetune, load_safetensors, recipe


def _losses(run: object) -> list[float]:
    return [m["loss"] for m in run.result.step_metrics]  # type: ignore[attr-defined]


@pytest.mark.parametrize("quant_type", ["nf4", "fp4"])
def test_qlora_4bit_double_quant_bf16_compute(
    small_llama: Path, chat_data: Path, tmp_path: Path, quant_type: str
) -> None:
    import bitsandbytes as bnb
    import torch

    run = recipe(
        small_llama, chat_data, tmp_path, "method.type=qlora",
        f"method.quantization={{bits: 4, type: {quant_type}, doubleQuant: true, "
        "computeDtype: bfloat16}",
    )  # fmt: skip
    layers = [m for m in run.model.modules() if isinstance(m, bnb.nn.Linear4bit)]
    assert layers, "no 4-bit layers: the base was not quantized"
    state = layers[0].weight.quant_state
    assert state.quant_type == quant_type
    assert state.nested, "double quantization is off"
    assert layers[0].compute_dtype == torch.bfloat16
    assert all(math.isfinite(loss) for loss in _losses(run))
    assert_adapter_trained(tmp_path / "out" / "final")


def test_8bit_loading_trains_an_adapter(small_llama: Path, chat_data: Path, tmp_path: Path) -> None:
    import bitsandbytes as bnb

    run = recipe(small_llama, chat_data, tmp_path, "method.quantization={bits: 8}")
    assert any(isinstance(m, bnb.nn.Linear8bitLt) for m in run.model.modules())
    assert all(math.isfinite(loss) for loss in _losses(run))
    assert_adapter_trained(tmp_path / "out" / "final")


def test_full_fine_tuning_in_bf16(small_llama: Path, chat_data: Path, tmp_path: Path) -> None:
    import torch

    run = recipe(small_llama, chat_data, tmp_path, "method.type=full", "method.lora=null",
                 "training.precision=bf16")  # fmt: skip
    assert run.trainer.args.bf16
    assert run.trainer.model.model.layers[0].self_attn.q_proj.weight.device.type == "cuda"
    saved = load_safetensors(tmp_path / "out" / "final" / "model.safetensors")
    base = load_safetensors(small_llama / "model.safetensors")
    name = "model.layers.0.self_attn.q_proj.weight"
    assert not torch.equal(saved[name].float(), base[name].float()), "weights did not move"


def test_dora_trains_magnitudes(small_llama: Path, chat_data: Path, tmp_path: Path) -> None:
    recipe(small_llama, chat_data, tmp_path, "method.type=dora")
    adapter = load_safetensors(tmp_path / "out" / "final" / "adapter_model.safetensors")
    assert any("lora_magnitude_vector" in name for name in adapter)
    assert_adapter_trained(tmp_path / "out" / "final")


def test_spectrum_unfreezes_a_fraction(small_llama: Path, chat_data: Path, tmp_path: Path) -> None:
    run = recipe(small_llama, chat_data, tmp_path, "method.type=spectrum", "method.lora=null",
                 "method.spectrum={topFraction: 0.25}")  # fmt: skip
    trainable = [n for n, p in run.model.named_parameters() if p.requires_grad]
    total = [n for n, _ in run.model.named_parameters()]
    assert 0 < len(trainable) < len(total) / 2
    assert all(math.isfinite(loss) for loss in _losses(run))


@pytest.mark.parametrize("attention", ["auto", "sdpa", "flex_attention", "eager"])
def test_attention_kernels_train(
    small_llama: Path, chat_data: Path, tmp_path: Path, attention: str
) -> None:
    from fttrainer.model.attention import MODEL_ATTENTION

    run = recipe(small_llama, chat_data, tmp_path, f"model.attention={attention}")
    expected = MODEL_ATTENTION if attention == "auto" else attention
    assert run.model.config._attn_implementation == expected
    assert all(math.isfinite(loss) for loss in _losses(run))


@pytest.mark.parametrize(
    ("optimizer", "module"),
    [("paged_adamw_8bit", "bitsandbytes.optim"), ("adamw_torch_fused", "torch.optim")],
)
def test_gpu_optimizers(small_llama: Path, chat_data: Path, tmp_path: Path,
                        optimizer: str, module: str) -> None:  # fmt: skip
    run = recipe(small_llama, chat_data, tmp_path, f"training.optimizer={optimizer}")
    inner = getattr(run.trainer.optimizer, "optimizer", run.trainer.optimizer)
    assert type(inner).__module__.startswith(module), type(inner)
    if optimizer == "paged_adamw_8bit":
        assert inner.is_paged and inner.args.optim_bits == 8
    else:
        assert inner.defaults["fused"] is True
    assert all(math.isfinite(loss) for loss in _losses(run))
    assert_adapter_trained(tmp_path / "out" / "final")


@pytest.mark.parametrize("stage", [2, 3])
def test_deepspeed_zero_in_one_process_saves_and_resumes(
    small_llama: Path, chat_data: Path, tmp_path: Path, stage: int
) -> None:
    strategy = ["distributed.strategy=deepspeed", f"distributed.deepspeed.zeroStage={stage}"]
    first = finetune(small_llama, chat_data, tmp_path, *strategy, "training.maxSteps=4")
    assert first.returncode == 0, first.stderr[-4000:]
    assert f"deepspeed ZeRO-{stage}" in first.stderr + first.stdout
    assert_adapter_trained(tmp_path / "out" / "final")
    # A pod killed after its last checkpoint, before the run was marked done: the next
    # attempt (with more steps) continues from checkpoint-4 through DeepSpeed's own loader.
    (done,) = (tmp_path / "out" / "checkpoints").glob("*/DONE.json")
    done.unlink()
    again = finetune(small_llama, chat_data, tmp_path, *strategy, "training.maxSteps=6")
    assert again.returncode == 0, again.stderr[-4000:]
    assert "checkpoint-4 (step 4)" in again.stderr + again.stdout
    final = json.loads((tmp_path / "out" / "final_metrics.json").read_text())
    assert final["global_step"] == 6
    assert_adapter_trained(tmp_path / "out" / "final")


@pytest.mark.parametrize(
    "checkpointing",
    ["training.gradientCheckpointing=false", "training.gradientCheckpointing=true"],
    ids=["checkpointing-off", "checkpointing-on"],
)
def test_fsdp_in_one_process(
    small_llama: Path, chat_data: Path, tmp_path: Path, checkpointing: str
) -> None:
    """With checkpointing on, FSDP's checkpoint_wrapper once made PEFT save an empty
    adapter (EmptyWeightsError on the H100): adapters now use the model's own."""
    result = finetune(small_llama, chat_data, tmp_path, "distributed.strategy=fsdp", checkpointing)
    assert result.returncode == 0, result.stderr[-4000:]
    assert "fsdp" in (result.stderr + result.stdout).lower()
    assert_adapter_trained(tmp_path / "out" / "final")


def test_grpo_generates_and_trains(small_llama: Path, tmp_path: Path) -> None:
    prompts = tmp_path / "prompts.jsonl"
    rows = [{"prompt": [{"role": "user", "content": f"Count to {i}."}]} for i in range(16)]
    prompts.write_text("".join(json.dumps(r) + "\n" for r in rows))
    result = finetune(
        small_llama, prompts, tmp_path, "dataset.format=prompt_only", "trainer.type=grpo",
        "trainer.grpo={numGenerations: 4, maxCompletionLength: 16, "
        "rewards: [{type: length, maxLength: 8}]}",
        "training.maxSteps=2",
    )  # fmt: skip
    assert result.returncode == 0, result.stderr[-4000:]
    steps = json.loads((tmp_path / "out" / "step_metrics.json").read_text())
    assert len(steps) == 2
    # Completions were generated and scored at every step (a random model's rewards may
    # not vary, so the adapter may legitimately not move in two steps).
    assert all(s["completions/mean_length"] > 0 and "reward" in s for s in steps), steps
    adapter = load_safetensors(tmp_path / "out" / "final" / "adapter_model.safetensors")
    assert any("lora_B" in name for name in adapter)


def test_qlora_adapter_merges_into_bf16_weights(
    small_llama: Path, chat_data: Path, tmp_path: Path
) -> None:
    import torch

    recipe(small_llama, chat_data, tmp_path, "method.type=qlora", "output.mergeAdapter=true")
    merged = load_safetensors(tmp_path / "out" / "merged" / "model.safetensors")
    base = load_safetensors(small_llama / "model.safetensors")
    name = "model.layers.0.self_attn.q_proj.weight"
    assert merged.keys() == base.keys()
    assert merged[name].dtype == torch.bfloat16
    assert merged[name].shape == base[name].shape
    assert not torch.equal(merged[name], base[name]), "the adapter was not merged in"


def _batch_loss(run: object, rows: list[dict[str, object]]) -> float:
    import torch

    trainer = run.trainer  # type: ignore[attr-defined]
    batch = trainer.data_collator(rows)
    batch = {k: v.cuda() if isinstance(v, torch.Tensor) else v for k, v in batch.items()}
    with torch.no_grad():
        return float(trainer.model(**batch).loss)


def test_padding_free_varlen_gives_the_padded_loss(
    small_llama: Path, chat_data: Path, tmp_path: Path
) -> None:
    """The default on a GPU (rows concatenated, torch's varlen FlashAttention) computes
    the loss SDPA computes on the same rows padded."""
    from fttrainer.model.attention import MODEL_ATTENTION

    packed = recipe(small_llama, chat_data, tmp_path / "packed", train=False)
    assert packed.model.config._attn_implementation == MODEL_ATTENTION
    assert packed.trainer.args.padding_free
    padded = recipe(small_llama, chat_data, tmp_path / "padded", "dataset.paddingFree=false",
                    "model.attention=sdpa", train=False)  # fmt: skip
    rows = [padded.trainer.train_dataset[i] for i in range(4)]
    assert len({len(r["input_ids"]) for r in rows}) > 1  # real padding in the padded batch
    expected = _batch_loss(padded, rows)
    assert _batch_loss(packed, rows) == pytest.approx(expected, rel=2e-2)


def test_the_memory_plan_checkpoints_only_the_layers_it_needs(
    small_llama: Path, chat_data: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """training.gradientCheckpointing unset, on a device that holds the run with 5 of its 8
    layers checkpointed but not 4: exactly the first 5 recompute, and the run trains as
    the plain path does. The device's free memory is the one thing set here (to that
    budget); the plan, the Trainer and the kernels are real."""
    import torch

    from ftapi import parse_job
    from fttrainer.model.memory_plan import RECOMPUTE_MARGIN, ModelShape, estimate_memory
    from fttrainer.model.recompute import decoder_layers, recomputed_layers
    from tests.gpu.runs import manifest

    spec = parse_job(manifest(small_llama, chat_data, tmp_path)).spec
    shape = ModelShape.from_pretrained(str(small_llama))
    five, four = (estimate_memory(shape, spec, recomputed_layers=n).total for n in (5, 4))
    budget = (five + four) / 2 / RECOMPUTE_MARGIN
    total = torch.cuda.mem_get_info()[1]
    with monkeypatch.context() as patch:
        patch.setattr(torch.cuda, "mem_get_info",
                      lambda *_: (int(budget) - torch.cuda.memory_reserved(), total))  # fmt: skip
        partial = recipe(small_llama, chat_data, tmp_path / "partial")
    assert recomputed_layers(partial.trainer.model) == (5, 8)
    flags = [layer.gradient_checkpointing for layer in decoder_layers(partial.trainer.model)]
    assert flags == [True] * 5 + [False] * 3
    plain = recipe(small_llama, chat_data, tmp_path / "plain",
                   "training.gradientCheckpointing=false")  # fmt: skip
    assert recomputed_layers(plain.trainer.model) == (0, 8)
    assert _losses(partial) == pytest.approx(_losses(plain), rel=2e-2)


@pytest.mark.parametrize("family", ["qwen2_5_vl", "gemma3"])
def test_qlora_of_a_vision_language_model(tmp_path: Path, family: str) -> None:
    """QLoRA of a vision-language model on pictures: the language model's linears load in
    4 bits under the adapter, the vision tower stays frozen, the loss falls."""
    import bitsandbytes as bnb

    from fttrainer.tiny_vision import build
    from tests.trainer.test_vision import CORPUS, colour_rows

    model = build(family, corpus=CORPUS).save(tmp_path / "tiny")
    data = colour_rows(tmp_path / "rows", 48, seed=1)
    run = recipe(model, data, tmp_path, "method.type=qlora", "training.maxSteps=40",
                 "training.batchSize=8", "training.learningRate=5e-3",
                 "dataset.maxSeqLength=128")  # fmt: skip
    quantized = [n for n, m in run.model.named_modules() if isinstance(m, bnb.nn.Linear4bit)]
    assert any("language_model" in n for n in quantized), quantized[:5]
    trainable = [n for n, p in run.trainer.model.named_parameters() if p.requires_grad]
    assert trainable and not [n for n in trainable if "visual" in n or "vision" in n]
    losses = _losses(run)
    assert losses[-1] < 0.5 * losses[0], losses
    assert_adapter_trained(tmp_path / "out" / "final")
