"""Telling the operator that a run failed for a reason a restart would repeat.

Kubernetes keeps a container's termination log (TERMINATION_LOG, a file the kubelet mounts
writable even on a read-only root filesystem) in the pod's status. The trainer writes the
marker and its message there; the operator reads it and fails the job as InvalidInput at
once. Outside a pod the file does not exist and nothing is written: `finetune run` only
exits with EXIT_INVALID_INPUT.
"""

from __future__ import annotations

import contextlib
import os
from collections.abc import Mapping
from pathlib import Path

from ftapi.contract import (
    ENV_TERMINATION_LOG,
    EXIT_INVALID_INPUT,
    INVALID_INPUT_MARKER,
    TERMINATION_LOG,
)

# The kubelet keeps at most 4096 bytes of a termination message.
MAX_MESSAGE_BYTES = 4000


def invalid_input(message: str, environ: Mapping[str, str] = os.environ) -> int:
    """Record why the input is refused where the operator reads it; the exit code to use."""
    path = Path(environ.get(ENV_TERMINATION_LOG) or TERMINATION_LOG)
    if path.exists():
        text = f"{INVALID_INPUT_MARKER} {message.strip()}"
        encoded = text.encode("utf-8")[:MAX_MESSAGE_BYTES]
        with contextlib.suppress(OSError):  # best effort: the exit code and log say it too
            path.write_bytes(encoded.decode("utf-8", "ignore").encode("utf-8"))
    return EXIT_INVALID_INPUT
