"""Telling the operator how a run ended when it cannot succeed as it is (ftapi.contract's
verdicts: invalid input, diverged, rolled back).

Kubernetes keeps a container's termination log (TERMINATION_LOG, a file the kubelet mounts
writable even on a read-only root filesystem) in the pod's status. The trainer writes the
verdict's marker and its message there; the operator reads it and ends the attempt with the
verdict's reason (InvalidInput and Diverged fail the job at once; RolledBack restarts it).
Outside a pod the file does not exist and nothing is written: `finetune run` only exits
with the verdict's code.
"""

from __future__ import annotations

import contextlib
import os
from collections.abc import Mapping
from pathlib import Path

from ftapi.contract import ENV_TERMINATION_LOG, INVALID_INPUT, TERMINATION_LOG, Verdict

# The kubelet keeps at most 4096 bytes of a termination message.
MAX_MESSAGE_BYTES = 4000


def record(verdict: Verdict, message: str, environ: Mapping[str, str] = os.environ) -> int:
    """Record the verdict and why where the operator reads it; the exit code to use."""
    path = Path(environ.get(ENV_TERMINATION_LOG) or TERMINATION_LOG)
    if path.exists():
        text = f"{verdict.marker} {message.strip()}"
        encoded = text.encode("utf-8")[:MAX_MESSAGE_BYTES]
        with contextlib.suppress(OSError):  # best effort: the exit code and log say it too
            path.write_bytes(encoded.decode("utf-8", "ignore").encode("utf-8"))
    return verdict.exit_code


def invalid_input(message: str, environ: Mapping[str, str] = os.environ) -> int:
    """Record why the input is refused; the exit code to use."""
    return record(INVALID_INPUT, message, environ)
