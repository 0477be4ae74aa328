"""The operator benchmark's Kubeflow Trainer phase, the parts that need no cluster: the
runtime and TrainJobs it applies ask for what the FineTuneJobs ask for, the peer's webhooks
are narrowed to the benchmark's objects, its managers are configured for a host process, and
the table has a column per phase with ours against each (bench/operator_load.py,
testkit/fttestkit/kubeflow.py; the phase itself runs in tests/integration/test_make_targets.py).
"""

from __future__ import annotations

import argparse
import copy
from pathlib import Path
from typing import Any

import yaml

from bench import operator_load as bench
from ftapi import parse_job
from ftoperator.children import build_children
from ftoperator.config import Settings
from fttestkit.controllers import webhooks_at_url
from fttestkit.kubeflow import (
    JOBSET_NAME_LABEL,
    jobset_configuration,
    requests_by_method,
    trainer_configuration,
    webhook_scope,
)

# Kubeflow Trainer v2.3.0's manifests/base/runtimes/torch_distributed.yaml (its spec).
TORCH_RUNTIME: dict[str, Any] = {
    "apiVersion": "trainer.kubeflow.org/v1alpha1",
    "kind": "ClusterTrainingRuntime",
    "metadata": {"name": "torch-distributed",
                 "labels": {"trainer.kubeflow.org/framework": "torch"}},
    "spec": {
        "mlPolicy": {"numNodes": 1, "torch": {}},
        "template": {"spec": {"replicatedJobs": [{
            "name": "node",
            "template": {
                "metadata": {"labels": {"trainer.kubeflow.org/trainjob-ancestor-step": "trainer"}},
                "spec": {"template": {"spec": {"containers": [
                    {"name": "node", "image": "pytorch/pytorch:2.13.0-cuda13.0-cudnn9-runtime"},
                ]}}},
            },
        }]}},
    },
}  # fmt: skip

# JobSet v0.12.0's config/components/webhook/manifests.yaml, the hooks' names and rules.
JOBSET_WEBHOOKS = """
apiVersion: admissionregistration.k8s.io/v1
kind: MutatingWebhookConfiguration
metadata: {name: mutating-webhook-configuration}
webhooks:
- name: mjobset.kb.io
  clientConfig: {service: {name: webhook-service, namespace: system,
                           path: /mutate-jobset-x-k8s-io-v1alpha2-jobset}}
  rules: [{apiGroups: [jobset.x-k8s.io], apiVersions: [v1alpha2], operations: [CREATE],
           resources: [jobsets]}]
- name: mpod.kb.io
  clientConfig: {service: {name: webhook-service, namespace: system, path: /mutate--v1-pod}}
  rules: [{apiGroups: [""], apiVersions: [v1], operations: [CREATE], resources: [pods]}]
"""


def _ftj_pod() -> dict[str, Any]:
    job = parse_job(bench.manifest("bench-0001", "ns", "1h"))
    pod: dict[str, Any] = build_children(job, attempt=0, settings=Settings()).job["spec"][
        "template"
    ]
    return pod


def _runtime_pod(runtime: dict[str, Any]) -> dict[str, Any]:
    (replicated,) = runtime["spec"]["template"]["spec"]["replicatedJobs"]
    pod: dict[str, Any] = replicated["template"]["spec"]["template"]
    return pod


def test_the_runtime_places_pods_where_the_operator_places_the_finetunejobs() -> None:
    shipped = copy.deepcopy(TORCH_RUNTIME)
    runtime = bench.kubeflow_runtime(TORCH_RUNTIME, "1h")
    pod, ours = _runtime_pod(runtime), _ftj_pod()
    assert (
        pod["spec"]["nodeSelector"]
        == ours["spec"]["nodeSelector"]
        == {"finetune.dev/pool": bench.POOL}
    )
    key = lambda t: sorted(t.items())  # noqa: E731
    assert sorted(pod["spec"]["tolerations"], key=key) == sorted(
        ours["spec"]["tolerations"], key=key
    )
    assert pod["metadata"]["annotations"] == {"finetune.dev/kwok-run-duration": "1h"}
    assert ours["metadata"]["annotations"]["finetune.dev/kwok-run-duration"] == "1h"
    # Otherwise the Trainer's runtime as it ships, which stays untouched.
    assert runtime["metadata"]["name"] == bench.RUNTIME
    assert runtime["metadata"]["labels"][bench.BENCH_LABEL] == "true"
    assert runtime["spec"]["mlPolicy"] == {"numNodes": 1, "torch": {}}
    assert pod["spec"]["containers"] == _runtime_pod(shipped)["spec"]["containers"]
    assert shipped == TORCH_RUNTIME


def test_a_trainjob_asks_for_one_node_and_one_gpu_like_the_finetunejob() -> None:
    trainjob = bench.trainjob("bench-0001", "ns")
    assert trainjob["metadata"] == {"name": "bench-0001", "namespace": "ns"}
    assert trainjob["spec"]["runtimeRef"]["name"] == bench.RUNTIME
    assert trainjob["spec"]["runtimeRef"]["kind"] == "ClusterTrainingRuntime"
    assert trainjob["spec"]["trainer"]["numNodes"] == 1
    gpus = trainjob["spec"]["trainer"]["resourcesPerNode"]["limits"]["nvidia.com/gpu"]
    (container,) = [c for c in _ftj_pod()["spec"]["containers"] if c["name"] == "trainer"]
    assert gpus == container["resources"]["limits"]["nvidia.com/gpu"] == "1"


def test_jobsets_webhooks_match_only_the_bench_namespaces_and_jobset_pods() -> None:
    configurations = webhooks_at_url(
        JOBSET_WEBHOOKS, "https://127.0.0.1:1", "Y2E=", prefix="fto-jobset-",
        scope=webhook_scope({bench.BENCH_LABEL: "true"}), labels={bench.BENCH_LABEL: "true"},
    )  # fmt: skip
    (configuration,) = configurations
    assert configuration["metadata"] == {
        "name": "fto-jobset-mutating-webhook-configuration",
        "labels": {bench.BENCH_LABEL: "true"},
    }
    jobsets, pods = configuration["webhooks"]
    for hook in (jobsets, pods):
        assert hook["namespaceSelector"] == {"matchLabels": {bench.BENCH_LABEL: "true"}}
        assert hook["clientConfig"]["caBundle"] == "Y2E="
    assert pods["clientConfig"]["url"] == "https://127.0.0.1:1/mutate--v1-pod"
    assert pods["objectSelector"] == {
        "matchExpressions": [{"key": JOBSET_NAME_LABEL, "operator": "Exists"}]
    }
    assert "objectSelector" not in jobsets


def test_the_managers_run_as_host_processes_with_their_shipped_tuning(tmp_path: Path) -> None:
    trainer = trainer_configuration(
        {"controller": {"groupKindConcurrency": {"TrainJob.trainer.kubeflow.org": 5}},
         "clientConnection": {"qps": 50, "burst": 100},
         "leaderElection": {"leaderElect": True, "resourceName": "trainer.kubeflow.org"},
         "certManagement": {"enable": True}, "metrics": {"bindAddress": ":8443"}},
        webhook_port=1, health_port=2, metrics_port=3,
    )  # fmt: skip
    assert trainer["controller"]["groupKindConcurrency"]["TrainJob.trainer.kubeflow.org"] == 5
    assert trainer["clientConnection"] == {"qps": 50, "burst": 100}
    assert trainer["leaderElection"]["leaderElect"] is False
    assert trainer["certManagement"]["enable"] is False
    assert trainer["metrics"] == {"bindAddress": "127.0.0.1:3", "secureServing": False}
    assert trainer["webhook"] == {"port": 1, "host": "127.0.0.1"}
    assert trainer["health"]["healthProbeBindAddress"] == "127.0.0.1:2"
    jobset = jobset_configuration(
        {"leaderElection": {"leaderElect": True}, "internalCertManagement": {"enable": True}},
        webhook_port=1, health_port=2, metrics_port=3, cert_dir=tmp_path,
    )  # fmt: skip
    assert jobset["leaderElection"]["leaderElect"] is False
    assert jobset["internalCertManagement"] == {"enable": False}
    assert jobset["webhook"] == {"port": 1, "host": "127.0.0.1", "certDir": str(tmp_path)}
    assert jobset["metrics"] == {"bindAddress": "127.0.0.1:3", "certDir": str(tmp_path)}
    yaml.safe_dump(jobset)  # written to a file as it is


def test_client_requests_are_summed_by_method() -> None:
    metrics = {
        'rest_client_requests_total{code="200",host="127.0.0.1:1",method="GET"}': 3.0,
        'rest_client_requests_total{code="404",host="127.0.0.1:1",method="GET"}': 1.0,
        'rest_client_requests_total{code="201",host="127.0.0.1:1",method="POST"}': 2.0,
        'workqueue_adds_total{name="trainjob"}': 9.0,
    }
    assert requests_by_method(metrics) == {"GET": 4.0, "POST": 2.0}


def _phase(name: str, latency: float, *, cpu: float | None, rss: float | None) -> bench.Phase:
    phase = bench.Phase(name, 2)
    for i, job in enumerate(("bench-0000", "bench-0001")):
        # The raw loop also records its Job's own create call.
        created = i + 0.05 if name == "raw API" else None
        phase.timings[job] = bench.Timing(started=float(i), applied=i + 0.01, job_created=created)
        phase.added[job] = i + 0.01 + latency
    phase.requests = {"create": 14.0}
    phase.apiserver_cpu_s = 0.1
    phase.controller_cpu_s, phase.controller_peak_rss_mb = cpu, rss
    phase.pods = {"Running": 2}
    return phase


def test_the_table_has_a_column_per_phase_and_ours_against_each() -> None:
    raw = _phase("raw API", 0.1, cpu=None, rss=None)
    peer = _phase("Kubeflow", 2.0, cpu=4.0, rss=120.0)
    peer.controllers = {
        "jobset": {"cpu_s": 1.0, "peak_rss_mb": 50.0},
        "trainer-controller-manager": {"cpu_s": 3.0, "peak_rss_mb": 70.0},
    }
    ours = _phase("operator", 1.0, cpu=2.0, rss=200.0)
    text = bench.render([raw, peer, ours], argparse.Namespace(jobs=2, rate=0))
    header = next(line for line in text.splitlines() if "raw API" in line and "op/raw" in line)
    assert header.split() == ["raw", "API", "Kubeflow", "operator", "op/raw", "op/Kubeflow"]
    p50 = next(line for line in text.splitlines() if line.startswith("apply -> Job p50"))
    assert p50.split()[-5:] == ["0.100", "2.000", "1.000", "10.00", "0.50"]
    assert "jobset: CPU 1.0 s, peak RSS 50 MB" in text
    assert "PASS  apply -> Job p99 (s) <= Kubeflow Trainer's: 1 vs 2" in text
    assert "FAIL  controller peak RSS (MB) <= Kubeflow Trainer's: 200 vs 120" in text
    # Without the peer: the two-column table and no comparison with it.
    text = bench.render([raw, ours], argparse.Namespace(jobs=2, rate=0))
    assert "Kubeflow" not in text
