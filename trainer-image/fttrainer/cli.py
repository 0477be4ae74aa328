"""The `finetune` command line.

    finetune validate examples/lora-gpu.yaml     # check a manifest, exit 1 on errors

Heavy libraries (torch, transformers) are imported inside the commands that need them, so
`finetune validate` and `--help` stay fast.
"""

from __future__ import annotations

import argparse
import sys
from collections.abc import Sequence
from pathlib import Path


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="finetune",
        description="Fine-tune LLMs from FineTuneJob manifests (finetune.dev/v1alpha1).",
    )
    commands = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")
    validate = commands.add_parser(
        "validate",
        help="check a FineTuneJob manifest against the API (same rules as the API server)",
        description="Check a FineTuneJob manifest; print every problem with its field path.",
    )
    validate.add_argument("file", type=Path, help="FineTuneJob YAML file")
    validate.set_defaults(handler=_validate)
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    handler = args.handler
    return int(handler(args))


def _validate(args: argparse.Namespace) -> int:
    from ftapi import InvalidSpecError, load_job

    try:
        job = load_job(args.file)
    except InvalidSpecError as exc:
        print(exc, file=sys.stderr)
        return 1
    except OSError as exc:
        print(f"{args.file}: {exc.strerror}", file=sys.stderr)
        return 1
    spec = job.spec
    print(
        f"{args.file}: valid FineTuneJob {job.name!r} "
        f"({spec.trainer.type} + {spec.method.type} on {spec.model.name})"
    )
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
