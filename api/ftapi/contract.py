"""The contract between the operator and the trainer image: how a trainer pod starts.

The operator (which has no torch) renders the container args with `torchrun_command()`;
the trainer image (trainer-image/Dockerfile, fttrainer/entrypoint.py) is built so that
those args run `finetune run` under torchrun. Both import this module, and tests check the
Dockerfile against it, so the two sides cannot drift apart.

    torchrun --nnodes 2 --nproc-per-node 8 --node-rank $(JOB_COMPLETION_INDEX)
             --master-addr <job>-<attempt>-0.<service> --master-port 29500
             -m fttrainer.cli run /etc/finetune/job.yaml --output /workspace/run

`$(JOB_COMPLETION_INDEX)` is Kubernetes syntax: the kubelet substitutes the Indexed Job's
completion index (an env var of the pod) before the process starts; no shell is involved.
"""

from __future__ import annotations

TORCHRUN = "torchrun"
# torchrun -m <TRAINER_MODULE> <TRAINER_COMMAND> <config>: `finetune run` as a module.
TRAINER_MODULE = "fttrainer.cli"
TRAINER_COMMAND = "run"
# Where the operator mounts the resolved FineTuneJob (a ConfigMap with one key).
JOB_CONFIG_DIR = "/etc/finetune"
JOB_CONFIG_PATH = f"{JOB_CONFIG_DIR}/job.yaml"
MASTER_PORT = 29500
# The one writable directory the image needs (an emptyDir when the root fs is read-only).
WORKSPACE = "/workspace"
# Where a pod's run writes its results before publishing them: the same path on every
# rank (the CLI's default output folder has a timestamp, which ranks could disagree on).
RUN_OUTPUT = f"{WORKSPACE}/run"
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
# A failure that a restart would repeat (a data row, a config the trainer refuses): the
# trainer writes INVALID_INPUT_MARKER and its message to the container's termination log,
# which survives torchrun (whose own exit code is 1 whatever its worker's), and exits with
# EXIT_INVALID_INPUT (sysexits' EX_DATAERR). The operator then fails the job at once
# (reason InvalidInput) instead of spending restarts on fresh GPU nodes.
TERMINATION_LOG = "/dev/termination-log"
ENV_TERMINATION_LOG = "FINETUNE_TERMINATION_LOG"  # another path (tests; kubelet's default)
INVALID_INPUT_MARKER = "finetune: invalid input:"
EXIT_INVALID_INPUT = 65
# The trainer was asked to stop (SIGTERM: preemption, node drain, deletion), saved a
# checkpoint at the next step boundary and exited: 128 + SIGTERM, as a shell reports it. The
# run is not finished; a restart resumes from that checkpoint.
EXIT_STOPPED = 143
# torchrun's grace for its workers after it forwards SIGTERM (seconds; its default is 30).
ENV_TORCHRUN_SHUTDOWN_TIMEOUT = "TORCH_ELASTIC_SHUTDOWN_TIMEOUT"
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
    output: str = RUN_OUTPUT,
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
        "-m", TRAINER_MODULE, TRAINER_COMMAND, config, "--output", output,
    ]  # fmt: skip
