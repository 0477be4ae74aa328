"""The end-to-end tier: the images built from our Dockerfiles, run by a real kubelet.

The local cluster (hack/cluster-up.sh) has one real node beside kwok's fake ones: kubelet,
containerd, runc, a CNI bridge, kube-proxy and CoreDNS (hack/node.sh). The node carries the
taint finetune.dev/local-node and the label finetune.dev/pool=local, so the integration tier's
pods never land on it and these tests' pods always do (LOCAL_NODE below). The images are
built into the node's containerd by hack/images.sh (`make images`), so most tests pull
nothing; test_release_install.py and test_registry.py push them to the cluster's registry
(hack/registry.sh) and have the kubelet pull them from there.

The operator runs in the cluster, installed by the Helm chart (`operator_release`), under the
chart's ServiceAccount and RBAC; FineTuneJobs run as real pods of the trainer image, reading
a tiny model and data from MinIO and writing checkpoints and the final model back.

Without a real node (not root, or FTO_NODE=0) the tier is skipped with that reason (skipif
at collection); `make test` sets FTO_E2E_REQUIRED=1, which turns that skip into a failure.
"""

from __future__ import annotations

import os
import subprocess
import uuid
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from fttestkit.cluster import Cluster, fresh_namespace, running_cluster, unique
from fttestkit.paths import REPO
from fttestkit.release import Release
from tests.e2e.realnode import (
    OPERATOR_IMAGE,
    TRAINER_IMAGE,
    Bucket,
    containerd_images,
    make_release,
    node_possible,
    normalized,
)
from tests.e2e.realnode import (
    operator_release as operator_release_of,
)


def pytest_collection_modifyitems(items: list[pytest.Item]) -> None:
    here = Path(__file__).parent
    # FTO_E2E_REQUIRED=1 (`make test`, `make e2e`): no skip; the `node` fixture fails instead.
    skip = pytest.mark.skipif(
        not node_possible() and os.environ.get("FTO_E2E_REQUIRED") != "1",
        reason="no real node here: it needs root, and FTO_NODE=0 leaves it out (hack/node.sh)",
    )
    for item in items:
        if item.path.parent == here:
            item.add_marker(pytest.mark.e2e)
            item.add_marker(skip)


@pytest.fixture(scope="session")
def cluster() -> Iterator[Cluster]:
    """The local cluster with its real node (FTO_NODE=1 unless the environment says; it
    needs root: without, the cluster has no node and the `node` fixture skips)."""
    with running_cluster(node="1" if node_possible() else "0") as running:
        yield running


@pytest.fixture(scope="session")
def node(cluster: Cluster) -> str:
    """The real node's name. Where none can run the tests are skipped at collection; a
    cluster that should have one and has none is a failure."""
    name = cluster.env.get("FTO_NODE_NAME", "")
    if not name:
        pytest.fail("no real node in the local cluster (hack/cluster-up.sh runs one as root)")
    return name


@pytest.fixture(scope="session")
def images(cluster: Cluster, node: str) -> dict[str, str]:
    """The trainer and operator images of this working tree, in the node's containerd:
    hack/images.sh builds them there when missing or built from other sources (minutes the
    first time; seconds to see they are up to date), so a test never runs stale code."""
    wanted = {"trainer": TRAINER_IMAGE, "operator": OPERATOR_IMAGE}
    built = subprocess.run(
        [str(REPO / "hack" / "images.sh")], capture_output=True, text=True, check=False,
        env={**os.environ, "TRAINER_IMAGE": TRAINER_IMAGE, "OPERATOR_IMAGE": OPERATOR_IMAGE},
    )  # fmt: skip
    assert built.returncode == 0, built.stdout[-3000:] + built.stderr[-3000:]
    assert {normalized(i) for i in wanted.values()} <= containerd_images(cluster)
    return wanted


@pytest.fixture(scope="session")
def released(cluster: Cluster, node: str, images: dict[str, str]) -> dict[str, Any]:
    """`make release` of this tree into the cluster's registry, under a fresh path (once:
    tests/e2e/test_release_install.py installs it, tests/e2e/test_upgrade.py upgrades to it)."""
    registry = f"{cluster.env['FTO_REGISTRY']}/e2e-{uuid.uuid4().hex[:6]}"
    return make_release(cluster, registry, f"0.0.0-e2e.{uuid.uuid4().hex[:6]}")


@pytest.fixture
def e2e_namespace(cluster: Cluster, request: pytest.FixtureRequest) -> Iterator[str]:
    with fresh_namespace(cluster, unique("e2e-", request)) as name:  # names the test
        yield name


@pytest.fixture
def bucket(cluster: Cluster) -> Bucket:
    return Bucket(cluster, f"e2e-{uuid.uuid4().hex[:12]}")


@pytest.fixture(scope="session")
def operator_release(
    cluster: Cluster,
    crd: dict[str, Any],
    images: dict[str, str],
) -> Iterator[Release]:
    suffix = uuid.uuid4().hex[:8]
    with (
        fresh_namespace(cluster, f"e2e-system-{suffix}") as system,
        fresh_namespace(cluster, f"e2e-jobs-{suffix}") as jobs,
    ):
        release = operator_release_of(cluster, system, jobs, images["operator"])
        release.install_or_upgrade("install")
        try:
            yield release
        finally:
            log = release.logs()
            print(f"--- operator log (in-cluster) ---\n{log[-5000:]}")
            release.uninstall(check=False)
            assert "Traceback" not in log, log[log.index("Traceback") - 2000 :][:6000]
