"""The servers a job's credentials may go to are the platform's choice: the allow-lists
(--allowed-s3-endpoints, --allowed-tracker-urls, --allowed-hub-endpoints), how a URL is
matched against them, --forbid-job-code, and the Hub and proxies the pods get."""

from __future__ import annotations

from dataclasses import replace
from typing import Any

import pytest

from ftapi import parse_job
from ftoperator.children import build_children
from ftoperator.config import Settings, parse_options, settings_of, settings_used, with_recorded
from ftoperator.policy import policy_violation, url_allowed
from fttestkit.builders import JobBuilder, make_job

MLFLOW = {"reportTo": ["mlflow"], "mlflow": {"trackingUri": "https://mlflow.internal/team-a"}}
WANDB = {"reportTo": ["wandb"], "wandb": {"project": "p", "baseUrl": "https://wandb.internal"}}
LISTS = Settings(
    allowed_s3_endpoints=("http://minio.storage:9000",),
    allowed_tracker_urls=("https://mlflow.internal", "https://wandb.internal"),
    allowed_hub_endpoints=("https://hub.internal/",),
    # The platform's defaults, which a job that names no server gets (make_job's model is a
    # hub id, its data and output on S3).
    default_s3_endpoint="http://minio.storage:9000",
    default_hub_endpoint="https://hub.internal",
)


@pytest.mark.parametrize(
    ("url", "entry", "allowed"),
    [
        ("https://mlflow.internal", "https://mlflow.internal", True),
        ("https://mlflow.internal/team-a", "https://mlflow.internal", True),
        ("https://MLflow.Internal:443/x", "https://mlflow.internal/", True),
        ("http://minio.storage:9000", "http://minio.storage:9000/", True),
        ("https://mlflow.internal/team-a/x", "https://mlflow.internal/team-a", True),
        ("file:///tmp/mlruns/a", "file:///tmp/mlruns", True),
        # Another host that starts like it, another port, another scheme.
        ("https://mlflow.internal.example.com", "https://mlflow.internal", False),
        ("https://mlflow.internal:8443", "https://mlflow.internal", False),
        ("http://mlflow.internal", "https://mlflow.internal", False),
        ("http://minio.storage:9001", "http://minio.storage:9000", False),
        # A path prefix ends at a "/"; a path that climbs out of it is not under it.
        ("https://mlflow.internal/team-ab", "https://mlflow.internal/team-a", False),
        ("https://mlflow.internal/team-a/../team-b", "https://mlflow.internal/team-a", False),
        ("https://mlflow.internal/team-a/%2e%2e/team-b", "https://mlflow.internal/team-a", False),
        # Credentials in the URL, or an unparsable port, never match.
        ("https://mlflow.internal@evil.example", "https://mlflow.internal", False),
        ("https://user@mlflow.internal", "https://mlflow.internal", False),
        ("http://minio.storage:port", "http://minio.storage", False),
    ],
)
def test_a_url_is_allowed_only_on_the_entrys_server_and_under_its_path(
    url: str, entry: str, allowed: bool
) -> None:
    assert url_allowed(url, entry) is allowed


def _refusal(job: JobBuilder, settings: Settings = LISTS) -> tuple[str, str] | None:
    return policy_violation(parse_job(job.obj()), settings)


@pytest.mark.parametrize(
    ("section", "value", "reason", "field", "setting"),
    [
        ("output", {"uri": "s3://b/p", "s3": {"endpoint": "https://s3.attacker.example"}},
         "S3EndpointNotAllowed", "spec.output.s3.endpoint", "allowedS3Endpoints"),
        ("logging", {**MLFLOW, "mlflow": {"trackingUri": "https://mlflow.attacker.example"}},
         "TrackerNotAllowed", "spec.logging.mlflow.trackingUri", "allowedTrackerUrls"),
        ("logging", {**WANDB, "wandb": {"project": "p", "baseUrl": "https://attacker.example"}},
         "TrackerNotAllowed", "spec.logging.wandb.baseUrl", "allowedTrackerUrls"),
        ("model.hubEndpoint", "https://hub.attacker.example", "HubEndpointNotAllowed",
         "spec.model.hubEndpoint", "allowedHubEndpoints"),
    ],
)  # fmt: skip
def test_a_server_outside_the_allow_list_fails_the_job_naming_the_field_and_setting(
    section: str, value: Any, reason: str, field: str, setting: str
) -> None:
    refused = _refusal(make_job("a").set(section, value))
    assert refused is not None and refused[0] == reason, refused
    assert field in refused[1] and setting in refused[1] and "attacker.example" in refused[1]
    assert _refusal(make_job("a").set(section, value), Settings()) is None  # no list: any


def test_allowed_servers_and_unset_fields_with_a_default_pass() -> None:
    allowed = (
        make_job("a")
        .set("output", {"uri": "s3://b/p", "s3": {"endpoint": "http://minio.storage:9000"}})
        .set("logging", MLFLOW)
        .set("model.hubEndpoint", "https://hub.internal")
    )
    assert _refusal(allowed) is None
    assert _refusal(make_job("a").set("logging", WANDB)) is None
    assert _refusal(make_job("a")) is None  # the operator's default S3 endpoint and Hub


MINIO = {"uri": "s3://b/p", "s3": {"endpoint": "http://minio.storage:9000"}}


@pytest.mark.parametrize(
    ("job", "reason", "public"),
    [
        (make_job("a").set("model.name", "/models/local").set("dataset.train.uri", "/d.jsonl")
         .set("output.uri", "s3://models/a"), "S3EndpointNotAllowed", "https://s3.amazonaws.com"),
        (make_job("a").set("output", MINIO), "HubEndpointNotAllowed", "https://huggingface.co"),
        (make_job("a").set("model.hubEndpoint", "https://hub.internal").set("output", MINIO)
         .set("logging", {"reportTo": ["wandb"], "wandb": {"project": "p"}}),
         "TrackerNotAllowed", "https://api.wandb.ai"),
    ],
)  # fmt: skip
def test_an_unset_field_without_a_default_means_the_public_service_which_the_list_must_hold(
    job: JobBuilder, reason: str, public: str
) -> None:
    no_defaults = replace(LISTS, default_s3_endpoint=None, default_hub_endpoint=None)
    refused = _refusal(job, no_defaults)
    assert refused is not None and refused[0] == reason, refused
    assert public in refused[1] and "is unset" in refused[1]
    field = {"S3EndpointNotAllowed": "allowed_s3_endpoints",
             "HubEndpointNotAllowed": "allowed_hub_endpoints",
             "TrackerNotAllowed": "allowed_tracker_urls"}[reason]  # fmt: skip
    listed = replace(no_defaults, **{field: (*getattr(no_defaults, field), public)})
    assert _refusal(job, listed) is None  # listed: allowed


def test_a_job_that_reaches_no_hub_is_not_held_to_the_hub_list() -> None:
    local = make_job("a").set("model.name", "/models/local").set("output", MINIO)
    assert _refusal(local, Settings(allowed_hub_endpoints=("https://hub.internal",))) is None


def test_only_secrets_whose_names_the_operator_allows_may_be_referenced() -> None:
    settings = Settings(allowed_secret_names=("finetune-*", "shared-hub"))
    fine = (make_job("a").set("model.hfTokenSecretRef", {"name": "shared-hub", "key": "t"})
            .set("resources.env", [{"name": "X", "secretKeyRef": {"name": "finetune-x",
                                                                  "key": "k"}}]))  # fmt: skip
    assert _refusal(fine, settings) is None
    for field, value, named in [
        ("model.hfTokenSecretRef", {"name": "team-b-hub", "key": "t"},
         "spec.model.hfTokenSecretRef (team-b-hub)"),
        ("output", {"uri": "s3://b/p", "s3": {"credentialsSecretRef": {"name": "prod-s3"}}},
         "spec.output.s3.credentialsSecretRef (prod-s3)"),
        ("resources.env", [{"name": "A", "value": "1"}, {"name": "B", "secretKeyRef": {
            "name": "db-password", "key": "p"}}], "spec.resources.env[1].secretKeyRef"),
        ("logging", {"reportTo": ["wandb"], "wandb": {"project": "p", "apiKeySecretRef": {
            "name": "wandb", "key": "k"}}}, "spec.logging.wandb.apiKeySecretRef (wandb)"),
    ]:  # fmt: skip
        refused = _refusal(make_job("a").set(field, value), settings)
        assert refused is not None and refused[0] == "SecretNotAllowed", (field, refused)
        assert named in refused[1] and "allowedSecretNames" in refused[1]
        assert _refusal(make_job("a").set(field, value), Settings()) is None


@pytest.mark.parametrize(
    ("field", "value", "named"),
    [
        ("model.trustRemoteCode", True, "spec.model.trustRemoteCode"),
        ("trainer", {"type": "grpo", "grpo": {"rewards": [{"type": "json"}, {
            "type": "python", "function": "rewards.py:score"}]}},
         "spec.trainer.grpo.rewards[1]"),
        ("evaluation.harness", {"tasks": ["mine"], "includePath": "s3://tasks/mine"},
         "spec.evaluation.harness.includePath"),
    ],
)  # fmt: skip
def test_code_a_job_brings_is_refused_only_when_the_operator_forbids_it(
    field: str, value: Any, named: str
) -> None:
    job = make_job("a").set(field, value)
    if field == "trainer":
        job = job.set("dataset.format", "prompt_only")
    refused = _refusal(job, Settings(forbid_job_code=True))
    assert refused is not None and refused[0] == "JobCodeNotAllowed", refused
    assert named in refused[1] and "forbidJobCode" in refused[1]
    assert _refusal(job, Settings()) is None
    assert _refusal(make_job("a"), Settings(forbid_job_code=True)) is None


def test_the_namespaces_services_add_no_variables_to_the_pods() -> None:
    children = build_children(parse_job(make_job("a").obj()), attempt=0, settings=Settings())
    assert children.job["spec"]["template"]["spec"]["enableServiceLinks"] is False


def _env(job: JobBuilder, settings: Settings) -> dict[str, str]:
    children = build_children(parse_job(job.obj()), attempt=0, settings=settings)
    container = children.job["spec"]["template"]["spec"]["containers"][0]
    return {e["name"]: e.get("value", "") for e in container["env"]}


def test_the_pods_get_the_jobs_hub_else_the_operators_and_the_platforms_proxies() -> None:
    settings = Settings(
        default_hub_endpoint="https://mirror.internal",
        proxies=(("https", "http://proxy.internal:3128"), ("no", ".svc,10.0.0.0/8")),
    )
    env = _env(make_job("a"), settings)
    assert env["HF_ENDPOINT"] == "https://mirror.internal"
    assert env["HTTPS_PROXY"] == env["https_proxy"] == "http://proxy.internal:3128"
    assert env["NO_PROXY"] == env["no_proxy"] == ".svc,10.0.0.0/8"
    assert "HTTP_PROXY" not in env and "http_proxy" not in env  # not set: not given
    own = _env(make_job("a").set("model.hubEndpoint", "https://hub.internal"), settings)
    assert own["HF_ENDPOINT"] == "https://hub.internal"
    assert "HF_ENDPOINT" not in _env(make_job("a"), Settings())  # huggingface_hub's default
    # No token file: HF_HOME (the user's to set) cannot make another file the Hub token.
    assert _env(make_job("a"), Settings())["HF_TOKEN_PATH"] == "/dev/null"


def test_the_default_hub_of_the_first_attempt_is_kept_by_later_ones() -> None:
    job = parse_job(make_job("a").obj())
    first = Settings(default_hub_endpoint="https://mirror.internal")
    used = settings_used(job, first)
    assert used.hub_endpoint == "https://mirror.internal"
    later = with_recorded(Settings(default_hub_endpoint="https://other.internal"), used)
    assert later.default_hub_endpoint == "https://mirror.internal"
    batch_job = build_children(job, attempt=0, settings=first).job
    read_back = settings_of(batch_job)
    assert read_back is not None and read_back.hub_endpoint == "https://mirror.internal"
    # A Hub the spec names is the job's, not the operator's default.
    own = parse_job(make_job("a").set("model.hubEndpoint", "https://hub.internal").obj())
    assert settings_used(own, first).hub_endpoint is None
    own_job = build_children(own, attempt=0, settings=first).job
    back = settings_of(own_job, "https://hub.internal")
    assert back is not None and back.hub_endpoint is None


def test_the_settings_come_from_flags_and_their_variables() -> None:
    env = {
        "FTO_ALLOWED_S3_ENDPOINTS": "http://minio.storage:9000, https://s3.internal",
        "FTO_ALLOWED_TRACKER_URLS": "https://mlflow.internal",
        "FTO_ALLOWED_HUB_ENDPOINTS": "https://hub.internal",
        "FTO_DEFAULT_HUB_ENDPOINT": "https://hub.internal",
        "FTO_FORBID_JOB_CODE": "true",
        "FTO_HTTPS_PROXY": "http://proxy:3128",
    }
    settings = parse_options([], env=env).settings
    assert settings.allowed_s3_endpoints == ("http://minio.storage:9000", "https://s3.internal")
    assert settings.allowed_tracker_urls == ("https://mlflow.internal",)
    assert settings.allowed_hub_endpoints == ("https://hub.internal",)
    assert settings.default_hub_endpoint == "https://hub.internal"
    assert settings.forbid_job_code is True
    assert settings.proxies == (("https", "http://proxy:3128"),)
    assert parse_options(["--no-forbid-job-code"], env=env).settings == Settings(
        **{**settings.__dict__, "forbid_job_code": False}
    )


def test_models_are_pushed_and_pulled_only_with_registries_images_may_come_from() -> None:
    """allowedRegistries governs every oci:// reference as it does the trainer image: the
    registry Secret goes there. An oci:// model is not a Hub id (no Hub list applies)."""
    settings = Settings(allowed_registries=("registry.internal/ml",),
                        default_image="registry.internal/ml/trainer:1")  # fmt: skip

    def job() -> JobBuilder:
        return (make_job("a").set("model.name", "oci://registry.internal/ml/base:v1")
                .set("output", MINIO | {"oci": {
                    "reference": "oci://registry.internal/ml/tuned:v1"}}))  # fmt: skip

    assert _refusal(job(), settings) is None
    for field, value, named in [
        ("output.oci", {"reference": "oci://registry.internal/ml-sandbox/tuned:v1"},
         "spec.output.oci.reference oci://registry.internal/ml-sandbox/tuned:v1"),
        ("model.name", "oci://attacker.example/ml/base:v1",
         "spec.model.name oci://attacker.example/ml/base:v1"),
    ]:  # fmt: skip
        refused = _refusal(job().set(field, value), settings)
        assert refused is not None and refused[0] == "ImageNotAllowed", (field, refused)
        assert named in refused[1], refused
    # No Hub: an oci:// model is no hub id, so a Hub allow-list without a default is not asked.
    assert _refusal(job(), Settings(allowed_hub_endpoints=("https://hub.internal",))) is None
    refused = _refusal(job().set("model.registry", {"credentialsSecretRef": {
        "name": "team-b-registry"}}), Settings(allowed_secret_names=("finetune-*",)))  # fmt: skip
    assert refused is not None and refused[0] == "SecretNotAllowed"
    assert "spec.model.registry.credentialsSecretRef (team-b-registry)" in refused[1]
