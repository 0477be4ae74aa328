"""GitOps pieces: Argo CD's health check (the real Lua, run in a Lua interpreter) on the
statuses the operator writes, the Flux health expressions (CEL), and the Git-managed job."""

from __future__ import annotations

from typing import Any

import celpy
import pytest
import yaml
from lupa import LuaRuntime

from ftapi import parse_job
from fttestkit.paths import REPO

GITOPS = REPO / "examples" / "gitops"
LUA = (GITOPS / "argocd" / "finetunejob-health.lua").read_text()


def argocd_health(obj: dict[str, Any]) -> tuple[str, str]:
    """Run the script as Argo CD does: `obj` is the resource, the script returns hs."""
    lua = LuaRuntime(unpack_returned_tuples=True)
    lua.globals().obj = lua.table_from(obj, recursive=True)
    hs = lua.execute(LUA)
    return hs["status"], hs["message"]


def _job(status: dict[str, Any] | None, generation: int = 1) -> dict[str, Any]:
    obj: dict[str, Any] = {"metadata": {"name": "j", "generation": generation}}
    if status is not None:
        obj["status"] = status
    return obj


@pytest.mark.parametrize(
    ("status", "generation", "health", "says"),
    [
        (None, 1, "Progressing", "Waiting for the operator"),
        ({"phase": "Pending", "message": "waiting for the pods", "observedGeneration": 1}, 1,
         "Progressing", "waiting for the pods"),
        ({"phase": "Running", "message": "training on 2 node(s)", "observedGeneration": 1,
          "progress": {"summary": "120/1000 (12%)"}}, 1,
         "Progressing", "Running 120/1000 (12%): training on 2 node(s)"),
        ({"phase": "Restarting", "message": "attempt 0 failed (Preempted)"}, 1,
         "Progressing", "Preempted"),
        ({"phase": "Queued", "message": "waiting for Kueue"}, 1, "Progressing", "Kueue"),
        ({"phase": "Suspended", "message": "suspended"}, 1, "Suspended", "suspended"),
        ({"phase": "Succeeded", "message": "done", "modelUri": "s3://m/final",
          "observedGeneration": 1}, 1, "Healthy", "s3://m/final"),
        ({"phase": "Failed", "failureReason": "OOMKilled", "message": "pod x ran out of memory",
          "observedGeneration": 1}, 1, "Degraded", "OOMKilled: pod x ran out of memory"),
        ({"phase": "Succeeded", "observedGeneration": 1}, 2, "Progressing", "generation 2"),
    ],
    ids=["no-status", "pending", "running", "restarting", "queued", "suspended", "succeeded",
         "failed", "stale-generation"],
)  # fmt: skip
def test_argocd_health(
    status: dict[str, Any] | None, generation: int, health: str, says: str
) -> None:
    got, message = argocd_health(_job(status, generation))
    assert got == health
    assert says in message


def test_argocd_cm_embeds_the_same_script() -> None:
    config = yaml.safe_load((GITOPS / "argocd" / "argocd-cm.yaml").read_text())
    assert config["data"]["resource.customizations.health.finetune.dev_FineTuneJob"] == LUA


def _flux_checks() -> dict[str, str]:
    docs = list(yaml.safe_load_all((GITOPS / "flux" / "flux-kustomization.yaml").read_text()))
    kustomization = next(d for d in docs if d["kind"] == "Kustomization")
    (check,) = kustomization["spec"]["healthCheckExprs"]
    assert (check["apiVersion"], check["kind"]) == ("finetune.dev/v1alpha1", "FineTuneJob")
    return {k: v for k, v in check.items() if k in ("current", "failed", "inProgress")}


@pytest.mark.parametrize(
    ("phase", "current", "failed"),
    [("Running", False, False), ("Succeeded", True, False), ("Failed", False, True),
     (None, False, False)],
)  # fmt: skip
def test_flux_health_expressions(phase: str | None, current: bool, failed: bool) -> None:
    """Flux evaluates each expression with the object's top-level fields as variables."""
    env = celpy.Environment()
    status: dict[str, Any] = {} if phase is None else {"phase": phase}
    activation = {"status": celpy.json_to_cel(status), "metadata": celpy.json_to_cel({})}
    checks = _flux_checks()
    results = {
        name: bool(env.program(env.compile(expr)).evaluate(activation))
        for name, expr in checks.items()
    }
    assert results == {"current": current, "failed": failed}


def test_the_git_managed_job_is_valid_and_listed() -> None:
    flux = GITOPS / "flux"
    listed = yaml.safe_load((flux / "kustomization.yaml").read_text())["resources"]
    for name in listed:
        job = parse_job(yaml.safe_load((flux / name).read_text()))
        assert job.spec.run_policy.ttl_seconds_after_finished is not None
