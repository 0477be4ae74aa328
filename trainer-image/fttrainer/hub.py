"""output.pushToHub: publish the final model (and the merged one) to the Hugging Face Hub.

The token comes from the environment only (FINETUNE_HUB_PUSH_TOKEN, else HF_TOKEN), which
the operator fills from the Secret references; it is never logged or written anywhere.
"""

from __future__ import annotations

import logging
import os
from pathlib import Path

from ftapi.constants import ENV_HF_TOKEN, ENV_HUB_PUSH_TOKEN
from ftapi.v1alpha1 import PushToHub

log = logging.getLogger("fttrainer")


class HubError(RuntimeError):
    """The Hub refused or could not be reached; said in words, without the token.
    `permanent`: a refusal that trying again would meet again (401, 403, 404, no token)."""

    def __init__(self, message: str, *, permanent: bool) -> None:
        super().__init__(message)
        self.permanent = permanent


# What the Hub answers for a token without rights or a repository it will not create.
PERMANENT_STATUSES = frozenset({400, 401, 403, 404, 409, 422})


def push_token() -> str:
    token = os.environ.get(ENV_HUB_PUSH_TOKEN) or os.environ.get(ENV_HF_TOKEN)
    if not token:
        raise HubError(
            f"output.pushToHub needs a token with write access: set {ENV_HUB_PUSH_TOKEN} "
            f"or {ENV_HF_TOKEN} (in a cluster: output.pushToHub.tokenSecretRef)",
            permanent=True,
        )
    return token


def push_to_hub(push: PushToHub, folder: Path, *, commit_message: str) -> str:
    """Create the repository if needed and upload `folder` as one commit; returns its URL."""
    from huggingface_hub import HfApi
    from huggingface_hub.errors import HfHubHTTPError

    token = push_token()
    api = HfApi(token=token)
    try:
        api.create_repo(push.repo_id, private=push.private, exist_ok=True, repo_type="model")
        commit = api.upload_folder(
            repo_id=push.repo_id, folder_path=str(folder), commit_message=commit_message
        )
    except HfHubHTTPError as error:
        status = error.response.status_code if error.response is not None else None
        raise HubError(
            f"pushToHub {push.repo_id}: the Hub answered {status}",
            permanent=status in PERMANENT_STATUSES,
        ) from None
    except Exception as error:  # DNS, refused connection, TLS (httpx): unreachable
        raise HubError(
            f"pushToHub {push.repo_id}: cannot reach {api.endpoint}"
            f" ({type(error).__name__}: {error})",
            permanent=False,
        ) from None
    log.info("pushed %s to %s", folder, push.repo_id)
    return str(commit.commit_url)
