"""Helpers for the Helm chart (helm/finetune-operator): the pinned helm binary, `helm template`
parsed into objects, and RBAC rules flattened into {(group, resource): verbs}.

Used by tests/helm (no cluster) and tests/integration/test_helm_install.py."""

from __future__ import annotations

import re
import subprocess
from collections.abc import Iterable, Mapping
from functools import cache
from pathlib import Path
from typing import Any

import yaml

from fttestkit.paths import REPO

CHART = REPO / "helm" / "finetune-operator"
OPERATOR_DOC = REPO / "docs" / "operator.md"

Grants = dict[tuple[str, str], frozenset[str]]


@cache
def helm_binary() -> str:
    """The helm built from its Go module by hack/build.sh (built now when missing: ~1 min)."""
    path = Path(_run([str(REPO / "hack" / "bin-path.sh"), "helm"]).strip())
    if not path.is_file():
        built = subprocess.run(
            [str(REPO / "hack" / "build.sh"), "helm"], capture_output=True, text=True, check=False
        )
        if built.returncode != 0 or not path.is_file():
            raise RuntimeError(f"hack/build.sh helm failed:\n{built.stdout}\n{built.stderr}")
    return str(path)


def helm(
    *args: str, values: Mapping[str, Any] | None = None, env: Mapping[str, str] | None = None,
    check: bool = True,
) -> str:  # fmt: skip
    """Run helm; the combined stdout and stderr. values: given as `-f -` (stdin), so nested
    values need no --set escaping. check: raise with helm's words on failure."""
    stdin = None
    if values is not None:
        args, stdin = (*args, "-f", "-"), yaml.safe_dump(dict(values))
    result = subprocess.run(
        [helm_binary(), *args], input=stdin, capture_output=True, text=True, check=False, env=env
    )
    if check and result.returncode != 0:
        raise AssertionError(f"helm {' '.join(args)} failed:\n{result.stdout}\n{result.stderr}")
    return result.stdout + result.stderr


def render(
    values: Mapping[str, Any] | None = None, release: str = "finetune-operator",
    namespace: str = "finetune-system",
) -> list[dict[str, Any]]:  # fmt: skip
    """`helm template` with these values, as parsed objects (empty documents dropped)."""
    out = helm("template", release, str(CHART), "--namespace", namespace, values=values or {})
    return [doc for doc in yaml.safe_load_all(out) if doc]


def only(objects: Iterable[dict[str, Any]], kind: str, name: str | None = None) -> dict[str, Any]:
    found = [o for o in objects if o["kind"] == kind and name in (None, o["metadata"]["name"])]
    assert len(found) == 1, f"expected one {kind} {name or ''}, got {len(found)}"
    return found[0]


def of_kind(objects: Iterable[dict[str, Any]], kind: str) -> list[dict[str, Any]]:
    return [o for o in objects if o["kind"] == kind]


def container(objects: Iterable[dict[str, Any]]) -> dict[str, Any]:
    pod = only(objects, "Deployment")["spec"]["template"]["spec"]
    assert len(pod["containers"]) == 1
    return dict(pod["containers"][0])


def plain_env(container: Mapping[str, Any]) -> dict[str, str]:
    """The container's literal env values (downward-API ones are left out)."""
    return {e["name"]: e["value"] for e in container["env"] if "value" in e}


def grants(rules: Iterable[Mapping[str, Any]]) -> Grants:
    """{(apiGroup, resource): verbs} over every rule (resourceNames ignored: see named())."""
    result: dict[tuple[str, str], set[str]] = {}
    for rule in rules:
        for group in rule["apiGroups"]:
            for resource in rule["resources"]:
                result.setdefault((group, resource), set()).update(rule["verbs"])
    return {key: frozenset(verbs) for key, verbs in result.items()}


def merge(*parts: Grants) -> Grants:
    result: dict[tuple[str, str], set[str]] = {}
    for part in parts:
        for key, verbs in part.items():
            result.setdefault(key, set()).update(verbs)
    return {key: frozenset(verbs) for key, verbs in result.items()}


@cache
def documented_grants() -> Grants:
    """The table "RBAC the operator needs" in docs/operator.md, as {(group, resource): verbs}."""
    text = OPERATOR_DOC.read_text()
    section = text.split("## RBAC the operator needs", 1)[1].split("\n## ", 1)[0]
    result: dict[tuple[str, str], frozenset[str]] = {}
    for line in section.splitlines():
        cells = [c.strip() for c in line.strip().strip("|").split("|")]
        if len(cells) < 3 or cells[0] == "API group" or set(cells[0]) <= {"-"}:
            continue  # not a row, the header, or the separator
        group = "" if cells[0] == '""' else cells[0]
        verbs = frozenset(v.strip() for v in cells[2].split(","))
        for resource in re.split(r",\s*", cells[1]):
            result[(group, resource)] = verbs
    assert result, "no RBAC table found in docs/operator.md"
    return result


def _run(args: list[str]) -> str:
    return subprocess.run(args, capture_output=True, text=True, check=True).stdout


def trainer_policy_objects(
    release: str, namespace: str = "finetune-system"
) -> list[dict[str, Any]]:
    """The chart's trainer ValidatingAdmissionPolicy and its binding (trainer-policy.yaml), as
    `helm install` creates them: the policy first, the name of both its metadata.name."""
    kinds = ("ValidatingAdmissionPolicy", "ValidatingAdmissionPolicyBinding")
    objects = [o for o in render(release=release, namespace=namespace) if o["kind"] in kinds]
    assert [o["kind"] for o in objects] == list(kinds), objects
    return objects
