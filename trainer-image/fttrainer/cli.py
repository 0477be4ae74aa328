"""The `finetune` command line.

    finetune validate examples/lora-gpu.yaml     # check a manifest and local data; 1 on errors
    finetune run examples/quickstart-cpu.yaml    # fine-tune locally
    finetune run job.yaml --set training.epochs=2 --output results/try
    finetune plan examples/qlora-7b-16gb.yaml --gpu-memory 16
    finetune run --model_name ./my-model --data_path d.jsonl --dataset_type instruction_jsonl \
        --technique lora --epochs 1          # the flat style; or a .env file of MODEL_NAME=...

Heavy libraries (torch, transformers) are imported inside the commands that need them, so
`finetune validate` and `--help` stay fast.
"""

from __future__ import annotations

import argparse
import os
import sys
from collections.abc import Sequence
from pathlib import Path
from typing import Any

FILE_HELP = (
    "FineTuneJob YAML, or a .env file of KEY=value settings (MODEL_NAME=...); flat flags "
    "such as --model_name, --data_path, --technique may be given instead of or on top of it"
)


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="finetune",
        description="Fine-tune LLMs from FineTuneJob manifests (finetune.dev/v1alpha1).",
    )
    commands = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")
    validate = _command(
        commands, "validate", _validate,
        "check a FineTuneJob manifest against the API (same rules as the API server)",
        "Check a FineTuneJob manifest; print every problem with its field path.",
    )  # fmt: skip
    validate.add_argument(
        "--spec-only", action="store_true", help="check the manifest but do not read the data"
    )
    run = _command(
        commands, "run", _run, "fine-tune locally, exactly as the manifest says",
        "Run the training part of a FineTuneJob on this machine (CPU, or a GPU).",
    )  # fmt: skip
    run.add_argument(
        "--output", type=Path, help="where results go (default results/<name>/<timestamp>)"
    )
    plan = _command(
        commands, "plan", _plan,
        "show the resolved config, the data statistics and GPU memory per device",
        "Resolve defaults, check the data, and estimate GPU memory per device "
        "(suggesting settings that fit --gpu-memory).",
    )  # fmt: skip
    plan.add_argument(
        "--gpu-memory", type=float, default=80.0, metavar="GIB",
        help="GPU memory to fit, in GiB (default 80: an A100/H100 80GB)",
    )  # fmt: skip
    return parser


def _command(
    commands: Any, name: str, handler: Any, summary: str, description: str
) -> argparse.ArgumentParser:
    """A subcommand taking a manifest (or .env file, or flat flags) and --set overrides."""
    command: argparse.ArgumentParser = commands.add_parser(
        name, help=summary, description=description
    )
    command.add_argument("file", type=Path, nargs="?", help=FILE_HELP)
    command.add_argument(
        "--set",
        dest="overrides",
        action="append",
        default=[],
        metavar="PATH=VALUE",
        help="override a field, e.g. --set training.epochs=2 (repeatable; spec. is implied)",
    )
    command.set_defaults(handler=handler)
    return command


def main(argv: Sequence[str] | None = None) -> int:
    parser = build_parser()
    try:
        rest, flat = split_flat_flags(list(sys.argv[1:] if argv is None else argv))
    except ValueError as exc:
        parser.error(str(exc))
    args = parser.parse_args(rest)
    args.flat = flat
    if args.file is None and not flat:
        parser.error("give a FineTuneJob file, a .env file, or flat flags (--model_name ...)")
    return int(args.handler(args))


def split_flat_flags(tokens: list[str]) -> tuple[list[str], dict[str, str]]:
    """Take the flat style's `--name value` / `--name=value` out of the arguments."""
    from .legacy import FLAGS, SECRET_FLAGS

    rest: list[str] = []
    flat: dict[str, str] = {}
    index = 0
    while index < len(tokens):
        token = tokens[index]
        name, sep, value = token[2:].partition("=")
        if token.startswith("--") and (name in FLAGS or name in SECRET_FLAGS):
            if not sep:
                if index + 1 >= len(tokens):
                    raise ValueError(f"--{name} needs a value")
                index += 1
                value = tokens[index]
            flat[name] = value
        else:
            rest.append(token)
        index += 1
    return rest, flat


def _load(args: argparse.Namespace) -> Any:
    """The manifest (a YAML file, or a .env file and/or flat flags) with the flat flags and
    --set applied, validated; prints the errors and returns None when it is not valid."""
    from ftapi import InvalidSpecError, parse_job, read_manifest

    from . import legacy
    from .overrides import OverrideError, apply_overrides

    try:
        flat = dict(args.flat)
        if args.file is None or args.file.suffix == ".env":
            if args.file is not None:
                flat = {**legacy.read_env_file(args.file), **flat}
            manifest = legacy.build_manifest(flat)
        else:
            manifest = apply_overrides(read_manifest(args.file), legacy.to_assignments(flat))
        os.environ.update(legacy.secrets_to_environment(flat))
        source = str(args.file or "command line")
        return parse_job(apply_overrides(manifest, args.overrides), source)
    except (InvalidSpecError, OverrideError, ValueError) as exc:
        print(exc, file=sys.stderr)
    except OSError as exc:
        print(f"{args.file}: {exc.strerror}", file=sys.stderr)
    return None


def _validate(args: argparse.Namespace) -> int:
    job = _load(args)
    if job is None:
        return 1
    spec = job.spec
    print(
        f"{args.file}: valid FineTuneJob {job.name!r} "
        f"({spec.trainer.type} + {spec.method.type} on {spec.model.name})"
    )
    if args.spec_only:
        return 0
    return _validate_data(spec)


def _run(args: argparse.Namespace) -> int:
    import logging
    import time

    job = _load(args)
    if job is None:
        return 1
    from .data.prepare import DataError
    from .recipe import Recipe

    logging.basicConfig(level=logging.INFO, format="%(message)s")
    output = args.output or Path("results") / job.name / time.strftime("%Y%m%d-%H%M%S")
    output.mkdir(parents=True, exist_ok=True)
    try:
        recipe = Recipe(job, output, progress_bar=sys.stderr.isatty())
        recipe.setup()
    except (DataError, ValueError) as exc:
        print(exc, file=sys.stderr)
        return 1
    result = recipe.train()
    final_dir = recipe.save(result)
    from .storage import StorageError

    try:
        published = recipe.publish()
    except StorageError as exc:
        print(f"training finished but the results could not be published: {exc}", file=sys.stderr)
        print(f"they are still in {output}", file=sys.stderr)
        return 1
    if published and recipe.is_main_process:
        print(f"published {len(published)} files to {job.spec.output.uri}")
    if recipe.is_main_process:
        for line in before_after(result.final_metrics):
            print(line)
        print(f"done: {final_dir} (train loss {result.final_metrics['train_loss']:.4f})")
    return 0


def before_after(metrics: dict[str, Any]) -> list[str]:
    """'eval_loss: 5.64 before, 5.51 after' for every metric measured on both the base and
    the fine-tuned weights."""
    lines = []
    for key, before in metrics.items():
        name = key.removesuffix("/base")
        after = metrics.get(name)
        if name != key and isinstance(before, (int, float)) and isinstance(after, (int, float)):
            lines.append(f"{name}: {before:.4f} before, {after:.4f} after")
    return lines


def _plan(args: argparse.Namespace) -> int:
    import yaml

    job = _load(args)
    if job is None:
        return 1
    spec = job.spec
    split = spec.effective_split()
    resolved = {
        **job.to_dict()["spec"],
        "resolved": {
            "learningRate": spec.effective_learning_rate(),
            "split": {"train": split.train, "validation": split.validation, "test": split.test},
            "processes": spec.processes(),
        },
    }
    print("resolved spec:")
    print(yaml.safe_dump(resolved, sort_keys=False).rstrip())
    _validate_data(spec)
    from .plan import GIB, ModelShape, estimate_memory, suggest

    try:
        shape = ModelShape.from_pretrained(
            spec.model.name, trust_remote_code=spec.model.trust_remote_code
        )
    except Exception as exc:  # hub unreachable, unknown architecture...
        print(f"memory estimate skipped: cannot read the config of {spec.model.name} ({exc})")
        return 0
    estimate = estimate_memory(shape, spec)
    print(estimate.render())
    budget = args.gpu_memory * GIB
    if estimate.total > budget:
        print(f"does not fit {args.gpu_memory:g} GiB; try, in this order:")
        for change in suggest(shape, spec, budget):
            print(f"  --set {change}")
    else:
        print(f"fits {args.gpu_memory:g} GiB per device")
    return 0


def _validate_data(spec: Any) -> int:
    sources = [s for s in (spec.dataset.train, spec.dataset.validation, spec.dataset.test) if s]
    remote = [s.uri for s in sources if "://" in s.uri]
    if remote:
        print(f"data not checked (remote: {', '.join(remote)})")
        return 0
    from .data.prepare import DataError, prepare_data

    try:
        prepared = prepare_data(spec)
    except DataError as exc:
        if exc.report is not None:
            print(exc.report.render())
        print(exc, file=sys.stderr)
        return 1
    print(prepared.report.render())
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
