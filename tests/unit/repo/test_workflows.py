"""The project's GitHub workflows: CI runs what .ci/run runs, and a release publishes the
images and the chart exactly where the chart's defaults point (a user who installs the
released chart pulls what the release pushed)."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import yaml

from fttestkit.paths import REPO

WORKFLOWS = REPO / ".github" / "workflows"
VALUES = REPO / "helm" / "finetune-operator" / "values.yaml"


def _load(name: str) -> dict[str, Any]:
    loaded: dict[str, Any] = yaml.safe_load((WORKFLOWS / name).read_text())
    return loaded


def _steps(workflow: dict[str, Any]) -> list[dict[str, Any]]:
    return [step for job in workflow["jobs"].values() for step in job["steps"]]


def test_ci_runs_dot_ci_run_with_shared_beside_the_clone() -> None:
    workflow = _load("ci.yaml")
    runs = [s for s in _steps(workflow) if "run" in s]
    assert any("bash .ci/run" in s["run"] and s.get("working-directory") == "main" for s in runs)
    paths = {
        s.get("with", {}).get("path") for s in _steps(workflow) if "checkout" in s.get("uses", "")
    }
    assert paths == {"main", "shared"}
    # tests/e2e/test_upgrade.py releases an older commit of the project: it needs the history.
    (main,) = [s for s in _steps(workflow) if s.get("with", {}).get("path") == "main"]
    assert main["with"]["fetch-depth"] == 0


def test_the_release_publishes_where_the_chart_points() -> None:
    env = _load("release.yaml")["env"]
    values = yaml.safe_load(VALUES.read_text())
    assert env["OPERATOR_IMAGE"] == values["image"]["repository"]
    trainer_repository = values["operator"]["defaultImage"].rsplit(":", 1)[0]
    assert env["TRAINER_IMAGE"] == trainer_repository
    assert env["OPERATOR_IMAGE"] == f"{env['REGISTRY']}/operator"
    assert env["TRAINER_IMAGE"] == f"{env['REGISTRY']}/trainer"
    assert env["CHART_REPOSITORY"] == f"oci://{env['REGISTRY']}/charts"


def test_the_release_signs_attests_and_pins_what_it_pushes() -> None:
    workflow = _load("release.yaml")
    # YAML 1.1 (PyYAML) reads the key `on` as true; GitHub reads it as "on".
    assert workflow[True] == {"push": {"tags": ["v*"]}}
    text = (WORKFLOWS / "release.yaml").read_text()
    assert "cosign sign --yes" in text and "cosign attest --yes --type spdxjson" in text
    # The chart is made by the same script as `make release`: images pinned by digest.
    assert "hack/package-chart.sh" in text
    images = workflow["jobs"]["images"]
    assert images["permissions"]["id-token"] == "write"  # keyless: GitHub's OIDC token
    builds = [s for s in images["steps"] if s.get("uses", "").startswith("docker/build-push")]
    platforms = {s["with"]["file"]: s["with"]["platforms"] for s in builds}
    assert platforms == {"operator/Dockerfile": "linux/amd64,linux/arm64",
                         "trainer-image/Dockerfile": "linux/amd64"}  # fmt: skip
    assert Path(REPO / "hack" / "package-chart.sh").exists()
