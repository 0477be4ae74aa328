"""Spectrum's selection logic on synthetic matrices: structure scores above noise."""

from __future__ import annotations

import pytest

from ftapi.v1alpha1 import SpectrumSpec
from fttrainer.model.spectrum import MatrixScore, matrix_snr, module_type, select_parameters


def test_module_type_strips_the_layer_index() -> None:
    assert module_type("model.layers.11.self_attn.q_proj.weight") == "self_attn.q_proj"
    assert module_type("transformer.h.0.mlp.c_fc.weight") == "mlp.c_fc"


def test_low_rank_signal_scores_above_pure_noise() -> None:
    import torch

    torch.manual_seed(0)
    noise = torch.randn(64, 48)
    signal = noise * 0.1 + 5 * torch.randn(64, 2) @ torch.randn(2, 48)
    assert matrix_snr(signal) > 10 * matrix_snr(noise)


def _scores() -> list[MatrixScore]:
    return [
        MatrixScore(f"model.layers.{i}.{kind}.weight", kind, snr)
        for kind, snrs in (("self_attn.q_proj", [1.0, 3.0, 2.0, 0.5]), ("mlp.up_proj", [9.0, 1.0]))
        for i, snr in enumerate(snrs)
    ]


def test_top_fraction_is_per_module_type() -> None:
    chosen = select_parameters(_scores(), SpectrumSpec(top_fraction=0.5))
    assert sorted(chosen) == [
        "model.layers.0.mlp.up_proj.weight",
        "model.layers.1.self_attn.q_proj.weight",
        "model.layers.2.self_attn.q_proj.weight",
    ]


@pytest.mark.parametrize(("threshold", "count"), [(2.5, 2), (0.1, 6), (100.0, 0)])
def test_threshold(threshold: float, count: int) -> None:
    assert len(select_parameters(_scores(), SpectrumSpec(snr_threshold=threshold))) == count
