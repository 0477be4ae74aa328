"""Mixture-of-experts models beyond the support table (test_support_matrix.py): the router
trained on request with its balancing loss, the refusals that depend on settings rather
than the method, DPO, other methods' settings, and a merge onto a base saved in 4 bits."""

from __future__ import annotations

import json
import math
import shutil
from pathlib import Path
from typing import Any

import pytest

from ftapi import parse_job
from fttestkit.builders import make_job
from fttrainer.recipe import Recipe


def _job(model: Path, data: Path, out: Path, **changes: Any) -> Any:
    job = (
        make_job("moe")
        .set("model.name", str(model))
        .set("dataset", {"train": {"uri": str(data)}, "format": "qa", "maxSeqLength": 48})
        .set("training", {"maxSteps": 3, "batchSize": 4, "learningRate": 1e-2, "device": "cpu"})
        .set("evaluation.strategy", "no")
        .set("logging.steps", 1)
        .set("output.uri", str(out / "published"))
    )
    for path, value in changes.items():
        job.set(path.replace("__", "."), value)
    return parse_job(job.obj())


def _run(model: Path, data: Path, out: Path, **changes: Any) -> tuple[Recipe, list[dict[str, Any]]]:
    recipe = Recipe(_job(model, data, out, **changes), out)
    recipe.setup()
    result = recipe.train()
    recipe.save(result)
    return recipe, result.step_metrics


def test_train_router_adapts_it_with_the_load_balancing_loss(
    tiny_models: dict[str, Path], qa_data: Path, tmp_path: Path
) -> None:
    from safetensors.torch import load_file

    lora = {"trainRouter": True, "routerAuxLossCoef": 0.05}
    recipe, steps = _run(
        tiny_models["qwen3_moe"], qa_data, tmp_path, method={"type": "lora", "lora": lora}
    )
    assert recipe.trainer.router_aux_loss_coef == 0.05
    assert all(step["aux_loss"] > 0 for step in steps if "loss" in step)
    adapter = load_file(tmp_path / "final" / "adapter_model.safetensors")
    router = [t for name, t in adapter.items() if "mlp.gate" in name and "lora_B" in name]
    assert len(router) == 2 and all(t.abs().sum() > 0 for t in router)
    assert json.loads((tmp_path / "result.json").read_text())["adapter"]["routersTrained"] == 2


@pytest.mark.parametrize(
    ("arch", "method", "reason"),
    [
        ("gpt_oss", {"type": "lora", "lora": {"dropout": 0.1}}, "set lora.dropout: 0"),
        ("deepseek_v3", {"type": "lora", "lora": {"trainRouter": True}}, "adds no router"),
        ("llama4_text", {"type": "lora", "lora": {"trainRouter": True}}, "adds no router"),
        ("llama", {"type": "lora", "lora": {"trainRouter": True}}, "has no router"),
        (
            "jamba",
            {"type": "lora", "lora": {"targetModules": ["q_proj", "dt_proj"]}},
            "uses that weight directly",
        ),
    ],
)
def test_what_a_model_cannot_serve_is_refused_before_its_weights_load(
    arch: str, method: dict[str, Any], reason: str, tiny_models: dict[str, Path], qa_data: Path,
    tmp_path: Path,
) -> None:  # fmt: skip
    # No weights in the folder: a refusal that came after loading them would not be this.
    model = tmp_path / arch
    shutil.copytree(tiny_models[arch], model, ignore=shutil.ignore_patterns("*.safetensors"))
    recipe = Recipe(_job(model, qa_data, tmp_path, method=method), tmp_path)
    with pytest.raises(ValueError, match=r"^spec\.method: ") as refused:
        recipe.setup()
    assert reason in str(refused.value)
    assert recipe.model is None


def test_dora_trains_on_the_attention_of_a_mixture_of_experts(
    tiny_models: dict[str, Path], qa_data: Path, tmp_path: Path
) -> None:
    dora = {"type": "dora", "lora": {"targetModules": ["q_proj", "v_proj"]}}
    recipe, steps = _run(tiny_models["qwen3_moe"], qa_data, tmp_path, method=dora)
    assert all(math.isfinite(step["loss"]) for step in steps if "loss" in step)
    assert recipe.plan.targets is not None and not recipe.plan.targets.experts


def test_full_fine_tuning_trains_the_router_with_its_balancing_loss(
    tiny_models: dict[str, Path], qa_data: Path, tmp_path: Path
) -> None:
    recipe, steps = _run(tiny_models["qwen3_moe"], qa_data, tmp_path, method={"type": "full"})
    assert recipe.trainer.router_aux_loss_coef == 0.001  # the model's own
    assert all(step["aux_loss"] > 0 for step in steps if "loss" in step)


def test_dpo_lora_on_moe(tiny_models: dict[str, Path], tmp_path: Path) -> None:
    data = tmp_path / "prefs.jsonl"
    rows = [{"prompt": f"Say {i}.", "chosen": f"{i}", "rejected": "no"} for i in range(16)]
    data.write_text("".join(json.dumps(r) + "\n" for r in rows))
    dataset = {"train": {"uri": str(data)}, "format": "preference", "maxSeqLength": 48}
    recipe, steps = _run(tiny_models["mixtral"], data, tmp_path, dataset=dataset,
                         trainer={"type": "dpo", "dpo": {"beta": 0.1}})  # fmt: skip
    assert recipe.trainer.router_aux_loss_coef == 0.0
    assert any("rewards/margins" in step for step in steps)
    assert json.loads((tmp_path / "result.json").read_text())["adapter"]["expertMatrices"] == 4


def test_spectrum_scores_the_experts_and_never_the_router(
    tiny_models: dict[str, Path], qa_data: Path, tmp_path: Path
) -> None:
    spectrum = {"type": "spectrum", "spectrum": {"topFraction": 0.5}}
    recipe, _ = _run(tiny_models["qwen3_moe"], qa_data, tmp_path, method=spectrum)
    trainable = {n for n, p in recipe.model.named_parameters() if p.requires_grad}
    assert any(name.endswith("experts.gate_up_proj") for name in trainable)
    assert not any(".mlp.gate." in name for name in trainable)


def test_merge_onto_a_base_saved_in_4_bits(
    tiny_models: dict[str, Path], qa_data: Path, tmp_path: Path
) -> None:
    """A `-bnb-4bit` checkpoint (quantized when saved): the merge dequantizes it first."""
    import torch
    from peft import PeftModel
    from transformers import AutoModelForCausalLM, BitsAndBytesConfig

    quantized = tmp_path / "base-4bit"
    four_bit = BitsAndBytesConfig(load_in_4bit=True, bnb_4bit_compute_dtype=torch.float32)
    AutoModelForCausalLM.from_pretrained(
        tiny_models["llama"], quantization_config=four_bit
    ).save_pretrained(quantized)
    for tokenizer_file in tiny_models["llama"].glob("*"):
        if not tokenizer_file.name.startswith(("model", "config", "generation")):
            shutil.copy(tokenizer_file, quantized)
    out = tmp_path / "out"
    _run(quantized, qa_data, out, output={"uri": str(out), "mergeAdapter": True})
    config = json.loads((out / "merged" / "config.json").read_text())
    assert "quantization_config" not in config
    merged = AutoModelForCausalLM.from_pretrained(out / "merged")
    base = AutoModelForCausalLM.from_pretrained(quantized).dequantize()
    adapted = PeftModel.from_pretrained(base, str(out / "final"))
    ids = torch.tensor([[1, 20, 30, 40]])
    with torch.no_grad():
        assert torch.allclose(merged(ids).logits, adapted(ids).logits, atol=1e-4)
