"""docs/install.md's table "What a job may do, and what each setting takes away", row by
row, as a user who may only run FineTuneJobs (impersonated on the real API server, the
operator under the chart's rights):

- whatever the settings, the API server refuses every environment variable that would move
  a credential (redirects.py: each exact name, and a sample of each family) and $(NAME)
  references, naming the spec field to use instead;
- with every policy setting on, the operator fails each job that asks for what a setting
  takes away, with the setting's reason and no Job, and runs the job that names only
  allowed servers and sets only allowed variables, its pods given the Hub it named;
- with the defaults, the same jobs run: their Jobs carry what they asked for (the servers,
  the ServiceAccount, a Secret the user cannot read, the node selection), and tolerations,
  which no setting restricts.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest
from kubernetes import client
from kubernetes.client.exceptions import ApiException

from ftapi.constants import GROUP, PLURAL, VERSION
from ftapi.v1alpha1.redirects import REDIRECT_GROUPS
from fttestkit.builders import JobBuilder
from fttestkit.cluster import Cluster, eventually, read_job
from fttestkit.finetunejobs import long_running_job, status_of, wait_phase
from fttestkit.operator import Operator
from fttestkit.users import bind, grant_runner_role, impersonating
from tests.cases import REDIRECT_SAMPLES, redirect_env

pytestmark = pytest.mark.integration
RUNNER = "carol-runs-jobs"
ALLOWED = {
    "s3": "http://minio.storage:9000", "tracker": "https://mlflow.internal",
    "hub": "https://hub.internal", "registry": "registry.test/", "key": "finetune.dev/pool",
    "class": "finetune-high",
}  # fmt: skip
POLICY = (
    "--default-image", "registry.test/trainer:1",
    # The platform's defaults: a job that names no server uses these (always allowed).
    "--default-s3-endpoint", ALLOWED["s3"], "--default-hub-endpoint", ALLOWED["hub"],
    "--allowed-registries", ALLOWED["registry"],
    "--allowed-s3-endpoints", ALLOWED["s3"],
    "--allowed-tracker-urls", ALLOWED["tracker"],
    "--allowed-hub-endpoints", ALLOWED["hub"],
    "--forbid-job-code", "--forbid-service-account-name",
    "--allowed-secret-names", "finetune-*",
    "--allowed-priority-classes", ALLOWED["class"],
    "--allowed-node-selector-keys", ALLOWED["key"],
    "--plain-http-registries", "registry.cluster.local:5000",
    "--allowed-ca-config-maps", "kube-root-ca.crt",
)  # fmt: skip
ELSEWHERE = "https://collector.attacker.example"


def _runner(cluster: Cluster, ns: str) -> client.CustomObjectsApi:
    """The API as a user whose only rights are on FineTuneJobs in `ns` (plus Secrets of
    their own: none here, so the Secret below is one they cannot read)."""
    grant_runner_role(cluster, ns)
    bind(cluster, ns, RUNNER)
    client.CoreV1Api(cluster.api).create_namespaced_secret(ns, {
        "metadata": {"name": "team-b-hub"}, "stringData": {"token": "hf_team_b"}})  # fmt: skip
    api = impersonating(cluster, RUNNER)
    assert not client.AuthorizationV1Api(api).create_self_subject_access_review({
        "spec": {"resourceAttributes": {"namespace": ns, "verb": "get", "resource": "secrets"}}
    }).status.allowed  # fmt: skip
    return client.CustomObjectsApi(api)


def _create(api: client.CustomObjectsApi, ns: str, job: JobBuilder) -> None:
    api.create_namespaced_custom_object(GROUP, VERSION, ns, PLURAL, job.obj())


# Each row of the table that a setting takes away: (job, reason with the setting on, what
# its Job carries with the defaults).
def _asks(name: str) -> JobBuilder:
    return long_running_job(name)


ROWS: dict[str, tuple[JobBuilder, str, tuple[str, str]]] = {
    "any image": (
        _asks("image").set("resources.image", "docker.io/someone/trainer:x"),
        "ImageNotAllowed", ("image", "docker.io/someone/trainer:x")),
    "any S3 endpoint": (
        _asks("s3").set("output", {"uri": "s3://b/p", "s3": {"endpoint": ELSEWHERE}}),
        "S3EndpointNotAllowed", ("config", ELSEWHERE)),
    "any MLflow server": (
        _asks("mlflow").set("logging", {"reportTo": ["mlflow"], "mlflow": {
            "trackingUri": ELSEWHERE, "tokenSecretRef": {"name": "team-b-hub", "key": "token"}}}),
        "TrackerNotAllowed", ("config", ELSEWHERE)),
    "any W&B server": (
        _asks("wandb").set("logging", {"reportTo": ["wandb"], "wandb": {
            "project": "p", "baseUrl": ELSEWHERE}}),
        "TrackerNotAllowed", ("config", ELSEWHERE)),
    "any Hub": (
        _asks("hub").set("model.hubEndpoint", ELSEWHERE)
        .set("model.hfTokenSecretRef", {"name": "team-b-hub", "key": "token"}),
        "HubEndpointNotAllowed", ("env", f"HF_ENDPOINT={ELSEWHERE}")),
    "any Secret of the namespace": (
        _asks("secret").set("resources.env", [
            {"name": "TEAM_B", "secretKeyRef": {"name": "team-b-hub", "key": "token"}}]),
        "SecretNotAllowed", ("secret", "team-b-hub")),
    "any environment variable the deny-list misses": (
        _asks("env").set("resources.env", [{"name": "MY_TOOL_CONFIG", "value": "x"}]),
        "EnvNotAllowed", ("env", "MY_TOOL_CONFIG=x")),
    "any registry over plain HTTP": (
        _asks("plain").set("output.oci", {"reference": "oci://registry.test/models/a:1",
                                          "plainHttp": True}),
        "PlainHttpNotAllowed", ("config", "plainHttp: true")),
    "any CA for a registry": (
        _asks("ca").set("output.oci", {"reference": "oci://registry.test/models/a:1",
                                       "caConfigMapRef": {"name": "my-ca", "key": "ca.crt"}}),
        "CaConfigMapNotAllowed", ("ca", "my-ca")),
    "any Secret as an image pull secret": (
        _asks("pull").set("resources.imagePullSecrets", ["team-b-hub"]),
        "SecretNotAllowed", ("pull", "team-b-hub")),
    "the model repository's code": (
        _asks("remote").set("model.trustRemoteCode", True),
        "JobCodeNotAllowed", ("config", "trustRemoteCode: true")),
    "any ServiceAccount": (
        _asks("account").set("resources.serviceAccountName", "default"),
        "ServiceAccountNotAllowed", ("account", "default")),
    "any PriorityClass": (
        _asks("priority").set("resources.priorityClassName", "system-cluster-critical"),
        "PriorityClassNotAllowed", ("priority", "system-cluster-critical")),
    "any node label": (
        _asks("nodes").set("resources.nodeSelector", {"kubernetes.io/hostname": "gpu-0"}),
        "NodeSelectorNotAllowed", ("selector", "kubernetes.io/hostname")),
}  # fmt: skip


def _carries(cluster: Cluster, ns: str, name: str, what: str, expected: str) -> bool:
    """Whether the job's Job (or its config) carries what the job asked for."""
    job = read_job(cluster, ns, f"{name}-0")
    if job is None:
        return False
    pod = job.spec.template.spec
    trainer = pod.containers[0]
    if what == "image":
        return bool(trainer.image == expected)
    if what == "env":
        return expected in [f"{e.name}={e.value}" for e in trainer.env or []]
    if what == "account":
        return bool(pod.service_account_name == expected)
    if what == "priority":
        return bool(pod.priority_class_name == expected)
    if what == "selector":
        return expected in (pod.node_selector or {})
    if what == "pull":
        return expected in [s.name for s in pod.image_pull_secrets or []]
    if what == "ca":
        refs = [e.value_from.config_map_key_ref for e in trainer.env or [] if e.value_from]
        return any(r is not None and r.name == expected for r in refs)
    if what == "secret":
        refs = [e.value_from.secret_key_ref for e in trainer.env or [] if e.value_from]
        return any(r is not None and r.name == expected for r in refs)
    config = client.CoreV1Api(cluster.api).read_namespaced_config_map(f"{name}-config", ns)
    return any(expected in text for text in (config.data or {}).values())


def test_the_api_server_refuses_every_variable_that_moves_a_credential(
    cluster: Cluster, crd: Any, namespace: str
) -> None:
    runner = _runner(cluster, namespace)
    tried = 0
    for group in REDIRECT_GROUPS:
        for name in [*group.names, *(s for s in REDIRECT_SAMPLES if group.refuses(s))]:
            job = long_running_job("redirect").set("resources.env", [
                redirect_env(name, ELSEWHERE)])  # fmt: skip
            with pytest.raises(ApiException) as caught:
                _create(runner, namespace, job)
            assert caught.value.status == 422, (name, caught.value.body)
            assert group.what in caught.value.body, (name, caught.value.body)
            # ... and says what to use instead (the spec field, the setting, the image).
            assert group.instead[:40] in caught.value.body, (name, caught.value.body)
            tried += 1
    assert tried >= 160  # every exact name, and samples of every family
    # A copy of a Secret-fed variable into another one.
    copy = long_running_job("copy").set("model.hfTokenSecretRef", {
        "name": "team-b-hub", "key": "token"}).set("resources.env", [
        {"name": "WANDB_NAME", "value": "$(HF_TOKEN)"}])  # fmt: skip
    with pytest.raises(ApiException) as caught:
        _create(runner, namespace, copy)
    assert "may not reference other variables" in caught.value.body
    # What stays the user's: the libraries' other settings, an escaped literal.
    fine = long_running_job("fine").set("resources.env", [
        {"name": n, "value": v} for n, v in (
            ("HF_HUB_OFFLINE", "1"), ("AWS_REGION", "eu-west-1"), ("WANDB__SERVICE_WAIT", "60"),
            ("MLFLOW_EXPERIMENT_NAME", "x"), ("PROMPT", "costs $$(VAR) and $5"))])  # fmt: skip
    _create(runner, namespace, fine)


def test_with_every_setting_on_each_row_is_refused_and_allowed_servers_run(
    cluster: Cluster, crd: Any, namespace: str, tmp_path: Path
) -> None:
    runner = _runner(cluster, namespace)
    operator = Operator(cluster, tmp_path / "operator.log", *POLICY, namespaces=(namespace,))
    try:
        for job, _, _ in ROWS.values():
            _create(runner, namespace, job)
        allowed = (
            long_running_job("allowed")
            .set("output", {"uri": "s3://b/p", "s3": {"endpoint": ALLOWED["s3"] + "/"}})
            .set("logging", {"reportTo": ["mlflow"], "mlflow": {
                "trackingUri": ALLOWED["tracker"] + "/team-a"}})
            .set("model.hubEndpoint", ALLOWED["hub"])
            .set("resources.nodeSelector", {ALLOWED["key"]: "a100"})
            .set("resources.env", [{"name": "NCCL_DEBUG", "value": "INFO"}])
        )  # fmt: skip
        _create(runner, namespace, allowed)
        for row, (job, reason, _) in ROWS.items():
            name = job.obj()["metadata"]["name"]
            status = wait_phase(cluster, namespace, name, "Failed", operator, timeout=60)
            assert status["failureReason"] == reason, (row, status)
            assert read_job(cluster, namespace, f"{name}-0") is None, row
        wait_phase(cluster, namespace, "allowed", "Running", operator, timeout=90)
        assert _carries(cluster, namespace, "allowed", "env", f"HF_ENDPOINT={ALLOWED['hub']}")
        # forbidJobCode restricts the environment to allowedEnv's list, which holds it.
        assert _carries(cluster, namespace, "allowed", "env", "NCCL_DEBUG=INFO")
    finally:
        operator.stop()


def test_with_the_defaults_each_row_is_what_the_job_gets(
    cluster: Cluster, crd: Any, namespace: str, tmp_path: Path
) -> None:
    runner = _runner(cluster, namespace)
    operator = Operator(cluster, tmp_path / "operator.log", namespaces=(namespace,))
    try:
        for job, _, _ in ROWS.values():
            _create(runner, namespace, job)
        # No setting takes this away: tolerations (an admission policy restricts those).
        tolerant = long_running_job("tolerant").set("resources.tolerations", [
            {"key": "dedicated", "operator": "Exists"}])  # fmt: skip
        _create(runner, namespace, tolerant)
        for row, (job, _, (what, expected)) in ROWS.items():
            name = job.obj()["metadata"]["name"]
            eventually(lambda n=name, w=what, e=expected: _carries(cluster, namespace, n, w, e),
                       timeout=60, what=f"{row}: {name}'s Job carrying {expected}")  # fmt: skip
            assert status_of(cluster, namespace, name).get("failureReason") is None, row
        job = eventually(lambda: read_job(cluster, namespace, "tolerant-0"), timeout=60)
        tolerations = job.spec.template.spec.tolerations or []
        assert any(t.key == "dedicated" for t in tolerations)
    finally:
        operator.stop()
