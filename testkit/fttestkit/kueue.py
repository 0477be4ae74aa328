"""Real Kueue beside the operator: its manager as a process on this machine (built from its Go
module by `hack/build.sh platform`), its CRDs, and its webhooks served to the API server.

The process, its certificates and its webhooks by URL are testkit/fttestkit/controllers.py's
(`internalCertManagement` off, the certificate handed to it in `webhook.certDir`). Only the
batch/v1 Job integration is on (the operator's Jobs), and only its webhooks and Kueue's own
are registered: a webhook for an integration that is off would refuse every object of that
kind.

Kueue is cluster-wide (a ClusterQueue's quota is shared), so the tests that use it are
`serial`. `stop()` removes the webhook configurations before the process ends: left behind
with failurePolicy Fail, they would refuse every Job created afterwards.
"""

from __future__ import annotations

import shutil
from pathlib import Path
from typing import Any

import yaml

from fttestkit.cluster import Cluster
from fttestkit.controllers import ControllerProcess, component_dir, webhooks_at_url

KUEUE_NAMESPACE = "kueue-system"
# Kueue 0.19 reads its metrics server's certificate from this fixed path whenever its internal
# certificate management is off (cmd/kueue/main.go), even with metrics disabled.
METRICS_CERTS = Path("/etc/kueue/metrics/certs")
API = "kueue.x-k8s.io/v1beta2"
# Kueue's webhooks for what is on: the batch/v1 Job integration and its own kinds.
SERVED_WEBHOOK_PATHS = ("-batch-v1-job", "-kueue-x-k8s-io-")
# The CRDs Kueue converts between v1beta1 and v1beta2 (config/components/crd/patches).
CONVERTED = {"localqueues", "clusterqueues", "cohorts", "workloads", "multikueueclusters"}


def kueue_dir() -> Path:
    """Where hack/build.sh put the pinned Kueue (binary, CRDs, webhook manifests)."""
    return component_dir("kueue")


def webhook_configurations(manifests: str, url: str, ca_bundle: str) -> list[dict[str, Any]]:
    """Kueue's webhook configurations, pointed at `url` instead of its Service, keeping the
    webhooks of what is on (SERVED_WEBHOOK_PATHS)."""
    return webhooks_at_url(
        manifests, url, ca_bundle, prefix="fto-tests-kueue-",
        keep=lambda hook: any(
            part in hook["clientConfig"]["service"]["path"] for part in SERVED_WEBHOOK_PATHS
        ),
    )  # fmt: skip


def crds(config: Path, url: str, ca_bundle: str) -> list[dict[str, Any]]:
    """Kueue's CRDs, converted by its webhook where Kueue's own kustomization says so."""
    out = []
    for path in sorted(config.glob("kueue.x-k8s.io_*.yaml")):
        crd = yaml.safe_load(path.read_text())
        if crd["spec"]["names"]["plural"] in CONVERTED:
            crd["spec"]["conversion"] = {
                "strategy": "Webhook",
                "webhook": {"clientConfig": {"url": f"{url}/convert", "caBundle": ca_bundle},
                            "conversionReviewVersions": ["v1"]},
            }  # fmt: skip
        out.append(crd)
    return out


def configuration(webhook_port: int, health_port: int, cert_dir: Path) -> dict[str, Any]:
    return {
        "apiVersion": "config.kueue.x-k8s.io/v1beta2",
        "kind": "Configuration",
        "namespace": KUEUE_NAMESPACE,
        "health": {"healthProbeBindAddress": f"127.0.0.1:{health_port}"},
        "metrics": {"bindAddress": "0"},
        "webhook": {"port": webhook_port, "host": "127.0.0.1", "certDir": str(cert_dir)},
        "leaderElection": {"leaderElect": False},
        "internalCertManagement": {"enable": False},
        "manageJobsWithoutQueueName": False,
        "integrations": {"frameworks": ["batch/job"]},
    }


class Kueue:
    """Kueue's manager as a process, its CRDs and webhooks registered (see the module)."""

    def __init__(self, cluster: Cluster, workdir: Path) -> None:
        self.cluster = cluster
        self.dir = component_dir("kueue", build=True)
        self.manager = ControllerProcess("kueue", workdir, cluster.kubectl, cluster.kubeconfig)
        certs = self.manager.cert_dir
        METRICS_CERTS.mkdir(parents=True, exist_ok=True)
        for name in ("tls.crt", "tls.key"):
            shutil.copyfile(certs / name, METRICS_CERTS / name)
        url, ca = self.manager.url, self.manager.ca_bundle
        config = workdir / "config.yaml"
        config.write_text(yaml.safe_dump(configuration(
            self.manager.webhook_port, self.manager.health_port, certs)))  # fmt: skip
        installed = crds(self.dir / "config", url, ca)
        self.manager.apply(installed)
        names = [f"crd/{crd['metadata']['name']}" for crd in installed]
        cluster.kubectl("wait", "--for=condition=Established", "--timeout=60s", *names)
        cluster.kubectl("create", "namespace", KUEUE_NAMESPACE, check=False)
        self.manager.start([
            str(self.dir / "bin/kueue"), f"--config={config}", "--zap-log-level=info",
            # Its pending-workloads API is an aggregated API server of its own (certificates
            # at a fixed path, an APIService): not what these tests look at.
            "--feature-gates=VisibilityOnDemand=false",
        ])  # fmt: skip
        # Registered: a Job create now goes through Kueue's webhook.
        self.manager.register(
            webhook_configurations((self.dir / "config/manifests.yaml").read_text(), url, ca),
            probe="/mutate-batch-v1-job",
        )

    def log(self) -> str:
        return self.manager.log()

    def stop(self) -> None:
        """Webhooks first (they would refuse every Job without Kueue), then the process. The
        CRDs stay (deleting them races the next start's create; nothing reads Kueue's kinds
        at another version, so their conversion webhook is not called meanwhile)."""
        self.manager.stop()
