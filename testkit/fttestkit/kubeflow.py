"""Kubeflow Trainer and the JobSet controller it builds on, as host processes beside the local
cluster: the peer `make bench-operator` measures the operator against (bench/operator_load.py).

Both are built from their Go modules at the pins in hack/versions.env (`hack/build.sh
kubeflow`, part of `platform`), which also copies what installs them: their CRDs, their
webhook manifests and their shipped manager Configurations (<cache>/config/{trainer,jobset}/).
Each runs as testkit/fttestkit/controllers.py runs a manager: its own TMPDIR and CA, webhooks by
URL, /readyz on a free loopback port, the cluster's admin kubeconfig (in a cluster each has
its ServiceAccount; the rights do not change what they do). Their Configurations are the
shipped ones (the Trainer's TrainJob concurrency 5 and client QPS 50/burst 100, JobSet's QPS
500/burst 500) with what a host process needs instead: no leader election, no certificate
management (the certificates are ours), loopback addresses. `tuning(workers)` is what the
benchmark's second, tuned peer changes on top (see there). The Trainer runs with the flags
its Deployment has (`--zap-log-level=2`), JobSet with none (its Deployment's only flag,
`--leader-elect`, is off here).

Their webhooks are narrowed so that nothing but their own objects can be refused while they
run: every hook only in namespaces labelled `namespace_selector`, and JobSet's pod hooks
only for pods of a JobSet (the objectSelector JobSet's own kustomization adds). The webhook
configurations carry `labels` too, so that a run that was killed can find and delete them.

Metrics: the Trainer serves plain HTTP on 127.0.0.1 (`metrics.secureServing: false`);
JobSet always serves HTTPS behind the API server's TokenReview and SubjectAccessReview, so
a ServiceAccount (`fto-kubeflow-metrics` in `default`) bound to a ClusterRole that may read
/metrics gives the reader its token. Both are controller-runtime managers, so both count
every request their clients send in `rest_client_requests_total` (by method and code):
`requests()` reads them.
"""

from __future__ import annotations

import copy
from pathlib import Path
from typing import Any

import yaml

from fttestkit.controllers import (
    ControllerProcess,
    Kubectl,
    component_dir,
    read_metrics,
    webhooks_at_url,
)
from fttestkit.ports import free_port
from fttrainer.distributed import deep_merge as merged

TRAINER_API = "trainer.kubeflow.org/v1alpha1"
# JobSet names a JobSet's Jobs <jobset>-<replicatedJob>-<index> and labels them with this;
# the Trainer names a TrainJob's JobSet after the TrainJob.
JOBSET_NAME_LABEL = "jobset.sigs.k8s.io/jobset-name"
METRICS_READER = "fto-kubeflow-metrics"
METRICS_NAMESPACE = "default"
REQUESTS_METRIC = "rest_client_requests_total{"
TRAINJOB_KIND = "TrainJob.trainer.kubeflow.org"
# The tuned peer's client limits: out of reach at this scale (a 2-core API server serves well
# under 1000 requests/s), as the operator's client has no rate limit at all.
TUNED_QPS = 5000.0
TUNED_BURST = 5000


def tuning(workers: int) -> dict[str, dict[str, Any]]:
    """What the tuned peer changes in each manager's shipped Configuration, to match the
    operator's parallelism: the Trainer reconciles `workers` TrainJobs at once (the operator's
    --workers), and neither client is rate-limited in effect. JobSet's reconcile concurrency
    stays 1: v0.12.0 has no setting for it (its SetupWithManager sets no
    MaxConcurrentReconciles and its Configuration has no controller section)."""
    connection = {"qps": TUNED_QPS, "burst": TUNED_BURST}
    return {
        "trainer": {"controller": {"groupKindConcurrency": {TRAINJOB_KIND: workers}},
                    "clientConnection": connection},
        "jobset": {"clientConnection": connection},
    }  # fmt: skip


def trainer_configuration(
    shipped: dict[str, Any], *, webhook_port: int, health_port: int, metrics_port: int
) -> dict[str, Any]:
    """The Trainer's shipped Configuration (config.trainer.kubeflow.org/v1alpha1) for a host
    process. Its serving certificate is read from $TMPDIR/k8s-webhook-server/serving-certs."""
    config = copy.deepcopy(shipped)
    config["health"] = {**config.get("health", {}),
                        "healthProbeBindAddress": f"127.0.0.1:{health_port}"}  # fmt: skip
    config["metrics"] = {"bindAddress": f"127.0.0.1:{metrics_port}", "secureServing": False}
    config["webhook"] = {"port": webhook_port, "host": "127.0.0.1"}
    config["leaderElection"] = {**config.get("leaderElection", {}), "leaderElect": False}
    config["certManagement"] = {**config.get("certManagement", {}), "enable": False}
    return config


def jobset_configuration(
    shipped: dict[str, Any], *, webhook_port: int, health_port: int, metrics_port: int,
    cert_dir: Path,
) -> dict[str, Any]:  # fmt: skip
    """JobSet's shipped Configuration (config.jobset.x-k8s.io/v1alpha1) for a host process:
    webhook and metrics certificates from `cert_dir`."""
    config = copy.deepcopy(shipped)
    config["health"] = {"healthProbeBindAddress": f"127.0.0.1:{health_port}"}
    config["metrics"] = {"bindAddress": f"127.0.0.1:{metrics_port}", "certDir": str(cert_dir)}
    config["webhook"] = {"port": webhook_port, "host": "127.0.0.1", "certDir": str(cert_dir)}
    config["leaderElection"] = {**config.get("leaderElection", {}), "leaderElect": False}
    config["internalCertManagement"] = {"enable": False}
    return config


def webhook_scope(namespace_selector: dict[str, str] | None) -> Any:
    """The fields that narrow a hook (see the module): for webhooks_at_url's `scope`."""

    def scope(hook: dict[str, Any]) -> dict[str, Any]:
        fields: dict[str, Any] = {}
        if namespace_selector:
            fields["namespaceSelector"] = {"matchLabels": dict(namespace_selector)}
        if any("pods" in rule.get("resources", []) for rule in hook.get("rules", [])):
            fields["objectSelector"] = {
                "matchExpressions": [{"key": JOBSET_NAME_LABEL, "operator": "Exists"}]
            }
        return fields

    return scope


def metrics_reader(labels: dict[str, str]) -> list[dict[str, Any]]:
    """A ServiceAccount that may GET /metrics (JobSet's metrics ask the API server who calls)."""
    meta = {"name": METRICS_READER, "labels": dict(labels)}
    return [
        {"apiVersion": "v1", "kind": "ServiceAccount",
         "metadata": {**meta, "namespace": METRICS_NAMESPACE}},
        {"apiVersion": "rbac.authorization.k8s.io/v1", "kind": "ClusterRole", "metadata": meta,
         "rules": [{"nonResourceURLs": ["/metrics"], "verbs": ["get"]}]},
        {"apiVersion": "rbac.authorization.k8s.io/v1", "kind": "ClusterRoleBinding",
         "metadata": meta,
         "roleRef": {"apiGroup": "rbac.authorization.k8s.io", "kind": "ClusterRole",
                     "name": METRICS_READER},
         "subjects": [{"kind": "ServiceAccount", "name": METRICS_READER,
                       "namespace": METRICS_NAMESPACE}]},
    ]  # fmt: skip


def requests_by_method(metrics: dict[str, float]) -> dict[str, float]:
    """rest_client_requests_total summed by method (over codes and hosts)."""
    out: dict[str, float] = {}
    for key, value in metrics.items():
        if key.startswith(REQUESTS_METRIC):
            method = key.split('method="', 1)[1].split('"', 1)[0] if 'method="' in key else "?"
            out[method] = out.get(method, 0.0) + value
    return out


def delete_runtime(kubectl: Kubectl, name: str) -> None:
    """A ClusterTrainingRuntime, also when no Trainer runs to drop the resource-in-use
    finalizer it adds while TrainJobs use the runtime."""
    kubectl("patch", "clustertrainingruntime", name, "--type=merge",
            "-p", '{"metadata":{"finalizers":null}}', check=False)  # fmt: skip
    kubectl("delete", "clustertrainingruntime", name, "--ignore-not-found", "--wait=false",
            check=False)  # fmt: skip


class Kubeflow:
    """JobSet's and the Trainer's managers running, their CRDs and webhooks registered."""

    def __init__(
        self, kubectl: Kubectl, kubeconfig: str, workdir: Path, *,
        namespace_selector: dict[str, str] | None = None, labels: dict[str, str] | None = None,
        tuned: dict[str, dict[str, Any]] | None = None,
    ) -> None:  # fmt: skip
        """`tuned`: changes to each manager's shipped Configuration, by "trainer" and
        "jobset" (tuning()); none: as shipped."""
        self.kubectl = kubectl
        tuned = tuned or {}
        self.labels = dict(labels or {})
        self.dir = component_dir("kubeflow", build=True)
        config = self.dir / "config"
        crds = [yaml.safe_load(p.read_text())
                for p in sorted((config / "trainer/crds").glob("*.yaml"))
                + sorted((config / "jobset/crds").glob("*.yaml"))]  # fmt: skip
        text = yaml.safe_dump_all(crds)
        kubectl("apply", "--server-side", "--force-conflicts", "-f", "-", input=text)
        kubectl("wait", "--for=condition=Established", "--timeout=60s",
                *(f"crd/{crd['metadata']['name']}" for crd in crds))  # fmt: skip
        scope = webhook_scope(namespace_selector)
        self.jobset = ControllerProcess("jobset", workdir / "jobset", kubectl, kubeconfig)
        self.trainer = ControllerProcess("trainer", workdir / "trainer", kubectl, kubeconfig)
        self.metrics_ports = {"jobset": free_port(), "trainer": free_port()}
        self.token = ""
        try:
            # JobSet first: the Trainer's JobSets go through JobSet's webhooks.
            jobset_config = workdir / "jobset.yaml"
            jobset_config.write_text(yaml.safe_dump(jobset_configuration(
                merged(yaml.safe_load((config / "jobset/configuration.yaml").read_text()),
                       tuned.get("jobset", {})),
                webhook_port=self.jobset.webhook_port, health_port=self.jobset.health_port,
                metrics_port=self.metrics_ports["jobset"],
                cert_dir=self.jobset.cert_dir)))  # fmt: skip
            self.jobset.start([str(self.dir / "bin/jobset"), f"--config={jobset_config}"])
            self.jobset.register(webhooks_at_url(
                (config / "jobset/webhooks.yaml").read_text(), self.jobset.url,
                self.jobset.ca_bundle, prefix="fto-jobset-", scope=scope, labels=self.labels,
            ), probe="/mutate-jobset-x-k8s-io-v1alpha2-jobset")  # fmt: skip
            trainer_config = workdir / "trainer.yaml"
            trainer_config.write_text(yaml.safe_dump(trainer_configuration(
                merged(yaml.safe_load((config / "trainer/configuration.yaml").read_text()),
                       tuned.get("trainer", {})),
                webhook_port=self.trainer.webhook_port, health_port=self.trainer.health_port,
                metrics_port=self.metrics_ports["trainer"])))  # fmt: skip
            self.trainer.start([str(self.dir / "bin/trainer-controller-manager"),
                                f"--config={trainer_config}", "--zap-log-level=2"])  # fmt: skip
            self.trainer.register(webhooks_at_url(
                (config / "trainer/webhooks.yaml").read_text(), self.trainer.url,
                self.trainer.ca_bundle, prefix="fto-trainer-", scope=scope, labels=self.labels,
            ), probe="/validate-trainer-kubeflow-org-v1alpha1-trainjob")  # fmt: skip
            self.kubectl("apply", "--server-side", "-f", "-",
                         input=yaml.safe_dump_all(metrics_reader(self.labels)))  # fmt: skip
            self.token = kubectl("create", "token", METRICS_READER, "-n", METRICS_NAMESPACE,
                                 "--duration=24h").strip()  # fmt: skip
        except BaseException:
            self.stop()
            raise

    @property
    def pids(self) -> dict[str, int]:
        return {"trainer-controller-manager": self.trainer.pid, "jobset": self.jobset.pid}

    def torch_runtime(self) -> dict[str, Any]:
        """The Trainer's torch-distributed ClusterTrainingRuntime (its manifests/base/runtimes)."""
        return dict(
            yaml.safe_load((self.dir / "config/trainer/torch_distributed.yaml").read_text())
        )

    def requests(self) -> dict[str, dict[str, float]]:
        """Each manager's client requests so far, by method (rest_client_requests_total)."""
        trainer = read_metrics(f"http://127.0.0.1:{self.metrics_ports['trainer']}/metrics")
        jobset = read_metrics(f"https://127.0.0.1:{self.metrics_ports['jobset']}/metrics",
                              token=self.token, cafile=self.jobset.cert_dir / "ca.crt")  # fmt: skip
        return {"trainer": requests_by_method(trainer), "jobset": requests_by_method(jobset)}

    def log(self) -> str:
        return f"--- trainer\n{self.trainer.log()}\n--- jobset\n{self.jobset.log()}"

    def stop(self) -> None:
        """Webhooks, then the processes (the Trainer first), then the metrics reader. The CRDs
        stay (deleting them would race the next start's create)."""
        self.trainer.stop()
        self.jobset.stop()
        for kind, namespace in (("clusterrolebinding", None), ("clusterrole", None),
                                ("serviceaccount", METRICS_NAMESPACE)):  # fmt: skip
            where = ["-n", namespace] if namespace else []
            self.kubectl("delete", kind, METRICS_READER, *where, "--ignore-not-found",
                         "--wait=false", check=False)  # fmt: skip
