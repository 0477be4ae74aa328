"""What a real kubelet does to a broken job, and what the FineTuneJob then says: a clear
reason in status and an Event, and no retry loop.

- a memory limit far too small: the kernel's OOM killer, seen as OOMKilled;
- an image that does not exist: ErrImagePull/ImagePullBackOff, the job waiting with that
  reason (a registry on 127.0.0.1:1 refuses at once: nothing leaves the machine);
- a bad data row: the trainer's own message, from the container's termination log;
- a Hub that refuses the push (a stand-in Hub in a pod answering 403): PublishFailed, no
  restart, the model kept in S3 and named in status.modelUri."""

from __future__ import annotations

import json
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from kubernetes import client

from fttestkit.cluster import eventually
from fttestkit.finetunejobs import create_ftj, phase_is, read_ftj
from fttestkit.release import Release
from tests.e2e.realnode import (
    LOCAL_NODE,
    Bucket,
    FinetuneCli,
    job_pods,
    pod_logs,
    qa_rows,
    tiny_cpu_job,
)


def _job(release: Release, bucket: Bucket, tmp_path: Path, name: str, data: str) -> dict[str, Any]:
    job = tiny_cpu_job(release, bucket, tmp_path, name, data=data, steps=20, save_steps=10,
                       log_every=10)  # fmt: skip
    job["spec"]["runPolicy"] = {"maxRestarts": 0}
    return job


@pytest.fixture
def cleanup(operator_release: Release) -> Iterator[list[str]]:
    """FineTuneJobs to delete after the test: a pod waiting on its image holds its CPU."""
    names: list[str] = []
    yield names
    for name in names:
        operator_release.cluster.kubectl(
            "delete", "finetunejob", "-n", operator_release.watched, name, "--wait=false",
            check=False,
        )  # fmt: skip


def _events(release: Release, name: str) -> list[str]:
    events = (
        client.CoreV1Api(release.cluster.api)
        .list_namespaced_event(
            release.watched,
            field_selector=f"involvedObject.name={name},involvedObject.kind=FineTuneJob",
        )
        .items
    )
    return [f"{e.reason}: {e.message}" for e in events]


def test_a_memory_limit_far_too_small_is_oomkilled_and_said_so(
    operator_release: Release, bucket: Bucket, tmp_path: Path, cleanup: list[str]
) -> None:
    release, name = operator_release, "too-small"
    job = _job(release, bucket, tmp_path, name, qa_rows(16))
    job["spec"]["resources"].update({"memory": "40Mi", "sharedMemory": "8Mi"})
    cleanup.append(name)
    create_ftj(release.cluster, release.watched, job)
    # How long the kernel takes to kill it varies. Likely why: page cache is charged to the
    # cgroup that reads a file first, so when the image's Python and torch files are not
    # already cached for another pod, this pod thrashes on reclaim before its heap passes
    # the limit. Measured on a 2-core machine in two `make test` runs: 11 s and 164 s; once
    # over 240 s under load.
    status = eventually(lambda: phase_is(release.cluster, release.watched, name, "Failed"),
                        timeout=480, what="the job to fail")  # fmt: skip
    assert status["failureReason"] == "OOMKilled", status
    assert status.get("restarts", 0) == 0
    eventually(lambda: any("OOMKilled" in e for e in _events(release, name)),
               timeout=30, what="an Event naming the OOM kill")  # fmt: skip


def test_an_image_that_does_not_exist_waits_with_the_reason_in_status(
    operator_release: Release, bucket: Bucket, tmp_path: Path, cleanup: list[str]
) -> None:
    release, name = operator_release, "no-image"
    job = _job(release, bucket, tmp_path, name, qa_rows(16))
    job["spec"]["resources"]["image"] = "127.0.0.1:1/fto/missing:1"
    cleanup.append(name)
    create_ftj(release.cluster, release.watched, job)

    def waiting() -> dict[str, Any] | None:
        status = read_ftj(release.cluster, release.watched, name).get("status") or {}
        text = json.dumps(status)
        return status if "ImagePullBackOff" in text or "ErrImagePull" in text else None

    status = eventually(waiting, timeout=180, what="the pull failure in status")
    assert status["phase"] in ("Pending", "Failed"), status
    assert "127.0.0.1:1/fto/missing:1" in json.dumps(status), status
    # The operator writes the status first and posts its Events after: wait for them too.
    eventually(lambda: any("ImagePull" in e for e in _events(release, name)),
               timeout=30, what="an Event naming the pull failure")  # fmt: skip
    # No retry loop: the job has not been restarted over it.
    assert status.get("restarts", 0) == 0
    # `finetune cancel` ends it: suspended, its pod gone, `finetune wait` says so (exit 3).
    finetune = FinetuneCli(release, tmp_path / "home")
    cancelled = finetune.run("cancel", name, "--yes")
    assert cancelled.returncode == 0, cancelled.stderr
    eventually(lambda: phase_is(release.cluster, release.watched, name, "Suspended"),
               timeout=60, what="the job suspended")  # fmt: skip
    eventually(lambda: not job_pods(release, name), timeout=60, what="its pod gone")
    waited = finetune.run("wait", name, "--timeout", "10")
    assert waited.returncode == 3, waited.stdout + waited.stderr


def test_a_bad_data_row_fails_with_the_trainers_own_message(
    operator_release: Release, bucket: Bucket, tmp_path: Path, cleanup: list[str]
) -> None:
    release, name = operator_release, "bad-row"
    rows = qa_rows(16) + '{"question": "What is 2 plus 2?"}\n'  # no answer: line 17
    job = _job(release, bucket, tmp_path, name, rows)
    cleanup.append(name)
    create_ftj(release.cluster, release.watched, job)
    status = eventually(lambda: phase_is(release.cluster, release.watched, name, "Failed"),
                        timeout=240, what="the job to fail")  # fmt: skip
    assert status["failureReason"] == "InvalidInput", status
    # The file, the line and the field, as the trainer said them.
    assert "qa.jsonl" in status["message"] and "17" in status["message"], status["message"]
    assert "answer" in status["message"], status["message"]
    assert status.get("restarts", 0) == 0
    # The client says the same: `finetune wait` fails with the reason, the log has the row.
    finetune = FinetuneCli(release, tmp_path / "home")
    waited = finetune.run("wait", name)
    assert waited.returncode == 1, waited.stdout + waited.stderr
    assert f"{name} Failed: InvalidInput: " in waited.stderr and "qa.jsonl" in waited.stderr
    logged = finetune.run("logs", name)
    assert logged.returncode == 0 and "qa.jsonl" in logged.stdout, logged.stdout + logged.stderr


# A stand-in for the Hub's API (none is reachable here): every request is logged and answered
# 403, as the Hub answers a token that may not write to the repository.
HUB_STAND_IN = """
import http.server
class Hub(http.server.BaseHTTPRequestHandler):
    def answer(self):
        print("HUB", self.command, self.path, flush=True)
        self.send_response(403)
        self.end_headers()
    do_GET = do_POST = do_PUT = do_HEAD = answer
http.server.HTTPServer(("", 8080), Hub).serve_forever()
"""
HUB_TOKEN = "hf_e2e_not_a_real_token_0123456789"


def _hub_stand_in(release: Release, images: dict[str, str]) -> str:
    """A pod and Service answering every Hub request with 403; its URL."""
    core = client.CoreV1Api(release.cluster.api)
    labels = {"app": "hub-stand-in"}
    core.create_namespaced_pod(release.watched, {
        "metadata": {"name": "hub-stand-in", "labels": labels},
        "spec": {
            **LOCAL_NODE, "automountServiceAccountToken": False,
            "securityContext": {"runAsNonRoot": True, "seccompProfile": {"type": "RuntimeDefault"}},
            "containers": [{
                "name": "hub", "image": images["trainer"], "imagePullPolicy": "Never",
                "args": ["python", "-c", HUB_STAND_IN],
                "ports": [{"containerPort": 8080}],
                "resources": {"requests": {"cpu": "50m", "memory": "64Mi"}},
                "readinessProbe": {"tcpSocket": {"port": 8080}, "periodSeconds": 1},
                "volumeMounts": [{"name": "workspace", "mountPath": "/workspace"}],
                "securityContext": {"readOnlyRootFilesystem": True,
                                    "allowPrivilegeEscalation": False,
                                    "capabilities": {"drop": ["ALL"]}},
            }],
            "volumes": [{"name": "workspace", "emptyDir": {}}],
        },
    })  # fmt: skip
    core.create_namespaced_service(release.watched, {
        "metadata": {"name": "hub-stand-in"},
        "spec": {"selector": labels, "ports": [{"port": 8080, "targetPort": 8080}]},
    })  # fmt: skip

    def ready() -> bool:
        pod = core.read_namespaced_pod("hub-stand-in", release.watched)
        return any(c.ready for c in pod.status.container_statuses or [])

    eventually(ready, timeout=120, what="the stand-in Hub ready")
    return f"http://hub-stand-in.{release.watched}.svc.cluster.local:8080"


def test_a_hub_that_refuses_the_push_fails_the_job_with_the_model_kept_in_s3(
    operator_release: Release, images: dict[str, str], bucket: Bucket, tmp_path: Path,
    cleanup: list[str],
) -> None:  # fmt: skip
    release, name = operator_release, "push-refused"
    endpoint = _hub_stand_in(release, images)
    cleanup.append(name)
    core = client.CoreV1Api(release.cluster.api)
    core.create_namespaced_secret(release.watched, {
        "metadata": {"name": "hub-token"}, "stringData": {"token": HUB_TOKEN}})  # fmt: skip
    job = tiny_cpu_job(release, bucket, tmp_path, name, steps=4, save_steps=2, log_every=1)
    job["spec"]["model"]["hubEndpoint"] = endpoint
    job["spec"]["output"]["pushToHub"] = {
        "repoId": "team/model",
        "tokenSecretRef": {"name": "hub-token", "key": "token"},
    }
    create_ftj(release.cluster, release.watched, job)
    try:
        status = eventually(
            lambda: phase_is(release.cluster, release.watched, name, "Failed", "Succeeded"),
            timeout=480, what="the job to end",
        )  # fmt: skip
        hub_log = core.read_namespaced_pod_log("hub-stand-in", release.watched)
    finally:
        core.delete_namespaced_pod("hub-stand-in", release.watched, grace_period_seconds=0)
    assert status["phase"] == "Failed", status
    assert status["failureReason"] == "PublishFailed", status
    assert "403" in status["message"], status["message"]
    assert status.get("restarts", 0) == 0  # a refusal is not retried
    assert "HUB " in hub_log  # the push reached the stand-in and was refused there
    # The trained model is kept where the job writes, and the status says where.
    final = f"s3://{bucket.name}/{name}/final"
    assert status["modelUri"] == final, status
    assert any(k.endswith("adapter_model.safetensors") for k in bucket.keys(f"{name}/final/"))
    assert HUB_TOKEN not in json.dumps(status) + pod_logs(release, name)
