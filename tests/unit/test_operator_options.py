"""The operator's settings: flags, their FTO_* environment twins (how the Helm chart sets
them), and the platform policies they switch on."""

from __future__ import annotations

import json
from datetime import UTC, datetime

import pytest

from ftapi import parse_job
from ftapi.v1alpha1 import FineTuneJobStatus
from ftoperator.desired import Settings, desired, policy_violation
from ftoperator.main import JsonFormatter, parse_options
from ftoperator.status import rejected
from tests.builders import make_job

SPOT = {"key": "cloud.google.com/gke-spot", "operator": "Equal", "value": "true",
        "effect": "NoSchedule"}  # fmt: skip


def test_defaults() -> None:
    options = parse_options([], env={})
    assert options.namespaces == ()  # every namespace
    assert options.settings == Settings()
    assert options.leader_election is True
    assert (options.metrics_port, options.workers, options.resync_seconds) == (8080, 64, 60.0)


def test_environment_sets_what_flags_set_and_flags_win() -> None:
    env = {
        "FTO_NAMESPACES": "team-a, team-b",
        "FTO_DEFAULT_IMAGE": "registry.internal/ml/trainer:1",
        "FTO_ALLOWED_REGISTRIES": "registry.internal/ml/,ghcr.io/acme/",
        "FTO_DEFAULT_S3_ENDPOINT": "http://minio.storage:9000",
        "FTO_GPU_TOLERATIONS": json.dumps([SPOT]),
        "FTO_GPU_RESOURCE_NAME": "amd.com/gpu",
        "FTO_LEADER_ELECTION": "false",
        "FTO_WORKERS": "4",
        "POD_NAMESPACE": "finetune-system",
        "POD_NAME": "finetune-operator-abc",
    }
    options = parse_options([], env=env)
    assert options.namespaces == ("team-a", "team-b")
    assert options.settings.default_image == "registry.internal/ml/trainer:1"
    assert options.settings.allowed_registries == ("registry.internal/ml/", "ghcr.io/acme/")
    assert options.settings.default_s3_endpoint == "http://minio.storage:9000"
    assert options.settings.gpu_tolerations == (SPOT,)
    assert options.settings.gpu_resource_name == "amd.com/gpu"
    assert options.leader_election is False and options.workers == 4
    assert options.lease_namespace == "finetune-system"
    assert options.identity.startswith("finetune-operator-abc_")
    flags = parse_options(["--namespace", "only", "--workers", "2", "--leader-election"], env=env)
    assert flags.namespaces == ("only",) and flags.workers == 2 and flags.leader_election


@pytest.mark.parametrize("value", ["{", '{"key": "x"}', "[1]"])
def test_bad_gpu_tolerations_stop_the_operator_with_a_message(
    value: str, capsys: pytest.CaptureFixture[str]
) -> None:
    with pytest.raises(SystemExit):
        parse_options(["--gpu-tolerations", value], env={})
    assert "--gpu-tolerations must be a JSON list" in capsys.readouterr().err


def test_allowed_registries_refuse_other_images() -> None:
    settings = Settings(default_image="registry.internal/ml/trainer:1",
                        allowed_registries=("registry.internal/ml/",))  # fmt: skip
    default = parse_job(make_job("a").obj())
    assert policy_violation(default, settings) is None
    own = parse_job(make_job("b").set("resources.image", "docker.io/someone/trainer:x").obj())
    message = policy_violation(own, settings)
    assert message is not None and "docker.io/someone/trainer:x" in message
    assert policy_violation(own, Settings()) is None  # no list: any image
    plan = rejected(FineTuneJobStatus(), message, 1, datetime.now(UTC), reason="ImageNotAllowed")
    assert plan.status.phase == "Failed" and plan.status.failure_reason == "ImageNotAllowed"
    assert not plan.actions


def test_default_s3_endpoint_reaches_pods_whose_spec_names_none() -> None:
    settings = Settings(default_s3_endpoint="http://minio.storage:9000")

    def endpoint(job: dict[str, object]) -> str | None:
        env = desired(parse_job(job), attempt=0, settings=settings).job["spec"]["template"][
            "spec"]["containers"][0]["env"]  # fmt: skip
        return next((e["value"] for e in env if e["name"] == "AWS_ENDPOINT_URL_S3"), None)

    assert endpoint(make_job("a").obj()) == "http://minio.storage:9000"
    own = make_job("b").set("output.s3", {"endpoint": "https://s3.eu-west-1.amazonaws.com"})
    assert endpoint(own.obj()) is None  # the spec's own endpoint is in its config


def test_json_logs_are_one_object_per_line() -> None:
    import logging

    record = logging.LogRecord("ftoperator", logging.INFO, __file__, 1, "job %s: %s",
                               ("a", "Running"), None)  # fmt: skip
    entry = json.loads(JsonFormatter().format(record))
    assert entry["message"] == "job a: Running" and entry["level"] == "INFO"


def test_the_operators_gpu_resource_applies_when_the_job_names_none() -> None:
    amd = Settings(gpu_resource_name="amd.com/gpu")

    def limits(job: dict[str, object]) -> dict[str, str]:
        children = desired(parse_job(job), attempt=0, settings=amd)
        container = children.job["spec"]["template"]["spec"]["containers"][0]
        return dict(container["resources"]["limits"])

    assert limits(make_job("a").set("resources.gpusPerNode", 2).obj()) == {"amd.com/gpu": "2"}
    mig = make_job("b").set("resources", {"gpusPerNode": 1,
                                          "gpuResourceName": "nvidia.com/mig-3g.40gb"})  # fmt: skip
    assert limits(mig.obj()) == {"nvidia.com/mig-3g.40gb": "1"}


@pytest.mark.parametrize(
    ("image", "prefix", "allowed"),
    [
        ("registry.internal/ml/trainer:1", "registry.internal/ml", True),
        ("registry.internal/ml/trainer:1", "registry.internal/ml/", True),
        ("registry.internal/ml:2", "registry.internal/ml", True),
        ("registry.internal/ml@sha256:abc", "registry.internal/ml", True),
        ("registry.internal/ml", "registry.internal/ml", True),
        ("registry.internal/ml-sandbox/trainer:1", "registry.internal/ml", False),
        ("registry.internal/mlx:1", "registry.internal/ml", False),
        ("registry.internal.evil.com/ml/trainer", "registry.internal", False),
        ("ghcr.io/acme/trainer:1", "ghcr.io/acme/trainer:", True),
        ("ghcr.io/acme/trainer:1", "", False),
    ],
    ids=["repository", "trailing slash", "tag", "digest", "exact", "sibling repository",
         "longer name", "longer host", "tag prefix", "empty prefix"],
)  # fmt: skip
def test_allowed_registries_match_at_a_path_boundary(
    image: str, prefix: str, allowed: bool
) -> None:
    from ftoperator.desired import image_allowed

    assert image_allowed(image, prefix) is allowed
