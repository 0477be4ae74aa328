"""A minimal manifest gets the documented defaults."""

from __future__ import annotations

import pytest

from ftapi import parse_job
from ftapi.v1alpha1 import Split
from fttestkit.builders import make_job


def test_minimal_manifest_fills_in_defaults() -> None:
    spec = parse_job(make_job().obj()).spec
    assert (spec.method.type, spec.trainer.type) == ("lora", "sft")
    assert spec.model.trust_remote_code is False
    assert (spec.model.dtype, spec.model.attention) == ("auto", "auto")
    assert (spec.training.epochs, spec.training.batch_size) == (1.0, 4)
    assert spec.training.learning_rate is None  # resolved per method: effective_learning_rate
    assert spec.training.gradient_checkpointing is None  # auto
    assert (spec.resources.nodes, spec.resources.gpus_per_node) == (1, 1)
    assert spec.resources.gpu_resource_name is None  # the operator's default applies
    assert spec.resources.shared_memory == "16Gi"
    assert (spec.output.save_steps, spec.output.save_total_limit) == (500, 2)
    assert (spec.run_policy.max_restarts, spec.scheduling.suspend) == (3, False)
    assert spec.evaluation.strategy == "epoch"
    assert spec.dataset.overlong == "truncate"


def test_defaults_appear_in_the_manifest_form() -> None:
    dumped = parse_job(make_job().obj()).to_dict()["spec"]
    assert dumped["method"] == {"type": "lora"}
    assert dumped["training"]["batchSize"] == 4
    assert "learningRate" not in dumped["training"]
    assert "quantization" not in dumped["method"]


def test_lora_block_defaults_when_omitted() -> None:
    lora = parse_job(make_job().set("method", {"type": "dora"}).obj()).spec.method.effective_lora()
    assert (lora.r, lora.alpha, lora.target_modules, lora.bias) == (16, 32, ["all-linear"], "none")


def test_qlora_without_quantization_means_4bit_nf4() -> None:
    method = parse_job(make_job().set("method.type", "qlora").obj()).spec.method
    quant = method.effective_quantization()
    assert quant is not None
    assert (quant.bits, quant.four_bit_type, quant.uses_double_quant) == (4, "nf4", True)
    lora_method = parse_job(make_job().obj()).spec.method
    assert lora_method.effective_quantization() is None


def test_partial_blocks_keep_their_other_defaults() -> None:
    spec = parse_job(make_job().set("method.lora", {"r": 64}).obj()).spec
    assert spec.method.lora is not None
    assert (spec.method.lora.r, spec.method.lora.alpha) == (64, 32)


def test_effective_split() -> None:
    holdout = parse_job(make_job().obj()).spec.effective_split()
    assert (holdout.train, holdout.validation, holdout.test) == (0.9, 0.1, 0.0)
    with_file = make_job().set("dataset.validation", {"uri": "v.jsonl"}).obj()
    assert parse_job(with_file).spec.effective_split() == Split(train=1.0)
    no_eval = make_job().set("evaluation.strategy", "no").obj()
    assert parse_job(no_eval).spec.effective_split() == Split(train=1.0)
    explicit = make_job().set("dataset.split", {"train": 0.7, "validation": 0.2, "test": 0.1})
    assert parse_job(explicit.obj()).spec.effective_split().test == 0.1


@pytest.mark.parametrize(
    ("trainer", "method", "expected"),
    [
        ("sft", "lora", 2e-4),
        ("sft", "qlora", 2e-4),
        ("sft", "full", 2e-5),
        ("sft", "spectrum", 2e-5),
        ("sft", "prefix", 1e-2),
        ("sft", "prompt", 3e-2),
        ("dpo", "lora", 5e-6),
        ("dpo", "full", 5e-7),
        ("grpo", "dora", 1e-5),
        ("grpo", "full", 1e-6),
    ],
)
def test_learning_rate_default_follows_method_and_objective(
    trainer: str, method: str, expected: float
) -> None:
    job = make_job().set("method.type", method).set("trainer.type", trainer)
    if trainer == "dpo":
        job.set("dataset.format", "preference")
    if trainer == "grpo":
        job.set("dataset.format", "prompt_only").set(
            "trainer.grpo", {"rewards": [{"type": "json"}]}
        )
    assert parse_job(job.obj()).spec.effective_learning_rate() == expected
    job.set("training.learningRate", 1e-3)
    assert parse_job(job.obj()).spec.effective_learning_rate() == 1e-3


def test_spectrum_default_fraction() -> None:
    method = parse_job(make_job().set("method.type", "spectrum").obj()).spec.method
    assert method.spectrum is None
    spectrum = parse_job(
        make_job().set("method", {"type": "spectrum", "spectrum": {"snrThreshold": 2.0}}).obj()
    ).spec.method.spectrum
    assert spectrum is not None and spectrum.effective_top_fraction() is None
