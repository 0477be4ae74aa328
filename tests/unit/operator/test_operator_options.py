"""The operator's settings: flags, their FTO_* environment twins (how the Helm chart sets
them), and the platform policies they switch on."""

from __future__ import annotations

import json
import re
from datetime import UTC, datetime

import pytest

from ftapi import parse_job
from ftapi.v1alpha1 import FineTuneJobStatus
from ftoperator.allowed_env import DEFAULT_ALLOWED_ENV
from ftoperator.children import build_children
from ftoperator.config import FLAGS, Flag, Settings, parse_options
from ftoperator.main import JsonFormatter
from ftoperator.planner import rejected
from ftoperator.policy import policy_violation
from fttestkit.builders import make_job
from fttestkit.paths import REPO

SPOT = {"key": "cloud.google.com/gke-spot", "operator": "Equal", "value": "true",
        "effect": "NoSchedule"}  # fmt: skip


def test_defaults() -> None:
    options = parse_options([], env={})
    assert options.namespaces == ()  # every namespace
    assert options.settings == Settings()
    assert options.leader_election is True
    assert (options.metrics_port, options.workers, options.resync_seconds) == (8080, 64, 60.0)
    assert options.child_check_seconds == 0.0  # the watches of the children only
    assert parse_options([], env={"FTO_CHILD_CHECK_SECONDS": "30"}).child_check_seconds == 30.0


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


@pytest.mark.parametrize(
    ("flags", "message"),
    [
        (["--default-cpu", "-4"], "--default-cpu: must be more than 0 (got '-4')"),
        (["--default-memory", "0"], "--default-memory: must be more than 0"),
        (["--scratch-size", "lots"], "--scratch-size: 'lots' is not a Kubernetes quantity"),
        (["--gpu-resource-name", "memory"], "--gpu-resource-name: 'memory' is not an extended"),
        (["--gpu-resource-name", "kubernetes.io/gpu"], "is not an extended resource name"),
        (["--default-image", "registry.example/trainer:1 "], "--default-image: 'registry"),
        # The servers: plain URLs, or the allow-lists could not match them.
        (["--default-hub-endpoint", "hub.internal"], "--default-hub-endpoint"),
        (["--default-hub-endpoint", "https://u:p@hub.internal"], "--default-hub-endpoint"),
        (["--default-s3-endpoint", "http://minio:9000?x"], "--default-s3-endpoint"),
        (["--default-hub-endpoint", "https://hub.internal\n"], "--default-hub-endpoint"),
        (["--allowed-s3-endpoints", "minio:9000"], "--allowed-s3-endpoints"),
        (["--allowed-tracker-urls", "https://ok,mlflow.internal"], "--allowed-tracker-urls"),
    ],
)
def test_settings_every_pod_would_carry_are_checked_at_start(
    flags: list[str], message: str, capsys: pytest.CaptureFixture[str]
) -> None:
    """The API server would refuse each in every job's pods: the operator refuses to start."""
    with pytest.raises(SystemExit):
        parse_options(flags, env={})
    assert message in capsys.readouterr().err


def test_allowed_registries_refuse_other_images() -> None:
    settings = Settings(default_image="registry.internal/ml/trainer:1",
                        allowed_registries=("registry.internal/ml/",))  # fmt: skip
    default = parse_job(make_job("a").obj())
    assert policy_violation(default, settings) is None
    own = parse_job(make_job("b").set("resources.image", "docker.io/someone/trainer:x").obj())
    refused = policy_violation(own, settings)
    assert refused is not None and refused[0] == "ImageNotAllowed"
    message = refused[1]
    assert "docker.io/someone/trainer:x" in message
    assert policy_violation(own, Settings()) is None  # no list: any image
    plan = rejected(FineTuneJobStatus(), message, 1, datetime.now(UTC), reason="ImageNotAllowed")
    assert plan.status.phase == "Failed" and plan.status.failure_reason == "ImageNotAllowed"
    assert not plan.actions


def test_default_s3_endpoint_reaches_pods_whose_spec_names_none() -> None:
    settings = Settings(default_s3_endpoint="http://minio.storage:9000")

    def endpoint(job: dict[str, object]) -> str | None:
        env = build_children(parse_job(job), attempt=0, settings=settings).job["spec"]["template"][
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
        children = build_children(parse_job(job), attempt=0, settings=amd)
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
    from ftoperator.policy import image_allowed

    assert image_allowed(image, prefix) is allowed


def test_platform_policy_settings_from_the_environment() -> None:
    env = {
        "FTO_DEFAULT_CPU": "8", "FTO_DEFAULT_MEMORY": "64Gi", "FTO_CPU_LIMITS": "true",
        "FTO_FORBID_SERVICE_ACCOUNT_NAME": "true", "FTO_NETWORK_POLICY": "true",
        "FTO_ALLOWED_PRIORITY_CLASSES": "training, batch-low",
        "FTO_ALLOWED_NODE_SELECTOR_KEYS": "node.kubernetes.io/instance-type",
    }  # fmt: skip
    settings = parse_options([], env=env).settings
    assert settings == Settings(
        default_cpu="8", default_memory="64Gi", cpu_limits=True,
        forbid_service_account_name=True, network_policy=True,
        allowed_priority_classes=("training", "batch-low"),
        allowed_node_selector_keys=("node.kubernetes.io/instance-type",),
    )  # fmt: skip
    assert parse_options(["--no-network-policy"], env=env).settings.network_policy is False


POLICY = Settings(
    forbid_service_account_name=True, allowed_priority_classes=("training",),
    allowed_node_selector_keys=("node.kubernetes.io/instance-type",),
)  # fmt: skip
ZONE_AFFINITY = {"nodeAffinity": {"requiredDuringSchedulingIgnoredDuringExecution": {
    "nodeSelectorTerms": [{"matchExpressions": [
        {"key": "kubernetes.io/hostname", "operator": "In", "values": ["gpu-7"]}]}]}}}  # fmt: skip
REFUSALS = {
    "a ServiceAccount of the user's choosing": (
        {"resources.serviceAccountName": "ci-deployer"}, "ServiceAccountNotAllowed"),
    "a priority class not on the list": (
        {"resources.priorityClassName": "system-cluster-critical"}, "PriorityClassNotAllowed"),
    "a node selector key not on the list": (
        {"resources.nodeSelector": {"kubernetes.io/hostname": "gpu-7"}}, "NodeSelectorNotAllowed"),
    "the same key through node affinity": (
        {"resources.affinity": ZONE_AFFINITY}, "NodeSelectorNotAllowed"),
}  # fmt: skip


@pytest.mark.parametrize("case", list(REFUSALS))
def test_platform_policies_refuse_what_they_forbid(case: str) -> None:
    changes, reason = REFUSALS[case]
    job = make_job("j")
    for path, value in changes.items():
        job.set(path, value)
    refused = policy_violation(parse_job(job.obj()), POLICY)
    assert refused is not None and refused[0] == reason, refused
    assert policy_violation(parse_job(job.obj()), Settings()) is None  # no policy: allowed


def test_platform_policies_admit_what_they_allow() -> None:
    job = make_job("j").set("resources.priorityClassName", "training")
    job.set("resources.nodeSelector", {"node.kubernetes.io/instance-type": "p5.48xlarge"})
    assert policy_violation(parse_job(job.obj()), POLICY) is None


def test_default_resources_limits_shm_cap_and_network_policy() -> None:
    settings = Settings(default_cpu="8", default_memory="32Gi", network_policy=True)
    children = build_children(parse_job(make_job("j").obj()), attempt=0, settings=settings)
    pod = children.job["spec"]["template"]["spec"]
    (container,) = pod["containers"]
    assert container["resources"]["requests"]["cpu"] == "8"
    assert "cpu" not in container["resources"]["limits"]  # no throttling unless asked
    assert container["resources"]["limits"]["memory"] == "32Gi"
    limited = build_children(parse_job(make_job("j").obj()), attempt=0,
                      settings=Settings(default_cpu="8", cpu_limits=True))  # fmt: skip
    assert limited.job["spec"]["template"]["spec"]["containers"][0]["resources"]["limits"][
        "cpu"] == "8"  # fmt: skip
    # /dev/shm (16Gi by default) is capped at the memory limit: its pages count against it.
    small = parse_job(make_job("j").set("resources.memory", "8Gi").obj())
    shm = next(v for v in build_children(small, attempt=0, settings=Settings()).job["spec"][
        "template"]["spec"]["volumes"] if v["name"] == "dshm")  # fmt: skip
    assert shm["emptyDir"]["sizeLimit"] == "8Gi"
    (policy,) = children.extra
    assert policy["kind"] == "NetworkPolicy"
    own = {"matchLabels": {"finetune.dev/job-name": "j"}}
    assert policy["spec"]["podSelector"] == own
    assert policy["spec"]["ingress"] == [{"from": [{"podSelector": own}]}]
    assert [o["kind"] for o in children.stages()[1]] == ["RoleBinding", "NetworkPolicy"]


LOCAL = {
    "a local output directory": ({"output": {"uri": "results/x"}}, "spec.output.uri"),
    "an absolute local output": ({"output": {"uri": "/workspace/out"}}, "spec.output.uri"),
    "relative training data": ({"dataset": {"train": {"uri": "data/train.jsonl"}}},
                               "spec.dataset.train.uri"),
    "relative prompts": ({"evaluation": {"promptsUri": "prompts.txt"}},
                         "spec.evaluation.promptsUri"),
    "a model in the current folder": ({"model": {"name": "./my-model"}}, "spec.model.name"),
    # No hub id starts with a dot: the quick start's manifest applied as it is.
    "a model in a dot folder": ({"model": {"name": ".quickstart/tiny-llama"}}, "spec.model.name"),
}  # fmt: skip


@pytest.mark.parametrize("case", list(LOCAL))
def test_local_paths_are_refused_in_a_cluster(case: str) -> None:
    change, field = LOCAL[case]
    manifest = make_job("j").obj()
    for key, value in change.items():
        manifest["spec"][key] = {**manifest["spec"].get(key, {}), **value}
    refused = policy_violation(parse_job(manifest), Settings())
    assert refused is not None and refused[0] == "LocalPath" and field in refused[1], refused


def test_hub_ids_s3_and_paths_in_the_image_are_not_local() -> None:
    manifest = make_job("j").obj()  # model org/base-model, s3:// data and output
    manifest["spec"]["dataset"]["validation"] = {"uri": "hf://org/data"}
    manifest["spec"]["evaluation"] = {"promptsUri": "/opt/prompts.txt"}  # baked into the image
    assert policy_violation(parse_job(manifest), Settings()) is None


@pytest.mark.parametrize(
    ("device", "gpus", "refused"),
    [
        ("auto", 0, False), ("auto", 8, False), ("cuda", 8, False), ("cpu", 0, False),
        ("cpu", 1, True),  # the requested GPU would sit idle
        ("cuda", 0, True),  # no GPU in the pod
        ("mps", 0, True), ("mps", 1, True),  # pods run on Linux
    ],
)  # fmt: skip
def test_a_training_device_the_pods_do_not_match_is_refused(
    device: str, gpus: int, refused: bool
) -> None:
    job = make_job("j").set("training.device", device).set("resources.gpusPerNode", gpus)
    verdict = policy_violation(parse_job(job.obj()), Settings())
    if not refused:
        assert verdict is None
        return
    assert verdict is not None and verdict[0] == "DeviceMismatch", verdict
    assert f"spec.training.device {device}" in verdict[1]


# docs/operator.md's "Running it" table, read back: every flag of config.FLAGS is there with
# its variable and the same default (the table's words: on/off for switches, any/none for
# empty lists and values).
_WORDS = {"on": "true", "off": "false", "any": "", "none": "",
          "the allowed_env.py list": ",".join(DEFAULT_ALLOWED_ENV)}  # fmt: skip


def _documented_flags() -> dict[str, tuple[str, str]]:
    """flag name -> (its table row's Environment cell, its default in the table)."""
    text = (REPO / "docs" / "operator.md").read_text()
    table = text[text.index("| Flag | Environment | Default |") :].split("\n\n", 1)[0]
    found = {}
    for row in table.splitlines()[2:]:
        flags_cell, env_cell, default_cell = (c.strip() for c in row.strip("|").split("|")[:3])
        names = re.findall(r"`--(?:\[no-\])?([a-z0-9-]+)`", flags_cell)
        defaults = [d.strip().strip("`") for d in default_cell.split(",")]
        for index, name in enumerate(names):
            default = defaults[index] if len(defaults) == len(names) else defaults[0]
            found[name] = (env_cell, _WORDS.get(default, default))
    return found


@pytest.mark.parametrize("flag", FLAGS, ids=lambda flag: flag.name)
def test_every_flag_is_documented_with_its_variable_and_default(flag: Flag) -> None:
    documented = _documented_flags()
    assert flag.name in documented, f"--{flag.name} is not in docs/operator.md's table"
    env_cell, default = documented[flag.name]
    assert flag.env in env_cell, (flag.env, env_cell)
    assert default == flag.default, (flag.name, default, flag.default)
