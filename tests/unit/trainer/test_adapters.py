"""What an adapter adapts, as PEFT is told it, and what is refused: the pure parts."""

from __future__ import annotations

from dataclasses import replace
from typing import Any

import pytest

from ftapi import parse_job
from fttestkit.builders import make_job
from fttrainer.arguments import peft_config_kwargs, router_loss_kwargs
from fttrainer.model.adapters import Targets, refusals, shortest_names
from fttrainer.model.moe import MoeConfig

QWEN3_MOE = MoeConfig(model_type="qwen3_moe", experts=4, per_token=2, aux_loss_coef=0.001)
DEEPSEEK = MoeConfig(model_type="deepseek_v3", experts=4, per_token=2, aux_loss_coef=None)


def _spec(**changes: Any) -> Any:
    job = make_job()
    for path, value in changes.items():
        job.set(path.replace("__", "."), value)
    return parse_job(job.obj()).spec


def _targets(*, experts: bool = True, share: float = 0.99, routers: int = 2) -> Targets:
    layers = range(2)
    attention = tuple(f"model.layers.{i}.self_attn.{p}_proj" for i in layers for p in "qkvo")
    fused = tuple(f"model.layers.{i}.mlp.experts.{p}" for i in layers
                  for p in ("gate_up_proj", "down_proj")) if experts else ()  # fmt: skip
    return Targets(
        modules=attention, parameters=fused, experts=fused,
        routers=tuple(f"model.layers.{i}.mlp.gate" for i in range(routers)),
        router_parameters=(), adapted_weights=int(1000 * share), block_weights=1000,
        total_weights=2000, lora_parameters=10, missed=("model.layers.0.mlp.odd",),
        peft_modules=("self_attn.q_proj",), peft_parameters=tuple(
            sorted({p.split(".", 3)[-1] for p in fused})),
    )  # fmt: skip


def test_layer_suffixes_name_the_targets_only_where_they_pick_exactly_them() -> None:
    universe = [f"model.layers.{i}.{n}" for i in range(2) for n in ("self_attn.q_proj", "mlp.up")]
    universe += ["vision.layers.0.self_attn.q_proj"]  # the same suffix, not a target
    targets = [n for n in universe if n.startswith("model.") and n.endswith("q_proj")]
    assert shortest_names(targets, universe) == sorted(targets)  # the suffix would take vision's
    universe.pop()
    assert shortest_names(targets, universe) == ["self_attn.q_proj"]
    assert shortest_names([], universe) == []


def test_peft_gets_names_and_the_fused_gate_up_rank_doubled() -> None:
    name, kwargs = peft_config_kwargs(_spec(), _targets())  # type: ignore[misc]
    assert name == "LoraConfig"
    assert kwargs["target_modules"] == ["self_attn.q_proj"]  # never the all-linear shorthand
    assert kwargs["target_parameters"] == ["mlp.experts.down_proj", "mlp.experts.gate_up_proj"]
    assert kwargs["rank_pattern"] == {r"mlp\.experts\.gate_up_proj": 32}
    assert kwargs["alpha_pattern"] == {r"mlp\.experts\.gate_up_proj": 64}
    dense = peft_config_kwargs(_spec())
    assert dense is not None and dense[1]["target_modules"] == "all-linear"


@pytest.mark.parametrize(
    ("changes", "moe", "targets", "refused"),
    [
        ({}, QWEN3_MOE, {}, []),
        ({"method.type": "dora"}, QWEN3_MOE, {}, ["method dora on a mixture-of-experts"]),
        ({"method.type": "dora"}, QWEN3_MOE, {"experts": False}, []),  # attention only
        ({"method.lora": {"dropout": 0.1}}, QWEN3_MOE, {}, ["lora.dropout 0.1"]),
        ({"method.type": "qlora"}, QWEN3_MOE, {}, ["method qlora on a mixture-of-experts"]),
        ({"method.lora": {"trainRouter": True}}, QWEN3_MOE, {}, []),
        ({"method.lora": {"trainRouter": True}}, DEEPSEEK, {}, ["deepseek_v3 adds no router"]),
        ({"method.lora": {"trainRouter": True}}, None, {"experts": False, "routers": 0},
         ["this model has no router"]),
        ({"method.lora": {"trainRouter": True}, "trainer.type": "grpo"}, QWEN3_MOE, {},
         ["GRPO's loss has no router"]),
        ({}, QWEN3_MOE, {"share": 0.3}, ["all-linear reaches only 30%"]),
        ({"method.lora": {"targetModules": ["q_proj"]}}, QWEN3_MOE, {"share": 0.3}, []),
    ],
)  # fmt: skip
def test_refusals(
    changes: dict[str, Any], moe: MoeConfig | None, targets: dict[str, Any], refused: list[str]
) -> None:
    if changes.get("trainer.type") == "grpo":
        changes["trainer.grpo"] = {"rewards": [{"type": "exact_match", "column": "answer"}]}
        changes["dataset.format"] = "prompt_only"
    found = refusals(_targets(**targets), _spec(**changes), moe)
    assert len(found) == len(refused)
    for reason, expected in zip(found, refused, strict=True):
        assert expected in reason


@pytest.mark.parametrize(
    ("changes", "moe", "expected"),
    [
        ({}, None, {}),  # dense: TRL's default (no MoE loss to weigh)
        ({}, QWEN3_MOE, {"router_aux_loss_coef": 0.0}),  # frozen router
        ({"method.type": "prefix"}, QWEN3_MOE, {"router_aux_loss_coef": 0.0}),
        ({"method.type": "full"}, QWEN3_MOE, {}),  # TRL's default: the model's coefficient
        # A model that computes no load-balancing loss (Llama 4): none to weigh.
        ({"method.type": "full"}, replace(QWEN3_MOE, aux_loss_coef=None),
         {"router_aux_loss_coef": 0.0}),
        ({"method.lora": {"trainRouter": True}}, QWEN3_MOE, {"router_aux_loss_coef": 0.001}),
        ({"method.lora": {"trainRouter": True, "routerAuxLossCoef": 0.02}}, QWEN3_MOE,
         {"router_aux_loss_coef": 0.02}),
    ],
)  # fmt: skip
def test_the_router_loss_is_on_only_where_the_router_trains(
    changes: dict[str, Any], moe: MoeConfig | None, expected: dict[str, float]
) -> None:
    assert router_loss_kwargs(_spec(**changes), moe) == expected
