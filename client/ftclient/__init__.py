"""The FineTuneJob client: submit a manifest from this machine (its local files uploaded),
follow it, read its logs and metrics. `finetune submit/status/logs/list/cancel/wait` are its
command line; `Client` its Python API."""

from .client import Client, Handle
from .errors import (
    AlreadyExistsError,
    ClientError,
    JobFailedError,
    NotFoundError,
    StagingError,
    UnreachableError,
    ValidationError,
    WaitTimeout,
)

__all__ = [
    "AlreadyExistsError",
    "Client",
    "ClientError",
    "Handle",
    "JobFailedError",
    "NotFoundError",
    "StagingError",
    "UnreachableError",
    "ValidationError",
    "WaitTimeout",
]
