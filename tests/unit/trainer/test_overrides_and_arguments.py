"""--set overrides, and how a spec becomes TRL/PEFT arguments."""

from __future__ import annotations

from typing import Any

import pytest

from ftapi import parse_job
from fttestkit.builders import make_job
from fttrainer.arguments import (
    bitsandbytes_kwargs,
    peft_config_kwargs,
    resolve_device,
    resolve_partial_recompute,
    resolve_precision,
    trainer_config_kwargs,
)
from fttrainer.overrides import OverrideError, apply_overrides


def test_overrides_parse_yaml_values_and_imply_spec() -> None:
    manifest = apply_overrides(
        make_job().obj(),
        ["training.epochs=2", "method.lora.targetModules=[q_proj, v_proj]", "metadata.name=x"],
    )
    assert manifest["spec"]["training"]["epochs"] == 2
    assert manifest["spec"]["method"]["lora"]["targetModules"] == ["q_proj", "v_proj"]
    assert manifest["metadata"]["name"] == "x"


@pytest.mark.parametrize("bad", ["training.epochs", "=3", "model.name.x=1"])
def test_bad_override(bad: str) -> None:
    with pytest.raises(OverrideError):
        apply_overrides(make_job().obj(), [bad])


def _sft(**changes: object) -> dict[str, object]:
    job = make_job()
    for path, value in changes.items():
        job.set(path.replace("__", "."), value)
    spec = parse_job(job.obj()).spec
    return trainer_config_kwargs(spec, output_dir="/tmp/x", cuda=False, bf16_supported=False)


def test_cpu_run_turns_off_what_trl_enables_by_default() -> None:
    kwargs = _sft()
    assert (kwargs["bf16"], kwargs["fp16"], kwargs["use_cpu"]) == (False, False, True)
    assert kwargs["activation_checkpointing"] is False
    assert kwargs["learning_rate"] == 2e-4
    assert kwargs["assistant_only_loss"] is True  # instruction data: responses only
    # No DDP buffer broadcast in each forward (it would hide stragglers: ranks.py; the real
    # straggler is named through the operator in tests/e2e/test_faults.py).
    assert kwargs["ddp_broadcast_buffers"] is False


def test_hyperparameters_map_onto_trl_names() -> None:
    kwargs = _sft(training__maxSteps=7, training__warmupRatio=0.1, evaluation__strategy="steps",
                  evaluation__steps=5, dataset__maxSeqLength=256)  # fmt: skip
    assert (kwargs["max_steps"], kwargs["warmup_steps"], kwargs["eval_steps"]) == (7, 0.1, 5)
    assert kwargs["max_length"] == 256


def test_precision_auto() -> None:
    spec = parse_job(make_job().obj()).spec
    assert resolve_precision(spec, cuda=True, bf16_supported=True) == "bf16"
    assert resolve_precision(spec, cuda=True, bf16_supported=False) == "fp16"
    assert resolve_precision(spec, cuda=False, bf16_supported=False) == "fp32"


def test_peft_configs() -> None:
    lora = peft_config_kwargs(parse_job(make_job().set("method.type", "dora").obj()).spec)
    assert lora is not None
    assert lora[0] == "LoraConfig" and lora[1]["use_dora"] is True
    assert lora[1]["target_modules"] == "all-linear"  # PEFT expands only the plain string
    prompt = parse_job(make_job().set("method", {"type": "prompt", "prompt": {
        "init": "text", "initText": "Classify:"}}).obj()).spec  # fmt: skip
    assert peft_config_kwargs(prompt) == ("PromptTuningConfig", {
        "num_virtual_tokens": 20, "prompt_tuning_init": "TEXT",
        "prompt_tuning_init_text": "Classify:", "task_type": "CAUSAL_LM"})  # fmt: skip
    assert peft_config_kwargs(parse_job(make_job().set("method.type", "full").obj()).spec) is None


@pytest.mark.parametrize(
    ("raw", "value"),
    [("no", "no"), ("off", "off"), ("true", True), ("False", False), ("3", 3), ("1e-4", 1e-4),
     # YAML 1.1 would read octal 14, base-60 90, 493 and 1000: 1.2 integers are decimal.
     ("016", 16), ("1:30", "1:30"), ("0755", 755), ("1_000", "1_000"), ("0x10", 16),
     ("0o17", 15), ("-2", -2), (".5", 0.5), ("2e5", 2e5)],
)  # fmt: skip
def test_override_values_use_yaml_1_2_scalars(raw: str, value: object) -> None:
    manifest = apply_overrides(make_job().obj(), [f"evaluation.strategy={raw}"])
    assert manifest["spec"]["evaluation"]["strategy"] == value


@pytest.mark.parametrize(
    ("attention", "cuda", "flash_attn", "expected"),
    [
        ("auto", True, True, "flash_attention_2"),
        ("auto", True, False, None),  # transformers picks SDPA
        ("auto", False, True, None),  # flash-attn needs a GPU
        ("sdpa", True, True, "sdpa"),
        ("eager", False, False, "eager"),
    ],
)
def test_attention_auto_prefers_flash_attention_on_a_gpu(
    attention: str, cuda: bool, flash_attn: bool, expected: str | None
) -> None:
    from fttrainer.arguments import resolve_attention

    spec = parse_job(make_job().set("model.attention", attention).obj()).spec
    assert resolve_attention(spec, cuda=cuda, flash_attn=flash_attn) == expected


@pytest.mark.parametrize(
    ("attention", "cuda", "flash_attn", "message"),
    [
        ("flash_attention_2", False, True, "flash_attention_2 needs a CUDA GPU"),
        ("flash_attention_3", False, False, "flash_attention_3 needs a CUDA GPU"),
        ("flash_attention_2", True, False, "needs the flash-attn package"),
    ],
)
def test_flash_attention_where_it_cannot_load_is_invalid_input(
    attention: str, cuda: bool, flash_attn: bool, message: str
) -> None:
    spec = parse_job(make_job().set("model.attention", attention).obj()).spec
    from fttrainer.arguments import resolve_attention

    with pytest.raises(ValueError, match=message):
        resolve_attention(spec, cuda=cuda, flash_attn=flash_attn)


@pytest.mark.parametrize(
    ("optimizer", "cuda", "strategy", "expected"),
    [
        ("auto", True, "auto", "adamw_torch_fused"),  # one kernel for every parameter
        ("auto", False, "auto", "adamw_torch"),
        ("auto", True, "deepspeed", "adamw_torch_fused"),
        ("adamw_torch", True, "auto", "adamw_torch"),  # an explicit choice stays
        ("paged_adamw_8bit", True, "auto", "paged_adamw_8bit"),
    ],
)
def test_optimizer_auto_is_fused_adamw_on_a_gpu(
    optimizer: str, cuda: bool, strategy: str, expected: str
) -> None:
    job = make_job().set("training.optimizer", optimizer).set("distributed.strategy", strategy)
    spec = parse_job(job.obj()).spec
    kwargs = trainer_config_kwargs(spec, output_dir="/tmp/x", cuda=cuda, bf16_supported=cuda)
    assert kwargs["optim"] == expected


def test_deepspeed_cpu_offload_accepts_the_resolved_auto_optimizer() -> None:
    job = make_job().set("distributed", {"strategy": "deepspeed",
                                         "deepspeed": {"offloadOptimizer": "cpu"}})  # fmt: skip
    spec = parse_job(job.obj()).spec
    kwargs = trainer_config_kwargs(spec, output_dir="/tmp/x", cuda=True, bf16_supported=True)
    assert kwargs["deepspeed"]["optimizer"]["type"] == "AdamW"


@pytest.mark.parametrize(
    ("changes", "cuda", "planned", "checkpointing", "partial"),
    [
        ({}, True, 0, False, None),  # everything fits: no recompute
        ({}, True, 10, True, 10),  # the first 10 of 32 layers
        ({}, True, 32, True, None),  # all of them: the Trainer's own flag says it
        ({}, True, None, True, None),  # no plan (cannot read the model): all, as TRL
        ({}, False, None, False, None),  # CPU: off
        ({"training.gradientCheckpointing": True}, True, None, True, None),  # explicit: all
        ({"training.gradientCheckpointing": False}, True, None, False, None),
        ({"method.type": "prefix"}, True, 10, False, None),  # breaks prefix tuning
        ({"trainer.type": "dpo", "dataset.format": "preference"}, True, 10, True, None),
        ({"distributed.strategy": "fsdp"}, True, 10, True, 10),  # LoRA: the model's own
        ({"distributed.strategy": "fsdp", "method.type": "full"}, True, 10, True, None),
        ({"distributed.strategy": "deepspeed"}, True, 10, True, 10),
    ],
)
def test_the_memory_plan_decides_how_many_layers_recompute_on_a_gpu(
    changes: dict[str, object], cuda: bool, planned: int | None, checkpointing: bool,
    partial: int | None,
) -> None:  # fmt: skip
    job = make_job()
    for path, value in changes.items():
        job.set(path, value)
    spec = parse_job(job.obj()).spec
    kwargs = trainer_config_kwargs(spec, output_dir="/tmp/x", cuda=cuda, bf16_supported=cuda,
                                   planned_recomputed_layers=planned)  # fmt: skip
    recompute = kwargs["activation_checkpointing"] or bool(
        kwargs.get("fsdp_config", {}).get("activation_checkpointing")
    )
    assert recompute is checkpointing
    layers = resolve_partial_recompute(spec, cuda=cuda, planned_layers=planned, layers=32)
    assert layers == partial


FOUR_BIT_DEFAULTS = {
    "load_in_4bit": True,
    "bnb_4bit_quant_type": "nf4",
    "bnb_4bit_use_double_quant": True,
    "bnb_4bit_compute_dtype": "bf16",
    "bnb_4bit_quant_storage": "uint8",
}


@pytest.mark.parametrize(
    ("method", "distributed", "expected"),
    [
        ({"type": "lora"}, {}, None),
        ({"type": "qlora"}, {}, FOUR_BIT_DEFAULTS),
        ({"type": "lora", "quantization": {"bits": 8}}, {}, {"load_in_8bit": True}),
        (
            {"type": "qlora", "quantization": {"type": "fp4", "doubleQuant": False,
                                               "computeDtype": "float16"}},
            {},
            {**FOUR_BIT_DEFAULTS, "bnb_4bit_quant_type": "fp4",
             "bnb_4bit_use_double_quant": False, "bnb_4bit_compute_dtype": "float16"},
        ),
        # Sharded strategies store the packed weights in the compute dtype.
        ({"type": "qlora"}, {"strategy": "fsdp"},
         {**FOUR_BIT_DEFAULTS, "bnb_4bit_quant_storage": "bf16"}),
        ({"type": "qlora"}, {"strategy": "deepspeed", "deepspeed": {"zeroStage": 3}},
         {**FOUR_BIT_DEFAULTS, "bnb_4bit_quant_storage": "bf16"}),
        ({"type": "qlora"}, {"strategy": "deepspeed", "deepspeed": {"zeroStage": 2}},
         FOUR_BIT_DEFAULTS),
        ({"type": "qlora", "quantization": {"quantStorage": "float32"}}, {"strategy": "fsdp"},
         {**FOUR_BIT_DEFAULTS, "bnb_4bit_quant_storage": "float32"}),
    ],
)  # fmt: skip
def test_bitsandbytes_arguments(
    method: dict[str, Any], distributed: dict[str, Any], expected: dict[str, Any] | None
) -> None:
    job = make_job().set("method", method).set("resources.gpusPerNode", 2)
    if distributed:
        job.set("distributed", distributed)
    assert bitsandbytes_kwargs(parse_job(job.obj()).spec, precision="bf16") == expected


def test_the_bitsandbytes_arguments_build_a_real_config() -> None:
    """transformers' own class takes them (it refuses unknown names and wrong types)."""
    from transformers import BitsAndBytesConfig

    from fttrainer.recipe import torch_dtype

    kwargs = bitsandbytes_kwargs(parse_job(make_job().set("method.type", "qlora").obj()).spec,
                                 precision="bf16")  # fmt: skip
    assert kwargs is not None
    for key in ("bnb_4bit_compute_dtype", "bnb_4bit_quant_storage"):
        kwargs[key] = torch_dtype(kwargs[key])
    config = BitsAndBytesConfig(**kwargs)
    assert config.load_in_4bit and config.bnb_4bit_quant_type == "nf4"
    assert str(config.bnb_4bit_compute_dtype) == "torch.bfloat16"


@pytest.mark.parametrize(
    ("device", "cuda", "mps", "expected"),
    [
        ("auto", True, False, "cuda"),
        ("auto", False, False, "cpu"),
        ("auto", False, True, "cpu"),  # auto never picks MPS
        ("cuda", True, False, "cuda"),
        ("cuda", False, True, "cpu"),  # not there: CPU, with a warning from the recipe
        ("mps", True, True, "mps"),  # asked for: MPS even beside a CUDA GPU
        ("mps", True, False, "cpu"),
        ("cpu", True, True, "cpu"),
    ],
)
def test_training_device(device: str, cuda: bool, mps: bool, expected: str) -> None:
    spec = parse_job(make_job().set("training.device", device).obj()).spec
    assert resolve_device(spec, cuda_available=cuda, mps_available=mps) == expected


def test_mps_trains_on_the_accelerator_not_the_cpu() -> None:
    """The Trainer picks MPS by itself unless use_cpu is set, which CPU runs need."""
    spec = parse_job(make_job().set("training.device", "mps").obj()).spec
    on_mps = trainer_config_kwargs(spec, output_dir="/tmp/x", cuda=False, bf16_supported=False,
                                   mps=True)  # fmt: skip
    on_cpu = trainer_config_kwargs(spec, output_dir="/tmp/x", cuda=False, bf16_supported=False)
    assert (on_mps["use_cpu"], on_cpu["use_cpu"]) == (False, True)
    assert on_mps["optim"] == "adamw_torch" and not on_mps["bf16"]
