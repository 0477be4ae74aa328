"""output.pushToHub: publish the final model (and the merged one) to the Hugging Face Hub.

One commit: `final/` at the repository's root (the adapter for PEFT methods, loadable with
PeftModel.from_pretrained(base, repo); the model for full fine-tuning), and, when
output.mergeAdapter made one, the merged model under `merged/`
(AutoModelForCausalLM.from_pretrained(repo, subfolder="merged")). A repoId without an
owner (`my-model`) is created in the token owner's namespace, as the Hub does.

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


def commit_files(folders: dict[str, Path]) -> list[tuple[str, Path]]:
    """(path in the repository, local file) for every file of the folders, each folder under
    its key ("" the root), in a stable order."""
    files = []
    for prefix, folder in folders.items():
        for path in sorted(p for p in folder.rglob("*") if p.is_file()):
            relative = path.relative_to(folder).as_posix()
            files.append((f"{prefix}/{relative}" if prefix else relative, path))
    return files


def push_to_hub(push: PushToHub, folders: dict[str, Path], *, commit_message: str) -> str:
    """Create the repository if needed and upload the folders (path in the repository ->
    local folder) as one commit; returns the commit's URL."""
    from huggingface_hub import CommitOperationAdd, HfApi
    from huggingface_hub.errors import HfHubHTTPError

    token = push_token()
    api = HfApi(token=token)
    operations = [
        CommitOperationAdd(path_in_repo=name, path_or_fileobj=str(path))
        for name, path in commit_files(folders)
    ]
    try:
        repo = api.create_repo(push.repo_id, private=push.private, exist_ok=True, repo_type="model")
        commit = api.create_commit(
            repo_id=repo.repo_id,
            operations=operations,
            commit_message=commit_message,
            repo_type="model",
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
    log.info(
        "pushed %s to %s", ", ".join(f"{p or '.'}: {f}" for p, f in folders.items()), repo.repo_id
    )
    return str(commit.commit_url)
