"""The client's errors: each says what went wrong in words a user can act on."""

from __future__ import annotations


class ClientError(Exception):
    """Anything the client refuses or cannot do; `str()` is the message to show."""


class ValidationError(ClientError):
    """The job is not valid: the message is what `finetune validate` prints for it."""


class StagingError(ClientError):
    """A local path could not be uploaded (missing, empty, the store refused it)."""


class UnreachableError(ClientError):
    """The cluster or the S3 endpoint did not answer."""


class NotFoundError(ClientError):
    """No FineTuneJob of that name in the namespace."""


class AlreadyExistsError(ClientError):
    """A FineTuneJob of that name exists already (submit never replaces one)."""


class JobFailedError(ClientError):
    """The job ended Failed (or was cancelled); `reason` is its status' reason."""

    def __init__(self, name: str, phase: str, reason: str | None, message: str | None) -> None:
        self.name, self.phase, self.reason, self.message = name, phase, reason, message
        super().__init__(f"FineTuneJob {name} {phase}: {reason or 'no reason'}: {message or ''}")


class WaitTimeout(ClientError):
    """The job did not end within the time given."""
