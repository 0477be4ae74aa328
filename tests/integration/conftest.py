"""The integration tier: the real local control plane and S3 server (hack/cluster-up.sh)
with kwok's fake nodes, no real node (fttestkit.cluster; the shared fixtures, crd,
namespace, operator and ns, come from fttestkit.plugin).
"""

from __future__ import annotations

import uuid
from collections.abc import Iterator
from pathlib import Path

import pytest

from fttestkit.cluster import Cluster, running_cluster
from fttrainer.tiny import save_tiny_model

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


@pytest.fixture(scope="session")
def cluster() -> Iterator[Cluster]:
    with running_cluster(node="later") as running:
        yield running


@pytest.fixture(scope="module")
def tiny_llama(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A tiny random-weight Llama for `finetune run` processes (training_runs.py)."""
    return save_tiny_model("llama", tmp_path_factory.mktemp("models") / "tiny-llama")


@pytest.fixture(scope="module")
def s3_bucket(cluster: Cluster) -> str:
    """A new bucket on the local S3 server."""
    name = f"resume-{uuid.uuid4().hex[:10]}"
    cluster.s3().create_bucket(Bucket=name)
    return name
