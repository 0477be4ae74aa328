"""Real Kueue beside the operator: its manager as a process on this machine (built from its Go
module by `hack/build.sh platform`), its CRDs, and its webhooks served to the API server.

In a cluster Kueue's webhooks sit behind a Service and it rotates its own certificate. Here
the manager is a host process, so the webhook configurations point at it by URL
(https://127.0.0.1:<port>) with a CA made for this run, and the certificate is handed to it
in `webhook.certDir` (`internalCertManagement` off). Only the batch/v1 Job integration is on
(the operator's Jobs), and only its webhooks and Kueue's own are registered: a webhook for
an integration that is off would refuse every object of that kind.

Kueue is cluster-wide (a ClusterQueue's quota is shared), so the tests that use it are
`serial`. `stop()` removes the webhook configurations before the process ends: left behind
with failurePolicy Fail, they would refuse every Job created afterwards.
"""

from __future__ import annotations

import copy
import os
import shutil
import ssl
import subprocess
import urllib.request
from pathlib import Path
from typing import Any

import yaml

from tests.integration.conftest import REPO, Cluster, eventually
from tests.ports import free_port

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
    out = subprocess.run(
        ["bash", "-c", 'source hack/lib.sh && component_dir kueue'],
        cwd=REPO, capture_output=True, text=True, check=True,
    )  # fmt: skip
    return Path(out.stdout.strip())


def build_kueue() -> Path:
    """Build it when missing (cached by version outside the clone, like the other tools)."""
    subprocess.run([str(REPO / "hack/build.sh"), "platform"], cwd=REPO, check=True)
    return kueue_dir()


def make_certificates(directory: Path) -> bytes:
    """A CA and the webhook server's certificate for 127.0.0.1 (tls.crt, tls.key): the CA's
    PEM, for the webhook configurations' caBundle."""
    directory.mkdir(parents=True, exist_ok=True)

    def openssl(*args: str) -> None:
        subprocess.run(["openssl", *args], cwd=directory, check=True, capture_output=True)

    openssl("req", "-x509", "-newkey", "rsa:2048", "-nodes", "-days", "2",
            "-subj", "/CN=fto-tests-kueue-ca", "-keyout", "ca.key", "-out", "ca.crt")  # fmt: skip
    openssl("req", "-newkey", "rsa:2048", "-nodes", "-subj", "/CN=127.0.0.1",
            "-keyout", "tls.key", "-out", "tls.csr")  # fmt: skip
    (directory / "san.ext").write_text("subjectAltName=IP:127.0.0.1\n")
    openssl("x509", "-req", "-in", "tls.csr", "-CA", "ca.crt", "-CAkey", "ca.key",
            "-CAcreateserial", "-days", "2", "-extfile", "san.ext", "-out", "tls.crt")  # fmt: skip
    return (directory / "ca.crt").read_bytes()


def webhook_configurations(manifests: str, url: str, ca_bundle: str) -> list[dict[str, Any]]:
    """Kueue's webhook configurations, pointed at `url` instead of its Service, keeping the
    webhooks of what is on (SERVED_WEBHOOK_PATHS)."""
    out = []
    for doc in yaml.safe_load_all(manifests):
        if not doc:
            continue
        doc = copy.deepcopy(doc)
        doc["metadata"] = {"name": f"fto-tests-kueue-{doc['metadata']['name']}"}
        kept = []
        for hook in doc.get("webhooks", []):
            path = hook["clientConfig"]["service"]["path"]
            if any(part in path for part in SERVED_WEBHOOK_PATHS):
                hook["clientConfig"] = {"url": f"{url}{path}", "caBundle": ca_bundle}
                kept.append(hook)
        doc["webhooks"] = kept
        out.append(doc)
    return out


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
        self.dir = build_kueue()
        self.workdir = workdir
        self.log_path = workdir / "kueue.log"
        self.webhook_port, self.health_port = free_port(), free_port()
        url = f"https://127.0.0.1:{self.webhook_port}"
        import base64

        ca = base64.b64encode(make_certificates(workdir / "certs")).decode()
        METRICS_CERTS.mkdir(parents=True, exist_ok=True)
        for name in ("tls.crt", "tls.key"):
            shutil.copyfile(workdir / "certs" / name, METRICS_CERTS / name)
        self.webhooks = webhook_configurations(
            (self.dir / "config/manifests.yaml").read_text(), url, ca
        )
        config = workdir / "config.yaml"
        config.write_text(yaml.safe_dump(configuration(
            self.webhook_port, self.health_port, workdir / "certs")))  # fmt: skip
        installed = crds(self.dir / "config", url, ca)
        self._apply(installed)
        names = [f"crd/{crd['metadata']['name']}" for crd in installed]
        cluster.kubectl("wait", "--for=condition=Established", "--timeout=60s", *names)
        cluster.kubectl("create", "namespace", KUEUE_NAMESPACE, check=False)
        self.process = subprocess.Popen(
            [str(self.dir / "bin/kueue"), f"--config={config}", "--zap-log-level=info",
             # Its pending-workloads API is an aggregated API server of its own (certificates
             # at a fixed path, an APIService): not what these tests look at.
             "--feature-gates=VisibilityOnDemand=false"],
            stdout=self.log_path.open("ab"), stderr=subprocess.STDOUT,
            env={**os.environ, "KUBECONFIG": cluster.kubeconfig},
        )  # fmt: skip
        eventually(self._ready, timeout=120, what=f"Kueue ready\n{self.log()}")
        self._apply(self.webhooks)
        # Registered: a Job create now goes through Kueue's webhook (a dry run proves it).
        eventually(self._webhook_answers, timeout=60, what=f"Kueue's webhooks\n{self.log()}")

    def _apply(self, objects: list[dict[str, Any]]) -> None:
        text = yaml.safe_dump_all(objects)
        self.cluster.kubectl("apply", "--server-side", "--force-conflicts", "-f", "-", input=text)

    def _ready(self) -> bool:
        assert self.process.poll() is None, f"Kueue exited\n{self.log()}"
        try:
            with urllib.request.urlopen(
                f"http://127.0.0.1:{self.health_port}/readyz", timeout=2
            ) as answer:
                return bool(answer.status == 200)
        except OSError:
            return False

    def _webhook_answers(self) -> bool:
        context = ssl.create_default_context(cafile=str(self.workdir / "certs/ca.crt"))
        try:
            urllib.request.urlopen(
                f"https://127.0.0.1:{self.webhook_port}/mutate-batch-v1-job", timeout=2,
                context=context,
            )  # fmt: skip
        except urllib.error.HTTPError:
            return True  # it answered (a GET is not an AdmissionReview)
        except OSError:
            return False
        return True

    def log(self) -> str:
        return self.log_path.read_text(errors="replace")[-6000:] if self.log_path.exists() else ""

    def stop(self) -> None:
        """Webhooks first (they would refuse every Job without Kueue), then the process. The
        CRDs stay (deleting them races the next start's create; nothing reads Kueue's kinds
        at another version, so their conversion webhook is not called meanwhile)."""
        for hooks in self.webhooks:
            self.cluster.kubectl("delete", hooks["kind"].lower(), hooks["metadata"]["name"],
                                 "--ignore-not-found", "--wait=false", check=False)  # fmt: skip
        self.process.terminate()
        try:
            self.process.wait(timeout=30)
        except subprocess.TimeoutExpired:
            self.process.kill()
            self.process.wait(timeout=10)
