"""The fixtures every tier may use, loaded once by tests/conftest.py (pytest_plugins), never
imported. A tier's conftest provides `cluster` (the integration tier's has no real node,
the e2e tier's has one); these build on it.

    crd         the CRDs, installed from crds/, Established and served (session)
    namespace   a fresh namespace, deleted afterwards
    operator    `python -m ftoperator` with the chart's rights, watching op-* (module)
    ns          a fresh namespace that `operator` watches
    repo        the repository root
"""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from .cluster import Cluster, fresh_namespace, install_crds, unique
from .operator import NAMESPACE_PREFIX, Operator
from .paths import REPO


@pytest.fixture(scope="session")
def repo() -> Path:
    return REPO


@pytest.fixture(scope="session")
def crd(cluster: Cluster) -> dict[str, Any]:
    return install_crds(cluster)


@pytest.fixture
def namespace(cluster: Cluster, request: pytest.FixtureRequest) -> Iterator[str]:
    with fresh_namespace(cluster, unique("t-", request)) as name:
        yield name


@pytest.fixture(scope="module")
def operator(
    cluster: Cluster, crd: dict[str, Any], tmp_path_factory: pytest.TempPathFactory
) -> Iterator[Operator]:
    """`python -m ftoperator` watching the namespaces op-* (see operator.py)."""
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
    with fresh_namespace(cluster, unique(NAMESPACE_PREFIX, request, 30, 8)) as name:
        yield name
