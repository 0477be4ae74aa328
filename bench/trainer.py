"""Our trainer against the trainers its users would pick instead: same model, data, hardware.

    make bench-trainer                         # CPU: tiny Llama, a few minutes on 2 idle cores
    .venv/bin/python bench/trainer.py --steps 400 --repeats 5 --json bench.json
    .venv/bin/python bench/trainer.py --model-shape llama3-8b --seq-len 4096 --batch-size 2 \
        --sides ours,trl,trl-tuned,unsloth                                        # GPU

Each side fine-tunes (LoRA r 16 on every linear layer, QLoRA, or `--method full`) the same
random-weight model on the same synthetic conversations (`messages` rows of varied length, so
padding is real):

  ours       fttrainer.recipe.Recipe, exactly what `finetune run` does (setup, then train)
  trl        the TRL quick-start script: SFTTrainer(model=<path>, train_dataset=...,
             peft_config=...) with SFTConfig defaults, except the workload (steps, batch size,
             max_length, lr, seed), save_strategy "no", and on CPU what CPU needs
  trl-tuned  the fastest SFTConfig a TRL user can write here: bf16 weights, padding-free
             batches through the same varlen attention kernel ours registers, Liger kernels,
             no activation checkpointing, fused AdamW (each GPU-only setting off on CPU)
  unsloth    Unsloth's documented LoRA recipe (FastLanguageModel + TRL's SFTTrainer); GPU only

Every run is its own subprocess, and the repetitions alternate ABBA (ours, peers..., peers
reversed..., ours, ...) so that drift on a shared machine hits every side alike. The JSON is
rewritten after every run, so a run cut short still leaves its figures. Per run:

  tokens/s     non-padding tokens fed to the model (attention_mask sum, or every token of a
               padding-free batch) per second, over the steps after --warmup-steps
  loss tok/s   tokens that carry loss (labels != -100): ours trains on answers only by default
  peak memory  GPU: torch.cuda.max_memory_allocated over training; CPU: the subprocess's
               peak RSS (ru_maxrss from wait4), imports included
  MFU          GPU only: tokens/s x 4N (LoRA, QLoRA) or 6N (full) / the device's peak dense
               bf16 FLOP/s, N = base parameters without the input embedding (a lookup, no
               FLOPs); attention's own FLOPs are not counted

The table shows medians over --repeats and the ratios of ours to each peer and to the best
peer (the fastest by median tokens/s), then PASS/FAIL against the targets (CPU: tokens/s >= 1.0x
the best peer; GPU: >= 1.2x, MFU >= 45 %, peak memory <= 1.0x the best peer's). The exit status
is 0 whether targets pass or fail (this measures, a person decides), and 1 when a side's run
failed (recorded with its error; the other sides still run). docs/benchmarks.md has more.
"""

from __future__ import annotations

import argparse
import json
import os
import re
import shutil
import statistics
import subprocess
import sys
import tempfile
import threading
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

from fttestkit.paths import REPO

PROCESS_START = time.monotonic()  # a worker's setup time counts its imports
RESULT_PREFIX = "BENCH_RESULT "
SIDES = ("ours", "trl", "trl-tuned", "unsloth")
PEERS = SIDES[1:]
DEFAULT_SIDES = ("ours", "trl", "trl-tuned")  # unsloth: GPU only, and its own environment
# Peak dense bf16 tensor FLOP/s (no sparsity) by device-name substring, most specific first.
PEAK_BF16_TFLOPS = (
    ("H100 PCIe", 756.0),
    ("H100 NVL", 835.0),
    ("H200", 989.4),
    ("H100", 989.4),
    ("H800", 989.4),
    ("GB200", 2500.0),
    ("B200", 2250.0),
    ("A100", 312.0),
    ("L40S", 362.1),
    ("L4", 121.0),
    ("A10G", 70.0),
)
SHAPES: dict[str, dict[str, Any]] = {
    # fttrainer.tiny's Llama: 2 layers, 64 wide. Measures the framework's per-step overhead.
    "tiny": {"seq_len": 128, "batch_size": 8, "steps": 200},
    # Llama 3 8B's architecture, random weights (bf16, built on the GPU).
    "llama3-8b": {
        "seq_len": 2048, "batch_size": 4, "steps": 40,
        "config": {
            "hidden_size": 4096, "intermediate_size": 14336, "num_hidden_layers": 32,
            "num_attention_heads": 32, "num_key_value_heads": 8, "vocab_size": 128256,
            "max_position_embeddings": 8192, "rope_theta": 500000.0, "rms_norm_eps": 1e-5,
            "tie_word_embeddings": False,
        },
    },
}  # fmt: skip
LORA = {"r": 16, "alpha": 32}  # dropout: each side's default, 0 in ours and in PEFT
SEED = 42


@dataclass
class Targets:
    tokens_ratio: float
    mfu: float | None = None
    memory_ratio: float | None = None


# Against the best peer (the fastest by median tokens/s). Issue 40's targets on a GPU; on CPU
# the step cost is framework overhead, so only "not slower".
CPU_TARGETS = Targets(tokens_ratio=1.0)
GPU_TARGETS = Targets(tokens_ratio=1.2, mfu=0.45, memory_ratio=1.0)


@dataclass
class Run:
    side: str
    repeat: int
    tokens_per_s: float
    cpu_tokens_per_s: float | None  # per second of the process's CPU time (CPU runs)
    loss_tokens_per_s: float
    peak_memory_mib: float
    setup_s: float  # process start (imports included) to the first training step
    process_s: float
    tokens_per_step: float
    final_loss: float | None
    mfu: float | None = None
    mfu_attention: float | None = None  # attention's FLOPs counted too (NeMo's convention)
    extra: dict[str, Any] = field(default_factory=dict)


# --------------------------------------------------------------------------------------------
# The orchestrator: stdlib only, so the subprocesses it starts inherit nothing heavy.


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="bench/trainer.py",
        description="Our trainer vs a plain TRL SFTTrainer: tokens/s, peak memory, MFU.",
    )
    add = parser.add_argument
    add(
        "--model-shape",
        choices=tuple(SHAPES),
        default=None,
        help="random-weight Llama built locally (default: tiny on CPU, llama3-8b on a GPU)",
    )
    add(
        "--method",
        choices=("lora", "qlora", "full"),
        default="lora",
        help="LoRA (r 16, alpha 32, all linear layers), QLoRA (the same on a 4-bit NF4 "
        "base with double quantization, bf16 compute) or full fine-tuning",
    )
    add(
        "--seq-len",
        type=int,
        default=None,
        help="maxSeqLength / max_length (default: 128 tiny, 2048 llama3-8b)",
    )
    add(
        "--batch-size",
        type=int,
        default=None,
        help="per-device batch (default: 8 tiny, 4 llama3-8b)",
    )
    add(
        "--steps",
        type=int,
        default=None,
        help="optimizer steps per run (default: 200 tiny, 40 llama3-8b)",
    )
    add(
        "--warmup-steps",
        type=int,
        default=None,
        help="steps left untimed at the start of each run (default: 10%% of --steps)",
    )
    add("--repeats", type=int, default=3, help="runs per side (default: 3)")
    add("--device", choices=("auto", "cpu", "cuda"), default="auto")
    add(
        "--threads",
        type=int,
        default=None,
        help="CPU threads per run, the same for both sides (default: 1 for the tiny model, "
        "whose matrices are too small to split, which also keeps a shared machine's noise "
        "down; torch's default otherwise)",
    )
    add(
        "--peak-tflops",
        type=float,
        default=None,
        help="the device's peak dense bf16 TFLOP/s, for MFU (default: from its name)",
    )
    add(
        "--workdir",
        type=Path,
        default=None,
        help="model, data and logs (default: a temporary directory, removed afterwards)",
    )
    add("--json", type=Path, default=None, help="also write the results to this file")
    add("--keep", action="store_true", help="keep the work directory")
    add(
        "--sides",
        type=_sides,
        default=DEFAULT_SIDES,
        metavar="SIDE,...",
        help=f"which sides run, comma-separated, from {', '.join(SIDES)} "
        f"(default {','.join(DEFAULT_SIDES)}; without ours or a peer there are no ratios)",
    )
    add(
        "--set",
        dest="overrides",
        action="append",
        default=[],
        metavar="PATH=VALUE",
        help="change our side's FineTuneJob, as `finetune run --set` does "
        "(e.g. method.lora.dropout=0, training.gradientCheckpointing=true); repeatable",
    )
    add(
        "--run-timeout",
        type=float,
        default=None,
        metavar="SECONDS",
        help="kill a run that takes longer and record the side as failed (default: none)",
    )
    add(
        "--prepare-only",
        action="store_true",
        help="write the model and data into --workdir and stop (to overlap the 8B model's "
        "writing with other device work)",
    )
    add(
        "--profile",
        type=Path,
        default=None,
        metavar="DIR",
        help="profile 3 steps of each of our runs (torch.profiler; inside the warm-up "
        "when --warmup-steps is 5 or more, so tokens/s stays clean); append the kernel table "
        "and the share of wall time the GPU was busy to DIR/profile.txt",
    )
    return parser


def _sides(text: str) -> tuple[str, ...]:
    """--sides: known names, each once, in the order SIDES lists them (ours first)."""
    names = [name.strip() for name in text.split(",") if name.strip()]
    unknown = sorted(set(names) - set(SIDES))
    if unknown or not names or len(set(names)) != len(names):
        raise argparse.ArgumentTypeError(
            f"{text!r}: name sides once each, from {', '.join(SIDES)}"
            + (f" (unknown: {', '.join(unknown)})" if unknown else "")
        )
    return tuple(side for side in SIDES if side in names)


def main(argv: list[str] | None = None) -> int:
    argv = list(sys.argv[1:] if argv is None else argv)
    if argv[:1] in (["_prepare"], ["_run"]):
        return _worker(argv[0], json.loads(argv[1]))
    args = build_parser().parse_args(argv)
    workdir = args.workdir or Path(tempfile.mkdtemp(prefix="ftbench-"))
    workdir.mkdir(parents=True, exist_ok=True)
    try:
        return _bench(args, workdir)
    finally:
        if args.workdir is None and not args.keep:
            shutil.rmtree(workdir, ignore_errors=True)


def _bench(args: argparse.Namespace, workdir: Path) -> int:
    started = time.monotonic()
    print(f"preparing model and data in {workdir} ...", flush=True)
    prepare = {
        "workdir": str(workdir),
        "device": args.device,
        "model_shape": args.model_shape,
        "seq_len": args.seq_len,
        "batch_size": args.batch_size,
        "steps": args.steps,
        "threads": args.threads,
    }
    info, _, _ = _spawn("_prepare", prepare, workdir / "prepare.log")
    if args.prepare_only:  # e.g. write the 8B model while something else uses the device
        print(f"prepared {info['model_dir']} and {info['data']}")
        return 0
    config = {
        **info,
        "workdir": str(workdir),
        "repeats": args.repeats,
        "method": args.method,
        "warmup_steps": args.warmup_steps
        if args.warmup_steps is not None
        else max(1, info["steps"] // 10),
        "peak_tflops": args.peak_tflops or _peak_tflops(info["device_name"]),
        "overrides": args.overrides,
        "profile": str(args.profile.resolve()) if args.profile else None,
    }
    if not 1 <= config["warmup_steps"] < config["steps"]:
        raise SystemExit("--warmup-steps must be at least 1 and smaller than --steps")
    print(_describe(config), flush=True)
    config["sides"] = list(args.sides)
    config["failed"] = {}  # side -> why its run failed; its later repeats are skipped
    runs: list[Run] = []
    for repeat in range(args.repeats):
        order = args.sides if repeat % 2 == 0 else args.sides[::-1]  # ABBA: drift hits all
        for side in order:
            if side in config["failed"]:
                continue
            log = workdir / f"{side}-{repeat}.log"
            try:
                result, rusage_kib, seconds = _spawn(
                    "_run", {**config, "side": side}, log, timeout=args.run_timeout
                )
            except RunFailed as failure:
                # A peer that cannot run on this stack is a finding, not a reason to lose
                # the other sides' figures: recorded with its error, reported, skipped.
                config["failed"][side] = str(failure)
                config.setdefault("failed_logs", {})[side] = log.read_text()[-6000:]
                print(f"  {side:<9} #{repeat}: FAILED: {failure}", flush=True)
                if args.json:
                    _write_json(args.json, config, runs)
                continue
            peak = result["cuda_peak_mib"] if config["cuda"] else rusage_kib / 1024
            run = Run(
                side=side, repeat=repeat, tokens_per_s=result["tokens_per_s"],
                cpu_tokens_per_s=None if config["cuda"] else result["cpu_tokens_per_s"],
                loss_tokens_per_s=result["loss_tokens_per_s"], peak_memory_mib=peak,
                setup_s=result["setup_s"], process_s=seconds,
                tokens_per_step=result["tokens_per_step"], final_loss=result["final_loss"],
                mfu=_mfu(config, result["tokens_per_s"]),
                mfu_attention=_mfu(config, result["tokens_per_s"], attention=True),
                extra={
                    "rss_mib": rusage_kib / 1024, "train_s": result["train_s"],
                    "max_tokens_per_step": result["max_tokens_per_step"],
                    "planned_peak_mib": result["planned_peak_mib"],
                    "gpu_busy": result["gpu_busy"],
                    "settings": result["settings"],
                    "forwards_per_step": result["forwards_per_step"],
                    "rows_per_step": result["rows_per_step"],
                },
            )  # fmt: skip
            runs.append(run)
            if args.json:  # after every run: a command killed at its limit keeps its figures
                _write_json(args.json, config, runs)
            print(
                f"  {side:<9} #{repeat}: {run.tokens_per_s:9.0f} tokens/s "
                f"({run.tokens_per_step:.0f} per step), peak {run.peak_memory_mib:.0f} MiB, "
                f"setup {run.setup_s:.1f} s, process {run.process_s:.1f} s" + _run_notes(run),
                flush=True,
            )
    print(_render(config, _summarize(config, runs)))
    for side, why in config["failed"].items():
        print(f"FAILED  {side}: {why}")
    print(f"total {time.monotonic() - started:.0f} s")
    return 1 if config["failed"] else 0  # the other sides' figures are printed all the same


def _write_json(path: Path, config: dict[str, Any], runs: list[Run]) -> None:
    document = {
        "config": config,
        "runs": [asdict(r) for r in runs],
        "summary": _summarize(config, runs),
    }
    partial = path.with_name(path.name + ".partial")
    partial.write_text(json.dumps(document, indent=2))
    partial.replace(path)  # never a half-written file, even when killed mid-write


class RunFailed(Exception):
    """A worker exited non-zero, printed no result, or ran past --run-timeout."""


def _spawn(
    mode: str, payload: dict[str, Any], log: Path, *, timeout: float | None = None
) -> tuple[dict[str, Any], int, float]:
    """Run one worker; return its result, its peak RSS (KiB) and its wall time."""
    env = {
        **os.environ,
        "TOKENIZERS_PARALLELISM": "false",
        "HF_HUB_OFFLINE": "1",
        "HF_DATASETS_OFFLINE": "1",
        "TRANSFORMERS_NO_ADVISORY_WARNINGS": "1",
        "PYTHONPATH": os.pathsep.join(
            [str(REPO / "trainer-image"), str(REPO / "api"), _site_path(payload.get("side"))]
        ),
    }
    if payload.get("threads"):
        env["OMP_NUM_THREADS"] = str(payload["threads"])
    started = time.monotonic()
    with log.open("w") as out:
        proc = subprocess.Popen(
            [sys.executable, str(Path(__file__).resolve()), mode, json.dumps(payload)],
            stdout=out, stderr=subprocess.STDOUT, env=env, cwd=str(REPO),
        )  # fmt: skip
        # A run that hangs is killed at its limit (a lease is short), and said so.
        timer = threading.Timer(timeout, proc.kill) if timeout else None
        if timer:
            timer.start()
        # wait4, not wait: the rusage of this child alone (RUSAGE_CHILDREN would be the
        # maximum over every run so far).
        _, status, rusage = os.wait4(proc.pid, 0)
        proc.returncode = os.waitstatus_to_exitcode(status)
        killed = timer is not None and not timer.is_alive()
        if timer:
            timer.cancel()
    seconds = time.monotonic() - started
    text = log.read_text()
    lines = [line for line in text.splitlines() if line.startswith(RESULT_PREFIX)]
    if proc.returncode != 0 or not lines:
        sys.stderr.write(text[-4000:])
        cause = (
            f"killed after {timeout:g} s (--run-timeout)" if killed else (f"exit {proc.returncode}")
        )
        last = _last_error(text)
        if mode == "_prepare":
            raise SystemExit(f"{mode} failed ({cause}); log {log}")
        raise RunFailed(f"{cause}: {last}; log {log}")
    return json.loads(lines[-1][len(RESULT_PREFIX) :]), rusage.ru_maxrss, seconds


def _last_error(text: str) -> str:
    """The line that names what went wrong: the last exception line of a traceback, else
    the last line printed."""
    lines = [line.strip() for line in text.splitlines() if line.strip()]
    errors = [line for line in lines if re.match(r"^[\w.]+(Error|Exception|Exit)\b", line)]
    return (errors or lines or ["(no output)"])[-1][:500]


def _site_path(side: str | None) -> str:
    """The packages a side imports: FTBENCH_PYTHONPATH_<SIDE> (e.g. FTBENCH_PYTHONPATH_UNSLOTH)
    where set, for a peer whose pins clash with ours (Unsloth caps transformers and TRL below
    our lock), else this process's PYTHONPATH."""
    own = os.environ.get(f"FTBENCH_PYTHONPATH_{(side or '').upper().replace('-', '_')}")
    return own if side and own is not None else os.environ.get("PYTHONPATH", "")


def _peak_tflops(device_name: str | None) -> float | None:
    if not device_name:
        return None
    return next((t for name, t in PEAK_BF16_TFLOPS if name in device_name), None)


def _mfu(config: dict[str, Any], tokens_per_s: float, *, attention: bool = False) -> float | None:
    """Model FLOPs utilisation. Per token: forward 2N and backward 2N (activation gradients);
    full fine-tuning adds 2N for the weight gradients, which frozen LoRA/QLoRA bases do not
    need. With `attention`, also the causal attention products, as NeMo AutoModel and
    Megatron count them: per layer a row of n tokens costs 2*d*n^2 forward (QK^T and AV,
    lower triangle only), 3x that with the backward, so 6*L*d*(sum n^2 / sum n) per token
    over the bench's rows. Neither counts checkpointing's recomputation: useful work only."""
    if not config["cuda"] or not config["peak_tflops"]:
        return None
    per_token = (6 if config["method"] == "full" else 4) * config["params_matmul"]
    if attention:
        per_token += config["attention_flops_per_token"]
    return float(tokens_per_s * per_token / (config["peak_tflops"] * 1e12))


def _describe(config: dict[str, Any]) -> str:
    device = config["device_name"] or "CPU"
    threads = f", {config['threads']} threads" if not config["cuda"] else ""
    return (
        f"model {config['model_shape']} ({config['params_total'] / 1e6:.2f}M params, "
        f"N={config['params_matmul'] / 1e6:.2f}M without the input embedding), "
        f"{config['method']}, seq-len {config['seq_len']}, batch {config['batch_size']}, "
        f"{config['steps']} steps ({config['warmup_steps']} untimed), "
        f"{config['rows']} rows of {config['mean_tokens']:.0f} tokens on average; "
        f"{device}{threads}"
        + (f"; ours with --set {' '.join(config['overrides'])}" if config["overrides"] else "")
    )


def _run_notes(run: Run) -> str:
    """What a GPU run of ours adds: the memory plan's figure for its largest micro-batch,
    and the share of the profiled steps' wall time that the GPU spent in kernels."""
    notes = []
    planned = run.extra.get("planned_peak_mib")
    if planned:
        notes.append(
            f"planned {planned:.0f} MiB for {run.extra['max_tokens_per_step']} tokens "
            f"({run.peak_memory_mib / planned:.2f}x)"
        )
    if run.extra.get("gpu_busy") is not None:
        notes.append(f"GPU busy {100 * run.extra['gpu_busy']:.0f}% of profiled steps")
    return "".join(f"; {note}" for note in notes)


# (title, Run field, format, scale) of the summary table.
COLUMNS = (
    ("tokens/s", "tokens_per_s", ".0f", 1),
    ("tok/CPU-s", "cpu_tokens_per_s", ".0f", 1),
    ("loss tok/s", "loss_tokens_per_s", ".0f", 1),
    ("peak MiB", "peak_memory_mib", ".0f", 1),
    ("setup s", "setup_s", ".1f", 1),
    ("process s", "process_s", ".1f", 1),
    ("MFU %", "mfu", ".1f", 100),
    ("+attn %", "mfu_attention", ".1f", 100),
)


def _summarize(config: dict[str, Any], runs: list[Run]) -> dict[str, Any]:
    """Medians and tokens/s spread per side; ours against each peer and against the best
    peer (the one with the highest median tokens/s), and the checks against the targets."""

    def median(side: str, key: str) -> float | None:
        values = [getattr(r, key) for r in runs if r.side == side and getattr(r, key) is not None]
        return statistics.median(values) if values else None

    keys = [key for _, key, _, _ in COLUMNS]
    ran = [side for side in SIDES if any(r.side == side for r in runs)]
    sides = {side: {key: median(side, key) for key in keys} for side in ran}
    spread = {
        side: [min(values), max(values)]
        for side in ran
        for values in [[r.tokens_per_s for r in runs if r.side == side]]
    }
    peers = [side for side in ran if side != "ours"]
    best = max(peers, key=lambda side: sides[side]["tokens_per_s"] or 0.0) if peers else None

    def over(peer: str) -> dict[str, float | None]:
        return {
            key: (ours / theirs) if ours and theirs else None
            for key in keys
            for ours, theirs in [(sides["ours"][key], sides[peer][key])]
        }

    ratios = {peer: over(peer) for peer in peers} if "ours" in ran else {}
    targets = GPU_TARGETS if config["cuda"] else CPU_TARGETS
    checks = []
    if best and "ours" in ran:
        ratio = ratios[best]
        checks.append((f"tokens/s ours/{best} (best peer)", ratio["tokens_per_s"], ">=",
                       targets.tokens_ratio))  # fmt: skip
        if targets.memory_ratio is not None:
            checks.append((f"peak memory ours/{best} (best peer)", ratio["peak_memory_mib"],
                           "<=", targets.memory_ratio))  # fmt: skip
    if targets.mfu is not None and "ours" in ran:
        checks.append(("MFU ours", sides["ours"]["mfu"], ">=", targets.mfu))
    verdicts = [
        {
            "check": name, "value": value, "target": f"{op} {target:g}",
            "pass": value is not None and (value >= target if op == ">=" else value <= target),
        }
        for name, value, op, target in checks
    ]  # fmt: skip
    return {"sides": sides, "spread": spread, "best_peer": best, "ratios": ratios,
            "checks": verdicts}  # fmt: skip


def _render(config: dict[str, Any], summary: dict[str, Any]) -> str:
    def cell(value: float | None, fmt: str, width: int = 12) -> str:
        return format("-" if value is None else format(value, fmt), f">{width}")

    lines = [
        "",
        f"medians of {config['repeats']} runs per side "
        f"(peak MiB: {'GPU memory allocated' if config['cuda'] else 'process RSS'})",
        f"{'':<21}{'(min..max)':>16}" + "".join(f"{title:>12}" for title, *_ in COLUMNS),
    ]
    for side, values in summary["sides"].items():
        low, high = summary["spread"][side]
        lines.append(
            f"{side:<21}{f'{low:.0f}..{high:.0f}':>16}"
            + "".join(
                cell(None if values[key] is None else values[key] * scale, fmt)
                for _, key, fmt, scale in COLUMNS
            )
        )
    for peer, ratio in summary["ratios"].items():
        lines.append(
            f"{'ratio ours/' + peer:<21}{'(best peer)' if peer == summary['best_peer'] else '':>16}"
            + "".join(cell(ratio[key], ".2f") for _, key, _, _ in COLUMNS)
        )
    lines.append("")
    for check in summary["checks"]:
        verdict = "PASS" if check["pass"] else "FAIL"
        shown = "-" if check["value"] is None else f"{check['value']:.3g}"
        lines.append(f"{verdict}  {check['check']}: {shown} (target {check['target']})")
    return "\n".join(lines)


# --------------------------------------------------------------------------------------------
# The workers: one subprocess per run. Heavy imports live here.


def _worker(mode: str, config: dict[str, Any]) -> int:
    result = _prepare(config) if mode == "_prepare" else _run(config)
    print(RESULT_PREFIX + json.dumps(result), flush=True)
    return 0


def _prepare(config: dict[str, Any]) -> dict[str, Any]:
    """Build the model and the tokenizer, write the data; describe them and the device."""
    import torch

    from fttrainer.tiny import build_model, build_tokenizer

    cuda = config["device"] != "cpu" and torch.cuda.is_available()
    if config["device"] == "cuda" and not cuda:
        raise SystemExit("--device cuda: no CUDA device")
    shape_name = config["model_shape"] or ("llama3-8b" if cuda else "tiny")
    threads = config["threads"] or (1 if shape_name == "tiny" and not cuda else None)
    shape = SHAPES[shape_name]
    seq_len = config["seq_len"] or shape["seq_len"]
    batch_size = config["batch_size"] or shape["batch_size"]
    steps = config["steps"] or shape["steps"]
    workdir = Path(config["workdir"])
    model_dir = workdir / f"model-{shape_name}"
    tokenizer = build_tokenizer()
    # A work directory reused across invocations (--workdir) keeps its model: the seeded
    # random 8B weights are the same, and writing 16 GB again costs a minute of device time.
    cached = (model_dir / "config.json").is_file() and any(model_dir.glob("*.safetensors"))
    if shape_name == "tiny":
        model = build_model("llama", tokenizer)
    else:
        from transformers import AutoModelForCausalLM, LlamaConfig

        llama = LlamaConfig(
            **shape["config"],
            bos_token_id=tokenizer.bos_token_id,
            eos_token_id=tokenizer.eos_token_id,
            pad_token_id=tokenizer.pad_token_id,
        )
        torch.manual_seed(SEED)
        with torch.device("meta" if cached else "cuda" if cuda else "cpu"):
            model = AutoModelForCausalLM.from_config(llama, dtype=torch.bfloat16)
    total = sum(p.numel() for p in model.parameters())
    embedding = model.get_input_embeddings().weight
    output = model.get_output_embeddings()
    tied = output is not None and output.weight is embedding
    matmul = total if tied else total - embedding.numel()
    if not cached:
        model.save_pretrained(model_dir)
        tokenizer.save_pretrained(model_dir)
    rows = steps * batch_size
    data = workdir / "train.jsonl"
    lengths = _write_conversations(data, tokenizer, rows=rows, seq_len=seq_len)
    text = model.config.get_text_config()
    attention_flops = (
        6 * text.num_hidden_layers * text.hidden_size * (sum(n * n for n in lengths) / sum(lengths))
    )
    return {
        "attention_flops_per_token": attention_flops,
        "model_shape": shape_name, "model_dir": str(model_dir), "data": str(data),
        "seq_len": seq_len, "batch_size": batch_size, "steps": steps, "rows": rows,
        "mean_tokens": sum(lengths) / len(lengths), "params_total": total,
        "params_matmul": matmul, "cuda": cuda,
        "threads": threads or torch.get_num_threads(),
        "device_name": torch.cuda.get_device_name(0) if cuda else None,
    }  # fmt: skip


def _write_conversations(path: Path, tokenizer: Any, *, rows: int, seq_len: int) -> list[int]:
    """`messages` rows: a question of 3-20 words and an answer whose rendered length is
    spread between 1/8 and 1 x seq_len, so batches carry real padding."""
    import random

    from fttrainer.tiny import DEFAULT_CORPUS

    rng = random.Random(SEED)
    words = sorted({word for line in DEFAULT_CORPUS for word in line.split()})
    sample = " ".join(rng.choice(words) for _ in range(2000))
    tokens_per_word = len(tokenizer(sample)["input_ids"]) / 2000
    lengths = []
    with path.open("w") as out:
        for _ in range(rows):
            question = " ".join(rng.choice(words) for _ in range(rng.randint(3, 20)))
            target = rng.randint(max(4, seq_len // 8), seq_len)
            answer_words = max(1, int((target - 24) / tokens_per_word))
            answer = " ".join(rng.choice(words) for _ in range(answer_words))
            messages = [
                {"role": "user", "content": question},
                {"role": "assistant", "content": answer},
            ]
            length = _rendered_length(tokenizer, messages)
            # Never longer than seq_len: padding-free peers do not truncate (trl-tuned).
            while length > seq_len and answer_words > 1:
                answer_words = max(1, answer_words - 1 - (length - seq_len) // 2)
                answer = " ".join(answer.split()[:answer_words])
                messages[1]["content"] = answer
                length = _rendered_length(tokenizer, messages)
            lengths.append(min(length, seq_len))
            out.write(json.dumps({"messages": messages}) + "\n")
    return lengths


def _rendered_length(tokenizer: Any, messages: list[dict[str, str]]) -> int:
    ids = tokenizer.apply_chat_template(messages, tokenize=True, return_dict=True)
    return len(ids["input_ids"])


def _run(config: dict[str, Any]) -> dict[str, Any]:
    """Train one side; time the steps after the warm-up and count the tokens they saw."""
    import torch

    if not config["cuda"]:
        torch.set_num_threads(config["threads"])
    output = Path(tempfile.mkdtemp(prefix=f"{config['side']}-", dir=config["workdir"]))
    spec = None  # ours: the FineTuneJob spec, for the memory plan of this run
    if config["side"] == "ours":
        trainer, spec = _ours(config, output)
    elif config["side"] == "unsloth":
        trainer = _unsloth(config, output)
    else:
        trainer = _trl(config, output, tuned=config["side"] == "trl-tuned")
    settings = _settings(trainer)
    meter = _meter(config["warmup_steps"], config["steps"], cuda=config["cuda"])
    trainer.add_callback(meter)
    trainer.model.register_forward_pre_hook(meter.count, with_kwargs=True)
    profiler = None
    if config["profile"] and config["side"] == "ours":
        profiler = _profiler(config)
        trainer.add_callback(profiler)
    if config["cuda"]:
        torch.cuda.synchronize()
        torch.cuda.reset_peak_memory_stats()
    setup_s = time.monotonic() - PROCESS_START
    outcome = trainer.train()
    elapsed = meter.stop - meter.start
    cpu_elapsed = meter.cpu_stop - meter.cpu_start
    tokens, loss_tokens = int(meter.tokens), int(meter.loss_tokens)
    measured_steps = max(meter.steps, 1)
    max_tokens = max((int(t) for t in meter.micro_batch_tokens), default=0)
    planned = None
    if config["cuda"] and spec is not None:
        planned = _planned_peak_mib(spec, trainer, max_tokens)
    shutil.rmtree(output, ignore_errors=True)
    return {
        "max_tokens_per_step": max_tokens,
        "planned_peak_mib": planned,
        "gpu_busy": profiler.busy if profiler else None,
        "settings": settings,
        "tokens_per_s": tokens / elapsed,
        "cpu_tokens_per_s": tokens / cpu_elapsed if cpu_elapsed > 0 else None,
        "tokens_per_step": tokens / measured_steps,
        # A side whose tokens per step differ from the others' on the same data ran more
        # forwards or more rows per step: these say which.
        "forwards_per_step": meter.forwards / measured_steps,
        "rows_per_step": int(meter.rows) / measured_steps,
        "loss_tokens_per_s": loss_tokens / elapsed,
        "train_s": elapsed,
        "setup_s": setup_s,
        "steps_measured": meter.steps,
        "final_loss": outcome.training_loss,
        "cuda_peak_mib": torch.cuda.max_memory_allocated() / 2**20 if config["cuda"] else None,
    }


def _settings(trainer: Any) -> dict[str, Any]:
    """What each side really trained with (read off its trainer, not its script), so the
    JSON and docs/benchmarks.md can name every setting that differs between sides."""
    args, model = trainer.args, trainer.model
    config = getattr(model, "config", None)
    return {
        "dtype": str(next(model.parameters()).dtype).removeprefix("torch."),
        "attention": getattr(config, "_attn_implementation", None),
        "padding_free": bool(getattr(args, "padding_free", False)),
        "gradient_checkpointing": bool(getattr(model, "is_gradient_checkpointing", False)
                                       or args.gradient_checkpointing),
        "optimizer": str(getattr(args.optim, "value", args.optim)),
        "liger": bool(getattr(args, "use_liger_kernel", False)),
        "bf16": bool(args.bf16),
    }  # fmt: skip


def _ours(config: dict[str, Any], output: Path) -> tuple[Any, Any]:
    """fttrainer's Recipe, set up the way `finetune run` sets it up."""
    from ftapi import parse_job
    from fttrainer.recipe import Recipe

    training: dict[str, Any] = {
        "maxSteps": config["steps"], "batchSize": config["batch_size"],
        "learningRate": 2.0e-4, "seed": SEED,
    }  # fmt: skip
    if not config["cuda"]:
        training["device"] = "cpu"
    method: dict[str, Any] = {"type": config["method"]}  # qlora: NF4, double quant, bf16
    if config["method"] != "full":
        method["lora"] = {**LORA, "targetModules": ["all-linear"]}
    manifest = {
        "apiVersion": "finetune.dev/v1alpha1",
        "kind": "FineTuneJob",
        "metadata": {"name": "bench"},
        "spec": {
            "model": {"name": config["model_dir"]},
            "dataset": {
                "train": {"uri": config["data"]},
                "format": "messages",
                "maxSeqLength": config["seq_len"],
            },
            "method": method,
            "training": training,
            "evaluation": {"strategy": "no"},
            "logging": {"steps": 10},
            # One checkpoint, after the last (timed) step: the peers save none.
            "output": {"uri": str(output / "published"), "saveSteps": config["steps"]},
            "resources": {"gpusPerNode": 1 if config["cuda"] else 0},
        },
    }
    if config["overrides"]:
        from fttrainer.overrides import apply_overrides

        manifest = apply_overrides(manifest, config["overrides"])
    recipe = Recipe(parse_job(manifest, "bench"), output)
    recipe.setup()
    return recipe.trainer, recipe.spec


def _planned_peak_mib(spec: Any, trainer: Any, tokens: int) -> float:
    """`finetune plan`'s estimate for this run's largest micro-batch: activation memory
    grows with the tokens in a micro-batch, so a padding-free batch of T tokens is planned
    as one row of T. Recompute as the run had it: the layers that recomputed."""
    from fttrainer.model.memory_plan import ModelShape, estimate_memory, with_changes
    from fttrainer.model.recompute import recomputed_layers

    spec = with_changes(spec, "training", batch_size=1)
    spec = with_changes(spec, "dataset", max_seq_length=max(tokens, 1))
    shape = ModelShape.from_pretrained(spec.model.name)
    recomputed, _ = recomputed_layers(trainer.model)
    return estimate_memory(shape, spec, recomputed_layers=recomputed).total / 2**20


def _profiler(config: dict[str, Any]) -> Any:
    """A TrainerCallback that profiles 3 steps: the kernel table goes to the --profile
    folder, and `busy` is the share of those steps' wall time the GPU spent in kernels (the
    rest is launch overhead, Python, or waiting on the host). With 5 or more warm-up steps
    it profiles the last 3 but one of them (after the first step's compilation and warm-up,
    and finished before the timed steps begin, so tokens/s carries no profiler overhead);
    with fewer, the first 3 timed steps, and the run's tokens/s is flagged."""
    import torch
    from torch.autograd import DeviceType
    from torch.profiler import ProfilerActivity, profile
    from transformers import TrainerCallback

    warmup, steps, cuda = config["warmup_steps"], 3, config["cuda"]
    first = warmup - steps if warmup >= steps + 2 else warmup + 1
    folder = Path(config["profile"])
    folder.mkdir(parents=True, exist_ok=True)
    name = " ".join(["ours", *config["overrides"]])

    class Profile(TrainerCallback):  # type: ignore[misc]
        def __init__(self) -> None:
            self.prof: Any = None
            self.started = 0.0
            self.busy: float | None = None

        def on_step_begin(self, args: Any, state: Any, control: Any, **kwargs: Any) -> None:
            if state.global_step + 1 == first:
                activities = [ProfilerActivity.CPU]
                if cuda:
                    torch.cuda.synchronize()
                    activities.append(ProfilerActivity.CUDA)
                self.prof = profile(activities=activities)
                self.prof.__enter__()
                self.started = time.perf_counter()

        def on_step_end(self, args: Any, state: Any, control: Any, **kwargs: Any) -> None:
            if self.prof is not None and state.global_step == first + steps - 1:
                self._finish(state.global_step)

        def on_train_end(self, args: Any, state: Any, control: Any, **kwargs: Any) -> None:
            # A run shorter than the window: close the profiler (one left running crashes
            # the interpreter at exit) and report the steps it saw.
            if self.prof is not None:
                self._finish(state.global_step)

        def _finish(self, last: int) -> None:
            if cuda:
                torch.cuda.synchronize()
            wall_us = (time.perf_counter() - self.started) * 1e6
            self.prof.__exit__(None, None, None)
            events = self.prof.key_averages()
            where = f"steps {first}-{last}" + (
                " (timed: tokens/s includes the profiler)" if first > warmup else ""
            )
            head = f"== {name}: {where}, wall {wall_us / 1e3:.1f} ms"
            if cuda:
                # Kernels only: an operator's device time repeats its kernels' time.
                kernels_us = sum(
                    e.self_device_time_total for e in events if e.device_type != DeviceType.CPU
                )
                self.busy = kernels_us / wall_us
                head += f", kernels {kernels_us / 1e3:.1f} ms ({100 * self.busy:.0f}% busy)"
            sort = "self_device_time_total" if cuda else "self_cpu_time_total"
            with (folder / "profile.txt").open("a") as out:  # one file: $OUT returns few
                out.write(f"{head}\n{events.table(sort_by=sort, row_limit=40)}\n\n")
            self.prof = None

    return Profile()


def _trl(config: dict[str, Any], output: Path, *, tuned: bool) -> Any:
    """TRL's SFTTrainer given a model path, a dataset and a LoRA config.

    Plain (`trl`): the quick-start script, SFTConfig defaults but for the workload. Tuned
    (`trl-tuned`): what a TRL user who reads the docs writes for speed with what installs
    from PyPI here (no flash-attn): bf16 weights instead of TRL's float32 default,
    padding-free batches through torch's varlen FlashAttention kernel registered with
    transformers exactly as ours registers it, Liger's fused kernels (RMSNorm, RoPE, SwiGLU,
    linear cross-entropy), no activation checkpointing (the run fits without), fused AdamW.
    On CPU the GPU-only parts (bf16, varlen kernel, Liger) stay off."""
    from datasets import load_dataset
    from peft import LoraConfig
    from trl import SFTConfig, SFTTrainer

    cuda = config["cuda"]
    settings: dict[str, Any] = {} if cuda else {"use_cpu": True, "bf16": False}
    init: dict[str, Any] = {}
    if config["method"] == "qlora":
        init["quantization_config"] = _nf4_config()
    settings["max_length"] = config["seq_len"]
    if tuned:
        settings.update(gradient_checkpointing=False, optim="adamw_torch_fused")
        if cuda:
            from fttrainer.model.attention import MODEL_ATTENTION, register

            register()  # the varlen kernel, under the name transformers looks up
            init.update(dtype="bfloat16", attn_implementation=MODEL_ATTENTION)
            # Padding-free does not truncate (TRL refuses a max_length with it unless
            # packing): the bench's rows are written no longer than --seq-len.
            settings.update(padding_free=True, max_length=None, use_liger_kernel=True)
    args = SFTConfig(
        output_dir=str(output),
        max_steps=config["steps"],
        per_device_train_batch_size=config["batch_size"],
        learning_rate=2.0e-4,
        seed=SEED,
        save_strategy="no",
        report_to="none",
        model_init_kwargs=init or None,
        **settings,
    )
    peft_config = None
    if config["method"] != "full":
        peft_config = LoraConfig(
            r=LORA["r"], lora_alpha=LORA["alpha"],
            target_modules="all-linear", task_type="CAUSAL_LM",
        )  # fmt: skip
    dataset = load_dataset("json", data_files=config["data"], split="train")
    return SFTTrainer(
        model=config["model_dir"], args=args, train_dataset=dataset, peft_config=peft_config
    )


def _nf4_config() -> Any:
    """QLoRA's quantization, as ours sets it by default: NF4, double quantization, bf16."""
    import torch
    from transformers import BitsAndBytesConfig

    return BitsAndBytesConfig(
        load_in_4bit=True, bnb_4bit_quant_type="nf4", bnb_4bit_use_double_quant=True,
        bnb_4bit_compute_dtype=torch.bfloat16,
    )  # fmt: skip


def _unsloth(config: dict[str, Any], output: Path) -> Any:
    """Unsloth's documented LoRA recipe (its Llama notebooks): FastLanguageModel in bf16
    (4-bit for QLoRA), get_peft_model on the 7 linear projections with dropout 0, its own
    offloaded checkpointing ("unsloth"), 8-bit AdamW, then TRL's SFTTrainer, which Unsloth
    patches. Unsloth must be imported before transformers, TRL and PEFT; it needs a GPU."""
    if not config["cuda"]:
        raise SystemExit("the unsloth side needs a CUDA GPU (Unsloth refuses to import without)")
    import torch
    from unsloth import FastLanguageModel  # first: it patches what follows

    full = config["method"] == "full"
    model, tokenizer = FastLanguageModel.from_pretrained(
        model_name=config["model_dir"], max_seq_length=config["seq_len"],
        dtype=torch.bfloat16, load_in_4bit=config["method"] == "qlora",
        full_finetuning=full,
    )  # fmt: skip
    if not full:
        model = FastLanguageModel.get_peft_model(
            model, r=LORA["r"], lora_alpha=LORA["alpha"], lora_dropout=0, bias="none",
            target_modules=["q_proj", "k_proj", "v_proj", "o_proj",
                            "gate_proj", "up_proj", "down_proj"],
            use_gradient_checkpointing="unsloth", random_state=SEED,
        )  # fmt: skip
    from datasets import load_dataset  # after Unsloth's patches
    from trl import SFTConfig, SFTTrainer

    args = SFTConfig(
        output_dir=str(output),
        max_steps=config["steps"],
        per_device_train_batch_size=config["batch_size"],
        max_length=config["seq_len"],
        learning_rate=2.0e-4,
        optim="adamw_8bit",
        seed=SEED,
        save_strategy="no",
        report_to="none",
        bf16=True,
    )
    dataset = load_dataset("json", data_files=config["data"], split="train")
    return SFTTrainer(model=model, processing_class=tokenizer, train_dataset=dataset, args=args)


def _meter(warmup: int, steps: int, *, cuda: bool) -> Any:
    """A TrainerCallback that times the steps after the warm-up, and a forward pre-hook
    (`count`) that counts the tokens of their micro-batches: the same meter on both sides."""
    import torch
    from transformers import TrainerCallback

    def now() -> float:
        if cuda:
            torch.cuda.synchronize()
        return time.perf_counter()

    class Meter(TrainerCallback):  # type: ignore[misc]
        def __init__(self) -> None:
            self.start = self.stop = self.cpu_start = self.cpu_stop = 0.0
            self.steps = 0
            self.measuring = False
            # Counted where the batch lives and read once at the end: no sync per step.
            self.tokens: Any = 0
            self.loss_tokens: Any = 0
            self.micro_batch_tokens: list[Any] = []  # every micro-batch, warm-up included
            self.forwards = 0
            self.rows: Any = 0

        def on_step_end(self, args: Any, state: Any, control: Any, **kwargs: Any) -> None:
            if state.global_step == warmup:
                self.start, self.cpu_start, self.measuring = now(), time.process_time(), True
            elif self.measuring:
                self.steps += 1
                if state.global_step >= steps:
                    self.stop, self.cpu_stop, self.measuring = now(), time.process_time(), False

        def count(self, module: Any, args: tuple[Any, ...], kwargs: dict[str, Any]) -> None:
            if not module.training:
                return
            ids = kwargs.get("input_ids", args[0] if args else None)
            mask = kwargs.get("attention_mask")
            labels = kwargs.get("labels")
            # Padded batches: the attention mask's ones; padding-free ones: every token.
            tokens = mask.sum() if mask is not None else ids.numel()
            self.micro_batch_tokens.append(tokens)
            if not self.measuring:
                return
            self.forwards += 1
            positions = kwargs.get("position_ids")
            if mask is None and positions is not None and ids.shape[0] == 1:
                self.rows += (positions == 0).sum()  # a padding-free row restarts at 0
            else:
                self.rows += ids.shape[0]
            self.tokens += tokens
            if labels is not None:
                self.loss_tokens += (labels[..., 1:] != -100).sum()

    return Meter()


if __name__ == "__main__":
    raise SystemExit(main())
