"""DeepSpeed ZeRO and FSDP for real: two processes under torchrun, the way a pod runs them.

On CPU, DeepSpeed runs on its CPU accelerator over gloo. FSDP cannot run on CPU through
the Trainer (accelerate 1.15 attaches its FSDP plugin only to GPU process groups: with
`use_cpu` the Trainer reports MULTI_CPU and trains plain DDP, without it accelerate finds no
backend and the Trainer stops with "Using fsdp only works in distributed training"), so its
run needs a GPU.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest

from ftapi import parse_job
from fttestkit.builders import make_job
from fttestkit.paths import REPO
from fttestkit.ports import free_port
from fttrainer.arguments import trainer_config_kwargs
from fttrainer.distributed import unsharded_loading
from fttrainer.tiny import build_model, build_tokenizer, save_tiny_model

LORA_R = 8  # examples/quickstart-cpu.yaml


def _torchrun(tmp_path: Path, model: Path, *sets: str, processes: int = 2,
              ) -> subprocess.CompletedProcess[str]:  # fmt: skip
    """The quick start on `processes` ranks, 4 steps, with extra --set overrides."""
    torchrun = Path(sys.executable).parent / "torchrun"
    overrides = [
        f"model.name={model}", "training.maxSteps=4", "evaluation.strategy=no",
        f"output.uri={tmp_path / 'published'}", *sets,
    ]  # fmt: skip
    return subprocess.run(
        [str(torchrun), "--nproc-per-node", str(processes), "--master-addr", "127.0.0.1",
         "--master-port", str(free_port()), "-m", "fttrainer.cli", "run",
         str(REPO / "examples/quickstart-cpu.yaml"), "--output", str(tmp_path / "out"),
         *[arg for override in overrides for arg in ("--set", override)]],
        cwd=REPO, capture_output=True, text=True, check=False, timeout=400,
        env={**os.environ, "OMP_NUM_THREADS": "1"},
    )  # fmt: skip


def _load(path: Path) -> dict[str, Any]:
    from safetensors.torch import load_file

    return load_file(str(path))


def _assert_trained_adapter(final: Path, model: Path) -> None:
    """Every LoRA pair has the shapes the base layer implies, and B moved off its zero
    initialisation: the adapter holds the trained weights, not placeholders or the init."""
    adapter = _load(final / "adapter_model.safetensors")
    base = _load(model / "model.safetensors")
    pairs = {key.rsplit(".lora_", 1)[0] for key in adapter if ".lora_" in key}
    assert pairs, sorted(adapter)
    for prefix in pairs:
        layer = prefix.removeprefix("base_model.model.") + ".weight"
        out_features, in_features = base[layer].shape
        lora_a = adapter[f"{prefix}.lora_A.weight"]
        lora_b = adapter[f"{prefix}.lora_B.weight"]
        assert tuple(lora_a.shape) == (LORA_R, in_features), prefix
        assert tuple(lora_b.shape) == (out_features, LORA_R), prefix
    assert any(bool(adapter[f"{p}.lora_B.weight"].abs().sum() > 0) for p in pairs)


@pytest.mark.parametrize("stage", [2, 3])
def test_deepspeed_zero_lora_saves_the_trained_adapter(tmp_path: Path, stage: int) -> None:
    model = save_tiny_model("llama", tmp_path / "model")
    extra = []
    if stage == 3:
        # Generating after training and merging on rank 0 are where ZeRO-3 deadlocks when
        # one rank works alone: each forward gathers weights from every rank.
        extra = ["evaluation.prompts=[Say hi]", "evaluation.maxNewTokens=4",
                 "output.mergeAdapter=true"]  # fmt: skip
    result = _torchrun(tmp_path, model, "distributed.strategy=deepspeed",
                       f"distributed.deepspeed.zeroStage={stage}", *extra)  # fmt: skip
    assert result.returncode == 0, result.stderr[-4000:]
    assert f"distributed: deepspeed ZeRO-{stage}, 2 process(es)" in result.stderr + result.stdout
    out = tmp_path / "out"
    assert json.loads((out / "final_metrics.json").read_text())["global_step"] == 4
    _assert_trained_adapter(out / "final", model)
    if stage == 3:
        comparison = json.loads((out / "model_comparison.json").read_text())
        assert [row["prompt"] for row in comparison] == ["Say hi"]
        merged = _load(out / "merged" / "model.safetensors")
        base = _load(model / "model.safetensors")
        layer = "model.layers.0.self_attn.q_proj.weight"
        assert merged[layer].shape == base[layer].shape
        assert not bool((merged[layer] == base[layer]).all())  # the trained delta is in


def test_zero3_full_weights_are_gathered_into_one_model(tmp_path: Path) -> None:
    """The generated stage3_gather_16bit_weights_on_model_save reaches DeepSpeed: the
    partitioned weights come back whole, trained, in one from_pretrained-able file."""
    model = save_tiny_model("llama", tmp_path / "model")
    result = _torchrun(
        tmp_path, model, "method.type=full", "method.lora=null",
        "distributed.strategy=deepspeed", "distributed.deepspeed.zeroStage=3",
    )  # fmt: skip
    assert result.returncode == 0, result.stderr[-4000:]
    saved = _load(tmp_path / "out" / "final" / "model.safetensors")
    base = _load(model / "model.safetensors")
    assert {k: tuple(v.shape) for k, v in saved.items()} == {
        k: tuple(v.shape) for k, v in base.items()
    }
    layer = "model.layers.0.self_attn.q_proj.weight"
    assert not bool((saved[layer] == base[layer]).all())  # trained, not the base reloaded


def test_zero3_saving_without_gathering_fails_the_run(tmp_path: Path) -> None:
    """Full weights under ZeRO-3 with the gather flag turned off in the raw config: the
    Trainer falls back to DeepSpeed's sharded checkpoint and writes no model; the run must
    fail instead of reporting success with nothing to deploy."""
    model = save_tiny_model("llama", tmp_path / "model")
    result = _torchrun(
        tmp_path, model, "method.type=full", "method.lora=null",
        "distributed.strategy=deepspeed", "distributed.deepspeed.zeroStage=3",
        "distributed.deepspeed.config={zero_optimization: "
        "{stage3_gather_16bit_weights_on_model_save: false}}",
    )  # fmt: skip
    assert result.returncode != 0
    assert "no weights were saved" in result.stderr
    assert not (tmp_path / "out" / "final" / "model.safetensors").exists()


@pytest.mark.parametrize(
    ("method", "fsdp_checkpointing"), [("full", True), ("lora", False)], ids=["full", "lora"]
)
def test_fsdp_config_reaches_accelerates_fsdp2_plugin(
    tmp_path: Path, method: str, fsdp_checkpointing: bool
) -> None:
    """No process group needed: transformers turns our fsdp_config into accelerate's
    plugin arguments, and the plugin carries every knob (FSDP itself needs GPUs).
    Checkpointing (the GPU default) is FSDP's for full weights, the model's own for
    adapters (FSDP's wrapper made PEFT save an empty adapter), and transformers accepts
    either without the other."""
    from accelerate.utils import FullyShardedDataParallelPlugin
    from torch.distributed.fsdp import CPUOffloadPolicy
    from transformers import TrainingArguments

    fsdp = {"strategy": "fsdp", "fsdp": {"cpuOffload": True, "reshardAfterForward": False}}
    job = make_job().set("distributed", fsdp).set("method", {"type": method})
    spec = parse_job(job.obj()).spec
    kwargs = trainer_config_kwargs(
        spec,
        output_dir=str(tmp_path),
        cuda=True,
        bf16_supported=True,
        layer_classes=["LlamaDecoderLayer"],
    )
    args = TrainingArguments(
        output_dir=str(tmp_path), use_cpu=True, report_to=[], fsdp=kwargs["fsdp"],
        fsdp_config=kwargs["fsdp_config"],
        activation_checkpointing=kwargs["activation_checkpointing"],
    )  # fmt: skip
    plugin = FullyShardedDataParallelPlugin(**args.fsdp_plugin_args)
    assert plugin.fsdp_version == 2
    assert plugin.reshard_after_forward is False
    assert isinstance(plugin.cpu_offload, CPUOffloadPolicy)
    assert plugin.activation_checkpointing is fsdp_checkpointing
    assert args.activation_checkpointing is not fsdp_checkpointing
    assert "FULL_STATE_DICT" in str(plugin.state_dict_type)
    assert plugin.transformer_cls_names_to_wrap == ["LlamaDecoderLayer"]


def test_deepspeed_config_is_accepted_by_transformers_and_deepspeed(tmp_path: Path) -> None:
    """The offload knobs parsed by DeepSpeed's own config classes after transformers
    filled in every "auto"; and a model built beside these ZeRO-3 arguments is a plain one
    only inside unsharded_loading (outside, zero.Init would partition it)."""
    from deepspeed.runtime.config import DeepSpeedConfig
    from transformers import TrainingArguments
    from transformers.integrations.deepspeed import (
        is_deepspeed_zero3_enabled,
        unset_hf_deepspeed_config,
    )

    deepspeed = {"zeroStage": 3, "offloadOptimizer": "cpu", "offloadParameters": "cpu",
                 "config": {"zero_optimization": {"sub_group_size": 100_000_000}}}  # fmt: skip
    spec = parse_job(
        make_job().set("distributed", {"strategy": "deepspeed", "deepspeed": deepspeed})
        .set("training", {"batchSize": 4, "gradientAccumulationSteps": 2, "maxGradNorm": 0.5,
                          "learningRate": 1e-3})
        .obj()
    ).spec  # fmt: skip
    kwargs = trainer_config_kwargs(spec, output_dir=str(tmp_path), cuda=False, bf16_supported=False)
    names = ("deepspeed", "use_cpu", "per_device_train_batch_size", "gradient_accumulation_steps",
             "max_grad_norm", "learning_rate", "weight_decay", "bf16", "fp16")  # fmt: skip
    args = TrainingArguments(output_dir=str(tmp_path), report_to=[],
                             **{name: kwargs[name] for name in names})  # fmt: skip
    try:
        hf_config = args.hf_deepspeed_config
        assert is_deepspeed_zero3_enabled()
        with unsharded_loading(args):  # else the model is built under zero.Init
            model = build_model("llama", build_tokenizer())
        assert is_deepspeed_zero3_enabled()  # restored for the Trainer
        hf_config.trainer_config_finalize(args, model, num_training_steps=10)
        config = DeepSpeedConfig(hf_config.config)
    finally:
        unset_hf_deepspeed_config()  # later from_pretrained calls must not see ZeRO-3
    zero = config.zero_config
    assert config.zero_optimization_stage == 3
    assert zero.gather_16bit_weights_on_model_save is True
    assert (zero.offload_optimizer.device, zero.offload_param.device) == ("cpu", "cpu")
    assert zero.offload_optimizer.pin_memory and zero.offload_param.pin_memory
    assert zero.sub_group_size == 100_000_000  # the raw config, merged
    assert zero.reduce_bucket_size == 64 * 64  # "auto": hidden size squared
    assert (config.train_batch_size, config.gradient_clipping) == (8, 0.5)
    assert config.optimizer_name == "adamw" and config.optimizer_params["lr"] == 1e-3
    assert not config.bfloat16_config.enabled and not config.float16_config.enabled


def _cuda_devices() -> int:
    import torch

    return torch.cuda.device_count() if torch.cuda.is_available() else 0


@pytest.mark.gpu
@pytest.mark.skipif(
    _cuda_devices() == 0,
    reason="FSDP through the Trainer needs a GPU process group: on CPU accelerate 1.15 "
    "does not attach the FSDP plugin (MULTI_CPU trains plain DDP; without use_cpu: "
    "'Using fsdp only works in distributed training')",
)
def test_fsdp2_lora_saves_the_trained_adapter(tmp_path: Path) -> None:
    model = save_tiny_model("llama", tmp_path / "model")
    processes = min(_cuda_devices(), 2)
    result = _torchrun(
        tmp_path, model, "distributed.strategy=fsdp", "training.device=cuda",
        f"resources.gpusPerNode={processes}", "evaluation.prompts=[Say hi]",
        "evaluation.maxNewTokens=4", processes=processes,
    )  # fmt: skip
    assert result.returncode == 0, result.stderr[-4000:]
    assert f"distributed: FSDP2, {processes} process(es)" in result.stderr + result.stdout
    _assert_trained_adapter(tmp_path / "out" / "final", model)
