"""How a trainer pod starts: the command contract between the trainer image and the operator.

The image (trainer-image/Dockerfile) is built around this module:

    ENTRYPOINT ["tini", "--", "python", "-m", "fttrainer.entrypoint"]
    CMD        ["torchrun", "--nproc-per-node", "gpu", "-m", "fttrainer.cli", "run",
                "/etc/finetune/job.yaml"]

The operator leaves the entrypoint alone and sets the container's `args` to the torchrun
command line that `torchrun_command()` renders, for example (2 nodes of 8 GPUs):

    torchrun --nnodes 2 --nproc-per-node 8 --node-rank $(JOB_COMPLETION_INDEX)
             --master-addr <job>-0.<service> --master-port 29500
             -m fttrainer.cli run /etc/finetune/job.yaml

`$(JOB_COMPLETION_INDEX)` is Kubernetes syntax: the kubelet substitutes the Indexed Job's
completion index (an env var it sets) before the process starts, so no shell is involved.

Why this shape:
- tini is PID 1: it reaps zombies (dataloader workers, Triton's compiler subprocesses) and
  forwards SIGTERM to torchrun, which stops its workers (each in its own session) itself.
- `python -m fttrainer.entrypoint` creates the directories that HOME, TMPDIR and the caches
  point at, then execs its arguments (torchrun replaces it; no extra process stays). The
  image points them all under /workspace, so a pod with `readOnlyRootFilesystem: true` works
  with one emptyDir mounted at /workspace, which starts empty: without this step TMPDIR
  would not exist and tempfile would fall back to the read-only /tmp.
- torchrun's `-m fttrainer.cli run <config>` runs the same `finetune run` as a laptop does.
- In a pod the operator made whose job writes to S3, the entrypoint does not exec: it runs
  the command with its output through a pipe, copied to stdout and kept under the job's
  output location (fttrainer.reporting.logship), so a failed attempt's log outlives its pods.

The constants and the command renderer live in ftapi.contract, which the operator imports
too (its image has no torch and no fttrainer); tests check the Dockerfile against them.
"""

from __future__ import annotations

import os
import sys
from collections.abc import Mapping, Sequence
from typing import Any

from ftapi.contract import (  # noqa: F401  (re-exported: the image's contract)
    DEFAULT_COMMAND,
    JOB_CONFIG_PATH,
    MASTER_PORT,
    TORCHRUN,
    TRAINER_COMMAND,
    TRAINER_MODULE,
    WORKSPACE,
    WRITABLE_DIRECTORIES,
    torchrun_command,
)

ENV_JOB_CONFIG = "FINETUNE_JOB_CONFIG"  # another job config path (tests)


def prepare_directories(environ: Mapping[str, str]) -> list[str]:
    """Create the directories WRITABLE_DIRECTORIES name; return the ones that could not be
    created (a read-only root filesystem without a volume at WORKSPACE)."""
    failed = []
    for name in WRITABLE_DIRECTORIES:
        path = environ.get(name)
        if not path:
            continue
        try:
            os.makedirs(path, exist_ok=True)
        except OSError as exc:
            failed.append(f"{name}={path} ({exc.strerror})")
    return failed


def main(argv: Sequence[str] | None = None) -> int:
    args = list(sys.argv[1:] if argv is None else argv)
    if not args or args[0] in ("-h", "--help"):
        print(
            "usage: python -m fttrainer.entrypoint COMMAND [ARG...]\n"
            "Create the writable directories ($HOME, $TMPDIR, caches), then exec COMMAND, e.g.\n"
            "  " + " ".join(DEFAULT_COMMAND),
            file=sys.stderr if not args else sys.stdout,
        )
        return 2 if not args else 0
    failed = prepare_directories(os.environ)
    if failed:
        print(
            "fttrainer.entrypoint: cannot create " + ", ".join(failed) + f"; with a read-only "
            f"root filesystem, mount a writable volume (an emptyDir) at {WORKSPACE}",
            file=sys.stderr,
        )
    sys.stdout.flush()
    put = _log_writer()
    if put is not None:
        from .reporting.logship import run_keeping_log

        try:
            return run_keeping_log(args, put, os.environ)
        except OSError as exc:  # the command itself cannot start: as exec would say it
            print(f"fttrainer.entrypoint: cannot run {args[0]}: {exc.strerror}", file=sys.stderr)
            return 127
    try:
        os.execvp(args[0], args)
    except OSError as exc:
        print(f"fttrainer.entrypoint: cannot run {args[0]}: {exc.strerror}", file=sys.stderr)
        return 127
    return 0  # not reached: exec replaced this process


def _log_writer() -> Any:
    """How to keep this pod's log; None (exec as before) outside an operator's pod, and when
    the job config or its S3 settings cannot be read (the trainer then says why, as it
    always has)."""
    from .reporting.logship import s3_put, shipping_target

    try:
        target = shipping_target(os.environ, os.environ.get(ENV_JOB_CONFIG, JOB_CONFIG_PATH))
        return None if target is None else s3_put(target)
    except Exception as exc:
        print(f"fttrainer.entrypoint: this pod's log is not kept: {exc}", file=sys.stderr)
        return None


if __name__ == "__main__":
    raise SystemExit(main())
