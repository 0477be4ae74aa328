"""build_children(): the objects one FineTuneJob attempt needs, read without a cluster."""

from __future__ import annotations

from dataclasses import replace
from typing import Any

import pytest
import yaml

from ftapi import contract, parse_job
from ftoperator.children import (
    KUEUE_QUEUE_LABEL,
    LABEL_ATTEMPT,
    LABEL_JOB,
    build_children,
    build_namespace_identity,
)
from ftoperator.config import Settings
from fttestkit.builders import make_job

SETTINGS = Settings(default_image="registry.example/trainer:1")
UID = "6f1c2a8e-0000-4000-8000-000000000001"


def _children(attempt: int = 0, **changes: Any) -> Any:
    job = make_job("llama").set("metadata.namespace", "team-a").set("metadata.uid", UID)
    for path, value in changes.items():
        job.set(path.replace("__", "."), value)
    return build_children(parse_job(job.obj()), attempt=attempt, settings=SETTINGS)


def _pod(children: Any) -> dict[str, Any]:
    return children.job["spec"]["template"]["spec"]


def _env(children: Any) -> dict[str, Any]:
    return {
        e["name"]: e.get("value", e.get("valueFrom"))
        for e in _pod(children)["containers"][0]["env"]
    }


def test_every_child_is_owned_labelled_and_namespaced() -> None:
    children = _children(resources__nodes=2)
    stages = [[o["kind"] for o in stage] for stage in children.stages()]
    # The RoleBinding only after its Role (the API server reads the Role to admit a binding
    # by an operator without `bind`), the Job last.
    assert stages == [["ConfigMap", "FineTuneJobProgress", "Service", "ServiceAccount", "Role"],
                      ["RoleBinding"], ["Job"]]  # fmt: skip
    assert children.config["immutable"] is True
    for obj in children.all():
        meta = obj["metadata"]
        assert meta["namespace"] == "team-a"
        assert meta["labels"][LABEL_JOB] == "llama"
        (owner,) = meta["ownerReferences"]
        assert (owner["uid"], owner["controller"], owner["kind"]) == (UID, True, "FineTuneJob")


@pytest.mark.parametrize(("nodes", "gpus", "nproc"), [(1, 1, 1), (2, 8, 8), (4, 0, 1)])
def test_indexed_job_runs_torchrun_across_the_nodes(nodes: int, gpus: int, nproc: int) -> None:
    children = _children(attempt=3, resources__nodes=nodes, resources__gpusPerNode=gpus)
    job = children.job
    assert job["metadata"]["name"] == "llama-3"
    assert job["metadata"]["labels"][LABEL_ATTEMPT] == "3"
    spec = job["spec"]
    assert (spec["completionMode"], spec["completions"], spec["parallelism"]) == (
        "Indexed", nodes, nodes,
    )  # fmt: skip
    assert spec["backoffLimit"] == 0
    pod = _pod(children)
    assert pod["restartPolicy"] == "Never"
    args = pod["containers"][0]["args"]
    if nodes > 1:  # the other pods find pod 0 through the headless Service
        assert pod["subdomain"] == children.service["metadata"]["name"] == "llama"
        master = "llama-3-0.llama"
    else:  # one pod: its agent rendezvouses with itself, no Service, no DNS
        assert "subdomain" not in pod and children.service is None
        master = "127.0.0.1"
    assert args == contract.torchrun_command(
        nnodes=nodes, nproc_per_node=nproc, node_rank="$(JOB_COMPLETION_INDEX)",
        master_addr=master,
    )  # fmt: skip
    limits = pod["containers"][0]["resources"]["limits"]
    assert limits.get("nvidia.com/gpu") == (str(gpus) if gpus else None)  # a quantity string


def test_resources_and_placement_come_from_the_spec() -> None:
    toleration = {"key": "nvidia.com/gpu", "operator": "Exists", "effect": "NoSchedule"}
    affinity = {"nodeAffinity": {"requiredDuringSchedulingIgnoredDuringExecution": {
        "nodeSelectorTerms": [{"matchExpressions": [
            {"key": "gpu", "operator": "In", "values": ["h100"]}]}]}}}  # fmt: skip
    children = _children(
        resources={
            "gpusPerNode": 4, "gpuResourceName": "amd.com/gpu", "cpu": "7500m",
            "memory": "64Gi", "sharedMemory": "8Gi",
            "nodeSelector": {"pool": "gpu"}, "tolerations": [toleration], "affinity": affinity,
            "priorityClassName": "training", "image": "my/trainer:2",
            "imagePullSecrets": ["regcred"], "labels": {"team": "a"},
        }
    )  # fmt: skip
    pod = _pod(children)
    container = pod["containers"][0]
    assert container["image"] == "my/trainer:2"
    assert container["resources"] == {
        "requests": {"amd.com/gpu": "4", "cpu": "7500m", "memory": "64Gi"},
        "limits": {"amd.com/gpu": "4", "memory": "64Gi"},
    }
    assert pod["nodeSelector"] == {"pool": "gpu"}
    # The user's toleration, then the GPU resource's own taint (always tolerated).
    assert pod["tolerations"] == [toleration, {**toleration, "key": "amd.com/gpu"}]
    assert pod["affinity"] == affinity
    assert pod["priorityClassName"] == "training"
    assert pod["imagePullSecrets"] == [{"name": "regcred"}]
    shm = next(v for v in pod["volumes"] if v["name"] == "dshm")
    assert shm["emptyDir"] == {"medium": "Memory", "sizeLimit": "8Gi"}
    assert children.job["spec"]["template"]["metadata"]["labels"]["team"] == "a"


def test_a_crash_leaves_its_log_tail_as_the_termination_message() -> None:
    container = _pod(_children())["containers"][0]
    assert container["terminationMessagePolicy"] == "FallbackToLogsOnError"


def test_default_image_and_a_locked_down_pod() -> None:
    pod = _pod(_children())
    container = pod["containers"][0]
    assert container["image"] == SETTINGS.default_image
    assert pod["securityContext"]["runAsNonRoot"] is True
    assert pod["securityContext"]["seccompProfile"] == {"type": "RuntimeDefault"}
    assert container["securityContext"] == {
        "allowPrivilegeEscalation": False, "readOnlyRootFilesystem": True,
        "capabilities": {"drop": ["ALL"]},
    }  # fmt: skip
    mounts = {m["mountPath"] for m in container["volumeMounts"]}
    assert {contract.WORKSPACE, "/dev/shm", contract.JOB_CONFIG_DIR} <= mounts


def test_credentials_are_secret_references_only() -> None:
    children = _children(
        model__hfTokenSecretRef={"name": "hf", "key": "token"},
        output={"uri": "s3://b/p", "s3": {"credentialsSecretRef": {"name": "s3-creds"}}},
        logging={"reportTo": ["mlflow"], "mlflow": {"trackingUri": "http://mlflow:5000",
                 "tokenSecretRef": {"name": "ml", "key": "t"}}},
        resources__env=[{"name": "NCCL_DEBUG", "value": "INFO"},
                        {"name": "WANDB_API_KEY", "secretKeyRef": {"name": "wb", "key": "k"}}],
    )  # fmt: skip
    env = _env(children)
    assert env["AWS_ACCESS_KEY_ID"] == {
        "secretKeyRef": {"name": "s3-creds", "key": "AWS_ACCESS_KEY_ID"}
    }
    assert env["AWS_SESSION_TOKEN"]["secretKeyRef"]["optional"] is True
    assert env["HF_TOKEN"] == {"secretKeyRef": {"name": "hf", "key": "token"}}
    assert env["MLFLOW_TRACKING_TOKEN"] == {"secretKeyRef": {"name": "ml", "key": "t"}}
    assert env["NCCL_DEBUG"] == "INFO"
    # core/v1 EnvVar: a Secret key sits under valueFrom (a top-level secretKeyRef is refused).
    assert env["WANDB_API_KEY"] == {"secretKeyRef": {"name": "wb", "key": "k"}}
    for variable in _pod(children)["containers"][0]["env"]:
        assert set(variable) <= {"name", "value", "valueFrom"}, variable
    assert env["FINETUNE_PROGRESS_NAME"] == "llama-progress"
    # The resolved config holds references, never values.
    config = yaml.safe_load(children.config["data"]["job.yaml"])
    assert config["spec"]["output"]["s3"]["credentialsSecretRef"] == {"name": "s3-creds"}
    assert config["metadata"]["uid"] == UID


def test_each_rank_knows_its_pod_and_node_and_gpu_pods_keep_an_nccl_flight_record() -> None:
    """Rank reports name the pod and node (stragglers, quiet ranks); on GPUs NCCL's flight
    recorder keeps the last collectives and dumps them into the writable workspace when
    one times out."""
    cpu = _env(_children(resources__gpusPerNode=0))
    assert cpu["FINETUNE_POD_NAME"] == {"fieldRef": {"fieldPath": "metadata.name"}}
    assert cpu["FINETUNE_NODE_NAME"] == {"fieldRef": {"fieldPath": "spec.nodeName"}}
    assert "TORCH_NCCL_TRACE_BUFFER_SIZE" not in cpu
    gpu = _env(_children(resources__gpusPerNode=2))
    assert int(gpu["TORCH_NCCL_TRACE_BUFFER_SIZE"]) > 0
    assert gpu["TORCH_NCCL_DUMP_ON_TIMEOUT"] == "1"
    assert gpu["TORCH_NCCL_DEBUG_INFO_TEMP_FILE"].startswith("/workspace/")


def test_resolved_config_is_the_spec_the_trainer_parses() -> None:
    children = _children(training__epochs=2)
    config = yaml.safe_load(children.config["data"]["job.yaml"])
    job = parse_job(config)
    assert job.spec.training.epochs == 2
    assert job.spec.output.save_steps == 500  # defaults filled in
    assert job.metadata.uid == UID


def test_trainer_may_only_update_its_own_progress() -> None:
    children = _children()
    (rule,) = children.role["rules"]
    assert rule == {
        "apiGroups": ["finetune.dev"],
        "resources": ["finetunejobprogresses"],
        "resourceNames": ["llama-progress"],
        "verbs": ["get", "patch", "update"],
    }
    assert children.role_binding["subjects"] == [
        {"kind": "ServiceAccount", "name": "llama-trainer", "namespace": "team-a"}
    ]
    assert _pod(children)["serviceAccountName"] == "llama-trainer"
    own = _children(resources__serviceAccountName="irsa-trainer")
    assert own.service_account is None
    assert _pod(own)["serviceAccountName"] == "irsa-trainer"
    assert own.role_binding["subjects"][0]["name"] == "irsa-trainer"


def test_under_the_trainer_policy_the_pods_run_as_the_namespaces_shared_identity() -> None:
    """Three creates fewer per job (docs/benchmarks.md, "Requests per job"); the shared
    Role's breadth is narrowed by the chart's policy (test_trainer_identity.py, integration)."""
    job = make_job("llama").set("metadata.namespace", "team-a").set("metadata.uid", UID)
    shared = replace(SETTINGS, trainer_policy="fto-trainer-progress")
    children = build_children(parse_job(job.obj()), attempt=1, settings=shared)
    assert children.shared_identity is True
    assert (children.service_account, children.role, children.role_binding) == (None,) * 3
    assert [[o["kind"] for o in stage] for stage in children.stages()] == [
        ["ConfigMap", "FineTuneJobProgress"], ["Job"]]  # fmt: skip
    assert _pod(children)["serviceAccountName"] == "finetune-trainer"
    # A job naming its own account keeps a per-job Role naming its own progress object.
    own = job.set("spec.resources.serviceAccountName", "irsa-trainer")
    named = build_children(parse_job(own.obj()), attempt=1, settings=shared)
    assert named.shared_identity is False and named.service_account is None
    assert named.role["rules"][0]["resourceNames"] == ["llama-progress"]
    assert named.role_binding["subjects"][0]["name"] == "irsa-trainer"
    assert _pod(named)["serviceAccountName"] == "irsa-trainer"


def test_the_shared_identity_may_only_patch_progress_objects_and_has_no_owner() -> None:
    account, role, binding = build_namespace_identity("team-a")
    assert [o["kind"] for o in (account, role, binding)] == [
        "ServiceAccount", "Role", "RoleBinding"]  # fmt: skip
    for obj in (account, role, binding):
        meta = obj["metadata"]
        assert (meta["name"], meta["namespace"]) == ("finetune-trainer", "team-a")
        assert meta["labels"]["app.kubernetes.io/managed-by"] == "finetune-operator"
        assert "ownerReferences" not in meta  # shared: no job's deletion takes it
    # No get: a pod cannot read the other jobs' progress; no update/create/delete either.
    rule = {"apiGroups": ["finetune.dev"], "resources": ["finetunejobprogresses"]}
    assert role["rules"] == [{**rule, "verbs": ["patch"]}]
    assert binding["roleRef"] == {"apiGroup": "rbac.authorization.k8s.io", "kind": "Role",
                                  "name": "finetune-trainer"}  # fmt: skip
    assert binding["subjects"] == [
        {"kind": "ServiceAccount", "name": "finetune-trainer", "namespace": "team-a"}
    ]


@pytest.mark.parametrize(
    ("scheduling", "suspended", "queue"),
    [({}, False, None), ({"suspend": True}, True, None), ({"queueName": "gpus"}, True, "gpus")],
)
def test_kueue_and_suspend_create_the_job_suspended(
    scheduling: dict[str, Any], suspended: bool, queue: str | None
) -> None:
    job = _children(scheduling=scheduling).job
    assert job["spec"]["suspend"] is suspended
    assert job["metadata"]["labels"].get(KUEUE_QUEUE_LABEL) == queue


def test_a_single_node_job_has_no_rendezvous_service() -> None:
    """One create fewer per job (docs/benchmarks.md, "Requests per job")."""
    kinds = [o["kind"] for o in _children().all()]
    assert "Service" not in kinds
    assert kinds == ["ConfigMap", "FineTuneJobProgress", "ServiceAccount", "Role",
                     "RoleBinding", "Job"]  # fmt: skip


def test_service_is_headless_and_resolves_unready_pods() -> None:
    service = _children(resources__nodes=2).service
    assert service["spec"]["clusterIP"] == "None"
    assert service["spec"]["publishNotReadyAddresses"] is True
    assert service["spec"]["selector"] == {LABEL_JOB: "llama"}


def test_gpu_pods_tolerate_the_gpu_taint_and_the_operators_pool_tolerations() -> None:
    spot = {"key": "cloud.google.com/gke-spot", "operator": "Equal", "value": "true",
            "effect": "NoSchedule"}  # fmt: skip
    settings = Settings(gpu_tolerations=(spot,))
    gpu = build_children(parse_job(make_job("g").set("resources.gpusPerNode", 8).obj()), attempt=0,
                  settings=settings)  # fmt: skip
    assert _pod(gpu)["tolerations"] == [
        {"key": "nvidia.com/gpu", "operator": "Exists", "effect": "NoSchedule"},
        spot,
    ]
    cpu = build_children(parse_job(make_job("c").set("resources.gpusPerNode", 0).obj()), attempt=0,
                  settings=settings)  # fmt: skip
    assert "tolerations" not in _pod(cpu)


def test_integer_quantities_are_rendered_as_strings() -> None:
    """The API's quantities are strings (the typed client refuses ints): cpu: 64 -> "64"."""
    pod = _pod(_children(resources={"gpusPerNode": 8, "cpu": 64, "memory": 4294967296,
                                    "sharedMemory": 2147483648}))  # fmt: skip
    resources = pod["containers"][0]["resources"]
    assert resources["requests"] == {"nvidia.com/gpu": "8", "cpu": "64", "memory": "4294967296"}
    shm = next(v for v in pod["volumes"] if v["name"] == "dshm")
    assert shm["emptyDir"]["sizeLimit"] == "2147483648"


@pytest.mark.parametrize(("grace", "torchrun_wait"), [(None, "115"), (600, "595"), (3, "1")])
def test_the_grace_period_gives_torchrun_time_to_let_the_trainer_save(
    grace: int | None, torchrun_wait: str
) -> None:
    changes = {} if grace is None else {"runPolicy__terminationGracePeriodSeconds": grace}
    children = _children(**changes)
    # The pod's grace period (default 120 s) and torchrun's wait for its workers after it
    # forwards SIGTERM (a little less, so torchrun ends before the kubelet kills it).
    assert _pod(children)["terminationGracePeriodSeconds"] == (grace or 120)
    assert _env(children)[contract.ENV_TORCHRUN_SHUTDOWN_TIMEOUT] == torchrun_wait


def test_registry_credentials_and_ca_reach_the_pod_as_references_per_direction() -> None:
    """output.oci pushes with its dockerconfigjson Secret, an oci:// model is pulled with
    model.registry's: each by reference, never a value, and nothing when unset."""
    children = _children(
        model__name="oci://registry.internal/base/llama:v1",
        model__registry={"credentialsSecretRef": {"name": "pull"}},
        output={"uri": "s3://b/p", "oci": {
            "reference": "oci://registry.internal/tuned/llama:v2",
            "credentialsSecretRef": {"name": "push"},
            "caConfigMapRef": {"name": "registry-ca", "key": "ca.crt"}}},
    )  # fmt: skip
    env = _env(children)
    assert env["FINETUNE_OCI_PUSH_SECRET"] == {
        "secretKeyRef": {"name": "push", "key": ".dockerconfigjson"}
    }
    assert env["FINETUNE_OCI_PUSH_CA"] == {
        "configMapKeyRef": {"name": "registry-ca", "key": "ca.crt"}
    }
    assert env["FINETUNE_OCI_PULL_SECRET"] == {
        "secretKeyRef": {"name": "pull", "key": ".dockerconfigjson"}
    }
    assert "FINETUNE_OCI_PULL_CA" not in env
    plain = _env(_children())
    assert not [name for name in plain if name.startswith("FINETUNE_OCI_")]
