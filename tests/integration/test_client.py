"""The client (`finetune submit / status / logs / list / cancel / wait`, ftclient.Client)
against the real API server and S3 server, as a user whose only rights are
ftclient.kube.USER_RULES (a ServiceAccount token, never the admin's kubeconfig). No operator
runs here: the tests write the status the operator would write; the trainer pod's log is
kept by the real entrypoint (fttrainer.reporting.logship) writing to the real S3 server. The whole
path with the operator and a real pod is tests/e2e/test_client_cluster.py."""

from __future__ import annotations

import json
import os
import re
import signal
import subprocess
import sys
import time
import uuid
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest
import yaml
from kubernetes import client

from ftapi.constants import GROUP, PLURAL, VERSION
from ftapi.v1alpha1 import S3Spec
from ftclient import Client, JobFailedError, ValidationError
from ftclient.kube import USER_RULES
from fttestkit.cluster import Cluster
from fttestkit.kubeconfig import write_kubeconfig
from fttestkit.paths import REPO
from fttrainer.rewards import load_function

pytestmark = pytest.mark.integration
QUICKSTART = "examples/quickstart-cpu.yaml"


@dataclass
class User:
    """A namespace user at a terminal: their kubeconfig, their client config, their S3 keys."""

    cluster: Cluster
    namespace: str
    bucket: str
    home: Path
    env: dict[str, str]

    def finetune(
        self, *args: str, timeout: float = 120, **extra: str
    ) -> subprocess.CompletedProcess[str]:
        return subprocess.run(
            [str(Path(sys.executable).parent / "finetune"), *args], cwd=REPO,
            env={**self.env, **extra}, capture_output=True, text=True, timeout=timeout, check=False,
        )  # fmt: skip

    def write_config(self, **changes: Any) -> Path:
        config: dict[str, Any] = {
            "namespace": self.namespace,
            "staging": f"s3://{self.bucket}/staging",
            "s3": {"endpoint": self.cluster.env["FTO_S3_ENDPOINT"], "forcePathStyle": True,
                   "region": self.cluster.env["AWS_REGION"]},
            "jobDefaults": {"output": {"s3": {"forcePathStyle": True}}},
        }  # fmt: skip
        config.update(changes)
        path = self.home / "client.yaml"
        path.write_text(yaml.safe_dump(config))
        return path

    def job(self, name: str) -> dict[str, Any]:
        return client.CustomObjectsApi(self.cluster.api).get_namespaced_custom_object(  # type: ignore[no-any-return]
            GROUP, VERSION, self.namespace, PLURAL, name
        )

    def set_status(self, name: str, status: dict[str, Any]) -> None:
        """What the operator would write (the admin's connection: users cannot)."""
        client.CustomObjectsApi(self.cluster.api).patch_namespaced_custom_object_status(
            GROUP, VERSION, self.namespace, PLURAL, name, {"status": status}
        )


@pytest.fixture
def user(cluster: Cluster, crd: dict[str, Any], namespace: str, tmp_path: Path) -> User:
    rbac: Any = client.RbacAuthorizationV1Api(cluster.api)
    rbac.create_namespaced_role(namespace, {"metadata": {"name": "finetune-user"},
                                            "rules": [dict(r) for r in USER_RULES]})  # fmt: skip
    client.CoreV1Api(cluster.api).create_namespaced_service_account(
        namespace, {"metadata": {"name": "alice"}}
    )
    rbac.create_namespaced_role_binding(namespace, {
        "metadata": {"name": "alice"},
        "roleRef": {"apiGroup": "rbac.authorization.k8s.io", "kind": "Role",
                    "name": "finetune-user"},
        "subjects": [{"kind": "ServiceAccount", "name": "alice", "namespace": namespace}],
    })  # fmt: skip
    kubeconfig = write_kubeconfig(cluster, "alice", namespace, tmp_path / "kubeconfig")
    bucket = f"client-{uuid.uuid4().hex[:10]}"
    cluster.s3().create_bucket(Bucket=bucket)
    env = {key: value for key, value in os.environ.items() if not key.startswith(("AWS_", "KUBE"))}
    env.update(
        KUBECONFIG=str(kubeconfig), HOME=str(tmp_path),
        FINETUNE_CONFIG=str(tmp_path / "client.yaml"),
        AWS_ACCESS_KEY_ID=cluster.env["AWS_ACCESS_KEY_ID"],
        AWS_SECRET_ACCESS_KEY=cluster.env["AWS_SECRET_ACCESS_KEY"],
    )  # fmt: skip
    found = User(cluster, namespace, bucket, tmp_path, env)
    found.write_config()
    return found


def counts(out: str) -> tuple[int, int]:
    """(uploaded, already there) of submit's summary line."""
    found = re.search(r"uploaded (\d+) file\(s\) .*; (\d+) already there", out)
    assert found, out
    return int(found.group(1)), int(found.group(2))


def test_submit_uploads_local_files_once_by_content_and_applies_as_the_user(user: User) -> None:
    tiny = REPO / ".quickstart/tiny-llama"
    if not (tiny / "config.json").is_file():
        subprocess.run([sys.executable, "-m", "fttrainer.tiny", "--arch", "llama",
                        "--output", str(tiny)],
                       check=True, capture_output=True)  # fmt: skip
    first = user.finetune("submit", QUICKSTART)
    assert first.returncode == 0, first.stderr + first.stdout
    local_files = [p for p in tiny.rglob("*") if p.is_file()]
    assert counts(first.stdout) == (len(local_files) + 1, 0)
    assert "data report:" in first.stdout  # validated as `finetune validate` does, first
    job = user.job("quickstart")
    spec = job["spec"]
    assert re.fullmatch(rf"s3://{user.bucket}/staging/trees/[0-9a-f]{{64}}", spec["model"]["name"])
    data_uri = spec["dataset"]["train"]["uri"]
    assert data_uri.endswith("/quickstart.jsonl") and "/blobs/" in data_uri
    assert spec["output"]["uri"].startswith(
        f"s3://{user.bucket}/staging/outputs/{user.namespace}/quickstart/"
    )
    assert spec["output"]["s3"] == {"forcePathStyle": True}  # the client config's jobDefaults
    assert f"spec.output.uri: results/quickstart -> {spec['output']['uri']}" in first.stdout
    managers = {(m["manager"], m["operation"]) for m in job["metadata"]["managedFields"]}
    assert ("finetune-client", "Apply") in managers  # server-side apply
    s3 = user.cluster.s3()
    body = s3.get_object(Bucket=user.bucket, Key=data_uri.split("/", 3)[3])["Body"].read()
    assert body == (REPO / "examples/data/quickstart.jsonl").read_bytes()
    tree = spec["model"]["name"].split("/", 3)[3]
    assert (
        s3.get_object(Bucket=user.bucket, Key=f"{tree}/config.json")["Body"].read()
        == (tiny / "config.json").read_bytes()
    )

    # The same data again: nothing uploaded (counted), another job.
    again = user.finetune("submit", QUICKSTART, "--name", "quickstart-2")
    assert again.returncode == 0, again.stderr
    assert counts(again.stdout) == (0, len(local_files) + 1)
    assert user.job("quickstart-2")["spec"]["model"]["name"] == spec["model"]["name"]
    # The same name: refused, not replaced.
    taken = user.finetune("submit", QUICKSTART)
    assert taken.returncode == 2 and "FineTuneJob quickstart exists" in taken.stderr
    # A submit cut off halfway (the folder's marker and one file missing): the next one
    # uploads what is missing, then marks the folder complete.
    s3.delete_objects(Bucket=user.bucket, Delete={"Objects": [
        {"Key": f"{tree}.staged"}, {"Key": f"{tree}/config.json"}]})  # fmt: skip
    mended = user.finetune("submit", QUICKSTART, "--name", "quickstart-3")
    assert counts(mended.stdout) == (1, len(local_files)), mended.stdout
    s3.head_object(Bucket=user.bucket, Key=f"{tree}.staged")


def test_an_unreachable_s3_endpoint_fails_in_seconds_and_nothing_is_applied(user: User) -> None:
    user.write_config(s3={"endpoint": "http://127.0.0.1:1", "forcePathStyle": True})
    started = time.monotonic()
    done = user.finetune("submit", QUICKSTART)
    assert time.monotonic() - started < 30
    assert done.returncode == 2
    assert "the S3 endpoint http://127.0.0.1:1 did not answer" in done.stderr, done.stderr
    listing = user.finetune("list")
    assert listing.stdout.strip() == f"no FineTuneJobs in namespace {user.namespace}"


def test_status_list_wait_and_cancel_read_what_the_operator_writes(user: User) -> None:
    for name in ("train-a", "train-b"):
        done = user.finetune("submit", QUICKSTART, "--name", name)
        assert done.returncode == 0, done.stderr
    user.set_status("train-a", {"phase": "Running", "attempt": 1, "restarts": 1,
                                "progress": {"step": 12, "totalSteps": 24, "summary": "12/24 (50%)",
                                             "loss": "1.842", "eta": "40s"}})  # fmt: skip
    status = user.finetune("status", "train-a")
    for expected in ("phase:      Running", "progress:   12/24 (50%)", "loss:       1.842",
                     "eta:        40s", "attempt:    1 (restarts: 1)"):  # fmt: skip
        assert expected in status.stdout, status.stdout
    rows = [line.split() for line in user.finetune("list").stdout.splitlines()]
    assert rows[0][:3] == ["NAME", "PHASE", "PROGRESS"]
    assert rows[1][:2] == ["train-a", "Running"] and rows[2][:2] == ["train-b", "Pending"]

    timed_out = user.finetune("wait", "train-a", "--timeout", "1")
    assert timed_out.returncode == 124
    user.set_status("train-a", {"phase": "Failed", "failureReason": "OOMKilled",
                                "message": "rank 0 ran out of memory"})  # fmt: skip
    failed = user.finetune("wait", "train-a")
    assert failed.returncode == 1
    assert "train-a Failed: OOMKilled: rank 0 ran out of memory" in failed.stderr
    user.set_status("train-b", {"phase": "Succeeded", "modelUri": "s3://b/final"})
    succeeded = user.finetune("wait", "train-b")
    assert succeeded.returncode == 0 and "the model is at s3://b/final" in succeeded.stdout

    asked = user.finetune("cancel", "train-a")  # no terminal to ask on
    assert asked.returncode == 2 and "--yes" in asked.stderr
    assert user.finetune("cancel", "train-a", "--yes").returncode == 0
    assert user.job("train-a")["spec"]["scheduling"]["suspend"] is True
    assert user.finetune("cancel", "train-a", "--delete", "--yes").returncode == 0
    gone = user.finetune("status", "train-a")
    assert gone.returncode == 2 and "no such FineTuneJob" in gone.stderr


def keep_a_pod_log(user: User, output: str, *, attempt: int, rank: int, text: str) -> int:
    """The trainer image's entrypoint, as the pod runs it: its log kept under `output`."""
    job = user.home / f"job-{attempt}-{rank}.yaml"
    job.write_text(yaml.safe_dump({
        "apiVersion": "finetune.dev/v1alpha1", "kind": "FineTuneJob", "metadata": {"name": "x"},
        "spec": {"model": {"name": "org/m"}, "dataset": {"train": {"uri": "s3://b/d.jsonl"}},
                 "output": {"uri": output, "s3": {"forcePathStyle": True}}}}))  # fmt: skip
    pod_env = {**user.env, "FINETUNE_ATTEMPT": str(attempt), "JOB_COMPLETION_INDEX": str(rank),
               "FINETUNE_JOB_CONFIG": str(job), "AWS_REGION": user.cluster.env["AWS_REGION"],
               "AWS_ENDPOINT_URL_S3": user.cluster.env["FTO_S3_ENDPOINT"]}  # fmt: skip
    script = f"import sys\nprint({text!r})\nprint('failing now', file=sys.stderr)\nsys.exit(3)"
    command = [sys.executable, "-m", "fttrainer.entrypoint", sys.executable, "-c", script]
    done = subprocess.run(command, env=pod_env, capture_output=True, text=True, timeout=60,
                          check=False)  # fmt: skip
    assert text in done.stdout  # what `kubectl logs` shows is unchanged
    return done.returncode


def test_a_gone_attempts_log_is_read_from_what_its_pods_kept(user: User) -> None:
    submitted = user.finetune("submit", QUICKSTART, "--name", "kept")
    assert submitted.returncode == 0, submitted.stderr
    output = user.job("kept")["spec"]["output"]["uri"]
    secret = user.env["AWS_SECRET_ACCESS_KEY"]
    for rank in (0, 1):
        code = keep_a_pod_log(user, output, attempt=0, rank=rank,
                              text=f"rank {rank} step 7 loss 2.5 key={secret}")  # fmt: skip
        assert code == 3  # the trainer's exit status, through the entrypoint
    user.set_status("kept", {"phase": "Restarting", "attempt": 1, "restarts": 1})
    rank0 = user.finetune("logs", "kept", "--attempt", "0")
    assert rank0.returncode == 0, rank0.stderr
    assert rank0.stdout.splitlines() == ["rank 0 step 7 loss 2.5 key=[redacted]", "failing now"]
    both = user.finetune("logs", "kept", "--attempt", "0", "--all").stdout.splitlines()
    assert both == [
        "[rank 0] rank 0 step 7 loss 2.5 key=[redacted]", "[rank 0] failing now",
        "[rank 1] rank 1 step 7 loss 2.5 key=[redacted]", "[rank 1] failing now",
    ]  # fmt: skip
    assert secret not in rank0.stdout + "".join(both)
    current = user.finetune("logs", "kept")  # attempt 1: no pod, nothing kept
    assert "no log of attempt 1" in current.stdout


def test_the_python_client_submits_waits_and_reads_metrics(
    user: User, monkeypatch: pytest.MonkeyPatch
) -> None:
    for key in (
        "KUBECONFIG",
        "HOME",
        "FINETUNE_CONFIG",
        "AWS_ACCESS_KEY_ID",
        "AWS_SECRET_ACCESS_KEY",
    ):
        monkeypatch.setenv(key, user.env[key])
    monkeypatch.chdir(REPO)
    manifest = yaml.safe_load((REPO / QUICKSTART).read_text())
    with Client() as finetune:
        bad = json.loads(json.dumps(manifest))
        bad["spec"]["training"]["learningRate"] = -1.0
        with pytest.raises(ValidationError, match=r"learningRate"):
            finetune.submit(bad)
        handle = finetune.submit(manifest, name="from-python")
        assert handle.status().phase == "Pending"
        output = user.job("from-python")["spec"]["output"]["uri"]
        bucket, prefix = output.removeprefix("s3://").split("/", 1)
        s3 = user.cluster.s3()
        assert handle.metrics() == []  # nothing logged yet
        # While it runs: the newest checkpoint's history (the trainer's trainer_state.json).
        history = [{"step": 2, "loss": 2.5}, {"step": 4, "loss": 2.25}]
        checkpoint = f"{prefix}/checkpoints/run/checkpoint-4"
        s3.put_object(Bucket=bucket, Key=f"{checkpoint}/trainer_state.json",
                      Body=json.dumps({"global_step": 4, "log_history": history}))  # fmt: skip
        user.set_status("from-python", {"phase": "Running", "checkpoint": {
            "latest": f"s3://{bucket}/{checkpoint}", "step": 4, "count": 1}})  # fmt: skip
        assert handle.metrics() == history
        # Once it has finished: the published step and epoch metrics.
        steps = [{"step": 5, "loss": 2.0, "epoch": 0.5}, {"step": 10, "loss": 1.5, "epoch": 1.0}]
        user.cluster.s3().put_object(
            Bucket=bucket, Key=f"{prefix}/step_metrics.json", Body=json.dumps(steps)
        )
        evaluations = [{"step": 10, "eval_loss": 1.7, "epoch": 1.0}]
        user.cluster.s3().put_object(Bucket=bucket, Key=f"{prefix}/epoch_metrics.json",
                                     Body=json.dumps(evaluations))  # fmt: skip
        assert handle.metrics() == [
            steps[0],
            steps[1],
            {"step": 10, "eval_loss": 1.7, "epoch": 1.0},
        ]
        user.set_status("from-python", {"phase": "Failed", "failureReason": "NonFiniteLoss",
                                        "message": "loss NaN at step 3"})  # fmt: skip
        with pytest.raises(JobFailedError, match="NonFiniteLoss: loss NaN at step 3") as failed:
            handle.wait(timeout=30)
        assert failed.value.reason == "NonFiniteLoss"
        assert [h.name for h in finetune.list()] == ["from-python"]


def test_a_staged_python_reward_file_loads_from_s3(
    user: User, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """`finetune submit` uploads a local `rewards.py:score`; the trainer reads it from S3."""
    from ftapi.locations import Location
    from ftclient.config import S3Access
    from ftclient.staging import HashCache, LocalPath, Stager, plan_staging
    from ftclient.store import s3_client

    reward = tmp_path / "rewards.py"
    reward.write_text(
        "def score(prompts, completions, **kw):\n    return [len(c) for c in completions]\n"
    )
    local = LocalPath(
        Location("spec.trainer.grpo.rewards[0].function", "rewards.py", "code", ":score"), reward
    )
    plan = plan_staging([local], f"s3://{user.bucket}/staging", HashCache(None))
    access = S3Access(
        endpoint=user.cluster.env["FTO_S3_ENDPOINT"], region="us-east-1", force_path_style=True
    )
    for key in ("AWS_ACCESS_KEY_ID", "AWS_SECRET_ACCESS_KEY"):
        monkeypatch.setenv(key, user.env[key])
    Stager(s3_client(access)).upload(plan)
    monkeypatch.setenv("AWS_ENDPOINT_URL_S3", user.cluster.env["FTO_S3_ENDPOINT"])
    func = load_function(
        plan[0].uri + ":score", s3=S3Spec(force_path_style=True, region="us-east-1")
    )
    assert func(["p"], ["abc", "de"]) == [3, 2]


def test_staged_rows_with_images_are_read_by_the_trainer_from_s3(
    user: User, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Submit's upload of a data file whose rows name images beside it: the trainer, given
    the staged URI, finds each image beside the uploaded file on the real S3 server."""
    from PIL import Image

    from ftapi import parse_job
    from ftclient.config import S3Access
    from ftclient.staging import HashCache, Stager, local_locations, plan_staging
    from ftclient.store import s3_client
    from fttestkit.builders import make_job
    from fttrainer.data.prepare import prepare_data

    (tmp_path / "data/img").mkdir(parents=True)
    for name, colour in (("red", (220, 20, 20)), ("blue", (20, 20, 220))):
        Image.new("RGB", (16, 16), colour).save(tmp_path / f"data/img/{name}.png")
    rows = [{"messages": [
        {"role": "user", "content": [{"type": "image", "image": f"img/{name}.png"},
                                     {"type": "text", "text": "Colour?"}]},
        {"role": "assistant", "content": name}]} for name in ("red", "blue", "red")]  # fmt: skip
    (tmp_path / "data/train.jsonl").write_text("".join(json.dumps(r) + "\n" for r in rows))
    dataset = {"train": {"uri": "data/train.jsonl"}, "format": "messages"}
    job = parse_job(make_job().set("dataset", dataset).obj())
    found, _ = local_locations(job, tmp_path)
    (staged,) = plan_staging(found, f"s3://{user.bucket}/staging", HashCache(None))
    for key in ("AWS_ACCESS_KEY_ID", "AWS_SECRET_ACCESS_KEY"):
        monkeypatch.setenv(key, user.env[key])
    endpoint = user.cluster.env["FTO_S3_ENDPOINT"]
    access = S3Access(endpoint=endpoint, region="us-east-1", force_path_style=True)
    report = Stager(s3_client(access)).upload([staged])
    assert report.uploaded_files == 3  # the file and its two images

    uploaded = {"train": {"uri": staged.uri}, "format": "messages"}
    output = {"uri": f"s3://{user.bucket}/out", "s3": {"endpoint": endpoint,
                                                      "forcePathStyle": True}}  # fmt: skip
    monkeypatch.setenv("AWS_REGION", "us-east-1")
    prepared = prepare_data(
        parse_job(make_job().set("dataset", uploaded).set("output", output).obj()).spec
    )
    images = prepared.report.images
    assert images is not None and (images.count, images.distinct) == (3, 2)


def _as_in_a_terminal() -> None:
    """Ctrl-C reaches a command typed at a terminal. A command a script starts with `&` (the
    test run itself, when CI starts it so) inherits SIGINT ignored, and Python then leaves it
    ignored: the fresh CI run of 2026-11-26 waited 30 s for an exit that could not come."""
    signal.signal(signal.SIGINT, signal.SIG_DFL)


def test_submit_follow_detaches_on_ctrl_c_and_the_job_goes_on(user: User) -> None:
    follow = subprocess.Popen(
        [str(Path(sys.executable).parent / "finetune"), "submit", QUICKSTART, "--name", "followed",
         "--follow"], cwd=REPO, env=user.env, stdout=subprocess.PIPE, stderr=subprocess.PIPE,
        text=True, preexec_fn=_as_in_a_terminal,
    )  # fmt: skip
    assert follow.stdout is not None
    lines = []
    for line in follow.stdout:  # applied, then followed: no operator here, so it stays Pending
        lines.append(line)
        if line.startswith("followed: Pending"):
            break
    progress = {"step": 3, "totalSteps": 9, "summary": "3/9 (33%)"}
    user.set_status("followed", {"phase": "Running", "progress": progress})
    for line in follow.stdout:
        lines.append(line)
        if line.startswith("followed: Running"):
            break
    follow.send_signal(signal.SIGINT)
    out, _ = follow.communicate(timeout=30)
    assert follow.returncode == 130
    said = "".join(lines) + out
    assert "followed: step 3/9 (33%)" in said and "followed: Running" in said, said
    assert f"detached; followed goes on:  finetune status followed -n {user.namespace}" in out
    assert user.job("followed")["spec"]["scheduling"]["suspend"] is False  # not cancelled
