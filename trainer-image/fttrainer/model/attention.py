"""Attention for padding-free batches: rows concatenated into one sequence, never crossing.

TRL's padding-free collator (SFTConfig.padding_free) concatenates a batch's rows and passes
their boundaries (`cu_seq_lens_q`, `max_length_q`) to the model. transformers' SDPA path
only honours them through a dense block-diagonal mask (quadratic in the whole batch, and
no FlashAttention kernel); flash-attn's varlen kernel is not installed in most images. Torch
itself ships FlashAttention's varlen kernel (torch.nn.attention.varlen), and
`MODEL_ATTENTION` registers it with transformers under that name: packed batches go to it,
anything else (padded evaluation batches, generation with a KV cache) to plain SDPA, with
transformers' own mask. bench/attention.py measured which kernel wins (docs/benchmarks.md).
"""

from __future__ import annotations

import functools
import inspect
from collections.abc import Callable
from typing import Any

MODEL_ATTENTION = "varlen_sdpa"
"""The attn_implementation name the trainer passes to from_pretrained."""


@functools.cache
def torch_varlen_attention() -> Callable[..., Any] | None:
    """f(q, k, v, cu_seq, max_len) -> causal attention of each row of packed (total, heads,
    dim) tensors, over torch.nn.attention.varlen; None where this torch lacks it. The
    keyword for causality changed across releases (is_causal, then window_size), and GQA
    support arrived later: both are read off the signature."""
    try:
        from torch.nn.attention.varlen import varlen_attn
    except ImportError:
        return None
    parameters = inspect.signature(varlen_attn).parameters
    if "window_size" in parameters:
        causal: dict[str, Any] = {"window_size": (-1, 0)}
    elif "is_causal" in parameters:
        causal = {"is_causal": True}
    else:
        return None
    gqa = "enable_gqa" in parameters

    def attend(
        q: Any, k: Any, v: Any, cu_seq: Any, max_len: int, scale: float | None = None
    ) -> Any:
        groups = q.shape[1] // k.shape[1]
        extra = dict(causal)
        if groups > 1:
            if gqa:
                extra["enable_gqa"] = True
            else:
                k, v = k.repeat_interleave(groups, dim=1), v.repeat_interleave(groups, dim=1)
        if scale is not None and "scale" in parameters:
            extra["scale"] = scale
        return varlen_attn(q, k, v, cu_seq, cu_seq, max_len, max_len, **extra)

    return attend


def packed_boundaries(position_ids: Any) -> tuple[Any, int] | None:
    """(cu_seq_lens, longest row) of a one-row batch whose positions restart at each
    concatenated row; None when the positions never restart (an ordinary sequence)."""
    import torch

    if position_ids is None or position_ids.shape[0] != 1:
        return None
    starts = (position_ids[0] == 0).nonzero().flatten()
    if starts.numel() <= 1:
        return None
    total = torch.tensor([position_ids.shape[1]], device=starts.device)
    cu = torch.cat([starts, total]).to(torch.int32)
    return cu, int(cu.diff().max())


def varlen_sdpa_forward(
    module: Any,
    query: Any,
    key: Any,
    value: Any,
    attention_mask: Any,
    dropout: float = 0.0,
    scaling: float | None = None,
    **kwargs: Any,
) -> tuple[Any, None]:
    """transformers attention interface: (batch, heads, seq, dim) in, (batch, seq, heads,
    dim) out. Packed rows go to the varlen kernel; everything else to SDPA."""
    import torch
    from transformers.integrations.sdpa_attention import sdpa_attention_forward

    attend = torch_varlen_attention()
    boundaries = None
    if attend is not None and attention_mask is None and query.is_cuda and not dropout:
        cu = kwargs.get("cu_seq_lens_q")
        if cu is not None and query.shape[0] == 1:
            cu = cu.to(device=query.device, dtype=torch.int32)
            boundaries = (cu, int(kwargs["max_length_q"]))
        elif query.shape[2] == key.shape[2]:  # no KV cache: a training or scoring forward
            boundaries = packed_boundaries(kwargs.get("position_ids"))
    if boundaries is None:
        return sdpa_attention_forward(
            module, query, key, value, attention_mask, dropout=dropout, scaling=scaling, **kwargs
        )
    cu_seq, longest = boundaries
    assert attend is not None
    dtype = query.dtype
    # The kernel takes 16-bit inputs only; k-bit training keeps norms (so these) in float32.
    half = dtype if dtype in (torch.bfloat16, torch.float16) else torch.bfloat16
    out = attend(
        query[0].transpose(0, 1).to(half),
        key[0].transpose(0, 1).to(half),
        value[0].transpose(0, 1).to(half),
        cu_seq,
        longest,
        scaling,
    )
    return out[None].to(dtype), None


def varlen_sdpa_mask(*args: Any, **kwargs: Any) -> Any:
    """The mask transformers builds for this implementation: none for a batch without
    padding (packed rows are separated by the kernel, causality is the kernel's own),
    else SDPA's."""
    from transformers.masking_utils import sdpa_mask

    if kwargs.get("attention_mask") is None:
        return None
    return sdpa_mask(*args, **kwargs)


@functools.cache
def register() -> None:
    """Make `attn_implementation=MODEL_ATTENTION` known to transformers (idempotent)."""
    from transformers import AttentionInterface
    from transformers.masking_utils import AttentionMaskInterface

    AttentionInterface.register(MODEL_ATTENTION, varlen_sdpa_forward)
    AttentionMaskInterface.register(MODEL_ATTENTION, varlen_sdpa_mask)
