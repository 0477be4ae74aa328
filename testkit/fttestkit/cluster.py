"""The real local control plane and S3 server (hack/cluster-up.sh), as tests reach it.

`running_cluster` reuses a running cluster or starts one (building the binaries on the first
run), and stops it again at the end only if it started it (FTO_KEEP_CLUSTER=1 keeps it).
Every test gets its own namespace (`fresh_namespace`); level-based waits use `eventually`.
"""

from __future__ import annotations

import os
import re
import subprocess
import time
import uuid
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from functools import partial
from pathlib import Path
from typing import Any, TypeVar

import pytest
import yaml
from kubernetes import client, config

from ftapi.constants import GROUP, PLURAL, PROGRESS_PLURAL, VERSION

from .paths import CRD_PATH, HACK, PROGRESS_CRD_PATH

T = TypeVar("T")


@dataclass(frozen=True)
class Cluster:
    """How to reach the local cluster: the env file's variables and ready-made clients."""

    env: dict[str, str]
    api: client.ApiClient

    @property
    def kubeconfig(self) -> str:
        return self.env["KUBECONFIG"]

    def kubectl(self, *args: str, check: bool = True, input: str | None = None) -> str:
        result = subprocess.run(
            ["kubectl", *args],
            env={**os.environ, **self.env, "PATH": self.path},
            capture_output=True,
            text=True,
            input=input,
            check=False,
        )
        if check and result.returncode != 0:
            raise AssertionError(f"kubectl {' '.join(args)} failed: {result.stderr}")
        return result.stdout + result.stderr

    def s3(self) -> Any:
        """A boto3 client of the local S3 server, with the cluster's credentials."""
        import boto3
        from botocore.config import Config

        return boto3.client(
            "s3", endpoint_url=self.env["FTO_S3_ENDPOINT"],
            aws_access_key_id=self.env["AWS_ACCESS_KEY_ID"],
            aws_secret_access_key=self.env["AWS_SECRET_ACCESS_KEY"],
            region_name=self.env["AWS_REGION"], config=Config(s3={"addressing_style": "path"}),
        )  # fmt: skip

    @property
    def path(self) -> str:
        return f"{self.env['FTO_BIN_PATH']}:{os.environ['PATH']}"


def read_env_file(path: Path) -> dict[str, str]:
    """`export NAME="value"` lines of the env file written by hack/cluster-up.sh."""
    found = re.findall(r'^export (\w+)="([^"$]*)"$', path.read_text(), flags=re.MULTILINE)
    return dict(found)


def hack(*args: str, node: str) -> subprocess.CompletedProcess[str]:
    env = {**os.environ, "FTO_NODE": os.environ.get("FTO_NODE", node)}
    return subprocess.run(
        [str(HACK / args[0]), *args[1:]], capture_output=True, text=True, check=False, env=env
    )


@contextmanager
def running_cluster(node: str) -> Iterator[Cluster]:
    """The local cluster, started unless it runs, and stopped afterwards only if started
    here. `node`: hack/node.sh's FTO_NODE when the environment sets none (the integration
    tier: "later", the node's addresses without the node; the e2e tier: "1")."""
    already_running = hack("cluster-up.sh", "status", node=node).returncode == 0
    up = hack("cluster-up.sh", node=node)
    if up.returncode != 0:
        pytest.fail(f"hack/cluster-up.sh failed:\n{up.stdout[-4000:]}\n{up.stderr[-4000:]}")
    state = Path(os.environ.get("FTO_STATE", Path.home() / ".cache/finetune-operator/cluster"))
    env = read_env_file(state / "env")
    api = config.new_client_from_config(config_file=env["KUBECONFIG"])  # type: ignore[no-untyped-call]
    yield Cluster(env=env, api=api)
    api.close()
    if not already_running and not os.environ.get("FTO_KEEP_CLUSTER"):
        down = hack("cluster-down.sh", node=node)
        assert down.returncode == 0, down.stderr


@contextmanager
def fresh_namespace(cluster: Cluster, name: str) -> Iterator[str]:
    """A new namespace, ready for pods, deleted afterwards. Names must never repeat (a random
    suffix): etcd keeps earlier sessions' namespaces, still terminating, between runs."""
    core = client.CoreV1Api(cluster.api)
    core.create_namespace(client.V1Namespace(metadata=client.V1ObjectMeta(name=name)))
    # Pods cannot be created before the namespace's default ServiceAccount exists.
    eventually(
        lambda: (
            core.list_namespaced_service_account(name, field_selector="metadata.name=default").items
        ),
        what="the default ServiceAccount",
    )
    try:
        yield name
    finally:
        core.delete_namespace(name, propagation_policy="Background")


def read_job(cluster: Cluster, namespace: str, name: str) -> Any:
    """The batch/v1 Job, or None when it does not exist."""
    try:
        return client.BatchV1Api(cluster.api).read_namespaced_job(name, namespace)
    except client.exceptions.ApiException as error:
        if error.status == 404:
            return None
        raise


def eventually(
    probe: Callable[[], T | None],
    *,
    timeout: float = 60.0,
    interval: float = 0.5,
    what: str = "",
) -> T:
    """Poll `probe` until it returns something truthy (level-based tests, no sleeps)."""
    deadline = time.monotonic() + timeout
    last: T | None = None
    while time.monotonic() < deadline:
        last = probe()
        if last:
            return last
        time.sleep(interval)
    raise AssertionError(f"timed out after {timeout}s waiting for {what or probe}: last={last!r}")


def slug(request: pytest.FixtureRequest, length: int) -> str:
    """The test's name, readable in a namespace name."""
    return re.sub(r"[^a-z0-9]+", "-", request.node.name.lower()).strip("-")[:length].strip("-")


def unique(prefix: str, request: pytest.FixtureRequest, length: int = 36, random: int = 12) -> str:
    """A namespace name that never repeats (etcd keeps earlier sessions' namespaces, still
    terminating, between runs): the prefix, the test's name, `random` hex digits."""
    return f"{prefix}{slug(request, length)}-{uuid.uuid4().hex[:random]}"


def install_crds(cluster: Cluster) -> dict[str, Any]:
    """The FineTuneJob CRD (returned) and the FineTuneJobProgress CRD, applied from crds/,
    Established and served."""
    for path in (CRD_PATH, PROGRESS_CRD_PATH):
        cluster.kubectl("apply", "--server-side", "--force-conflicts", "-f", str(path))
    cluster.kubectl(
        "wait", "--for=condition=Established", "--timeout=60s",
        "crd/finetunejobs.finetune.dev", "crd/finetunejobprogresses.finetune.dev",
    )  # fmt: skip
    for plural in (PLURAL, PROGRESS_PLURAL):
        eventually(partial(_watch_served, cluster, plural), what=f"a watch of {plural}")
    return dict(yaml.safe_load(CRD_PATH.read_text()))


def _watch_served(cluster: Cluster, plural: str) -> bool:
    """Established is not served: a new CRD's watch cache answers watches with 429 "storage
    is (re)initializing" until its first list is done, and kopf logs the retried watch as an
    ERROR in the operator log that tests read."""
    custom = client.CustomObjectsApi(cluster.api)
    try:
        response: Any = custom.list_cluster_custom_object(
            GROUP, VERSION, plural, watch=True, timeout_seconds=1,
            _preload_content=False,
        )  # fmt: skip
    except client.exceptions.ApiException as error:
        if error.status == 429:
            return False
        raise
    response.read()
    response.release_conn()
    return True
