"""A Go controller manager (controller-runtime) run from its binary on this machine, beside the
local cluster, with its admission webhooks served to the API server by URL.

In a cluster such a manager sits behind a Service and manages its own certificate. Here it
is a host process, so the webhook configurations point at https://127.0.0.1:<port> with a CA
made for the run, and the manager finds its serving certificate where controller-runtime
looks by default: $TMPDIR/k8s-webhook-server/serving-certs/tls.{crt,key}. Every process gets
its own TMPDIR (so two managers never read each other's certificates); managers that take a
`certDir` are given the same folder.

Used by the serial tier's Kueue (kueue.py) and by the operator benchmark's peer, Kubeflow
Trainer and JobSet (kubeflow.py, run by bench/operator_load.py), which import it from the
kit as a package.

`stop()` removes the webhook configurations before the process ends: left behind with
failurePolicy Fail, they would refuse the objects they match for as long as they exist.
"""

from __future__ import annotations

import base64
import copy
import os
import ssl
import subprocess
import urllib.error
import urllib.request
from collections.abc import Callable, Sequence
from contextlib import suppress
from pathlib import Path
from typing import Any, Protocol

import yaml

from fttestkit.paths import REPO
from fttestkit.ports import free_port
from fttestkit.process import ManagedProcess, http_ok


class Kubectl(Protocol):
    """kubectl against the cluster (tests.integration.conftest.Cluster.kubectl, or the
    benchmark's): the output, and an error unless check=False."""

    def __call__(self, *args: str, check: bool = True, input: str | None = None) -> str: ...


def component_dir(component: str, *, build: bool = False) -> Path:
    """Where hack/build.sh puts a component (binaries in bin/, its manifests in config/):
    outside the clone, by version. With build=True, built first when missing."""
    if build:
        subprocess.run([str(REPO / "hack/build.sh"), component], cwd=REPO, check=True)
    out = subprocess.run(
        ["bash", "-c", f"source hack/lib.sh && component_dir {component}"],
        cwd=REPO, capture_output=True, text=True, check=True,
    )  # fmt: skip
    return Path(out.stdout.strip())


def make_certificates(directory: Path, name: str) -> bytes:
    """A CA and a serving certificate for 127.0.0.1 (tls.crt, tls.key) in `directory`: the
    CA's PEM, for the webhook configurations' caBundle."""
    directory.mkdir(parents=True, exist_ok=True)

    def openssl(*args: str) -> None:
        subprocess.run(["openssl", *args], cwd=directory, check=True, capture_output=True)

    openssl("req", "-x509", "-newkey", "rsa:2048", "-nodes", "-days", "2",
            "-subj", f"/CN={name}-ca", "-keyout", "ca.key", "-out", "ca.crt")  # fmt: skip
    openssl("req", "-newkey", "rsa:2048", "-nodes", "-subj", "/CN=127.0.0.1",
            "-keyout", "tls.key", "-out", "tls.csr")  # fmt: skip
    (directory / "san.ext").write_text("subjectAltName=IP:127.0.0.1\n")
    openssl("x509", "-req", "-in", "tls.csr", "-CA", "ca.crt", "-CAkey", "ca.key",
            "-CAcreateserial", "-days", "2", "-extfile", "san.ext", "-out", "tls.crt")  # fmt: skip
    return (directory / "ca.crt").read_bytes()


def webhooks_at_url(
    manifests: str, url: str, ca_bundle: str, *, prefix: str,
    keep: Callable[[dict[str, Any]], bool] = lambda hook: True,
    scope: Callable[[dict[str, Any]], dict[str, Any]] = lambda hook: {},
    labels: dict[str, str] | None = None,
) -> list[dict[str, Any]]:  # fmt: skip
    """A project's webhook configurations (kubebuilder's config/webhook/manifests.yaml, whose
    hooks name a Service), pointed at `url` + each hook's path instead, renamed `prefix` +
    their name. `keep` drops hooks (those for what the manager does not serve); `scope`
    returns fields merged into a hook (an objectSelector, a namespaceSelector) to narrow it."""
    out = []
    for doc in yaml.safe_load_all(manifests):
        if not doc:
            continue
        doc = copy.deepcopy(doc)
        doc["metadata"] = {"name": f"{prefix}{doc['metadata']['name']}"}
        if labels:
            doc["metadata"]["labels"] = dict(labels)
        kept = []
        for hook in doc.get("webhooks", []):
            if not keep(hook):
                continue
            path = hook["clientConfig"]["service"]["path"]
            hook["clientConfig"] = {"url": f"{url}{path}", "caBundle": ca_bundle}
            hook.update(scope(hook))
            kept.append(hook)
        doc["webhooks"] = kept
        out.append(doc)
    return out


def read_metrics(
    url: str, *, token: str | None = None, cafile: Path | None = None
) -> dict[str, float]:
    """A Prometheus text endpoint as {'name{labels}': value}."""
    request = urllib.request.Request(url)
    if token:
        request.add_header("Authorization", f"Bearer {token}")
    context = ssl.create_default_context(cafile=str(cafile)) if cafile else None
    with urllib.request.urlopen(request, timeout=10, context=context) as response:
        text = response.read().decode()
    values = {}
    for line in text.splitlines():
        if line and not line.startswith("#"):
            name, _, value = line.rpartition(" ")
            with suppress(ValueError):
                values[name] = float(value)
    return values


class ControllerProcess:
    """One manager binary as a process: its certificates, its log, its readiness (/readyz on
    a free loopback port), its webhooks registered by URL, and a clean stop."""

    def __init__(self, name: str, workdir: Path, kubectl: Kubectl, kubeconfig: str) -> None:
        self.name = name
        self.workdir = workdir
        self.kubectl = kubectl
        self.kubeconfig = kubeconfig
        self.webhook_port, self.health_port = free_port(), free_port()
        self.url = f"https://127.0.0.1:{self.webhook_port}"
        self.tmpdir = workdir / "tmp"
        # controller-runtime's default: what a manager without a certDir setting reads.
        self.cert_dir = self.tmpdir / "k8s-webhook-server" / "serving-certs"
        self.ca_bundle = base64.b64encode(make_certificates(self.cert_dir, f"fto-{name}")).decode()
        self.process = ManagedProcess(name, workdir / f"{name}.log")
        self.webhooks: list[dict[str, Any]] = []

    @property
    def pid(self) -> int:
        return self.process.pid

    def apply(self, objects: Sequence[dict[str, Any]]) -> None:
        text = yaml.safe_dump_all(list(objects))
        self.kubectl("apply", "--server-side", "--force-conflicts", "-f", "-", input=text)

    def start(self, command: Sequence[str], *, timeout: float = 120) -> None:
        """Start it (its own TMPDIR, the cluster's kubeconfig) and wait until /readyz answers."""
        self.tmpdir.mkdir(parents=True, exist_ok=True)
        self.process.start(
            command, env={**os.environ, "KUBECONFIG": self.kubeconfig, "TMPDIR": str(self.tmpdir)},
            ready=lambda: http_ok(f"http://127.0.0.1:{self.health_port}/readyz"), timeout=timeout,
        )  # fmt: skip

    def register(self, webhooks: list[dict[str, Any]], *, probe: str, timeout: float = 60) -> None:
        """Apply its webhook configurations (remembered for stop()) and wait until its webhook
        server answers TLS on `probe` (a path it serves) with the certificate the API server
        will be given."""
        self.webhooks += webhooks
        self.apply(webhooks)
        self.process.wait_until(
            lambda: self._webhook_answers(probe), timeout, "serving its webhooks"
        )

    def _webhook_answers(self, path: str) -> bool:
        context = ssl.create_default_context(cafile=str(self.cert_dir / "ca.crt"))
        try:
            urllib.request.urlopen(f"{self.url}{path}", timeout=2, context=context)
        except urllib.error.HTTPError as answer:
            # It answered (a GET is not an AdmissionReview); 404: the path's handler is not
            # registered yet (managers add their webhooks after the server started).
            return answer.code != 404
        except OSError:
            return False
        return True

    def log(self) -> str:
        return self.process.log()

    def stop(self) -> None:
        """Webhooks first (they would refuse what they match without the process), then the
        process: SIGTERM, SIGKILL after 30 s."""
        for hooks in self.webhooks:
            self.kubectl("delete", hooks["kind"].lower(), hooks["metadata"]["name"],
                         "--ignore-not-found", "--wait=false", check=False)  # fmt: skip
        self.process.stop()
