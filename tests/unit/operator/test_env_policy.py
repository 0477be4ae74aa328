"""The environment a job may set, when the platform restricts it (--restrict-env, or
--forbid-job-code, with --allowed-env): only the listed names run; and the default list
names no path, library, plugin, host or credential source."""

from __future__ import annotations

import re

import pytest

from ftapi import parse_job
from ftapi.v1alpha1.redirects import redirect_group
from ftoperator.allowed_env import DEFAULT_ALLOWED_ENV
from ftoperator.config import Settings, parse_options
from ftoperator.policy import globbed, policy_violation
from fttestkit.builders import make_job
from fttestkit.env_inventory import LOADS


def _refusal(env: list[dict[str, str]], settings: Settings) -> tuple[str, str] | None:
    return policy_violation(parse_job(make_job("a").set("resources.env", env).obj()), settings)


KNOBS = [{"name": "NCCL_DEBUG", "value": "INFO"}, {"name": "OMP_NUM_THREADS", "value": "4"},
         {"name": "PYTORCH_CUDA_ALLOC_CONF", "value": "expandable_segments:True"}]  # fmt: skip
# Names the API server admits (no deny-list rule knows them), that a restricted operator
# refuses: a tool's config, a variable a future library might read to load something.
UNLISTED = [{"name": "MY_TOOL_CONFIG", "value": "x"}, {"name": "NCCL_DEBUG_FILE", "value": "/x"}]


@pytest.mark.parametrize(
    "settings", [Settings(restrict_env=True), Settings(forbid_job_code=True)],
    ids=["restrictEnv", "forbidJobCode"],
)  # fmt: skip
def test_a_restricted_operator_runs_only_the_listed_names(settings: Settings) -> None:
    assert _refusal(KNOBS, settings) is None
    refused = _refusal(KNOBS + UNLISTED, settings)
    assert refused is not None and refused[0] == "EnvNotAllowed", refused
    assert "MY_TOOL_CONFIG, NCCL_DEBUG_FILE" in refused[1]
    assert "NCCL_DEBUG," not in refused[1].split(":")[0]  # the listed ones are not named
    assert "allowedEnv" in refused[1]
    assert ("restrictEnv" if settings.restrict_env else "forbidJobCode") in refused[1]
    # Without either switch, the API server's deny-list alone governs the environment.
    assert _refusal(KNOBS + UNLISTED, Settings()) is None


def test_allowed_env_takes_names_and_globs() -> None:
    options = parse_options(["--restrict-env", "--allowed-env", "NCCL_DEBUG,TEAM_*"], env={})
    settings = options.settings
    assert settings.restrict_env and settings.allowed_env == ("NCCL_DEBUG", "TEAM_*")
    assert _refusal([{"name": "TEAM_A_MODE", "value": "1"}, KNOBS[0]], settings) is None
    refused = _refusal([{"name": "OMP_NUM_THREADS", "value": "4"}], settings)
    assert refused is not None and refused[0] == "EnvNotAllowed"
    assert not globbed("team_a", ("TEAM_*",))  # case-sensitive, as the kubelet is
    # The default is the documented list.
    assert parse_options([], env={}).settings.allowed_env == DEFAULT_ALLOWED_ENV


def test_the_default_list_names_no_path_library_plugin_host_or_credential() -> None:
    # The inventory test's words for a loader, and whole words that name a place or a secret
    # (NCCL_SOCKET_IFNAME names an interface; TOKENIZERS_PARALLELISM is no token).
    places = re.compile(
        r"(?:^|_)(?:PATHS?|FILE|DIR|HOME|HOST|URL|URI|ENDPOINT|PROXY|CERT|TOKEN|KEY|SECRET|"
        r"CREDENTIALS?|PLUGIN|LIB|LIBRARY|PRELOAD)(?:_|$)"
    )
    assert [n for n in DEFAULT_ALLOWED_ENV if LOADS.search(n) or places.search(n)] == []
    assert [n for n in DEFAULT_ALLOWED_ENV if redirect_group(n) is not None] == []
    assert all(re.fullmatch(r"[A-Z][A-Z0-9_]*", n) for n in DEFAULT_ALLOWED_ENV)  # no globs
    assert len(set(DEFAULT_ALLOWED_ENV)) == len(DEFAULT_ALLOWED_ENV)
