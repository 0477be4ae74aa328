"""Spectrum: train only the weight matrices with the highest signal-to-noise ratio.

For each weight matrix W (m x n), its singular values are compared with the largest a
random matrix of the same shape would have. A Marchenko-Pastur bound gives that edge:
sigma * (sqrt(m) + sqrt(n)), with the noise scale sigma estimated robustly from the
spread (interquartile range) of the entries. Singular values above the edge are signal,
those below noise; SNR = signal mass / noise mass. Within each module type (q_proj,
mlp.down_proj, ...) the matrices are ranked by SNR and the top fraction (or all above a
threshold) are unfrozen; everything else stays frozen. In a mixture-of-experts model a
fused expert parameter (experts x out x in) is one matrix scored by its experts' mean SNR,
and the routers are never selected (they stay as trained, as with LoRA).
"""

from __future__ import annotations

import math
import re
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

from ftapi.v1alpha1 import SpectrumSpec

LAYER_INDEX = re.compile(r"\.\d+\.")


@dataclass(frozen=True)
class MatrixScore:
    name: str
    module_type: str
    snr: float


def module_type(parameter_name: str) -> str:
    """`model.layers.3.self_attn.q_proj.weight` -> `self_attn.q_proj`."""
    name = parameter_name.removesuffix(".weight")
    parts = LAYER_INDEX.split(name)
    return parts[-1] if len(parts) > 1 else name


def matrix_snr(weight: Any) -> float:
    import torch

    matrix = weight.detach().float()
    rows, cols = matrix.shape
    singular = torch.linalg.svdvals(matrix)
    q1, q3 = torch.quantile(matrix.flatten()[:1_000_000], torch.tensor([0.25, 0.75]))
    sigma = float(q3 - q1) / 1.349  # IQR of a normal distribution
    edge = sigma * (math.sqrt(rows) + math.sqrt(cols))
    signal = float(singular[singular > edge].sum())
    noise = float(singular[singular <= edge].sum())
    return signal / max(noise, 1e-12)


def score_matrices(model: Any, frozen: Sequence[str] = ()) -> list[MatrixScore]:
    """SNR of every weight matrix inside the transformer blocks (embeddings and head
    excluded), and of every fused expert parameter (experts x out x in) as the mean of its
    experts' SNRs; nothing inside the `frozen` modules (an MoE model's routers)."""
    inside = tuple(f"{name}." for name in frozen)
    scores = []
    for name, parameter in model.named_parameters():
        if not LAYER_INDEX.search(name) or name.startswith(inside):
            continue
        if parameter.ndim == 2 and name.endswith(".weight"):
            snr = matrix_snr(parameter)
        elif parameter.ndim == 3:
            snr = sum(matrix_snr(expert) for expert in parameter) / parameter.shape[0]
        else:
            continue
        scores.append(MatrixScore(name, module_type(name), snr))
    return scores


def select_parameters(scores: list[MatrixScore], spectrum: SpectrumSpec) -> list[str]:
    """Names to unfreeze: above snrThreshold, or the top fraction of each module type."""
    if spectrum.snr_threshold is not None:
        return [s.name for s in scores if s.snr > spectrum.snr_threshold]
    fraction = spectrum.effective_top_fraction() or 0.25
    chosen: list[str] = []
    for kind in sorted({s.module_type for s in scores}):
        group = sorted((s for s in scores if s.module_type == kind), key=lambda s: -s.snr)
        chosen += [s.name for s in group[: max(1, math.ceil(len(group) * fraction))]]
    return chosen


def apply_spectrum(model: Any, spectrum: SpectrumSpec, *, frozen: Sequence[str] = ()) -> list[str]:
    """Freeze everything but the selected matrices; returns what stays trainable. SNR
    selection never picks inside `frozen` modules (explicit targetParameters may)."""
    if spectrum.target_parameters:
        patterns = [re.compile(p) for p in spectrum.target_parameters]
        names = [n for n, _ in model.named_parameters() if any(p.search(n) for p in patterns)]
    else:
        names = select_parameters(score_matrices(model, frozen), spectrum)
    if not names:
        raise ValueError("spectrum selected no parameters: lower snrThreshold or fix the patterns")
    selected = set(names)
    for name, parameter in model.named_parameters():
        parameter.requires_grad = name in selected
    return sorted(selected)
