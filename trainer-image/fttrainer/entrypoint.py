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

Importable without torch (the operator's tests and this package's check it against the
Dockerfile). The operator image does not install this package, so the operator keeps its own
copy of these constants; a test asserts the two agree.
"""

from __future__ import annotations

import os
import sys
from collections.abc import Mapping, Sequence

TORCHRUN = "torchrun"
# torchrun -m <TRAINER_MODULE> <TRAINER_COMMAND> <config>: `finetune run` as a module.
TRAINER_MODULE = "fttrainer.cli"
TRAINER_COMMAND = "run"
# Where the operator mounts the resolved FineTuneJob (a ConfigMap key).
JOB_CONFIG_PATH = "/etc/finetune/job.yaml"
MASTER_PORT = 29500
# The one writable directory the image needs (an emptyDir when the root fs is read-only).
WORKSPACE = "/workspace"
# Environment variables naming directories that must exist before training starts; the
# Dockerfile sets each of them under WORKSPACE (a test checks that they agree).
WRITABLE_DIRECTORIES = (
    "HOME",
    "TMPDIR",
    "XDG_CACHE_HOME",
    "HF_HOME",
    "TRITON_CACHE_DIR",
    "TORCHINDUCTOR_CACHE_DIR",
    "TORCH_EXTENSIONS_DIR",
    "MPLCONFIGDIR",
    "WANDB_DIR",
)
# The image's default arguments: one node, every visible GPU (torchrun counts them).
DEFAULT_COMMAND = (
    TORCHRUN, "--nproc-per-node", "gpu", "-m", TRAINER_MODULE, TRAINER_COMMAND, JOB_CONFIG_PATH,
)  # fmt: skip


def torchrun_command(
    *,
    nnodes: int,
    nproc_per_node: int,
    node_rank: str,
    master_addr: str,
    master_port: int = MASTER_PORT,
    config: str = JOB_CONFIG_PATH,
) -> list[str]:
    """The container args of one trainer pod. node_rank is a string so that the operator
    can pass "$(JOB_COMPLETION_INDEX)" for the kubelet to expand."""
    return [
        TORCHRUN,
        "--nnodes", str(nnodes),
        "--nproc-per-node", str(nproc_per_node),
        "--node-rank", node_rank,
        "--master-addr", master_addr,
        "--master-port", str(master_port),
        "-m", TRAINER_MODULE, TRAINER_COMMAND, config,
    ]  # fmt: skip


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
    try:
        os.execvp(args[0], args)
    except OSError as exc:
        print(f"fttrainer.entrypoint: cannot run {args[0]}: {exc.strerror}", file=sys.stderr)
        return 127
    return 0  # not reached: exec replaced this process


if __name__ == "__main__":
    raise SystemExit(main())
