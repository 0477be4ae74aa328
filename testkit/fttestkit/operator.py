"""The operator as a real process for integration tests, and namespaces it watches.

The operator watches every namespace named op-*; `ns` gives each test a fresh one.

It runs with the rights the Helm chart gives it, never as cluster admin: its kubeconfig holds
a token of a ServiceAccount bound to the ClusterRoles `helm template` renders from
helm/finetune-operator (the cluster-wide mode's rules, plus the namespace discovery the
watchNamespaces mode grants, which the op-* glob needs). A leader-electing replica also gets
the chart's Lease Role, rendered for its lease namespace and name.
"""

from __future__ import annotations

import os
import sys
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import yaml

from fttestkit.chart import render
from fttestkit.cluster import Cluster
from fttestkit.kubeconfig import write_kubeconfig
from fttestkit.paths import REPO
from fttestkit.ports import free_port
from fttestkit.process import ManagedProcess

# Under pytest-xdist each worker runs its own operators: their namespaces, ServiceAccount
# and ClusterRoles carry the worker's id, so that no two operators reconcile the same jobs.
_WORKER = os.environ.get("PYTEST_XDIST_WORKER", "")
_SUFFIX = f"-{_WORKER}" if _WORKER else ""
NAMESPACE_PREFIX = f"op{_SUFFIX}-"
RELEASE = f"fto-tests{_SUFFIX}"
RELEASE_NAMESPACE = f"fto-operator-tests{_SUFFIX}"


class Operator(ManagedProcess):
    """The operator process, watching every namespace named op-* (or `namespaces`)."""

    def __init__(
        self, cluster: Cluster, log: Path, *extra: str,
        namespaces: Sequence[str] = (f"{NAMESPACE_PREFIX}*",),
    ) -> None:  # fmt: skip
        super().__init__("operator", log)
        self.cluster = cluster
        self.extra = extra
        self.namespaces = tuple(namespaces)
        self.kubeconfig = chart_kubeconfig(cluster)
        if "--leader-election" in extra:
            grant_lease(cluster, _flag(extra, "--lease-namespace"), _flag(extra, "--lease-name"))
        self._spawn()

    def _spawn(self) -> None:
        self.port = free_port()  # a new one at each start: the old may linger (TIME_WAIT)
        env = {**os.environ, "KUBECONFIG": str(self.kubeconfig), "PYTHONUNBUFFERED": "1"}
        watched = [arg for namespace in self.namespaces for arg in ("--namespace", namespace)]
        self.start(
            [sys.executable, "-m", "ftoperator", *watched,
             "--no-leader-election", "--metrics-bind", "127.0.0.1",
             "--metrics-port", str(self.port), "--resync-seconds", "10",
             # 60 s by default: the lost-node test would wait that long for its restart.
             "--node-lost-seconds", "10", *self.extra],
            env=env, cwd=REPO,
        )  # fmt: skip

    def restart(self) -> None:
        """A new process with the same arguments and log (appended), as a Deployment's
        restart would; the old one is SIGKILLed first if it still runs."""
        self.kill()
        self._spawn()


def _flag(args: Sequence[str], name: str) -> str | None:
    return args[args.index(name) + 1] if name in args else None


def _apply(cluster: Cluster, objects: list[dict[str, Any]]) -> None:
    text = yaml.safe_dump_all(objects)
    cluster.kubectl("apply", "--server-side", "--force-conflicts", "-f", "-", input=text)


_KUBECONFIGS: dict[str, Path] = {}


def chart_kubeconfig(cluster: Cluster) -> Path:
    """A kubeconfig with a token of a ServiceAccount holding exactly the chart's rights
    (made once per test process and cluster)."""
    if cluster.kubeconfig not in _KUBECONFIGS:
        _KUBECONFIGS[cluster.kubeconfig] = _make_chart_kubeconfig(cluster)
    return _KUBECONFIGS[cluster.kubeconfig]


def _make_chart_kubeconfig(cluster: Cluster) -> Path:
    cluster.kubectl("create", "namespace", RELEASE_NAMESPACE, check=False)
    # networkPolicy: on, so that a test may run the operator with --network-policy (the
    # chart then adds create/get on networkpolicies, unused by the other tests).
    values: dict[str, Any] = {
        "operator": {"leaderElection": {"enabled": False}, "networkPolicy": True}
    }
    cluster_wide = render(values, release=RELEASE, namespace=RELEASE_NAMESPACE)
    with_discovery = render(
        {**values, "watchNamespaces": ["unused"]}, release=RELEASE, namespace=RELEASE_NAMESPACE
    )
    wanted = {"ServiceAccount", "ClusterRole", "ClusterRoleBinding"}
    objects = [o for o in cluster_wide if o["kind"] in wanted]
    account = next(o for o in objects if o["kind"] == "ServiceAccount")["metadata"]["name"]
    for obj in with_discovery:  # the namespace discovery rules, under their own name
        if obj["kind"] in ("ClusterRole", "ClusterRoleBinding"):
            obj["metadata"]["name"] += "-discovery"
            if obj["kind"] == "ClusterRoleBinding":
                obj["roleRef"]["name"] += "-discovery"
            objects.append(obj)
    _apply(cluster, objects)
    path = Path(cluster.kubeconfig).with_name(f"operator-{os.getpid()}.kubeconfig")
    return write_kubeconfig(cluster, account, RELEASE_NAMESPACE, path, seconds=6 * 3600)


def grant_lease(cluster: Cluster, namespace: str | None, name: str | None) -> None:
    """The chart's leader-election Role and binding, for a Lease in `namespace`."""
    assert namespace, "a leader-electing test operator needs --lease-namespace"
    # The operator's own default name when the test names none (main.py).
    election = {"enabled": True, "leaseName": name or "finetune-operator-leader"}
    rendered = render({"operator": {"leaderElection": election}}, release=RELEASE,
                      namespace=namespace)  # fmt: skip
    objects = [o for o in rendered if o["metadata"]["name"].endswith("-leader-election")]
    for obj in objects:
        for subject in obj.get("subjects", []):
            subject["namespace"] = RELEASE_NAMESPACE
    _apply(cluster, objects)
