"""The real local control plane and S3 server (hack/cluster-up.sh), shared by a test session.

The session fixture reuses a running cluster or starts one (building the binaries on the
first run), and stops it again at the end only if it started it (FTO_KEEP_CLUSTER=1 keeps
it). Every test gets its own namespace.
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

REPO = Path(__file__).resolve().parents[2]
HACK = REPO / "hack"
CRD_PATH = REPO / "crds" / "finetune.dev_finetunejobs.yaml"
PROGRESS_CRD_PATH = REPO / "crds" / "finetune.dev_finetunejobprogresses.yaml"
T = TypeVar("T")


# The longest modules, first: `make test` hands whole modules to its xdist workers in this
# order (--dist loadfile), and one that starts last finishes last (test_resume alone takes
# about 6 minutes, longer than the rest of the parallel part shared by the other workers).
LONGEST_FIRST = (
    "test_resume.py",
    "test_make_targets.py",
    "test_helm_install.py",
    "test_graceful_stop.py",
)


def pytest_collection_modifyitems(items: list[pytest.Item]) -> None:
    """Reorders this tier's items among their own places (the other tiers keep theirs)."""
    here = Path(__file__).parent

    def rank(item: pytest.Item) -> int:
        name = item.path.name
        return LONGEST_FIRST.index(name) if name in LONGEST_FIRST else len(LONGEST_FIRST)

    slots = [i for i, item in enumerate(items) if item.path.parent == here]
    ordered = sorted((items[i] for i in slots), key=rank)  # stable within a module
    for slot, item in zip(slots, ordered, strict=True):
        items[slot] = item


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


def _hack(*args: str, node: str) -> subprocess.CompletedProcess[str]:
    env = {**os.environ, "FTO_NODE": os.environ.get("FTO_NODE", node)}
    return subprocess.run(
        [str(HACK / args[0]), *args[1:]], capture_output=True, text=True, check=False, env=env
    )


@contextmanager
def running_cluster(node: str) -> Iterator[Cluster]:
    """The local cluster, started unless it runs, and stopped afterwards only if started
    here. `node`: hack/node.sh's FTO_NODE when the environment sets none (the integration
    tier: "later", the node's addresses without the node; the e2e tier: "1")."""
    already_running = _hack("cluster-up.sh", "status", node=node).returncode == 0
    up = _hack("cluster-up.sh", node=node)
    if up.returncode != 0:
        pytest.fail(f"hack/cluster-up.sh failed:\n{up.stdout[-4000:]}\n{up.stderr[-4000:]}")
    state = Path(os.environ.get("FTO_STATE", Path.home() / ".cache/finetune-operator/cluster"))
    env = read_env_file(state / "env")
    api = config.new_client_from_config(config_file=env["KUBECONFIG"])
    yield Cluster(env=env, api=api)
    api.close()
    if not already_running and not os.environ.get("FTO_KEEP_CLUSTER"):
        down = _hack("cluster-down.sh", node=node)
        assert down.returncode == 0, down.stderr


@pytest.fixture(scope="session")
def cluster() -> Iterator[Cluster]:
    with running_cluster(node="later") as running:
        yield running


@pytest.fixture(scope="session")
def crd(cluster: Cluster) -> dict[str, Any]:
    """The FineTuneJob CRD (returned) and the FineTuneJobProgress CRD, applied from crds/
    and Established."""
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
        response = custom.list_cluster_custom_object(
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


@pytest.fixture
def namespace(cluster: Cluster, request: pytest.FixtureRequest) -> Iterator[str]:
    with fresh_namespace(cluster, f"t-{_slug(request, 36)}-{uuid.uuid4().hex[:12]}") as name:
        yield name


def _slug(request: pytest.FixtureRequest, length: int) -> str:
    """The test's name, readable in a namespace name."""
    return re.sub(r"[^a-z0-9]+", "-", request.node.name.lower()).strip("-")[:length].strip("-")


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
    probe: Callable[[], T], *, timeout: float = 60.0, interval: float = 0.5, what: str = ""
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


# --- the operator as a process, and the namespaces it watches ------------------------


@pytest.fixture(scope="module")
def operator(
    cluster: Cluster, crd: dict[str, Any], tmp_path_factory: pytest.TempPathFactory
) -> Iterator[Any]:
    """`python -m ftoperator` watching the namespaces op-* (see operator_process.py)."""
    from tests.integration.operator_process import Operator

    running = Operator(cluster, tmp_path_factory.mktemp("operator") / "operator.log")
    yield running
    running.stop()
    print(running.log()[-3000:])
    # A pass that raised is a bug or a missing right (the operator runs with the chart's).
    log = running.log_path.read_text(errors="replace")
    assert "Traceback" not in log, log[log.index("Traceback") - 2000 :][:6000]


@pytest.fixture
def ns(cluster: Cluster, request: pytest.FixtureRequest) -> Iterator[str]:
    """A fresh namespace that the `operator` fixture watches (op-*)."""
    from tests.integration.operator_process import NAMESPACE_PREFIX

    name = f"{NAMESPACE_PREFIX}{_slug(request, 30)}-{uuid.uuid4().hex[:8]}"
    with fresh_namespace(cluster, name):
        yield name
