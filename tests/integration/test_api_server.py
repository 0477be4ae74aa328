"""The FineTuneJob API as the real API server serves it: the generated CRD is accepted, it
refuses the same manifests pydantic refuses (naming the field), applies the same defaults,
and drives `kubectl explain`, `kubectl get` columns and `kubectl wait`."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import pytest
import yaml
from kubernetes import client
from kubernetes.client.exceptions import ApiException

from ftapi import GROUP, PLURAL, VERSION, parse_job
from fttestkit.builders import make_job
from fttestkit.cluster import Cluster
from fttestkit.paths import REPO
from tests.cases import FIELD_CASES, RULE_CASES

pytestmark = pytest.mark.integration
EXAMPLES = sorted((REPO / "examples").glob("*.yaml"))


def _create(cluster: Cluster, namespace: str, manifest: dict[str, Any], *, dry_run: bool = True):
    api = client.CustomObjectsApi(cluster.api)
    return api.create_namespaced_custom_object(
        GROUP, VERSION, namespace, PLURAL, manifest,
        dry_run="All" if dry_run else None, field_validation="Strict",
    )  # fmt: skip


def _refusal(cluster: Cluster, namespace: str, manifest: dict[str, Any]) -> str:
    with pytest.raises(ApiException) as caught:
        _create(cluster, namespace, manifest)
    assert caught.value.status in (400, 422), caught.value
    return str(json.loads(caught.value.body)["message"])


@pytest.mark.parametrize(
    ("manifest", "path", "phrase"), list(RULE_CASES.values()), ids=list(RULE_CASES)
)
def test_api_server_refuses_what_the_rules_refuse(
    cluster: Cluster, crd: dict[str, Any], namespace: str,
    manifest: dict[str, Any], path: str, phrase: str,
) -> None:  # fmt: skip
    message = _refusal(cluster, namespace, manifest)
    assert phrase in message
    assert path in message


@pytest.mark.parametrize(
    ("manifest", "path", "phrase"), list(FIELD_CASES.values()), ids=list(FIELD_CASES)
)
def test_api_server_refuses_bad_fields(
    cluster: Cluster, crd: dict[str, Any], namespace: str,
    manifest: dict[str, Any], path: str, phrase: str,
) -> None:  # fmt: skip
    assert path in _refusal(cluster, namespace, manifest)


@pytest.mark.parametrize("path", EXAMPLES, ids=[p.name for p in EXAMPLES])
def test_api_server_accepts_every_example(
    cluster: Cluster, crd: dict[str, Any], namespace: str, path: Path
) -> None:
    created = _create(cluster, namespace, yaml.safe_load(path.read_text()))
    assert created["metadata"]["name"]


def test_api_server_applies_the_models_defaults(
    cluster: Cluster, crd: dict[str, Any], namespace: str
) -> None:
    manifest = make_job("defaults").set("method", {"type": "dora", "lora": {"r": 8}}).obj()
    stored = _create(cluster, namespace, manifest, dry_run=False)
    assert stored["spec"] == parse_job(manifest).to_dict()["spec"]


def test_kubectl_apply_refuses_an_invalid_manifest(
    cluster: Cluster, crd: dict[str, Any], namespace: str, tmp_path: Path
) -> None:
    bad = make_job("bad").set("method", {"type": "qlora", "quantization": {"bits": 8}})
    path = tmp_path / "bad.yaml"
    path.write_text(yaml.safe_dump(bad.obj()))
    output = cluster.kubectl("apply", "-n", namespace, "-f", str(path), check=False)
    assert "spec.method.quantization.bits" in output
    assert "qlora needs 4-bit quantization" in output
    assert "created" not in output


def test_kubectl_explain_shows_the_model_docs(cluster: Cluster, crd: dict[str, Any]) -> None:
    output = cluster.kubectl("explain", "finetunejob.spec.model.trustRemoteCode")
    assert "Run Python code shipped in the model repository" in output


def test_printer_columns_and_kubectl_wait(
    cluster: Cluster, crd: dict[str, Any], namespace: str
) -> None:
    _create(cluster, namespace, make_job("shown").set("resources.nodes", 2).obj(), dry_run=False)
    status = {
        "phase": "Succeeded",
        "restarts": 1,
        "progress": {"step": 120, "totalSteps": 120, "summary": "120/120 (100%)", "eta": "0s",
                     "loss": "1.25"},
        "metrics": {"trainLoss": 1.25},
        "conditions": [
            {"type": "Succeeded", "status": "True", "reason": "TrainingComplete",
             "message": "done", "lastTransitionTime": "2026-11-21T10:00:00Z"},
        ],
    }  # fmt: skip
    client.CustomObjectsApi(cluster.api).patch_namespaced_custom_object_status(
        GROUP, VERSION, namespace, PLURAL, "shown", {"status": status}
    )
    table = cluster.kubectl("get", "ftj", "-n", namespace).splitlines()
    assert table[0].split() == [
        "NAME",
        "PHASE",
        "MODEL",
        "METHOD",
        "PROGRESS",
        "LOSS",
        "ETA",
        "AGE",
    ]
    assert table[1].split()[:8] == [
        "shown", "Succeeded", "org/base-model", "lora", "120/120", "(100%)", "1.25", "0s",
    ]  # fmt: skip
    wide = cluster.kubectl("get", "finetunejobs", "-n", namespace, "-o", "wide").splitlines()
    assert wide[0].split()[-3:] == ["NODES", "GPUS", "RESTARTS"]
    assert wide[1].split()[-3:] == ["2", "1", "1"]
    waited = cluster.kubectl(
        "wait", "-n", namespace, "--for=condition=Succeeded", "--timeout=10s", "ftj/shown"
    )
    assert "condition met" in waited


def test_training_fields_are_immutable_but_scheduling_is_not(
    cluster: Cluster, crd: dict[str, Any], namespace: str
) -> None:
    api = client.CustomObjectsApi(cluster.api)
    _create(cluster, namespace, make_job("fixed").obj(), dry_run=False)

    def patch(body: dict[str, Any]) -> Any:
        return api.patch_namespaced_custom_object(GROUP, VERSION, namespace, PLURAL, "fixed", body)

    for change in (
        {"model": {"name": "org/other-model"}},
        {"training": {"epochs": 3}},
        {"resources": {"gpusPerNode": 8}},
    ):
        with pytest.raises(ApiException) as caught:
            patch({"spec": change})
        assert "cannot change once the job exists" in json.loads(caught.value.body)["message"]
    patched = patch({"spec": {"scheduling": {"suspend": True}, "runPolicy": {"maxRestarts": 9}}})
    assert patched["spec"]["scheduling"]["suspend"] is True
    assert patched["spec"]["runPolicy"]["maxRestarts"] == 9


def test_api_server_accepts_every_converted_seed_example(
    cluster: Cluster, crd: dict[str, Any], namespace: str, tmp_path: Path,
    monkeypatch: pytest.MonkeyPatch,
) -> None:  # fmt: skip
    """`finetune convert` of each example the tools' documents show gives a manifest that
    `kubectl apply` would take (the server's own schema and CEL rules, strict fields)."""
    from fttrainer.cli import main
    from tests.seeds import seed_examples

    examples = seed_examples(tmp_path, "org/tiny-model")
    assert len(examples) >= 25
    for example in examples:
        monkeypatch.chdir(example.cwd)
        target = tmp_path / f"{example.name.replace(' ', '-')}.yaml"
        assert main(["convert", *example.args, "-o", str(target)]) == 0, example.name
        manifest = yaml.safe_load(target.read_text())
        created = _create(cluster, namespace, manifest)
        assert created["spec"]["model"]["name"] == "org/tiny-model", example.name
