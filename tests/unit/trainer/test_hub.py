"""output.pushToHub error paths (no Hub is reachable here): the token is required before
training starts, and neither an unreachable endpoint nor a refusal leaks it."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import threading
from collections.abc import Iterator
from http.server import BaseHTTPRequestHandler, HTTPServer
from pathlib import Path

import pytest

from ftapi import parse_job
from fttestkit.builders import make_job
from fttestkit.hub import StandInHub

SECRET = "hf_not_a_real_token_0123456789"
PUSH = """
import json, sys
from pathlib import Path
from ftapi.v1alpha1 import PushToHub
from fttrainer.publishing.hub import HubError, push_to_hub
folders = {k: Path(v) for k, v in json.loads(sys.argv[1]).items()}
try:
    print(push_to_hub(PushToHub(repoId=sys.argv[2]), folders, commit_message="tuned"))
except HubError as error:
    print("HubError:", error)
"""


def _push(
    folder: Path, endpoint: str, repo: str = "team/model", *, merged: Path | None = None,
    **env: str,
) -> str:  # fmt: skip
    environ = {k: v for k, v in os.environ.items() if not k.startswith(("HF_", "FINETUNE_"))}
    folders = {"": str(folder), **({"merged": str(merged)} if merged else {})}
    result = subprocess.run(
        [sys.executable, "-c", PUSH, json.dumps(folders), repo],
        env={**environ, "HF_ENDPOINT": endpoint, **env},
        capture_output=True, text=True, timeout=120, check=False,
    )  # fmt: skip
    return result.stdout + result.stderr


class _Refuse(BaseHTTPRequestHandler):
    def do_POST(self) -> None:
        self.send_response(401)
        self.end_headers()

    do_GET = do_POST

    def log_message(self, *args: object) -> None:
        pass


@pytest.fixture
def refusing_hub() -> Iterator[str]:
    server = HTTPServer(("127.0.0.1", 0), _Refuse)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    yield f"http://127.0.0.1:{server.server_address[1]}"
    server.shutdown()


@pytest.fixture
def folder(tmp_path: Path) -> Path:
    (tmp_path / "adapter_config.json").write_text("{}")
    return tmp_path


def test_no_token_is_a_clear_error(folder: Path) -> None:
    output = _push(folder, "http://127.0.0.1:9")
    assert "HubError: output.pushToHub needs a token with write access" in output


def test_unreachable_hub_names_the_endpoint_not_the_token(folder: Path) -> None:
    output = _push(folder, "http://127.0.0.1:9", FINETUNE_HUB_PUSH_TOKEN=SECRET)
    assert "HubError: pushToHub team/model: cannot reach http://127.0.0.1:9" in output
    assert SECRET not in output


def test_refused_push_says_what_the_hub_answered(folder: Path, refusing_hub: str) -> None:
    output = _push(folder, refusing_hub, HF_TOKEN=SECRET)
    assert "HubError: pushToHub team/model: the Hub answered 401" in output
    assert SECRET not in output


def test_recipe_refuses_to_start_without_a_push_token(monkeypatch: pytest.MonkeyPatch) -> None:
    from fttrainer.publishing.hub import HubError
    from fttrainer.recipe import Recipe

    monkeypatch.delenv("HF_TOKEN", raising=False)
    monkeypatch.delenv("FINETUNE_HUB_PUSH_TOKEN", raising=False)
    push = {"repoId": "team/model", "tokenSecretRef": {"name": "hub", "key": "token"}}
    job = parse_job(make_job().set("output.pushToHub", push).obj())
    with pytest.raises(HubError, match="needs a token"):
        Recipe(job, Path("/nonexistent"))


def test_a_push_commits_the_adapter_at_the_root_and_the_merged_model_under_merged(
    tmp_path: Path,
) -> None:
    """The success path, against a stand-in speaking the Hub's upload API (fttestkit.hub):
    repository creation (a bare name lands in the token owner's namespace), preupload, the
    LFS batch API for weights, and one NDJSON commit. Xet uploads are not covered."""
    adapter = tmp_path / "final"
    adapter.mkdir()
    (adapter / "adapter_config.json").write_text('{"r": 8}')
    (adapter / "adapter_model.safetensors").write_bytes(os.urandom(4096))
    merged = tmp_path / "merged"
    (merged / "nested").mkdir(parents=True)
    (merged / "config.json").write_text("{}")
    (merged / "model.safetensors").write_bytes(os.urandom(8192))
    (merged / "nested" / "tokenizer.json").write_text("{}")
    with StandInHub() as hub:
        output = _push(adapter, hub.endpoint, "my-model", merged=merged,
                       HF_TOKEN=SECRET, HF_HUB_DISABLE_XET="1")  # fmt: skip
        files = hub.files("stand-in-user/my-model")
        assert output.strip().startswith(f"{hub.endpoint}/stand-in-user/my-model/commit/"), output
        expected = {
            "adapter_config.json": adapter / "adapter_config.json",
            "adapter_model.safetensors": adapter / "adapter_model.safetensors",
            "merged/config.json": merged / "config.json",
            "merged/model.safetensors": merged / "model.safetensors",
            "merged/nested/tokenizer.json": merged / "nested" / "tokenizer.json",
        }
        assert {name: files.get(name) for name in expected} == {
            name: path.read_bytes() for name, path in expected.items()
        }
        assert set(files) == set(expected)
        lfs = {"adapter_model.safetensors", "merged/model.safetensors"}  # weights go by LFS
        assert hub.state.lfs_paths == {f"stand-in-user/my-model/{name}" for name in lfs}
        assert [c["summary"] for c in hub.state.commits] == ["tuned"]  # one commit
        assert set(hub.state.tokens) == {SECRET}
    assert SECRET not in output
