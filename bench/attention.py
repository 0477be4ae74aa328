"""Which attention kernel makes padding-free batches fastest here: one run, one table.

    .venv/bin/python bench/attention.py                  # CPU: tiny shapes, a smoke check
    python bench/attention.py --shape llama3-8b          # GPU: Llama 3 8B's heads

A padding-free batch is its rows concatenated into one sequence, positions restarting per
row; attention must not cross row boundaries. Each candidate computes forward + backward of
one attention layer over the same rows (lengths drawn like bench/trainer.py's: 1/8 to 1 x
seq-len), and is checked against SDPA run row by row (the reference) before it is timed:

  padded        what a padded batch costs: rows padded to the longest, SDPA with the mask
  sdpa-block    packed rows, SDPA with a dense block-diagonal causal mask
  flex          packed rows, torch's flex_attention with a block mask (compiled)
  varlen        packed rows, torch.nn.attention.varlen (FlashAttention inside PyTorch), as
                the trainer calls it (fttrainer.model.attention)
  flash-attn    packed rows, flash_attn_varlen_func (only where the package is installed)

Times are medians of --repeats after warm-up; ratios are against `padded`, measured in the
same run. Exit status 0 unless a candidate computes a different function.
"""

from __future__ import annotations

import argparse
import importlib.util
import itertools
import json
import random
import statistics
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

from fttrainer.model.attention import torch_varlen_attention

SHAPES = {
    "tiny": {"heads": 4, "kv_heads": 2, "head_dim": 16, "seq_len": 128, "rows": 4},
    "llama3-8b": {"heads": 32, "kv_heads": 8, "head_dim": 128, "seq_len": 4096, "rows": 4},
}
TOLERANCE = {"float32": 2e-3, "bfloat16": 2e-2}


def lengths(rows: int, seq_len: int, seed: int = 0) -> list[int]:
    rng = random.Random(seed)
    return [rng.randint(max(1, seq_len // 8), seq_len) for _ in range(rows)]


def _expand_kv(x: Any, groups: int) -> Any:
    return x if groups == 1 else x.repeat_interleave(groups, dim=-3)


def reference(q: Any, k: Any, v: Any, cu: list[int]) -> Any:
    """Row by row, plain causal SDPA: (total, heads, dim)."""
    import torch.nn.functional as F

    groups = q.shape[1] // k.shape[1]
    parts = []
    for start, end in itertools.pairwise(cu):
        qi, ki, vi = (t[start:end].transpose(0, 1) for t in (q, k, v))
        ki, vi = _expand_kv(ki, groups), _expand_kv(vi, groups)
        parts.append(F.scaled_dot_product_attention(qi, ki, vi, is_causal=True).transpose(0, 1))
    import torch

    return torch.cat(parts)


def candidates(cu: list[int], device: str) -> dict[str, Callable[[Any, Any, Any], Any]]:
    """name -> f(q, k, v) on packed (total, heads, dim) tensors, returning the same shape."""
    import torch
    import torch.nn.functional as F

    total, rows = cu[-1], len(cu) - 1
    seq = torch.repeat_interleave(torch.arange(rows), torch.tensor(cu).diff()).to(device)
    pos = torch.arange(total, device=device) - torch.tensor(cu[:-1], device=device)[seq]
    longest = int(torch.tensor(cu).diff().max())
    found: dict[str, Callable[[Any, Any, Any], Any]] = {}

    def padded(q: Any, k: Any, v: Any) -> Any:
        def pad(x: Any) -> Any:
            out = x.new_zeros(rows, longest, *x.shape[1:])
            out[seq, pos] = x
            return out.transpose(1, 2)

        groups = q.shape[1] // k.shape[1]
        keep = torch.zeros(rows, longest, dtype=torch.bool, device=device)
        keep[seq, pos] = True
        causal = torch.ones(longest, longest, dtype=torch.bool, device=device).tril()
        mask = causal[None, None] & keep[:, None, None, :]
        out = F.scaled_dot_product_attention(
            pad(q), _expand_kv(pad(k), groups), _expand_kv(pad(v), groups), attn_mask=mask
        )
        return out.transpose(1, 2)[seq, pos]

    found["padded"] = padded
    block = (seq[:, None] == seq[None, :]) & (pos[:, None] >= pos[None, :])

    def sdpa_block(q: Any, k: Any, v: Any) -> Any:
        groups = q.shape[1] // k.shape[1]
        out = F.scaled_dot_product_attention(
            q.transpose(0, 1)[None], _expand_kv(k.transpose(0, 1), groups)[None],
            _expand_kv(v.transpose(0, 1), groups)[None], attn_mask=block[None, None],
        )  # fmt: skip
        return out[0].transpose(0, 1)

    found["sdpa-block"] = sdpa_block
    if device == "cuda":
        from torch.nn.attention.flex_attention import create_block_mask, flex_attention

        def document_causal(b: Any, h: Any, qi: Any, ki: Any) -> Any:
            return (seq[qi] == seq[ki]) & (qi >= ki)

        mask = create_block_mask(document_causal, None, None, total, total, device=device)
        compiled = torch.compile(flex_attention)

        def flex(q: Any, k: Any, v: Any) -> Any:
            out = compiled(q.transpose(0, 1)[None], k.transpose(0, 1)[None],
                           v.transpose(0, 1)[None], block_mask=mask, enable_gqa=True)  # fmt: skip
            return out[0].transpose(0, 1)

        found["flex"] = flex
    varlen = torch_varlen_attention()
    if varlen is not None and device == "cuda":
        cu_t = torch.tensor(cu, dtype=torch.int32, device=device)
        found["varlen"] = lambda q, k, v: varlen(q, k, v, cu_t, longest)
    if device == "cuda" and importlib.util.find_spec("flash_attn") is not None:
        from flash_attn import flash_attn_varlen_func

        cu_t = torch.tensor(cu, dtype=torch.int32, device=device)
        found["flash-attn"] = lambda q, k, v: flash_attn_varlen_func(
            q, k, v, cu_t, cu_t, longest, longest, causal=True
        )
    return found


def _time(fn: Callable[[], Any], *, cuda: bool, repeats: int) -> float:
    import torch

    for _ in range(3):
        fn()
    samples = []
    for _ in range(repeats):
        if cuda:
            torch.cuda.synchronize()
        start = time.perf_counter()
        fn()
        if cuda:
            torch.cuda.synchronize()
        samples.append(time.perf_counter() - start)
    return statistics.median(samples)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="bench/attention.py", description=__doc__.split("\n")[0])
    parser.add_argument("--shape", choices=tuple(SHAPES), default=None,
                        help="default: llama3-8b on a GPU, tiny on CPU")  # fmt: skip
    parser.add_argument("--seq-len", type=int, default=None)
    parser.add_argument("--rows", type=int, default=None)
    parser.add_argument("--repeats", type=int, default=10)
    parser.add_argument("--json", type=Path, default=None)
    args = parser.parse_args(argv)

    import torch

    cuda = torch.cuda.is_available()
    device = "cuda" if cuda else "cpu"
    shape = SHAPES[args.shape or ("llama3-8b" if cuda else "tiny")]
    seq_len = args.seq_len or shape["seq_len"]
    rows = lengths(args.rows or shape["rows"], seq_len)
    cu = [0]
    for n in rows:
        cu.append(cu[-1] + n)
    dtype = torch.bfloat16 if cuda else torch.float32
    torch.manual_seed(0)

    def fresh() -> tuple[Any, Any, Any]:
        make = lambda heads: torch.randn(  # noqa: E731
            cu[-1], heads, shape["head_dim"], device=device, dtype=dtype, requires_grad=True
        )
        return make(shape["heads"]), make(shape["kv_heads"]), make(shape["kv_heads"])

    print(f"{device}{' ' + torch.cuda.get_device_name() if cuda else ''}, torch "
          f"{torch.__version__}, rows {rows} (seq-len {seq_len}), heads {shape['heads']}/"
          f"{shape['kv_heads']}, head_dim {shape['head_dim']}, {dtype}", flush=True)  # fmt: skip
    results: dict[str, dict[str, Any]] = {}
    failed = False
    for name, fn in candidates(cu, device).items():
        q, k, v = fresh()
        try:
            out = fn(q, k, v)
        except Exception as exc:  # a kernel this build lacks: reported, not fatal
            results[name] = {"error": f"{type(exc).__name__}: {exc}"[:200]}
            continue
        with torch.no_grad():
            ref = reference(q.float(), k.float(), v.float(), cu)
            error = float((out.float() - ref).norm() / ref.norm())
        ok = error < TOLERANCE[str(dtype).removeprefix("torch.")]
        failed |= not ok
        grad = torch.randn_like(out)

        def step(fn: Callable[..., Any] = fn, q: Any = q, k: Any = k, v: Any = v,
                 grad: Any = grad) -> None:  # fmt: skip
            q.grad = k.grad = v.grad = None
            fn(q, k, v).backward(grad)

        seconds = _time(step, cuda=cuda, repeats=args.repeats)
        results[name] = {"ms": seconds * 1e3, "rel_error": error, "correct": ok}
    base = results.get("padded", {}).get("ms")
    print(f"\n{'kernel':<12}{'fwd+bwd ms':>12}{'vs padded':>11}{'rel error':>11}  verdict")
    for name, row in results.items():
        if "error" in row:
            print(f"{name:<12}{'-':>12}{'-':>11}{'-':>11}  unavailable: {row['error']}")
            continue
        ratio = f"{base / row['ms']:.2f}x" if base else "-"
        verdict = "ok" if row["correct"] else "WRONG"
        print(f"{name:<12}{row['ms']:>12.2f}{ratio:>11}{row['rel_error']:>11.1e}  {verdict}")
    if args.json:
        args.json.write_text(json.dumps({"rows": rows, "results": results}, indent=2))
    return 1 if failed else 0


if __name__ == "__main__":
    raise SystemExit(main())
