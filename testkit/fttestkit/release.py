"""One Helm release of the chart (helm/finetune-operator), as the integration tier installs
it with kwok's fake pods and the e2e tier with the built image on the real node.

    release = Release(cluster, name="fto-1", namespace="fto-system", watched="jobs",
                      values={"watchNamespaces": ["jobs"], ...})
    release.install_or_upgrade("install")
    release.operator_env()                      # the Deployment's env, as its pod sees it
    release.service_account_kubeconfig(path)    # the chart's rights, for a local operator
    release.uninstall()
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any

from kubernetes import client

from .chart import CHART, helm
from .cluster import Cluster, eventually
from .kubeconfig import write_kubeconfig


class Release:
    """The release `name` in `namespace` (operator, ServiceAccount, Lease), running the jobs
    of `watched`, installed with `values`."""

    def __init__(
        self, cluster: Cluster, *, name: str, namespace: str, watched: str,
        values: dict[str, Any], chart: str = str(CHART), chart_args: tuple[str, ...] = (),
    ) -> None:  # fmt: skip
        self.chart = chart
        """This tree's chart folder, or a released one (oci://REGISTRY/charts/...)."""
        self.chart_args = chart_args
        """What installing it takes besides (--version, --ca-file, --registry-config)."""
        self.cluster = cluster
        self.name = name
        self.namespace = namespace
        self.watched = watched
        self.values = values
        self.fullname = f"{name}-finetune-operator"
        self.installed = False

    def helm(self, *args: str, values: dict[str, Any] | None = None, check: bool = True) -> str:
        env = {**os.environ, **self.cluster.env, "PATH": self.cluster.path}
        return helm(*args, "--namespace", self.namespace, values=values, env=env, check=check)

    def install_or_upgrade(self, command: str = "install", wait: bool = True) -> str:
        waiting = ["--wait", "--timeout", "180s"] if wait else []
        out = self.helm(command, self.name, self.chart, *self.chart_args, *waiting,
                        values=self.values)  # fmt: skip
        self.installed = True
        return out

    def uninstall(self, check: bool = True) -> str:
        out = self.helm("uninstall", self.name, "--wait", "--timeout", "120s", check=check)
        self.installed = False
        return out

    def deployment(self) -> Any:
        return client.AppsV1Api(self.cluster.api).read_namespaced_deployment(
            self.fullname, self.namespace
        )

    def pods(self) -> list[Any]:
        return list(
            client.CoreV1Api(self.cluster.api)
            .list_namespaced_pod(
                self.namespace, label_selector=f"app.kubernetes.io/instance={self.name}"
            )
            .items
        )

    def pod(self) -> Any:
        """The operator's running pod (the newest), or None."""
        running = [p for p in self.pods() if p.status.phase == "Running"]
        return max(running, key=lambda p: p.metadata.creation_timestamp) if running else None

    def logs(self) -> str:
        return self.cluster.kubectl(
            "logs", "-n", self.namespace, f"deployment/{self.fullname}", "--tail=-1", check=False
        )

    def operator_env(self) -> dict[str, str]:
        """The installed Deployment's container env, the downward API resolved as the kubelet
        would for the Deployment's newest pod."""
        deployment = self.deployment()
        pods = eventually(self.pods, what="the operator's pod")
        pod = max(pods, key=lambda p: p.metadata.creation_timestamp)
        fields = {"metadata.name": pod.metadata.name, "metadata.namespace": pod.metadata.namespace}
        env: dict[str, str] = {}
        for var in deployment.spec.template.spec.containers[0].env:
            if var.value_from is not None:
                env[var.name] = fields[var.value_from.field_ref.field_path]
            else:
                env[var.name] = var.value or ""
        return env

    def service_account_kubeconfig(self, path: Path) -> Path:
        """A kubeconfig at `path` holding a token of the chart's ServiceAccount."""
        account = self.deployment().spec.template.spec.service_account_name
        return write_kubeconfig(self.cluster, account, self.namespace, path)
