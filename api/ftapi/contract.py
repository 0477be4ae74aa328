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

import importlib.metadata
from dataclasses import dataclass

TORCHRUN = "torchrun"
# torchrun -m <TRAINER_MODULE> <TRAINER_COMMAND> <config>: `finetune run` as a module.
TRAINER_MODULE = "fttrainer.cli"
TRAINER_COMMAND = "run"
# Where the operator mounts the resolved FineTuneJob (a ConfigMap with one key).
JOB_CONFIG_DIR = "/etc/finetune"
JOB_CONFIG_PATH = f"{JOB_CONFIG_DIR}/job.yaml"
TRAINER_CONTAINER = "trainer"  # the container of a trainer pod that runs torchrun
MASTER_PORT = 29500
# The version of what the operator and the trainer hand each other: the job's ConfigMap
# (JOB_CONFIG_PATH) and the progress report (ftapi.progress). It changes only when one of
# them changes incompatibly; within a version, changes are additions (a new field whose
# absence or default means what it meant before), and a reader of an older release
# handles them as follows (ftapi.skew; docs/install.md, "Version skew"):
#   ConfigMap  the operator writes only the spec fields that differ from their defaults, so
#              an older trainer sees a newer field only when the job uses it, and then
#              refuses the job (InvalidInput) naming the field and the release that wrote it.
#   report     the operator ignores report fields it does not know; a report it cannot read
#              at all is named in the job's ProgressReadable condition, never dropped quietly.
CONTRACT = 1
ANNOTATION_CONTRACT = "finetune.dev/contract"


def release(package: str) -> str:
    """ "finetune-operator 0.2.0": a package of this project and its installed version, as
    skew messages name the two sides."""
    try:
        return f"{package} {importlib.metadata.version(package)}"
    except importlib.metadata.PackageNotFoundError:
        return f"{package} (version unknown)"


"""In the ConfigMap's job.yaml metadata: the CONTRACT its writer speaks."""
ANNOTATION_WRITTEN_BY = "finetune.dev/written-by"
"""In the ConfigMap's job.yaml metadata: the operator release that wrote it."""
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
# The trainer's verdicts on its own run. It writes the verdict's marker and its message to
# the container's termination log, which survives torchrun (whose own exit code is 1 whatever
# its worker's), and exits with the verdict's code (what a local `finetune run` returns). The
# operator reads the marker and ends the attempt with the verdict's reason: at once and for
# good where a restart would repeat the failure, or restarting where a restart is the cure.
TERMINATION_LOG = "/dev/termination-log"
ENV_TERMINATION_LOG = "FINETUNE_TERMINATION_LOG"  # another path (tests; kubelet's default)


@dataclass(frozen=True)
class Verdict:
    reason: str
    """The job's failure reason (ftoperator.failures.REASONS has its row)."""
    marker: str
    """What opens the termination message."""
    exit_code: int
    restart: bool
    """Whether a restart (counted against maxRestarts) can cure it."""


# A data row or a config the trainer refuses (sysexits' EX_DATAERR): no restart is spent on
# fresh GPU nodes to fail the same way.
INVALID_INPUT = Verdict("InvalidInput", "finetune: invalid input:", 65, restart=False)
# training.onNonFinite stop, or skip/rollback past training.nonFiniteLimit.
DIVERGED = Verdict("Diverged", "finetune: diverged:", 66, restart=False)
# training.onNonFinite rollback: a restart resumes from the newest checkpoint (only finite
# weights are ever saved) with the learning rate lowered as the spec asks (EX_TEMPFAIL).
ROLLED_BACK = Verdict("RolledBack", "finetune: rolled back:", 75, restart=True)
# The results are in output.uri, but a publish step refused them for good (the Hub answered
# 401/403/404: a token without write access, a repository that cannot be created): a restart
# would be refused the same way (EX_NOPERM). Other publish errors exit 1 and are retried; the
# restart resumes from the final checkpoint and trains nothing again.
PUBLISH_FAILED = Verdict("PublishFailed", "finetune: publish failed:", 77, restart=False)
# No progress within runPolicy.stallDetection's deadlines: the process wrote its threads'
# stacks to its log and exited (124, as timeout(1) does); the restart resumes from the newest
# checkpoint.
STALLED = Verdict("Stalled", "finetune: stalled:", 124, restart=True)
# evaluation.failIfWorseThanBase: the validation loss after training is above the base
# model's; the model was published for inspection (EX_SOFTWARE's neighbour, 67).
WORSE_THAN_BASE = Verdict("WorseThanBase", "finetune: worse than base:", 67, restart=False)
VERDICTS = (INVALID_INPUT, DIVERGED, ROLLED_BACK, PUBLISH_FAILED, STALLED, WORSE_THAN_BASE)
INVALID_INPUT_MARKER = INVALID_INPUT.marker
EXIT_INVALID_INPUT = INVALID_INPUT.exit_code
# The trainer was asked to stop (SIGTERM: preemption, node drain, deletion), saved a
# checkpoint at the next step boundary and exited: 128 + SIGTERM, as a shell reports it. The
# run is not finished; a restart resumes from that checkpoint.
EXIT_STOPPED = 143
# torchrun's grace for its workers after it forwards SIGTERM (seconds; its default is 30).
ENV_TORCHRUN_SHUTDOWN_TIMEOUT = "TORCH_ELASTIC_SHUTDOWN_TIMEOUT"
# The image's default arguments: one node, every visible GPU (torchrun counts them).
DEFAULT_COMMAND = (
    TORCHRUN,
    "--nproc-per-node",
    "gpu",
    "-m",
    TRAINER_MODULE,
    TRAINER_COMMAND,
    JOB_CONFIG_PATH,
)


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
        "--nnodes",
        str(nnodes),
        "--nproc-per-node",
        str(nproc_per_node),
        "--node-rank",
        node_rank,
        "--master-addr",
        master_addr,
        "--master-port",
        str(master_port),
        "-m",
        TRAINER_MODULE,
        TRAINER_COMMAND,
        config,
        "--output",
        output,
    ]


def worse_than_base(before: float | None, after: float | None) -> str | None:
    """Why a fine-tuned model is worse than its base on the validation loss (the words of
    the WorseThanBase verdict, condition and Event), or None."""
    if before is None or after is None or not after > before:
        return None
    return (
        f"the validation loss after training ({after:.4g}) is worse than before it ({before:.4g})"
    )
