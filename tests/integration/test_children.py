"""The objects the operator creates for a FineTuneJob, under the chart's own rights (never as
admin): created in an order the API server admits, verified as the job's own and never
adopted, refused ones failing the job once with the server's words; and a progress report
counts only from the job's own progress object.
"""

from __future__ import annotations

import time
from collections.abc import Callable
from datetime import UTC, datetime
from typing import Any

import pytest
from kubernetes import client

from ftapi.constants import GROUP, PLURAL, PROGRESS_KIND, PROGRESS_PLURAL, VERSION
from ftapi.progress import REPORT_FIELD, ProgressReport
from ftoperator.children import LABEL_COMPONENT, LABEL_JOB
from fttestkit.builders import make_job
from fttestkit.cluster import Cluster, eventually, read_job
from fttestkit.finetunejobs import (
    LONG_RUN,
    create_ftj,
    find_ftj,
    job_events,
    long_running_job,
    report_progress,
    status_of,
    wait_events,
    wait_phase,
)
from fttestkit.operator import Operator

pytestmark = pytest.mark.integration


def _manifest(name: str, **changes: Any) -> dict[str, Any]:
    job = long_running_job(name)
    for path, value in changes.items():
        job.set(path.replace("__", "."), value)
    return job.obj()


def _custom(cluster: Cluster) -> client.CustomObjectsApi:
    return client.CustomObjectsApi(cluster.api)


_apply, _status = create_ftj, status_of


def _wait(
    cluster: Cluster, ns: str, name: str, operator: Operator, phase: str, timeout: float = 60
) -> dict[str, Any]:
    return wait_phase(cluster, ns, name, phase, operator, timeout)


def _new_log(operator: Operator, since: int) -> str:
    return operator.log_path.read_text(errors="replace")[since:]


def _log_size(operator: Operator) -> int:
    return len(operator.log_path.read_text(errors="replace"))


# --- the documented spec fields reach the cluster ---------------------------------------


def test_a_burst_of_jobs_with_secret_env_is_created_in_one_pass_each(
    cluster: Cluster, operator: Operator, ns: str
) -> None:
    """Under the chart's rights (no `bind`), the API server reads the Role to admit its
    RoleBinding: both at once made most first passes fail with a 404 and a traceback.
    And `resources.env[].secretKeyRef`, as documented, becomes a valid core/v1 EnvVar."""
    client.CoreV1Api(cluster.api).create_namespaced_secret(
        ns, {"metadata": {"name": "wandb"}, "stringData": {"api-key": "not-a-real-key"}}
    )
    env = [{"name": "WANDB_API_KEY", "secretKeyRef": {"name": "wandb", "key": "api-key"}},
           {"name": "NCCL_DEBUG", "value": "INFO"}]  # fmt: skip
    since = _log_size(operator)
    names = [f"burst-{i}" for i in range(12)]
    for name in names:
        _apply(cluster, ns, _manifest(name, resources__env=env))
    for name in names:
        _wait(cluster, ns, name, operator, "Running", timeout=90)
    log = _new_log(operator, since)
    assert "Traceback" not in log and "ERROR" not in log, log[-4000:]
    batch_job = read_job(cluster, ns, "burst-0-0")
    (container,) = batch_job.spec.template.spec.containers
    variables = {v.name: v for v in container.env}
    ref = variables["WANDB_API_KEY"].value_from.secret_key_ref
    assert (ref.name, ref.key) == ("wandb", "api-key")
    assert variables["NCCL_DEBUG"].value == "INFO"


# --- create-or-verify: nothing is adopted -----------------------------------------------


def _stranger_role(cluster: Cluster, ns: str, name: str) -> Callable[[], Any]:
    rbac = client.RbacAuthorizationV1Api(cluster.api)
    rules = [{"apiGroups": [""], "resources": ["secrets"], "verbs": ["get", "list"]}]
    rbac.create_namespaced_role(ns, {"metadata": {"name": f"{name}-trainer"}, "rules": rules})
    return lambda: rbac.read_namespaced_role(f"{name}-trainer", ns).rules[0].resources


def _stranger_config(cluster: Cluster, ns: str, name: str) -> Callable[[], Any]:
    core = client.CoreV1Api(cluster.api)
    core.create_namespaced_config_map(
        ns, {"metadata": {"name": f"{name}-config"}, "data": {"job.yaml": "kind: Evil"}}
    )
    return lambda: core.read_namespaced_config_map(f"{name}-config", ns).data


def _stranger_progress(cluster: Cluster, ns: str, name: str) -> Callable[[], Any]:
    body = {"apiVersion": f"{GROUP}/{VERSION}", "kind": PROGRESS_KIND,
            "metadata": {"name": f"{name}-progress"}, REPORT_FIELD: "{}"}  # fmt: skip
    _custom(cluster).create_namespaced_custom_object(GROUP, VERSION, ns, PROGRESS_PLURAL, body)
    return lambda: _custom(cluster).get_namespaced_custom_object(
        GROUP, VERSION, ns, PROGRESS_PLURAL, f"{name}-progress"
    )[REPORT_FIELD]


def _stranger_job(cluster: Cluster, ns: str, name: str) -> Callable[[], Any]:
    batch = client.BatchV1Api(cluster.api)
    pod = {"restartPolicy": "Never", "containers": [{"name": "c", "image": "busybox"}]}
    batch.create_namespaced_job(ns, {"metadata": {"name": f"{name}-0"}, "spec": {
        "suspend": True, "template": {"spec": pod}}})  # fmt: skip
    return lambda: batch.read_namespaced_job(f"{name}-0", ns).spec.template.spec.containers[0].image


STRANGERS = {
    "a Role under the trainer's name": (_stranger_role, "Role"),
    "a ConfigMap under the config's name": (_stranger_config, "ConfigMap"),
    "a progress object under the job's channel name": (_stranger_progress, PROGRESS_KIND),
    "a Job under the first attempt's name": (_stranger_job, "Job"),
}


@pytest.mark.parametrize("case", list(STRANGERS))
def test_a_child_name_held_by_a_stranger_fails_the_job_and_the_stranger_is_untouched(
    cluster: Cluster, operator: Operator, ns: str, case: str
) -> None:
    make_stranger, kind = STRANGERS[case]
    name = "claimed"
    read_stranger = make_stranger(cluster, ns, name)
    before = read_stranger()
    _apply(cluster, ns, _manifest(name))
    status = _wait(cluster, ns, name, operator, "Failed")
    assert status["failureReason"] == "ChildConflict"
    assert kind in status["message"] and "does not belong to this FineTuneJob" in status["message"]
    assert read_stranger() == before  # neither adopted nor changed
    if kind != "Job":
        assert read_job(cluster, ns, f"{name}-0") is None  # no pods run
    wait_events(cluster, ns, name, "ChildConflict")


def test_a_job_recreated_over_orphaned_children_does_not_take_them_over(
    cluster: Cluster, operator: Operator, ns: str
) -> None:
    name = "reborn"
    _apply(cluster, ns, _manifest(name))
    _wait(cluster, ns, name, operator, "Running")
    _custom(cluster).delete_namespaced_custom_object(
        GROUP, VERSION, ns, PLURAL, name, propagation_policy="Orphan"
    )
    # The garbage collector strips the ownerReferences of orphans: then they are strangers.
    eventually(
        lambda: not (job := read_job(cluster, ns, f"{name}-0")).metadata.owner_references and job,
        what="the orphaned Job without owner",
    )
    # The garbage collector orphans the children before it lets the old object go: wait
    # until it is gone, as a user's create would have to.
    eventually(lambda: find_ftj(cluster, ns, name) is None, what="the deleted FineTuneJob gone")
    _apply(cluster, ns, _manifest(name))
    status = _wait(cluster, ns, name, operator, "Failed")
    assert status["failureReason"] == "ChildConflict", status


# --- a child the API server refuses fails the job, once ---------------------------------

# What the CRD cannot see (its rule table covers the rest, map keys and values included):
# what passes through as is (an affinity), sizes of what the operator renders.
_BAD_TERM = {"matchExpressions": [{"key": "bad key!", "operator": "In", "values": ["x"]}]}
REFUSED = {
    "an affinity with an invalid label key": {"resources__affinity": {"nodeAffinity": {
        "requiredDuringSchedulingIgnoredDuringExecution": {"nodeSelectorTerms": [_BAD_TERM]}}}},
    "a resolved config over 1 MiB": {"evaluation__prompts": ["x" * 4096] * 256},
}  # fmt: skip


@pytest.mark.parametrize("case", list(REFUSED))
def test_a_child_the_api_server_refuses_fails_the_job_with_its_words(
    cluster: Cluster, operator: Operator, ns: str, case: str
) -> None:
    name = "refused"
    since = _log_size(operator)
    _apply(cluster, ns, _manifest(name, **REFUSED[case]))
    status = _wait(cluster, ns, name, operator, "Failed")
    assert status["failureReason"] == "ChildRejected", status
    assert "the API server refused the" in status["message"]
    # The Event is posted right after the status write: wait for it, not for luck.
    eventually(lambda: any(e.reason == "ChildRejected" for e in job_events(cluster, ns, name)),
               timeout=30, what="the ChildRejected Event")  # fmt: skip
    # Failed is final: no retry loop (the old behaviour: a pass every 5 s, forever).
    version = _custom(cluster).get_namespaced_custom_object(
        GROUP, VERSION, ns, PLURAL, name)["metadata"]["resourceVersion"]  # fmt: skip
    time.sleep(3)
    assert _custom(cluster).get_namespaced_custom_object(
        GROUP, VERSION, ns, PLURAL, name)["metadata"]["resourceVersion"] == version  # fmt: skip
    log = _new_log(operator, since)
    assert "Traceback" not in log, log[-4000:]


# --- progress comes from the job's own object only --------------------------------------


def test_forged_progress_changes_no_status(cluster: Cluster, operator: Operator, ns: str) -> None:
    name = "target"
    created = _apply(cluster, ns, _manifest(name))
    _wait(cluster, ns, name, operator, "Running")
    uid = created["metadata"]["uid"]
    forged = ProgressReport(
        attempt=0, stage="done", step=999, total_steps=1000, model_uri="s3://attacker/model",
        updated_at="2026-11-22T12:00:00Z",
    ).model_dump_json(exclude_none=True)  # fmt: skip
    owner = {"apiVersion": f"{GROUP}/{VERSION}", "kind": "FineTuneJob", "name": name,
             "uid": uid, "controller": True}  # fmt: skip
    labels = {LABEL_JOB: name, LABEL_COMPONENT: "progress"}
    # A look-alike: labelled and owned like the real one, under another name.
    _custom(cluster).create_namespaced_custom_object(
        GROUP,
        VERSION,
        ns,
        PROGRESS_PLURAL,
        {
            "apiVersion": f"{GROUP}/{VERSION}",
            "kind": PROGRESS_KIND,
            REPORT_FIELD: forged,
            "metadata": {"name": "look-alike", "labels": labels, "ownerReferences": [owner]},
        },
    )
    # The old channel: a labelled ConfigMap (the operator no longer reads ConfigMaps).
    client.CoreV1Api(cluster.api).create_namespaced_config_map(ns, {
        "metadata": {"name": "forged-progress", "labels": labels},
        "data": {"progress.json": forged}})  # fmt: skip
    # Then the real trainer's report: once it shows, every earlier event was processed.
    real = ProgressReport(attempt=0, stage="training", step=7, total_steps=1000,
                          updated_at=datetime.now(UTC))  # fmt: skip
    report_progress(cluster, ns, name, real)
    status = eventually(
        lambda: (s := _status(cluster, ns, name)).get("progress", {}).get("step") == 7 and s,
        what="the real report in status",
    )
    assert status["phase"] == "Running"
    assert "attacker" not in str(status)


# --- the platform team's settings, on the cluster --------------------------------------


def test_policy_settings_on_a_quota_enforcing_namespace(
    cluster: Cluster, crd: Any, namespace: str, tmp_path: Any
) -> None:
    """A namespace whose ResourceQuota counts CPU and memory admits only pods that state
    them: the operator's defaults make the trainer pods admissible. With the network policy
    and the ServiceAccount ban on, jobs get their NetworkPolicy and a job naming its own
    ServiceAccount is refused."""
    core = client.CoreV1Api(cluster.api)
    core.create_namespaced_resource_quota(namespace, {
        "metadata": {"name": "team-quota"},
        "spec": {"hard": {"requests.cpu": "64", "requests.memory": "256Gi",
                          "limits.memory": "256Gi"}},
    })  # fmt: skip
    operator = Operator(
        cluster, tmp_path / "policy.log", "--default-cpu", "2", "--default-memory", "4Gi",
        "--network-policy", "--forbid-service-account-name", namespaces=(namespace,),
    )  # fmt: skip
    try:
        _apply(cluster, namespace, _manifest("quota-ok"))
        _wait(cluster, namespace, "quota-ok", operator, "Running", timeout=90)
        (pod,) = (
            client.CoreV1Api(cluster.api)
            .list_namespaced_pod(namespace, label_selector=f"{LABEL_JOB}=quota-ok")
            .items
        )
        limits = pod.spec.containers[0].resources.limits
        assert limits["memory"] == "4Gi"
        policy = client.NetworkingV1Api(cluster.api).read_namespaced_network_policy(
            "quota-ok-trainer", namespace
        )
        assert policy.spec.pod_selector.match_labels == {LABEL_JOB: "quota-ok"}
        assert policy.metadata.owner_references[0].name == "quota-ok"

        _apply(
            cluster, namespace, _manifest("own-account", resources__serviceAccountName="default")
        )
        status = _wait(cluster, namespace, "own-account", operator, "Failed")
        assert status["failureReason"] == "ServiceAccountNotAllowed"
        assert read_job(cluster, namespace, "own-account-0") is None
    finally:
        operator.stop()
    assert "Traceback" not in operator.log_path.read_text(), operator.log()


def test_pods_the_job_controller_cannot_create_are_explained(
    cluster: Cluster, operator: Operator, ns: str
) -> None:
    client.CoreV1Api(cluster.api).create_namespaced_resource_quota(
        ns, {"metadata": {"name": "no-gpus"}, "spec": {"hard": {"requests.nvidia.com/gpu": "0"}}}
    )
    name = "over-quota"
    _apply(cluster, ns, _manifest(name))

    def blocked() -> dict[str, Any] | None:
        status = _status(cluster, ns, name)
        running = [c for c in status.get("conditions", []) if c["type"] == "Running"]
        return status if running and running[0]["reason"] == "FailedCreate" else None

    status = eventually(blocked, timeout=60, what="the FailedCreate blocker")
    assert status["phase"] == "Pending"
    assert "exceeded quota: no-gpus" in status["message"], status
    # The Events follow the status write (status first, then actions, then Events).
    eventually(lambda: any(e.reason == "FailedCreate" for e in job_events(cluster, ns, name)),
               timeout=30, what="the FailedCreate Event")  # fmt: skip


def test_pods_the_api_server_refuses_fail_the_job_within_seconds(
    cluster: Cluster, operator: Operator, ns: str
) -> None:
    """A case the CRD cannot see, on purpose: the namespace's LimitRange gives each container
    a CPU limit of 1 (pods only, not a Job's template), below the job's request of 2. The
    Job is accepted; every pod is refused as invalid, forever: the job fails with the API
    server's words, an Event, and its Job suspended, instead of waiting in Pending."""
    client.CoreV1Api(cluster.api).create_namespaced_limit_range(ns, {
        "metadata": {"name": "small-containers"},
        "spec": {"limits": [{"type": "Container", "max": {"cpu": "1"}}]}})  # fmt: skip
    name = "over-limit"
    since = _log_size(operator)
    started = time.monotonic()
    _apply(cluster, ns, _manifest(name, resources__cpu="2"))
    status = _wait(cluster, ns, name, operator, "Failed", timeout=60)
    assert time.monotonic() - started < 30, "PodRejected is read from the first FailedCreate"
    assert status["failureReason"] == "PodRejected", status
    assert "must be less than or equal to cpu limit of 1" in status["message"], status
    eventually(lambda: any(e.reason == "PodRejected" for e in job_events(cluster, ns, name)),
               timeout=10, what="the PodRejected Event")  # fmt: skip
    batch_job = read_job(cluster, ns, f"{name}-0")
    assert batch_job is not None and batch_job.spec.suspend, "the Job controller stops trying"
    assert "Traceback" not in _new_log(operator, since)


# serial: its priority class (value 1000) lets the scheduler preempt other tests' pods.
@pytest.mark.serial
def test_every_documented_pod_field_reaches_a_running_pod(
    cluster: Cluster, operator: Operator, ns: str
) -> None:
    """Each field of spec.resources, scheduling, runPolicy and the credential references,
    all set at once: the API server admits every object the operator renders from them
    (the typed client and the server refused some of them once: env secretKeyRef)."""
    core = client.CoreV1Api(cluster.api)
    for secret, keys in {
        "hf": ["token"],
        "s3-creds": ["AWS_ACCESS_KEY_ID", "AWS_SECRET_ACCESS_KEY"],
        "pull": [],
        "wb": ["key"],
        "ml": ["t"],
    }.items():
        body: dict[str, Any] = {"metadata": {"name": secret},
                                "stringData": {k: "not-a-secret" for k in keys}}  # fmt: skip
        if secret == "pull":
            body["type"] = "kubernetes.io/dockerconfigjson"
            body["stringData"] = {".dockerconfigjson": '{"auths": {}}'}
        core.create_namespaced_secret(ns, body)
    core.create_namespaced_service_account(ns, {"metadata": {"name": "irsa-trainer"}})
    scheduling = client.SchedulingV1Api(cluster.api)
    priority = f"training-{ns}"[:63]
    scheduling.create_priority_class({"metadata": {"name": priority}, "value": 1000})
    zone = {"nodeAffinity": {"preferredDuringSchedulingIgnoredDuringExecution": [{
        "weight": 1, "preference": {"matchExpressions": [
            {"key": "topology.kubernetes.io/region", "operator": "In",
             "values": ["us-central1"]}]}}]}}  # fmt: skip
    resources = {
        "nodes": 2, "gpusPerNode": 1, "gpuResourceName": "nvidia.com/gpu", "cpu": "2",
        "memory": "8Gi", "sharedMemory": "2Gi", "nodeSelector": {"type": "kwok"},
        "tolerations": [{"key": "spot", "operator": "Exists", "effect": "NoExecute",
                         "tolerationSeconds": 60}],
        "affinity": zone, "priorityClassName": priority,
        "image": "registry.example/ml/trainer:1", "imagePullPolicy": "IfNotPresent",
        "imagePullSecrets": ["pull"], "serviceAccountName": "irsa-trainer",
        "env": [{"name": "NCCL_DEBUG", "value": "INFO"},
                {"name": "WANDB_API_KEY", "secretKeyRef": {"name": "wb", "key": "key"}}],
        "labels": {"team": "nlp"}, "annotations": LONG_RUN,
    }  # fmt: skip
    job = make_job("everything").set("resources", resources)
    job.set("model.hfTokenSecretRef", {"name": "hf", "key": "token"})
    job.set("output.s3", {"credentialsSecretRef": {"name": "s3-creds"},
                          "endpoint": "http://minio.storage:9000"})  # fmt: skip
    job.set(
        "logging",
        {
            "reportTo": ["mlflow"],
            "mlflow": {
                "trackingUri": "http://mlflow:5000",
                "tokenSecretRef": {"name": "ml", "key": "t"},
            },
        },
    )
    job.set("runPolicy", {"maxRestarts": 1, "activeDeadlineSeconds": 3600,
                          "ttlSecondsAfterFinished": 3600})  # fmt: skip
    _apply(cluster, ns, job.obj())
    try:
        _wait(cluster, ns, "everything", operator, "Running", timeout=90)
        pods = core.list_namespaced_pod(ns, label_selector=f"{LABEL_JOB}=everything").items
        assert len(pods) == 2
        spec = pods[0].spec
        assert spec.service_account_name == "irsa-trainer"
        assert spec.priority_class_name == priority
        assert spec.image_pull_secrets[0].name == "pull"
        assert pods[0].metadata.labels["team"] == "nlp"
    finally:
        scheduling.delete_priority_class(priority)


def _absent(read: Callable[[], Any]) -> bool:
    try:
        read()
    except client.exceptions.ApiException as error:
        if error.status == 404:
            return True
        raise
    return False


def test_children_deleted_or_edited_mid_attempt_are_restored_without_a_restart(
    cluster: Cluster, crd: Any, namespace: str, tmp_path: Any
) -> None:
    """While an attempt runs, its children are verified when their watch shows one edited or
    deleted (no periodic check: --child-check-seconds is 0, the resync 60 s): deleted ones
    come back, an edited Role/RoleBinding/NetworkPolicy is put back, all without a new
    attempt; a stranger's object under a child's name then fails the job (never adopted)."""
    operator = Operator(
        cluster, tmp_path / "checks.log", "--network-policy", namespaces=(namespace,)
    )
    core, rbac = client.CoreV1Api(cluster.api), client.RbacAuthorizationV1Api(cluster.api)
    networking = client.NetworkingV1Api(cluster.api)
    name, trainer = "watched", "watched-trainer"
    try:
        _apply(cluster, namespace, _manifest(name))
        _wait(cluster, namespace, name, operator, "Running", timeout=90)
        role_rules = rbac.read_namespaced_role(trainer, namespace).rules
        policy_spec = networking.read_namespaced_network_policy(trainer, namespace).spec

        rbac.delete_namespaced_role(trainer, namespace)
        core.delete_namespaced_service_account(trainer, namespace)
        _custom(cluster).delete_namespaced_custom_object(
            GROUP, VERSION, namespace, PROGRESS_PLURAL, f"{name}-progress")  # fmt: skip
        mallory = {"kind": "User", "name": "mallory", "apiGroup": "rbac.authorization.k8s.io"}
        rbac.patch_namespaced_role_binding(trainer, namespace, {"subjects": [mallory]})
        anywhere = {"spec": {"ingress": [{}]}}
        networking.patch_namespaced_network_policy(trainer, namespace, anywhere)

        def restored() -> bool:
            binding = rbac.read_namespaced_role_binding(trainer, namespace)
            policy = networking.read_namespaced_network_policy(trainer, namespace)
            return (
                not _absent(lambda: rbac.read_namespaced_role(trainer, namespace))
                and not _absent(lambda: core.read_namespaced_service_account(trainer, namespace))
                and not _absent(lambda: _custom(cluster).get_namespaced_custom_object(
                    GROUP, VERSION, namespace, PROGRESS_PLURAL, f"{name}-progress"))
                and [s.name for s in binding.subjects] == [trainer]
                and policy.spec == policy_spec
            )  # fmt: skip

        eventually(restored, timeout=30, what="every child restored")
        assert rbac.read_namespaced_role(trainer, namespace).rules == role_rules
        status = _status(cluster, namespace, name)
        assert (status["phase"], status.get("attempt", 0), status.get("restarts", 0)) == (
            "Running", 0, 0)  # fmt: skip
        assert read_job(cluster, namespace, f"{name}-1") is None

        # The ServiceAccount taken from the job (no owner: a stranger's, as if deleted and
        # created again by someone else, without the race of a delete the check could answer
        # first).
        unowned = {"metadata": {"ownerReferences": None}}
        core.patch_namespaced_service_account(trainer, namespace, unowned)
        status = _wait(cluster, namespace, name, operator, "Failed", timeout=30)
        assert status["failureReason"] == "ChildConflict", status
        assert f"a ServiceAccount named {trainer} already exists" in status["message"]
    finally:
        operator.stop()
    log = operator.log_path.read_text()
    assert "Traceback" not in log, operator.log()
    assert "was deleted: created it again" in log and "was edited: putting back" in log


def test_an_edited_role_and_binding_are_put_back_at_the_next_attempt(
    cluster: Cluster, operator: Operator, ns: str
) -> None:
    name = "guarded"
    _apply(cluster, ns, _manifest(name, runPolicy={"maxRestarts": 1}))
    _wait(cluster, ns, name, operator, "Running")
    rbac = client.RbacAuthorizationV1Api(cluster.api)
    role_before = rbac.read_namespaced_role(f"{name}-trainer", ns).rules
    wider = [{"apiGroups": [""], "resources": ["secrets"], "verbs": ["get", "list"]}]
    rbac.patch_namespaced_role(f"{name}-trainer", ns, {"rules": wider})
    binding = rbac.read_namespaced_role_binding(f"{name}-trainer", ns)
    subjects = [client.ApiClient().sanitize_for_serialization(s) for s in binding.subjects]
    rbac.patch_namespaced_role_binding(f"{name}-trainer", ns, {
        "subjects": [*subjects, {"kind": "User", "name": "mallory",
                                 "apiGroup": "rbac.authorization.k8s.io"}]})  # fmt: skip
    # The pod is preempted: the restart creates attempt 1 and checks every child on the way.
    (pod,) = client.CoreV1Api(cluster.api).list_namespaced_pod(
        ns, label_selector=f"{LABEL_JOB}={name}").items  # fmt: skip
    client.CoreV1Api(cluster.api).patch_namespaced_pod(
        pod.metadata.name,
        ns,
        {"metadata": {"annotations": {"finetune.dev/kwok-disrupt": "preempt"}}},
    )
    eventually(lambda: read_job(cluster, ns, f"{name}-1"), timeout=90, what="attempt 1")
    assert rbac.read_namespaced_role(f"{name}-trainer", ns).rules == role_before
    names = [s.name for s in rbac.read_namespaced_role_binding(f"{name}-trainer", ns).subjects]
    assert "mallory" not in names
    assert "was edited: putting back" in operator.log_path.read_text()
