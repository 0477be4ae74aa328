"""The operator benchmark's Kubeflow Trainer phase, the parts that need no cluster: the
runtime and TrainJobs it applies ask for what the FineTuneJobs ask for, the peer's webhooks
are narrowed to the benchmark's objects, its managers are configured for a host process, and
the table has a column per phase with ours against each (bench/operator_load.py,
testkit/fttestkit/kubeflow.py; the phase itself runs in tests/integration/test_make_targets.py).
"""

from __future__ import annotations

import argparse
import copy
import json
from pathlib import Path
from typing import Any

import pytest
import yaml

from bench import operator_load as bench
from ftapi import parse_job
from ftoperator.children import build_children
from ftoperator.config import Settings
from fttestkit import bench_report as report
from fttestkit.controllers import webhooks_at_url
from fttestkit.kubeflow import (
    JOBSET_NAME_LABEL,
    jobset_configuration,
    merged,
    requests_by_method,
    trainer_configuration,
    tuning,
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


def _phase(
    name: str, latency: float, *, cpu: float | None, rss: float | None, repeat: int = 0
) -> bench.Phase:
    phase = bench.Phase(name, 2, repeat=repeat)
    for i, job in enumerate(("bench-0000", "bench-0001")):
        # The raw loop also records its Job's own create call.
        created = i + 0.05 if name == "raw" else None
        phase.timings[job] = bench.Timing(
            started=float(i), applied=i + 0.01, job_created=created, due=float(i)
        )
        phase.added[job] = i + latency
    phase.requests = {"create": 14.0}
    phase.apiserver_cpu_s, phase.window_s = 0.1, 5.0
    phase.controller_cpu_s, phase.controller_peak_rss_mb = cpu, rss
    phase.pods = {"Running": 2}
    return phase


def _args(**changes: Any) -> argparse.Namespace:
    return argparse.Namespace(**{"jobs": 2, "rate": 0, "max_load": 2.0, **changes})


def test_latency_runs_from_the_moment_the_create_request_was_sent() -> None:
    # Not from when the call returned: a slow create is part of what the submitter waits.
    phase = _phase("operator", 1.0, cpu=1.0, rss=1.0)
    phase.timings["bench-0000"].applied = 0.9
    assert phase.latencies() == [1.0, 1.0]
    assert phase.summary()["call_p99_ms"] == 900


def test_the_compared_latency_runs_from_the_moment_the_create_was_due() -> None:
    # A create sent late (its client thread was waiting on slower creates) waited all the
    # same: the due rows count that wait, the sent rows do not.
    phase = _phase("operator", 1.0, cpu=1.0, rss=1.0)
    late = phase.timings["bench-0001"]
    late.due = 0.0  # due at the start, sent at 1.0, its Job ADDED at 2.0
    assert sorted(phase.from_due()) == [1.0, 2.0]
    assert phase.latencies() == [1.0, 1.0]
    summary = phase.summary()
    assert (summary["due_max_s"], summary["due_all_s"], summary["max_s"]) == (2.0, 2.0, 1.0)
    # A run recorded before the due times were (no due): no due rows, not zeros.
    for timing in phase.timings.values():
        timing.due = None
    assert phase.summary()["due_p99_s"] is None and phase.summary()["due_all_s"] is None


def test_the_table_has_a_column_per_phase_and_ours_against_the_tuned_peer() -> None:
    raw = _phase("raw", 0.1, cpu=None, rss=None)
    shipped = _phase("kubeflow", 4.0, cpu=4.0, rss=120.0)
    tuned = _phase("kubeflow-tuned", 2.0, cpu=4.0, rss=120.0)
    tuned.controllers = {
        "jobset": {"cpu_s": 1.0, "peak_rss_mb": 50.0},
        "trainer-controller-manager": {"cpu_s": 3.0, "peak_rss_mb": 70.0},
    }
    ours = _phase("operator", 1.0, cpu=2.0, rss=200.0)
    ours.watch_events = {"FineTuneJob": 6.0, "Pod": 8.0, "Node": 0.0}
    ours.gc_seconds = {"0": 0.5, "1": 0.25, "2": 1.0}
    text = report.render([ours, raw, tuned, shipped], _args(), None)
    assert "watch events per job by kind: FineTuneJob 3.00, Pod 4.00" in text
    assert "garbage collector 1.8 s (full collections 1.0 s)" in text
    header = next(line for line in text.splitlines() if "op/raw" in line)
    # Columns in a fixed order whatever order the phases ran in; ratios to raw and the peer.
    assert header.split() == ["raw", "kubeflow", "kubeflow-tuned", "operator", "op/raw",
                              "op/tuned"]  # fmt: skip
    p50 = next(line for line in text.splitlines() if line.startswith("create sent -> Job p50"))
    assert p50.split()[-6:] == ["0.100", "4.000", "2.000", "1.000", "10.00", "0.50"]
    assert "one run (no spread)" in text
    assert "jobset: CPU 1.0 s, peak RSS 50 MB" in text
    assert "MET           due -> Job p99 (s) <= kubeflow-tuned's: ours 1.000 vs 2.000" in text
    assert "create sent -> Job p99 (s) <=" not in text  # shown, not compared
    assert ("MISSED        controller peak RSS (MB) <= kubeflow-tuned's (compared, not a "
            "target): ours 200 vs 120") in text  # fmt: skip
    assert "API requests per job <= 1.2x kubeflow-tuned's: ours 7.00 vs 8.40" in text
    assert report.missed([raw, shipped, tuned, ours]) == []  # RSS is not a target
    # Without the tuned peer, the one as shipped; without either, no comparison.
    assert "op/kubeflow" in report.render([raw, shipped, ours], _args(), None)
    text = report.render([raw, ours], _args(), None)
    assert "kubeflow" not in text and "<=" not in text


def test_repeats_show_min_median_max_and_a_verdict_needs_more_than_the_noise() -> None:
    runs = []
    for repeat, (ours_s, peer_s) in enumerate(((1.0, 1.1), (1.4, 1.2), (1.2, 1.6))):
        runs += [_phase("operator", ours_s, cpu=1.0, rss=1.0, repeat=repeat),
                 _phase("kubeflow-tuned", peer_s, cpu=1.0, rss=1.0, repeat=repeat)]  # fmt: skip
    text = report.render(runs, _args(), None)
    assert "3 repeat(s), the phase order rotated" in text
    row = next(line for line in text.splitlines() if line.startswith("due -> Job p99"))
    assert "1.200 (1.000..1.400)" in row and "1.200 (1.100..1.600)" in row
    # Equal medians, overlapping ranges: within noise, and not counted as missed.
    assert "WITHIN NOISE  due -> Job p99 (s)" in text
    assert report.missed(runs) == []


def test_verdicts() -> None:
    def s(*values: float) -> report.Spread:
        spread = report.Spread.of(values)
        assert spread is not None
        return spread

    assert report.verdict(s(1, 2, 3), s(4, 5, 6)) == report.MET  # worst beats best
    assert report.verdict(s(4, 5, 6), s(1, 2, 3)) == report.MISSED
    # Overlapping, medians 1 apart, ranges 2 wide: noise; 3 apart: a difference.
    assert report.verdict(s(1, 3, 3), s(2, 4, 4)) == report.NOISE
    assert report.verdict(s(1, 2, 3), s(2.5, 5, 5)) == report.MET
    assert report.verdict(s(2.5, 5, 5), s(1, 2, 3)) == report.MISSED
    assert report.verdict(s(2), s(2)) == report.NOISE  # one run each, a tie
    assert report.verdict(s(2), s(3)) == report.MET
    assert s(3, None, 1) == report.Spread(1, 2, 3, 2)  # type: ignore[arg-type]
    assert report.Spread.of([None]) is None


def test_a_target_missed_beyond_the_noise_fails_a_strict_run() -> None:
    ours = _phase("operator", 3.0, cpu=9.0, rss=1.0)
    peer = _phase("kubeflow-tuned", 1.0, cpu=1.0, rss=1.0)
    assert report.missed([ours, peer]) == [
        "first due -> every Job (s)", "due -> Job p99 (s)", "controller CPU s",
    ]  # fmt: skip
    slow = _phase("operator", 6.0, cpu=1.0, rss=400.0)
    failed = report.missed([slow])
    assert any(f.startswith("FAIL  p99 due -> Job") for f in failed)
    assert any(f.startswith("FAIL  operator peak RSS") for f in failed)


def test_the_phase_order_rotates_with_every_repeat() -> None:
    kinds = bench.phase_kinds(bench.build_parser().parse_args([]))
    assert kinds == ["raw", "kubeflow", "kubeflow-tuned", "operator"]
    orders = [bench.rotated(kinds, r) for r in range(4)]
    assert orders[1] == ["kubeflow", "kubeflow-tuned", "operator", "raw"]
    # Every phase runs once in every position.
    assert all(sorted(order[i] for order in orders) == sorted(kinds) for i in range(4))
    assert bench.rotated(kinds, 4) == kinds
    args = bench.build_parser().parse_args(["--skip-raw", "--kubeflow", "tuned"])
    assert bench.phase_kinds(args) == ["kubeflow-tuned", "operator"]
    assert bench.phase_kinds(bench.build_parser().parse_args(["--skip-kubeflow"])) == [
        "raw", "operator"]  # fmt: skip


def test_the_tuned_peer_matches_the_operators_parallelism_and_keeps_the_rest() -> None:
    shipped = {"controller": {"groupKindConcurrency": {
        "TrainJob.trainer.kubeflow.org": 5, "ClusterTrainingRuntime.trainer.kubeflow.org": 1}},
        "clientConnection": {"qps": 50, "burst": 100}, "statusServer": {"qps": 5}}  # fmt: skip
    changes = tuning(64)
    trainer = merged(shipped, changes["trainer"])
    assert trainer["controller"]["groupKindConcurrency"] == {
        "TrainJob.trainer.kubeflow.org": 64,
        "ClusterTrainingRuntime.trainer.kubeflow.org": 1,
    }
    assert trainer["clientConnection"] == {"qps": 5000.0, "burst": 5000}
    assert trainer["statusServer"] == {"qps": 5}
    assert shipped["clientConnection"] == {"qps": 50, "burst": 100}  # a copy
    jobset = merged({"leaderElection": {"leaderElect": True}}, changes["jobset"])
    assert jobset == {"leaderElection": {"leaderElect": True},
                      "clientConnection": {"qps": 5000.0, "burst": 5000}}  # fmt: skip
    # The operator's own default is what the tuned Trainer matches when --workers is unset.
    assert bench.DEFAULT_WORKERS == 64


def test_a_busy_machine_is_refused_before_anything_starts() -> None:
    with pytest.raises(SystemExit) as refused:
        bench.main(["--max-load", "-1", "--load-wait", "0"])
    assert "the machine is busy: load average" in str(refused.value)
    assert "--ignore-load" in str(refused.value)


def test_cpu_at_a_moment_is_interpolated_between_samples() -> None:
    sampler = bench.Sampler.__new__(bench.Sampler)
    sampler.samples = [(10.0, 0, 0, 1.0), (11.0, 0, 0, 3.0)]
    assert sampler.cpu_at(10.5) == 2.0
    assert sampler.cpu_at(9.0) == 1.0 and sampler.cpu_at(12.0) == 3.0


def test_a_run_read_back_from_its_json_renders_the_same_report(tmp_path: Path) -> None:
    """--resume folds an earlier run's phases into the report as if they had run now."""
    args = bench.build_parser().parse_args(["--jobs", "2", "--rate", "0"])
    ours = _phase("operator", 1.0, cpu=2.0, rss=200.0)
    ours.watch_events, ours.relisted, ours.reconcile_mean_ms = {"Pod": 8.0}, 3, 12.0
    ours.passes = 15.0
    ours.gc_seconds = {"0": 0.5, "2": 2.0}
    ours.errors = [f"create {i}: 500" for i in range(30)]
    ours.load = (1.5, 1.75)
    peer = _phase("kubeflow-tuned", 2.0, cpu=4.0, rss=120.0, repeat=1)
    peer.position = 2
    peer.controllers = {"jobset": {"cpu_s": 1.0, "peak_rss_mb": 50.0}}
    runs: list[report.PhaseLike] = [ours, peer]
    cost = {"sequential_p50_ms": 6.0, "burst_p50_ms": 50.0, "burst_p99_ms": 300.0,
            "burst_per_s": 170.0}  # fmt: skip
    path = tmp_path / "run.json"
    bench.write_json(path, report.document(runs, args, cost, complete=False))
    back, back_cost = bench.resumed(path, args)
    assert [(p.name, p.repeat, p.position) for p in back] == [
        ("operator", 0, 0), ("kubeflow-tuned", 1, 2)]  # fmt: skip
    assert back_cost == cost
    assert report.render(back, args, back_cost) == report.render(runs, args, cost)
    assert "30 failed creates" in report.render(back, args, back_cost)  # 20 kept, 30 counted
    assert "7.5 passes per job" in report.render(back, args, back_cost)
    assert "garbage collector 2.5 s (full collections 2.0 s)" in report.render(back, args, cost)
    assert json.loads(path.read_text())["complete"] is False
    assert not path.with_name("run.json.partial").exists()


def test_a_resumed_run_does_only_what_is_left_and_only_with_the_same_settings(
    tmp_path: Path,
) -> None:
    kinds = ["raw", "kubeflow-tuned", "operator"]
    assert bench.pending(kinds, 2, set()) == [
        (0, 0, "raw"), (0, 1, "kubeflow-tuned"), (0, 2, "operator"),
        (1, 0, "kubeflow-tuned"), (1, 1, "operator"), (1, 2, "raw")]  # fmt: skip
    # Cut short in repeat 2 after its first phase: the rest keep their rotated places.
    done = {(0, "raw"), (0, "kubeflow-tuned"), (0, "operator"), (1, "kubeflow-tuned")}
    assert bench.pending(kinds, 2, done) == [(1, 1, "operator"), (1, 2, "raw")]
    assert bench.pending(kinds, 1, done) == []
    path = tmp_path / "run.json"
    args = bench.build_parser().parse_args(["--jobs", "3000", "--nodes", "384"])
    bench.write_json(path, report.document([_phase("raw", 0.1, cpu=None, rss=None)], args, None))
    more = bench.build_parser().parse_args(["--jobs", "3000", "--nodes", "384", "--repeats", "3"])
    assert len(bench.resumed(path, more)[0]) == 1  # more repeats of the same run: fine
    other = bench.build_parser().parse_args(["--jobs", "1000", "--nodes", "384"])
    with pytest.raises(SystemExit, match=r"other settings: --jobs 3000 \(now 1000\)"):
        bench.resumed(path, other)
