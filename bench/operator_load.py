"""The operator at scale: FineTuneJobs applied -> batch Jobs created, against a plain client
and against Kubeflow Trainer, as shipped and tuned.

    make bench-operator                                   # 1000 jobs at 10/s, 128 extra GPU nodes
    .venv/bin/python bench/operator_load.py --jobs 100 --nodes 16 --rate 10   # quick
    .venv/bin/python bench/operator_load.py --jobs 1000 --rate 0 --repeats 3 --json op.json
    .venv/bin/python bench/operator_load.py --jobs 1000 --rate 0 --repeats 3 --resume op.json

Runs on the local cluster (hack/cluster-up.sh; started when KUBECONFIG is not set). Adds
--nodes kwok GPU nodes (bench-gpu-NNN, 8 GPUs each, tainted so that only the benchmark's pods
land there). First, with no controller running, what a FineTuneJob create costs by itself
(--create-cost; bench/create_cost.py takes that cost apart). Then the phases, one after
the other, each in a fresh namespace that is deleted (and waited for) before the next;
with --repeats N all of them N times, the order rotated each time (raw, kubeflow,
kubeflow-tuned, operator; then kubeflow, ..., raw; ...):

  raw             the baseline: a plain client loop (threads, the kubernetes client through
                  ftoperator.kube.Kube) creates for each job exactly the objects the operator
                  would (ftoperator.children: the config ConfigMap, FineTuneJobProgress,
                  then the Job; with --trainer-identity job also a ServiceAccount, Role and
                  RoleBinding per job, else the namespace's shared three once, before the
                  burst), pre-rendered, at the same rate. What the API server costs by itself.
  kubeflow        Kubeflow Trainer's controller manager and JobSet's, built from their Go
                  modules (hack/build.sh kubeflow), run as processes with their shipped
                  Configurations (testkit/fttestkit/kubeflow.py); the loop creates TrainJobs at
                  the same rate against a ClusterTrainingRuntime made from the Trainer's
                  torch-distributed one, TrainJob -> JobSet -> Job.
  kubeflow-tuned  the peer the targets are judged against: the same, tuned to the operator's
                  parallelism (fttestkit.kubeflow.tuning): the Trainer reconciles --workers
                  TrainJobs at once (64, the operator's default) instead of 5, and neither
                  manager's client is rate-limited in effect (QPS/burst 5000 instead of 50/100
                  and 500/500). JobSet reconciles one JobSet at a time: it has no setting.
  operator        `python -m ftoperator` as a subprocess, default settings (64 workers, 128
                  threads and connections, no client rate limit), watching every namespace as
                  the Helm chart's default does and as Kubeflow's managers do; the loop creates
                  FineTuneJobs at the same rate and the operator does the rest.

--json is written after every phase; --resume FILE goes on from the phase runs FILE holds
(a run cut short, or more repeats of the same settings), so a long run can take several
sittings: each phase is whole in itself (its own namespace, window and idle baseline).

Every job asks for 1 node x 1 GPU; its pod keeps running (--run-duration), so the cluster ends
with every job in flight, as after a real burst of submissions.

The window. Every phase is measured from its first create request to the end of its work:
the last change of its controllers' request counters (their last status write) or of its
pods' phases (kwok starts them), whichever is later, once neither has moved for --quiet
seconds. Controllers' phases first run one warm-up job end to end and wait until quiet.
Before each burst, --idle seconds of nothing give the idle baseline: the API server's CPU
rate then (the quieter half of it), times the window, is subtracted from its CPU over the
window.

  due ->     the Job's ADDED event on a watch this script holds, minus the moment the pacing
   Job       asked for the job's create (--rate; at 0, the burst's start): p50/p99/max, and
             the first due create -> the last Job. The same arrival for every phase: what
             the compared latency rows count.
  sent ->    the same ADDED minus the moment the job's first create request was sent
   Job       (operator: the FineTuneJob; Kubeflow: the TrainJob; raw: its first child):
             shown, not compared (a client thread sends late when creates are slow)
  all Jobs   first create request -> the last Job's ADDED event; jobs / that = throughput
  requests   over the window, per job. Operator: its finetune_api_requests_total (/metrics);
             Kubeflow: both managers' rest_client_requests_total (every request their
             clients send, watches included); raw: its creates per job (3, 6 with
             --trainer-identity job)
  CPU, RSS   the controller processes (the operator; the Trainer and JobSet together, and each
             alone): CPU seconds (utime+stime) over the window and peak RSS (VmHWM), from
             /proc, sampled every 0.5 s; the API server's CPU seconds per job, less the idle
             baseline
  collector  the operator's garbage collector over the window, by generation: its
             finetune_operator_gc_seconds_total (ftoperator/gc_policy.py)

The load average: the run refuses to start while the 1-minute load average is above
--max-load (default: the CPU count) after --load-wait seconds, and waits for it before every
phase; --ignore-load runs anyway and marks such phases LOADED.

With --steady SECONDS, once the burst has settled, the steady state of a busy cluster: every
job's trainer reports progress every --progress-every seconds (10), as the trainer does, for
that long (patches of each job's FineTuneJobProgress, spread evenly); measured: the operator's
CPU over the window (mean and busiest 5 s, % of one core; target < 100 %), its API requests
per report, and how long until every job's status shows its last report.

The report (fttestkit/bench_report.py): every row as median (min..max) over the repeats; the
operator's own targets (every Job within 120 s, p99 < 5 s, peak RSS < 300 MB) on its worst
repeat, PASS/FAIL; against the peer (Kubeflow tuned), each target met / missed / within
noise: ours <= the peer's on every Job after, p99 latency, API server CPU per job and
controller CPU, and requests per job <= 1.2x. Exit status 0 unless --strict and a target is
missed. docs/benchmarks.md has the method and the results.
"""

from __future__ import annotations

import argparse
import copy
import fcntl
import functools
import json
import os
import re
import shlex
import shutil
import subprocess
import sys
import tempfile
import threading
import time
import uuid
from collections import Counter
from collections.abc import Callable, Iterator
from concurrent.futures import ThreadPoolExecutor
from contextlib import contextmanager, suppress
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from kubernetes import client, config, watch
from kubernetes.client.exceptions import ApiException
from urllib3.exceptions import HTTPError

from ftapi import parse_job
from ftapi.constants import GROUP, PLURAL, PROGRESS_PLURAL, VERSION
from ftapi.progress import REPORT_FIELD, ProgressReport
from ftoperator.children import LABEL_JOB, build_children, build_namespace_identity
from ftoperator.config import DEFAULTS, Settings
from ftoperator.kube import Kube
from fttestkit import bench_report as report
from fttestkit.bench_report import percentile
from fttestkit.chart import trainer_policy_objects
from fttestkit.controllers import read_metrics
from fttestkit.create_cost import timed_creates
from fttestkit.kubeflow import JOBSET_NAME_LABEL, TRAINER_API, Kubeflow, tuning
from fttestkit.kubeflow import delete_runtime as kubeflow_delete_runtime
from fttestkit.paths import REPO
from fttestkit.ports import free_port
from fttestkit.process import ManagedProcess, http_ok, sigterm_as_ctrl_c

CRDS = [
    REPO / "crds" / f"finetune.dev_{plural}.yaml"
    for plural in ("finetunejobs", "finetunejobprogresses")
]
STATE = Path(os.environ.get("FTO_STATE", Path.home() / ".cache/finetune-operator/cluster"))
BENCH_LABEL = "finetune.dev/bench"  # on the namespaces and nodes this script creates
POOL = "bench"  # finetune.dev/pool of the benchmark's nodes (the jobs select it)
GPUS_PER_NODE = 8
WARMUP = "warmup"
DEFAULT_WORKERS = int(DEFAULTS["workers"])


# --------------------------------------------------------------------------------------------
# What the cluster gets


def bench_node(name: str, zone: str) -> dict[str, Any]:
    """A kwok GPU node like hack/cluster-up.sh's, in its own pool with its own taint."""
    cpu, memory = 96, 680
    return {
        "apiVersion": "v1",
        "kind": "Node",
        "metadata": {
            "name": name,
            "annotations": {"kwok.x-k8s.io/node": "fake", "node.alpha.kubernetes.io/ttl": "0"},
            "labels": {
                "type": "kwok", BENCH_LABEL: "true", "kubernetes.io/arch": "amd64",
                "kubernetes.io/os": "linux", "kubernetes.io/hostname": name,
                "node.kubernetes.io/instance-type": "a2-highgpu-8g",
                "topology.kubernetes.io/region": "us-central1",
                "topology.kubernetes.io/zone": zone,
                "cloud.google.com/gke-nodepool": f"{POOL}-pool",
                "cloud.google.com/machine-family": "a2", "finetune.dev/pool": POOL,
                "cloud.google.com/gke-accelerator": "nvidia-tesla-a100",
                "cloud.google.com/gke-gpu": "true", "nvidia.com/gpu.present": "true",
                "nvidia.com/gpu.count": str(GPUS_PER_NODE),
                "nvidia.com/gpu.product": "NVIDIA-A100-SXM4-40GB",
                "nvidia.com/gpu.memory": "40960",
            },
        },
        "spec": {
            "taints": [
                {"key": "nvidia.com/gpu", "value": "present", "effect": "NoSchedule"},
                # Keeps other pods (integration tests sharing the cluster) off these nodes.
                {"key": BENCH_LABEL, "value": "true", "effect": "NoSchedule"},
            ]
        },
        "status": {
            "capacity": {"cpu": str(cpu), "memory": f"{memory}Gi", "pods": "110",
                         "ephemeral-storage": "2000Gi", "nvidia.com/gpu": str(GPUS_PER_NODE)},
            "allocatable": {"cpu": f"{cpu * 990 - 60}m", "memory": f"{memory * 1024 * 94 // 100}Mi",
                            "pods": "110", "ephemeral-storage": "1800Gi",
                            "nvidia.com/gpu": str(GPUS_PER_NODE)},
        },
    }  # fmt: skip


def manifest(name: str, namespace: str, run_duration: str) -> dict[str, Any]:
    """The smallest FineTuneJob (fttestkit.builders), 1 node x 1 GPU on the benchmark's nodes."""
    return {
        "apiVersion": f"{GROUP}/{VERSION}",
        "kind": "FineTuneJob",
        "metadata": {"name": name, "namespace": namespace},
        "spec": {
            "model": {"name": "org/base-model"},
            "dataset": {"train": {"uri": "s3://data/train.jsonl"}},
            "output": {"uri": f"s3://models/{name}"},
            "resources": {
                "nodes": 1,
                "gpusPerNode": 1,
                "nodeSelector": {"finetune.dev/pool": POOL},
                "tolerations": [{"key": BENCH_LABEL, "operator": "Exists", "effect": "NoSchedule"}],
                "annotations": {"finetune.dev/kwok-run-duration": run_duration},
            },
        },
    }


# --------------------------------------------------------------------------------------------
# Measuring


def cpu_seconds(pid: int | None) -> float | None:
    """utime + stime of a process so far (Linux /proc)."""
    if pid is None:
        return None
    try:
        fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    except (OSError, IndexError):
        return None
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


def memory_kib(pid: int) -> tuple[int, int] | None:
    """(VmRSS, VmHWM) of a process in KiB."""
    try:
        text = Path(f"/proc/{pid}/status").read_text()
    except OSError:
        return None
    values = dict(re.findall(r"^(VmRSS|VmHWM):\s+(\d+) kB", text, flags=re.MULTILINE))
    if len(values) < 2:
        return None
    return int(values["VmRSS"]), int(values["VmHWM"])


def cluster_pid(component: str) -> int | None:
    try:
        return int((STATE / "pids" / f"{component}.pid").read_text().split()[0])
    except (OSError, ValueError, IndexError):
        return None


class Sampler:
    """Samples the RSS and CPU time of processes (summed) every `interval` seconds in a
    thread. Peak RSS is the sum of their peaks (VmHWM)."""

    def __init__(self, *pids: int, interval: float = 0.5) -> None:
        self.pids = pids
        self.samples: list[tuple[float, int, int, float]] = []  # time, rss, hwm (KiB), cpu s
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, name="sampler", daemon=True)
        self.interval = interval
        self._thread.start()

    def _run(self) -> None:
        while not self._stop.is_set():
            self.sample()
            self._stop.wait(self.interval)

    def sample(self) -> None:
        memories = [memory_kib(pid) for pid in self.pids]
        cpus = [cpu_seconds(pid) for pid in self.pids]
        if None in memories or None in cpus:
            return  # a process has ended
        self.samples.append((
            time.monotonic(), sum(m[0] for m in memories if m), sum(m[1] for m in memories if m),
            sum(c for c in cpus if c is not None),
        ))  # fmt: skip

    def cpu_s(self) -> float | None:
        """CPU seconds so far (a fresh sample)."""
        self.sample()
        return self.samples[-1][3] if self.samples else None

    def stop(self) -> None:
        self.sample()
        self._stop.set()
        self._thread.join()

    def peak_rss_mb(self) -> float | None:
        return max((s[2] for s in self.samples), default=0) * 1024 / 1e6 or None

    def cpu_at(self, moment: float) -> float | None:
        """CPU seconds at `moment` (monotonic), interpolated between the samples around it
        (the first or last sample outside them)."""
        points = [(t, cpu) for t, _, _, cpu in self.samples]
        if not points:
            return None
        before = [p for p in points if p[0] <= moment]
        after = [p for p in points if p[0] >= moment]
        if not before or not after:
            return (before or after)[-1 if before else 0][1]
        (t0, c0), (t1, c1) = before[-1], after[0]
        return c0 if t1 == t0 else c0 + (c1 - c0) * (moment - t0) / (t1 - t0)

    def max_cpu_percent(self, since: float, until: float, window: float = 5.0) -> float | None:
        """The busiest `window` seconds between since and until, in % of one core."""
        points = [(t, cpu) for t, _, _, cpu in self.samples if since <= t <= until]
        best = None
        for i, (t0, c0) in enumerate(points):
            for t1, c1 in points[i + 1 :]:
                if t1 - t0 >= window:
                    best = max(best or 0.0, (c1 - c0) / (t1 - t0) * 100)
                    break
        return best


class LabelledWatch:
    """Holds a watch on the namespace's objects (Jobs or pods) that carry `label` (the
    operator's finetune.dev/job-name; JobSet's jobset.sigs.k8s.io/jobset-name, the TrainJob's
    name) and hands every event to `seen`, with the moment it arrived. A watch that breaks
    (expired, closed) is listed again and resumed; the listed objects count as arrived then."""

    kind = "objects"

    def __init__(self, list_call: Callable[..., Any], namespace: str, label: str) -> None:
        self.list_call = list_call
        self.namespace = namespace
        self.label = label
        self.relisted = 0  # objects seen by a re-list after the watch broke (time approximate)
        self._changed = threading.Condition()
        self._stop = threading.Event()
        listed = list_call(namespace, label_selector=label)
        self._version = listed.metadata.resource_version
        self._thread = threading.Thread(target=self._run, name=f"watch-{self.kind}", daemon=True)
        self._thread.start()

    def seen(self, kind: str, obj: dict[str, Any], arrived: float, relisted: bool) -> None:
        raise NotImplementedError

    def _run(self) -> None:
        while not self._stop.is_set():
            try:
                events = watch.Watch().stream(
                    self.list_call, self.namespace, label_selector=self.label,
                    resource_version=self._version, allow_watch_bookmarks=True,
                    timeout_seconds=10, deserialize=False,
                )  # fmt: skip
                for event in events:
                    arrived = time.monotonic()
                    obj = event["object"]
                    if event["type"] == "ERROR":
                        raise RuntimeError(obj.get("message", "watch error"))
                    self._version = obj["metadata"]["resourceVersion"]
                    if event["type"] != "BOOKMARK":
                        with self._changed:
                            self.seen(event["type"], obj, arrived, relisted=False)
                            self._changed.notify_all()
            except Exception as error:  # expired (410) or broken: list again, then watch on
                if self._stop.is_set():
                    return
                print(f"  ({self.kind} watch: {error}; listing again)", flush=True)
                time.sleep(0.5)
                with suppress(Exception):
                    listed = self.list_call(
                        self.namespace, label_selector=self.label, _preload_content=False
                    )
                    body = json.loads(listed.data)
                    with self._changed:
                        for obj in body["items"]:
                            self.seen("ADDED", obj, time.monotonic(), relisted=True)
                        self._changed.notify_all()
                    self._version = body["metadata"]["resourceVersion"]

    def stop(self) -> None:
        self._stop.set()


class JobWatch(LabelledWatch):
    """When each Job's ADDED event arrived, by its label's value (the job's name)."""

    kind = "job"

    def __init__(self, api: client.ApiClient, namespace: str, label: str = LABEL_JOB) -> None:
        self.added: dict[str, float] = {}
        super().__init__(client.BatchV1Api(api).list_namespaced_job, namespace, label)

    def seen(self, kind: str, obj: dict[str, Any], arrived: float, relisted: bool) -> None:
        name = obj["metadata"]["labels"][self.label]
        if kind == "ADDED" and name not in self.added:
            self.added[name] = arrived
            self.relisted += relisted

    def wait_for(self, names: set[str], deadline: float) -> bool:
        with self._changed:
            while not names <= self.added.keys():
                left = deadline - time.monotonic()
                if left <= 0:
                    return False
                self._changed.wait(min(left, 1.0))
        return True


class PodWatch(LabelledWatch):
    """Every pod's phase, and when the last pod appeared or changed phase: the pods' part of
    a phase's work (scheduled, started by kwok, Running) ends there."""

    kind = "pod"

    def __init__(self, api: client.ApiClient, namespace: str, label: str = LABEL_JOB) -> None:
        self.phases: dict[str, str] = {}
        self.last_change = time.monotonic()
        super().__init__(client.CoreV1Api(api).list_namespaced_pod, namespace, label)

    def seen(self, kind: str, obj: dict[str, Any], arrived: float, relisted: bool) -> None:
        name = obj["metadata"]["name"]
        phase = "(deleted)" if kind == "DELETED" else obj.get("status", {}).get("phase", "?")
        if self.phases.get(name) != phase:
            self.phases[name] = phase
            self.last_change = arrived

    def counts(self) -> dict[str, int]:
        """Pod phases but the warm-up job's."""
        with self._changed:
            phases = [phase for name, phase in self.phases.items()
                      if not name.startswith(WARMUP) and phase != "(deleted)"]  # fmt: skip
        return dict(Counter(phases))


@dataclass
class Timing:
    started: float  # the job's first create request was sent
    applied: float  # ... and its call returned
    job_created: float | None = None  # raw: the Job's own create call returned
    due: float | None = None  # when the pacing asked for it: the equal-arrival clock


@dataclass
class Phase:
    """One phase of one repeat. Its window runs from the first create request to the last
    change of its work: the controllers' last API request (their last status write) or the
    last pod phase change, whichever is later (settle())."""

    name: str
    jobs: int
    repeat: int = 0
    position: int = 0  # its place in the repeat's (rotated) order, from 0
    timings: dict[str, Timing] = field(default_factory=dict)
    added: dict[str, float] = field(default_factory=dict)
    errors: list[str] = field(default_factory=list)
    requests: dict[str, float] = field(default_factory=dict)  # by verb/method, over the window
    requests_created: dict[str, float] = field(default_factory=dict)  # ... until every Job
    window_s: float | None = None
    settled_after_s: float | None = None  # the window's end after the last Job's ADDED
    apiserver_cpu_s: float | None = None  # over the window, less the idle baseline's share
    apiserver_idle_percent: float | None = None  # the baseline: % of one core, before the burst
    bench_cpu_s: float | None = None
    load: tuple[float, float] = (0.0, 0.0)
    loaded: bool = False  # started with the load average above --max-load (--ignore-load)
    # The controllers' processes (the operator; the Trainer's and JobSet's managers together):
    controller_cpu_s: float | None = None  # over the window
    controller_idle_percent: float | None = None
    controller_peak_rss_mb: float | None = None
    controller_max_cpu_percent: float | None = None
    controllers: dict[str, dict[str, float | None]] = field(default_factory=dict)  # each alone
    reconcile_mean_ms: float | None = None
    passes: float | None = None  # the operator's passes (reconciles) over the window
    watch_events: dict[str, float] = field(default_factory=dict)  # the operator's, by kind
    gc_seconds: dict[str, float] = field(default_factory=dict)  # its collector's, by generation
    phases: dict[str, int] = field(default_factory=dict)  # FineTuneJob phases at the end
    pods: dict[str, int] = field(default_factory=dict)  # pod phases at the end
    relisted: int = 0
    steady: dict[str, float] = field(default_factory=dict)  # the --steady window's figures

    def latencies(self) -> list[float]:
        return [self.added[n] - t.started for n, t in self.timings.items() if n in self.added]

    def from_due(self) -> list[float]:
        """Each job's Job ADDED after the moment the pacing asked for its create: the same
        arrival for every phase, whatever a create costs or where a queue forms."""
        return [
            self.added[n] - t.due
            for n, t in self.timings.items()
            if n in self.added and t.due is not None
        ]

    def watch_delivery(self) -> list[float]:
        return [
            self.added[n] - t.job_created
            for n, t in self.timings.items()
            if n in self.added and t.job_created is not None
        ]

    def summary(self) -> dict[str, Any]:
        lat = self.latencies()
        starts = [t.started for t in self.timings.values()]
        applied = [t.applied for t in self.timings.values()]
        calls = [(t.applied - t.started) * 1000 for t in self.timings.values()]
        missing = self.jobs - len(lat)
        all_s = max(self.added[n] for n in self.timings) - min(starts) if not missing else None
        apply_s = max(applied) - min(starts) if applied else None
        total_requests = sum(self.requests.values())
        created = sum(self.requests_created.values())
        delivery = self.watch_delivery()
        due = self.from_due()
        dues = [t.due for t in self.timings.values() if t.due is not None]
        due_all = (
            max(self.added[n] for n in self.timings) - min(dues) if dues and not missing else None
        )
        return {
            "jobs": self.jobs, "created": len(lat), "missing": missing, "errors": len(self.errors),
            "apply_rate": len(applied) / apply_s if apply_s else None,
            "call_p50_ms": percentile(calls, 50), "call_p99_ms": percentile(calls, 99),
            "p50_s": percentile(lat, 50), "p90_s": percentile(lat, 90),
            "p99_s": percentile(lat, 99), "max_s": max(lat, default=None),
            "delivery_p50_ms": _ms(percentile(delivery, 50)),
            "delivery_p99_ms": _ms(percentile(delivery, 99)),
            "all_s": all_s, "throughput": self.jobs / all_s if all_s else None,
            "due_p50_s": percentile(due, 50), "due_p99_s": percentile(due, 99),
            "due_max_s": max(due, default=None), "due_all_s": due_all,
            "window_s": self.window_s,
            "requests_per_job": total_requests / self.jobs if total_requests else None,
            "requests_created_per_job": created / self.jobs if created else None,
            "apiserver_cpu_ms_per_job": _ms(self.apiserver_cpu_s / self.jobs)
            if self.apiserver_cpu_s is not None else None,
            "apiserver_idle_percent": self.apiserver_idle_percent,
            "bench_cpu_s": self.bench_cpu_s,
            "controller_cpu_s": self.controller_cpu_s,
            "controller_cpu_percent": self.controller_cpu_s / self.window_s * 100
            if self.controller_cpu_s is not None and self.window_s else None,
            "controller_max_cpu_percent": self.controller_max_cpu_percent,
            "controller_idle_percent": self.controller_idle_percent,
            "controller_peak_rss_mb": self.controller_peak_rss_mb,
            "pods_running": self.pods.get("Running"),
            "load_at_start": self.load[0], "loaded": self.loaded,
        }  # fmt: skip


def _ms(seconds: float | None) -> float | None:
    return None if seconds is None else seconds * 1000


# --------------------------------------------------------------------------------------------
# The run


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="bench/operator_load.py",
        description="FineTuneJob apply -> Job created at scale: the operator vs a plain client "
        "and vs Kubeflow Trainer (as shipped and tuned).",
    )
    add = parser.add_argument
    add("--jobs", type=int, default=1000, help="FineTuneJobs (and raw jobs) to create (1000)")
    add("--rate", type=float, default=10.0, help="creates per second; 0: as fast as possible")
    add("--nodes", type=int, default=128, help="extra kwok GPU nodes, 8 GPUs each (128)")
    add("--threads", type=int, default=16, help="client threads that make the creates (16)")
    add("--workers", type=int, default=None,
        help=f"the operator's --workers (its default: {DEFAULT_WORKERS}); the tuned Kubeflow "
        "Trainer reconciles as many TrainJobs at once")  # fmt: skip
    add(
        "--operator-command",
        default=f"{sys.executable} -m ftoperator",
        help="how to start the operator (to compare a variant); the metrics and "
        "leader-election flags are appended; it watches every namespace, as Kubeflow's "
        "managers do (default: this Python's -m ftoperator)",
    )
    add("--trainer-identity", choices=("namespace", "job"), default="namespace",
        help="the trainer pods' identity: shared by a namespace's jobs under the Helm chart's "
        "ValidatingAdmissionPolicy (applied by this script), as the chart installs the "
        "operator, or one per job, the operator's default without the chart "
        "(namespace)")  # fmt: skip
    add("--run-duration", default="1h", help="how long each pod runs (kwok; Go duration)")
    add("--timeout", type=float, default=300,
        help="seconds to wait for the Jobs after the last apply")  # fmt: skip
    add(
        "--settle",
        type=float,
        default=300,
        help="at most this many seconds for a phase's work to end after its last Job (300)",
    )
    add("--quiet", type=float, default=10,
        help="a phase's work has ended when no controller request and no pod phase change "
        "came for this many seconds (10)")  # fmt: skip
    add("--idle", type=float, default=10,
        help="seconds of the idle baseline before each burst: the API server's CPU then is "
        "subtracted from the phase's, pro rata (10)")  # fmt: skip
    add(
        "--repeats",
        type=int,
        default=1,
        help="run every phase this many times, the order rotated each time (1)",
    )
    add("--skip-raw", action="store_true", help="no raw API phase (the plain client)")
    add("--skip-kubeflow", action="store_true", help="no Kubeflow Trainer phase (the peer)")
    add(
        "--kubeflow",
        choices=("both", "shipped", "tuned"),
        default="both",
        help="Kubeflow Trainer's configurations: as shipped, tuned (the peer), or both (both)",
    )
    add("--create-cost", type=int, default=200,
        help="first, before any controller runs: this many FineTuneJob creates in a burst "
        "(and a fifth of them one by one); 0: none (200)")  # fmt: skip
    add("--max-load", type=float, default=float(os.cpu_count() or 1),
        help="the 1-minute load average above which the machine is too busy to measure: the "
        "run waits for it to fall (--load-wait) before each phase, and refuses to start "
        "above it (default: the CPU count)")  # fmt: skip
    add(
        "--load-wait",
        type=float,
        default=300,
        help="seconds to wait for the load average to fall below --max-load (300)",
    )
    add(
        "--ignore-load",
        action="store_true",
        help="run anyway on a busy machine; such phases are marked 'loaded' in the report",
    )
    add("--steady", type=float, default=0, help="then this many seconds of progress reports "
        "from every job (0: none)")  # fmt: skip
    add("--progress-every", type=float, default=10, help="seconds between one job's reports (10)")
    add("--json", type=Path, default=None,
        help="also write the results to this file, after every phase")  # fmt: skip
    add("--resume", type=Path, default=None,
        help="go on from the phases an earlier run (the same settings; --repeats may be "
        "higher) wrote to this --json file, writing on to it (or to --json): a long run in "
        "several sittings")  # fmt: skip
    add("--keep-log", action="store_true",
        help="keep the controllers' logs (else removed on success)")  # fmt: skip
    add("--strict", action="store_true", help="exit 1 when a target is missed")
    return parser


def phase_kinds(args: argparse.Namespace) -> list[str]:
    """The phases one repeat runs, in the first repeat's order."""
    kinds = [] if args.skip_raw else ["raw"]
    if not args.skip_kubeflow:
        kinds += {"both": ["kubeflow", "kubeflow-tuned"], "shipped": ["kubeflow"],
                  "tuned": ["kubeflow-tuned"]}[args.kubeflow]  # fmt: skip
    return [*kinds, "operator"]


def pending(kinds: list[str], repeats: int,
            done: set[tuple[int, str]]) -> list[tuple[int, int, str]]:  # fmt: skip
    """(repeat, position, phase) for every phase run still to do, in the order they run;
    `done` holds the (repeat, phase) pairs a resumed run has already."""
    return [(repeat, position, kind) for repeat in range(repeats)
            for position, kind in enumerate(rotated(kinds, repeat))
            if (repeat, kind) not in done]  # fmt: skip


def rotated(kinds: list[str], repeat: int) -> list[str]:
    """Repeat r runs the phases starting from the r-th: each phase runs first, second, ...
    in turn, so that what the previous phase leaves behind (garbage collection, a warm API
    server cache, the load average) does not always favour the same one."""
    shift = repeat % len(kinds)
    return kinds[shift:] + kinds[:shift]


# What a resumed run must share with the run it goes on from: what shapes a phase's figures.
RESUME_KEYS = ("jobs", "rate", "nodes", "threads", "workers", "run_duration", "kubeflow",
               "skip_raw", "skip_kubeflow", "operator_command", "timeout", "settle", "quiet",
               "idle", "steady", "progress_every", "trainer_identity")  # fmt: skip


def resumed(path: Path, args: argparse.Namespace) -> tuple[list[report.RecordedPhase], Any]:
    """The phase runs and create cost an earlier run wrote to `path`; refuses a file whose
    run had other settings (its figures would not fold into the same rows)."""
    doc = json.loads(path.read_text())
    differ = [f"--{k.replace('_', '-')} {doc['args'].get(k)} (now {getattr(args, k)})"
              for k in RESUME_KEYS if doc["args"].get(k) != str(getattr(args, k))]  # fmt: skip
    if differ:
        raise SystemExit(f"--resume {path}: that run had other settings: {', '.join(differ)}")
    return report.recorded(doc), doc["create_cost"]


def write_json(path: Path, doc: dict[str, Any]) -> None:
    """Replaced whole (a rename), so that a run killed mid-write keeps the last one."""
    partial = path.with_name(path.name + ".partial")
    partial.write_text(json.dumps(doc, indent=2))
    partial.replace(path)


def wait_for_load(max_load: float, wait: float) -> float:
    """Wait up to `wait` s for the 1-minute load average to fall to `max_load`; return it."""
    deadline = time.monotonic() + wait
    while (load := os.getloadavg()[0]) > max_load and time.monotonic() < deadline:
        time.sleep(5)
    return load


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    if args.jobs < 1 or args.nodes < 1 or args.rate < 0 or args.repeats < 1:
        raise SystemExit("--jobs, --nodes and --repeats must be >= 1, --rate >= 0")
    phases: list[report.PhaseLike] = []
    cost = None
    if args.resume:
        phases, cost = resumed(args.resume, args)
        args.json = args.json or args.resume
        print(f"resuming {args.resume}: {len(phases)} phase runs done", flush=True)
    done = {(phase.repeat, phase.name) for phase in phases}
    load = wait_for_load(args.max_load, args.load_wait)
    if load > args.max_load and not args.ignore_load:
        raise SystemExit(f"the machine is busy: load average {load:.2f} > --max-load "
                         f"{args.max_load:g} after {args.load_wait:g} s; its figures would "
                         "measure the other work (--ignore-load runs anyway, marked)")  # fmt: skip
    if args.nodes * GPUS_PER_NODE < args.jobs + 1:
        print(f"note: {args.nodes} nodes hold {args.nodes * GPUS_PER_NODE} one-GPU pods: the "
              "rest stay Pending (their Jobs are still created)", flush=True)  # fmt: skip
    api = connect(args.threads)
    # One run per cluster at a time: a second one would share (and delete) the bench nodes.
    lock = (STATE / ".bench-operator.lock").open("w")
    try:
        fcntl.flock(lock, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except BlockingIOError:
        raise SystemExit(
            f"another bench/operator_load.py runs on this cluster ({lock.name})"
        ) from None
    sigterm_as_ctrl_c()
    run_id = uuid.uuid4().hex[:6]
    namespaces: list[str] = []
    workdir = Path(tempfile.mkdtemp(prefix="ftbench-operator-"))
    ok = False
    started = time.monotonic()
    runners: dict[str, Callable[..., Phase]] = {
        "raw": run_raw, "kubeflow": run_kubeflow,
        "kubeflow-tuned": functools.partial(run_kubeflow, tuned=True), "operator": run_operator,
    }  # fmt: skip
    try:
        prepare(api, args.nodes)
        kinds = phase_kinds(args)
        print(f"{os.cpu_count()} CPUs, load average {_load()}; {args.jobs} jobs at "
              f"{args.rate or 'max'}/s, {args.threads} client threads, {args.nodes} extra "
              f"GPU nodes, pods run {args.run_duration}; phases {', '.join(kinds)} x "
              f"{args.repeats}", flush=True)  # fmt: skip
        if args.create_cost and not done:
            namespace = f"ftbench-cc-{run_id}"
            namespaces.append(namespace)
            cost = create_cost(api, namespace, args.create_cost, args.threads)
            delete_namespace(api, namespace, wait=300)
            namespaces.remove(namespace)
        # One after the other, each in its own namespace, deleted (and waited for) before the
        # next: every phase finds the GPUs free and the API server with only its own objects.
        for repeat, position, kind in pending(kinds, args.repeats, done):
            load = wait_for_load(args.max_load, args.load_wait)
            namespace = f"ftbench-{kind}-{run_id}-{repeat}"
            namespaces.append(namespace)
            print(f"[repeat {repeat + 1}/{args.repeats}, load {load:.1f}] ", end="")
            phase = runners[kind](api, namespace, args, workdir / f"{kind}-{repeat}")
            phase.repeat, phase.position = repeat, position
            phase.loaded = load > args.max_load
            phases.append(phase)
            if args.json:  # before the deletion below, which may fail
                write_json(args.json, report.document(phases, args, cost, complete=False))
            seconds = delete_namespace(api, namespace, wait=900)
            print(f"  deleted {namespace} in {seconds:.0f} s", flush=True)
            namespaces.remove(namespace)
        print(report.render(phases, args, cost))
        if args.json:
            write_json(args.json, report.document(phases, args, cost))
        ok = True
        missed = report.missed(phases)
        return 1 if args.strict and missed else 0
    except KeyboardInterrupt:
        print("interrupted: cleaning up", file=sys.stderr, flush=True)
        return 130
    finally:
        cleanup(api, namespaces, args)
        if ok and not args.keep_log:
            shutil.rmtree(workdir, ignore_errors=True)
        else:
            print(f"controller logs kept in {workdir}", file=sys.stderr)
        print(f"total {time.monotonic() - started:.0f} s, load average {_load()}")


def _load() -> str:
    return " ".join(f"{x:.1f}" for x in os.getloadavg())


def connect(threads: int) -> client.ApiClient:
    """The cluster's admin client; starts the cluster first when KUBECONFIG is not set."""
    if not os.environ.get("KUBECONFIG"):
        subprocess.run([str(REPO / "hack/cluster-up.sh")], check=True, stdout=subprocess.DEVNULL)
        for line in (STATE / "env").read_text().splitlines():
            found = re.match(r'^export (\w+)="?([^"]*)"?$', line.strip())
            if found and "$" not in found.group(2):
                os.environ[found.group(1)] = found.group(2)
    # Named explicitly: the client reads KUBECONFIG once, when it is imported (before the
    # env file above was read), so `python bench/operator_load.py` alone found no config.
    config.load_kube_config(config_file=os.environ["KUBECONFIG"])  # type: ignore[no-untyped-call]
    configuration = client.Configuration.get_default_copy()
    configuration.connection_pool_maxsize = threads + 4
    return client.ApiClient(configuration)


def kubectl(*args: str, check: bool = True, input: str | None = None) -> str:
    path = os.pathsep.join([os.environ.get("FTO_BIN_PATH", ""), os.environ.get("PATH", "")])
    binary = shutil.which("kubectl", path=path)
    if binary is None:
        raise SystemExit("kubectl not found (source the cluster's env file)")
    done = subprocess.run(
        [binary, *args], check=False, capture_output=True, text=True, input=input
    )  # fmt: skip
    if check and done.returncode != 0:
        raise RuntimeError(f"kubectl {' '.join(args[:3])} ...: {done.stderr.strip()}")
    return done.stdout


def prepare(api: client.ApiClient, nodes: int) -> None:
    """The CRD, the benchmark's nodes (Ready), and no leftovers of an interrupted run."""
    core = client.CoreV1Api(api)
    for crd in CRDS:
        kubectl("apply", "--server-side", "--force-conflicts", "-f", str(crd))
    kubectl("wait", "--for", "condition=Established", "--timeout=60s",
            "crd/finetunejobs.finetune.dev", "crd/finetunejobprogresses.finetune.dev")  # fmt: skip
    for leftover in core.list_namespace(label_selector=BENCH_LABEL).items:
        # Waited for: a killed 3000-job phase leaves thousands of objects whose deletion
        # would otherwise run inside the next phase's window.
        print(f"deleting the namespace {leftover.metadata.name} of an earlier run", flush=True)
        delete_namespace(api, leftover.metadata.name, wait=900)
    # A run killed in its Kubeflow phase leaves that phase's webhooks (they only match the
    # bench's namespaces and JobSet's pods) and its runtime.
    kubectl("delete", "mutatingwebhookconfigurations,validatingwebhookconfigurations",
            "-l", BENCH_LABEL, "--ignore-not-found", check=False)  # fmt: skip
    delete_runtime()
    names = [f"bench-gpu-{i:03d}" for i in range(nodes)]
    existing = {n.metadata.name for n in core.list_node(label_selector=BENCH_LABEL).items}
    for extra in sorted(existing - set(names)):
        core.delete_node(extra)
    zones = ("us-central1-a", "us-central1-b", "us-central1-c")
    started = time.monotonic()
    for i, name in enumerate(names):
        if name not in existing:
            core.create_node(bench_node(name, zones[i % 3]))  # type: ignore[arg-type]
    deadline = time.monotonic() + 180
    while True:
        listed = core.list_node(label_selector=BENCH_LABEL).items
        ready = [n for n in listed if _node_ready(n)]
        if len(ready) == nodes:
            break
        if time.monotonic() > deadline:
            raise SystemExit(f"only {len(ready)} of {nodes} benchmark nodes became Ready")
        time.sleep(1)
    print(f"{nodes} GPU nodes Ready in {time.monotonic() - started:.0f} s", flush=True)


def _node_ready(node: Any) -> bool:
    conditions = node.status.conditions or []
    return any(c.type == "Ready" and c.status == "True" for c in conditions)


def trainer_policy(api: client.ApiClient, args: argparse.Namespace) -> str | None:
    """With --trainer-identity namespace: the Helm chart's trainer policy and its binding,
    applied as `helm install` creates them (release "bench"); their name. None: per job."""
    if args.trainer_identity != "namespace":
        return None
    kube = Kube(api, "bench")
    objects = trainer_policy_objects("bench")
    for body in objects:
        kube.apply("", body)
    return str(objects[0]["metadata"]["name"])


def create_namespace(api: client.ApiClient, name: str) -> None:
    core = client.CoreV1Api(api)
    core.create_namespace({"metadata": {"name": name, "labels": {BENCH_LABEL: "true"}}})  # type: ignore[arg-type]
    # Pods can be created once the namespace's default ServiceAccount exists (hack/README.md).
    deadline = time.monotonic() + 60
    while time.monotonic() < deadline:
        try:
            core.read_namespaced_service_account("default", name)
            return
        except ApiException as error:
            if error.status != 404:
                raise
            time.sleep(0.2)


def delete_namespace(api: client.ApiClient, name: str, wait: float) -> float:
    """Delete a namespace (its objects go with it); wait up to `wait` s for it to be gone.

    Its Jobs go first and then its pods at once, without their grace period (one request
    each): left to the namespace controller, a thousand pods are deleted gracefully and
    their Jobs' dependents one by one by the garbage collector, at the controller-manager's
    client rate (20/s), which took 207 s for 1000 jobs. Only once the phase's controllers
    have stopped (no Job is made again) and nothing of the phase is measured any more.

    A busy API server may not finish deleting thousands of Jobs within its request timeout
    (60 s) and closes the connection (urllib3's HTTPError): the namespace's deletion below
    then removes what is left, more slowly."""
    core = client.CoreV1Api(api)
    started = time.monotonic()
    with suppress(ApiException, HTTPError):
        client.BatchV1Api(api).delete_collection_namespaced_job(
            name, propagation_policy="Background"
        )
        core.delete_collection_namespaced_pod(name, grace_period_seconds=0)
    try:
        core.delete_namespace(name, propagation_policy="Background")
    except ApiException as error:
        if error.status != 404:
            raise
    while time.monotonic() - started < wait:
        try:
            core.read_namespace(name)
        except ApiException as error:
            if error.status == 404:
                break
            raise
        time.sleep(1)
    return time.monotonic() - started


def cleanup(api: client.ApiClient, namespaces: list[str], args: argparse.Namespace) -> None:
    """Delete what this run created: its namespaces (waiting, so that the pods are gone before
    their nodes), then its nodes."""
    core = client.CoreV1Api(api)
    for name in namespaces:
        try:
            seconds = delete_namespace(api, name, wait=600)
            print(f"  deleted {name} ({seconds:.0f} s)", flush=True)
        except (ApiException, HTTPError, KeyboardInterrupt) as error:
            print(f"could not delete {name} ({error!r}); delete it by hand", file=sys.stderr)
    try:
        core.delete_collection_node(label_selector=BENCH_LABEL)
        print(f"  deleted the {args.nodes} benchmark nodes", flush=True)
    except (ApiException, KeyboardInterrupt) as error:
        print(f"could not delete the benchmark nodes ({error!r}): kubectl delete node -l "
              f"{BENCH_LABEL}", file=sys.stderr)  # fmt: skip


def paced(jobs: list[str], rate: float, threads: int, work: Callable[[str], Timing],
          phase: Phase) -> None:  # fmt: skip
    """Call work(name) for every job at `rate` per second (0: at once) from `threads` threads;
    record the timings and errors in the phase."""
    start = time.monotonic() + 0.5
    lock = threading.Lock()
    progress = max(1, len(jobs) // 10)

    stop = threading.Event()  # set on Ctrl-C: the jobs not started yet are skipped

    def one(index: int, name: str) -> None:
        due = start + (index / rate if rate else 0.0)
        if stop.wait(max(0.0, due - time.monotonic())):
            return
        try:
            timing = work(name)
        except Exception as error:
            with lock:
                phase.errors.append(f"{name}: {error!r}"[:500])
            return
        timing.due = due
        with lock:
            phase.timings[name] = timing
            done = len(phase.timings)
        if done % progress == 0:
            lag = time.monotonic() - due
            print(f"  {done:5d} applied, {time.monotonic() - start:5.1f} s, "
                  f"{lag:5.2f} s behind schedule, load {_load()}", flush=True)  # fmt: skip

    pool = ThreadPoolExecutor(max_workers=threads, thread_name_prefix="apply")
    try:
        for future in [pool.submit(one, i, n) for i, n in enumerate(jobs)]:
            future.result()
    finally:
        stop.set()
        pool.shutdown(wait=True, cancel_futures=True)


def job_names(count: int) -> list[str]:
    return [f"bench-{i:04d}" for i in range(count)]


@contextmanager
def measured(phase: Phase) -> Iterator[None]:
    """This script's own CPU, and the load average, around the burst."""
    bench_before, load_before = os.times(), os.getloadavg()[0]
    yield
    bench_after = os.times()
    phase.bench_cpu_s = (bench_after.user + bench_after.system) - (
        bench_before.user + bench_before.system
    )
    phase.load = (load_before, os.getloadavg()[0])


def wait_created(watcher: JobWatch, phase: Phase, timeout: float) -> None:
    names = set(phase.timings)
    if not watcher.wait_for(names, time.monotonic() + timeout):
        print(f"  timed out: {len(names - watcher.added.keys())} Jobs missing", flush=True)
    phase.added = dict(watcher.added)
    phase.relisted = watcher.relisted


@dataclass
class Counters:
    """How a phase reads its controllers' API requests: `read` returns their counters now,
    `requests(now, before)` the requests between two readings by kind (verb or method)."""

    read: Callable[[], dict[str, float]]
    requests: Callable[[dict[str, float], dict[str, float]], dict[str, float]]

    def total(self, now: dict[str, float]) -> float:
        return sum(self.requests(now, {}).values())


def settle(
    counters: Counters | None, pods: PodWatch, quiet: float, limit: float
) -> tuple[float, dict[str, float]]:
    """Wait until neither the controllers' request counters nor the pods' phases have changed
    for `quiet` s (at most `limit` s). Returns the moment of the last change (no earlier than
    this call) and the counters as they were then: the end of the phase's work."""
    counted = counters.read() if counters else {}
    total = counters.total(counted) if counters else 0.0
    changed = started = time.monotonic()
    while True:
        time.sleep(1)
        if counters is not None:
            now = counters.read()
            if counters.total(now) != total:
                counted, total, changed = now, counters.total(now), time.monotonic()
        end = max(changed, pods.last_change)
        if time.monotonic() - end >= quiet or time.monotonic() - started >= limit:
            return end, counted


@dataclass
class Setup:
    """What run_phase needs from the phase that calls it."""

    label: str  # the label naming the job on its Jobs and pods
    create: Callable[[str], Timing]  # creates one job (name -> its Timing)
    counters: Counters | None = None  # the controllers' request counters; none: raw
    samplers: dict[str, Sampler] = field(default_factory=dict)  # "all" + one per process
    what: str = ""


def run_phase(api: client.ApiClient, namespace: str, phase: Phase, args: argparse.Namespace,
              setup: Setup) -> dict[str, float]:  # fmt: skip
    """What every phase shares. With controllers: one warm-up job end to end (their watches
    are up before the clock starts) and until they are quiet. Then the idle baseline (--idle
    s of nothing: the API server's and the controllers' CPU rate), the burst, and until the
    phase's work has ended (settle()). Every figure is over the window from the first create
    request to that end; the API server's less its idle rate times the window. Returns the
    counters at the start of the window."""
    jobs, pods = JobWatch(api, namespace, setup.label), PodWatch(api, namespace, setup.label)
    apiserver = Sampler(*filter(None, [cluster_pid("kube-apiserver")]))
    controllers = setup.samplers.get("all")
    try:
        if setup.counters is not None:
            warm = time.monotonic()
            setup.create(WARMUP)
            if not jobs.wait_for({WARMUP}, time.monotonic() + 120):
                raise SystemExit(f"{setup.what} created no Job for {WARMUP} in 120 s")
            rss = controllers.samples[-1][1] / 1024 if controllers and controllers.samples else 0
            print(f"  {setup.what} up (RSS {rss:.0f} MiB), first Job in "
                  f"{time.monotonic() - warm:.1f} s", flush=True)  # fmt: skip
            settle(setup.counters, pods, args.quiet, 60)
        # The baseline is the quieter half of the idle time: a transient in one half (the
        # garbage collector finishing the previous phase's objects) is not the baseline.
        idle_from = time.monotonic()
        time.sleep(args.idle)
        idle_to = time.monotonic()
        halves = ((idle_from, (idle_from + idle_to) / 2), ((idle_from + idle_to) / 2, idle_to))
        phase.apiserver_idle_percent = min(_rate(apiserver, *h) for h in halves) * 100
        if controllers is not None:
            phase.controller_idle_percent = min(_rate(controllers, *h) for h in halves) * 100
        before = setup.counters.read() if setup.counters else {}
        with measured(phase):
            first = time.monotonic()
            paced(job_names(args.jobs), args.rate, args.threads, setup.create, phase)
            wait_created(jobs, phase, args.timeout)
        if setup.counters is not None:
            phase.requests_created = setup.counters.requests(setup.counters.read(), before)
        last_job = max(phase.added.values(), default=time.monotonic())
        end, counted = settle(setup.counters, pods, args.quiet, args.settle)
        if setup.counters is not None:
            phase.requests = setup.counters.requests(counted, before)
        phase.window_s, phase.settled_after_s = end - first, end - last_job
        spent = _delta(apiserver.cpu_at(end), apiserver.cpu_at(first))
        if spent is not None:
            idle = phase.apiserver_idle_percent / 100 * phase.window_s
            phase.apiserver_cpu_s = spent - idle
        for name, sampler in setup.samplers.items():
            cpu, busiest = _delta(sampler.cpu_at(end), sampler.cpu_at(first)), \
                sampler.max_cpu_percent(first, end)  # fmt: skip
            if name == "all":
                phase.controller_cpu_s, phase.controller_max_cpu_percent = cpu, busiest
            else:
                phase.controllers[name] = {"cpu_s": cpu, "max_cpu_percent": busiest}
        phase.pods = pods.counts()
        return before
    finally:
        jobs.stop()
        pods.stop()
        apiserver.stop()


def _rate(sampler: Sampler, since: float, until: float) -> float:
    """CPU seconds per second between two moments (0 when unknown)."""
    spent = _delta(sampler.cpu_at(until), sampler.cpu_at(since))
    return spent / (until - since) if spent is not None and until > since else 0.0


def _delta(after: float | None, before: float | None) -> float | None:
    return None if after is None or before is None else after - before


def _stop_samplers(phase: Phase, samplers: dict[str, Sampler]) -> None:
    for name, sampler in samplers.items():
        sampler.stop()
        if name == "all":
            phase.controller_peak_rss_mb = sampler.peak_rss_mb()
        else:
            phase.controllers.setdefault(name, {})["peak_rss_mb"] = sampler.peak_rss_mb()


def run_raw(
    api: client.ApiClient, namespace: str, args: argparse.Namespace, workdir: Path
) -> Phase:
    print(f"raw API: a client loop creates each job's objects itself, in {namespace}", flush=True)
    create_namespace(api, namespace)
    kube = Kube(api, "bench")
    settings = Settings(trainer_policy=trainer_policy(api, args))
    if settings.trainer_policy:  # the namespace's identity, once, as the operator makes it
        for body in build_namespace_identity(namespace):
            kube.create(namespace, body)
    names = job_names(args.jobs)
    children = {
        name: build_children(parse_job(manifest(name, namespace, args.run_duration)), attempt=0,
                      settings=settings).all()
        for name in names
    }  # fmt: skip
    phase = Phase("raw", args.jobs)

    def create_all(name: str) -> Timing:
        started = time.monotonic()
        timing = None
        for body in children[name]:
            kube.create(namespace, body)
            if timing is None:
                timing = Timing(started=started, applied=time.monotonic())
        assert timing is not None
        timing.job_created = time.monotonic()
        return timing

    run_phase(api, namespace, phase, args, Setup(LABEL_JOB, create_all))
    phase.requests = {"create": float(kube.requests)}
    print(f"  {len(phase.added)} Jobs; quiet {phase.settled_after_s:.0f} s after the last; "
          f"pods: {_counts(phase.pods)}", flush=True)  # fmt: skip
    return phase


def run_operator(
    api: client.ApiClient, namespace: str, args: argparse.Namespace, workdir: Path
) -> Phase:
    print(f"operator: FineTuneJobs in {namespace}, python -m ftoperator (every namespace)",
          flush=True)  # fmt: skip
    create_namespace(api, namespace)
    custom = client.CustomObjectsApi(api)
    phase = Phase("operator", args.jobs)
    port = free_port()
    # As the operator image sets it (operator/Dockerfile): two malloc arenas, not one per thread.
    env = {**os.environ, "PYTHONUNBUFFERED": "1", "MALLOC_ARENA_MAX": "2"}
    # No --namespace: every namespace, as the Helm chart's default (watchNamespaces: []) and as
    # Kubeflow's managers watch, so both caches hold whatever else the cluster runs.
    command = [
        *shlex.split(args.operator_command), "--no-leader-election",
        "--metrics-bind", "127.0.0.1", "--metrics-port", str(port),
    ]  # fmt: skip
    if args.workers:
        command += ["--workers", str(args.workers)]
    policy = trainer_policy(api, args)
    if policy:
        command += ["--trainer-policy", policy]
    operator = ManagedProcess("operator", workdir / "operator.log")
    operator.start(command, env=env, cwd=REPO)
    samplers = {"all": Sampler(operator.pid)}  # from the start: the import and startup count

    def create(name: str) -> Timing:
        body = manifest(name, namespace, args.run_duration)
        started = time.monotonic()
        custom.create_namespaced_custom_object(GROUP, VERSION, namespace, PLURAL, body)
        return Timing(started=started, applied=time.monotonic())

    try:
        operator.wait_until(lambda: http_ok(f"http://127.0.0.1:{port}/readyz"), 60, "ready")
        counters = Counters(lambda: scrape(port), _requests)
        before = run_phase(api, namespace, phase, args,
                           Setup(LABEL_JOB, create, counters, samplers, "operator"))  # fmt: skip
        after = scrape(port)
        reconciled = [_reconcile(m) for m in (before, after)]
        phase.watch_events = _increase_by(after, before, "finetune_watch_events_total", "kind")
        phase.gc_seconds = _increase_by(after, before, "finetune_operator_gc_seconds_total",
                                        "generation")  # fmt: skip
        phase.passes = reconciled[1][0] - reconciled[0][0]
        if reconciled[1][0] > reconciled[0][0]:
            phase.reconcile_mean_ms = (
                (reconciled[1][1] - reconciled[0][1]) / (reconciled[1][0] - reconciled[0][0]) * 1000
            )
        if args.steady > 0:
            phase.steady = steady_state(api, namespace, job_names(args.jobs), args, port,
                                        samplers["all"])  # fmt: skip
        phase.phases = ftj_phases(api, namespace)
        print(f"  quiet {phase.settled_after_s:.0f} s after the last Job; FineTuneJobs: "
              f"{_counts(phase.phases)}; pods: {_counts(phase.pods)}", flush=True)  # fmt: skip
    finally:
        _stop_samplers(phase, samplers)
        operator.stop()
    return phase


def create_cost(
    api: client.ApiClient, namespace: str, count: int, threads: int
) -> dict[str, float | None]:
    """What a FineTuneJob create costs by itself, before any controller runs: count // 5
    creates one by one, then `count` at once from `threads` threads (the phases' create
    calls run beside their controller's own requests; this is the object's own cost)."""
    create_namespace(api, namespace)
    custom = client.CustomObjectsApi(api)
    out: dict[str, float | None] = {}
    for label, number, width in (("sequential", max(1, count // 5), 1),
                                 ("burst", count, threads)):  # fmt: skip

        def create(index: int, label: str = label) -> object:
            body = manifest(f"cost-{label[0]}{index:04d}", namespace, "1h")
            return custom.create_namespaced_custom_object(GROUP, VERSION, namespace, PLURAL, body)

        calls = timed_creates(create, number, width)
        out[f"{label}_p50_ms"], out[f"{label}_p99_ms"] = calls.p50, calls.p99
        out[f"{label}_per_s"] = calls.per_s
    print(f"  a FineTuneJob create alone: one by one p50 {out['sequential_p50_ms']:.1f} ms; "
          f"{count} at once p50 {out['burst_p50_ms']:.1f} ms, p99 {out['burst_p99_ms']:.1f} "
          f"ms, {out['burst_per_s']:.0f}/s", flush=True)  # fmt: skip
    return out


# --------------------------------------------------------------------------------------------
# The peer: Kubeflow Trainer (TrainJobs -> JobSets -> Jobs)

RUNTIME = "fto-bench-torch"  # the ClusterTrainingRuntime this script applies
GPU_RESOURCE = "nvidia.com/gpu"


def kubeflow_runtime(torch_runtime: dict[str, Any], run_duration: str) -> dict[str, Any]:
    """The Trainer's own torch-distributed ClusterTrainingRuntime (its manifests/base/runtimes),
    placed as the FineTuneJobs are, by the platform team that owns the runtime: the bench
    pool's nodeSelector, its toleration and the GPU taint's (the operator adds that one to
    every GPU pod), and the kwok run duration on the pod."""
    runtime = copy.deepcopy(torch_runtime)
    runtime["metadata"] = {
        "name": RUNTIME,
        "labels": {**torch_runtime["metadata"].get("labels", {}), BENCH_LABEL: "true"},
    }
    for replicated in runtime["spec"]["template"]["spec"]["replicatedJobs"]:
        pod = replicated["template"]["spec"]["template"]
        annotations = pod.setdefault("metadata", {}).setdefault("annotations", {})
        annotations["finetune.dev/kwok-run-duration"] = run_duration
        pod["spec"]["nodeSelector"] = {"finetune.dev/pool": POOL}
        pod["spec"]["tolerations"] = [
            {"key": BENCH_LABEL, "operator": "Exists", "effect": "NoSchedule"},
            {"key": GPU_RESOURCE, "operator": "Exists", "effect": "NoSchedule"},
        ]
    return runtime


def trainjob(name: str, namespace: str) -> dict[str, Any]:
    """The FineTuneJob's counterpart: 1 node x 1 GPU on the benchmark's runtime."""
    group = TRAINER_API.split("/")[0]
    return {
        "apiVersion": TRAINER_API,
        "kind": "TrainJob",
        "metadata": {"name": name, "namespace": namespace},
        "spec": {
            "runtimeRef": {"name": RUNTIME, "apiGroup": group, "kind": "ClusterTrainingRuntime"},
            "trainer": {"numNodes": 1, "resourcesPerNode": {"limits": {GPU_RESOURCE: "1"}}},
        },
    }


def run_kubeflow(
    api: client.ApiClient, namespace: str, args: argparse.Namespace, workdir: Path,
    tuned: bool = False,
) -> Phase:  # fmt: skip
    """Kubeflow Trainer and JobSet as shipped ("kubeflow") or tuned ("kubeflow-tuned", the
    peer: fttestkit.kubeflow.tuning)."""
    name = "kubeflow-tuned" if tuned else "kubeflow"
    workers = args.workers or DEFAULT_WORKERS
    print(f"Kubeflow Trainer {'tuned' if tuned else 'as shipped'}: TrainJobs in {namespace}, "
          "trainer-controller-manager + jobset", flush=True)  # fmt: skip
    create_namespace(api, namespace)
    custom = client.CustomObjectsApi(api)
    phase = Phase(name, args.jobs)
    group, version = TRAINER_API.split("/")
    peer = Kubeflow(kubectl, os.environ["KUBECONFIG"], workdir,
                    namespace_selector={BENCH_LABEL: "true"}, labels={BENCH_LABEL: "true"},
                    tuned=tuning(workers) if tuned else None)  # fmt: skip
    samplers: dict[str, Sampler] = {}
    try:
        runtime = kubeflow_runtime(peer.torch_runtime(), args.run_duration)
        kubectl("apply", "--server-side", "--force-conflicts", "-f", "-",
                input=json.dumps(runtime))  # fmt: skip
        samplers = {"all": Sampler(*peer.pids.values())}
        samplers.update({name: Sampler(pid) for name, pid in peer.pids.items()})

        def create(name: str) -> Timing:
            body = trainjob(name, namespace)
            started = time.monotonic()
            custom.create_namespaced_custom_object(group, version, namespace, "trainjobs", body)
            return Timing(started=started, applied=time.monotonic())

        def read() -> dict[str, float]:
            return {f"{controller} {method}": count
                    for controller, methods in peer.requests().items()
                    for method, count in methods.items()}  # fmt: skip

        run_phase(api, namespace, phase, args,
                  Setup(JOBSET_NAME_LABEL, create, Counters(read, _difference), samplers,
                        "Kubeflow Trainer"))  # fmt: skip
        print(f"  {lineage(api, namespace)} Jobs of JobSets of TrainJobs; quiet "
              f"{phase.settled_after_s:.0f} s after the last Job; pods: {_counts(phase.pods)}",
              flush=True)  # fmt: skip
    except BaseException:
        print(peer.log()[-4000:], file=sys.stderr)
        raise
    finally:
        _stop_samplers(phase, samplers)
        delete_runtime()
        peer.stop()
    return phase


def delete_runtime() -> None:
    """The bench's ClusterTrainingRuntime, if any (fttestkit.kubeflow.delete_runtime)."""
    kubeflow_delete_runtime(kubectl, RUNTIME)


def lineage(api: client.ApiClient, namespace: str) -> int:
    """The benchmark's Jobs (not the warm-up's) owned by a JobSet that a TrainJob of the same
    name owns: what the Trainer and JobSet made of the TrainJobs."""
    jobsets = _list_raw(client.CustomObjectsApi(api).list_namespaced_custom_object,
                        "jobset.x-k8s.io", "v1alpha2", namespace, "jobsets")  # fmt: skip

    def owned_by(obj: dict[str, Any], kind: str, names: set[str]) -> bool:
        owners = obj["metadata"].get("ownerReferences", [])
        return any(o["kind"] == kind and o["name"] in names for o in owners)

    of_trainjobs = {j["metadata"]["name"] for j in jobsets
                    if owned_by(j, "TrainJob", {j["metadata"]["name"]})}  # fmt: skip
    jobs = _list_raw(client.BatchV1Api(api).list_namespaced_job, namespace,
                     label_selector=JOBSET_NAME_LABEL)  # fmt: skip
    return sum(1 for job in jobs if job["metadata"]["labels"][JOBSET_NAME_LABEL] != WARMUP
               and owned_by(job, "JobSet", of_trainjobs))  # fmt: skip


def _difference(now: dict[str, float], before: dict[str, float]) -> dict[str, float]:
    return {key: value - before.get(key, 0.0) for key, value in now.items()}


def steady_state(
    api: client.ApiClient, namespace: str, names: list[str], args: argparse.Namespace,
    port: int, sampler: Sampler,
) -> dict[str, float]:  # fmt: skip
    """Every job reports progress every args.progress_every seconds for args.steady seconds
    (the reports of all jobs spread evenly over each interval); the operator's and the API
    server's CPU, the operator's requests over that window, and how long after the last
    report every job's status showed it."""
    custom = client.CustomObjectsApi(api)
    per_second = len(names) / args.progress_every
    count = max(1, int(args.steady * per_second))
    print(f"  steady state: {len(names)} jobs report every {args.progress_every:g} s for "
          f"{args.steady:g} s ({per_second:.0f} reports/s)", flush=True)  # fmt: skip
    apiserver = cluster_pid("kube-apiserver")
    before, started, apiserver_before = scrape(port), time.monotonic(), cpu_seconds(apiserver)
    sampler.sample()
    cpu_before = sampler.samples[-1][3]
    failures: list[str] = []

    def report(index: int) -> None:
        due = started + index / per_second
        time.sleep(max(0.0, due - time.monotonic()))
        name, round_ = names[index % len(names)], index // len(names) + 1
        body = ProgressReport(
            stage="training", step=round_, total_steps=10_000, epoch=round_ / 10_000,
            tokens_per_second=1000.0 + round_, eta_seconds=36_000 - round_,
            metrics={"train_loss": 2.0 / round_, "learning_rate": 1e-4, "grad_norm": 1.0},
            updated_at=time.time(),  # type: ignore[arg-type]
        ).model_dump_json(exclude_none=True)  # fmt: skip
        try:
            custom.patch_namespaced_custom_object(
                GROUP, VERSION, namespace, PROGRESS_PLURAL, f"{name}-progress", {REPORT_FIELD: body}
            )
        except ApiException as error:
            failures.append(f"{name}: {error.status} {error.reason}")

    with ThreadPoolExecutor(max_workers=args.threads, thread_name_prefix="report") as pool:
        list(pool.map(report, range(count)))
    ended = time.monotonic()
    sampler.sample()
    cpu, apiserver_after = sampler.samples[-1][3] - cpu_before, cpu_seconds(apiserver)
    # Job i's last report carried the step of the last round that reached it.
    last_step = {name: len(range(i, count, len(names))) for i, name in enumerate(names)}
    behind = len(names)
    while time.monotonic() - ended < 120:
        items = _list_raw(custom.list_namespaced_custom_object, GROUP, VERSION, namespace, PLURAL)
        shown = {i["metadata"]["name"]: (i.get("status") or {}).get("progress", {}).get("step")
                 for i in items}  # fmt: skip
        behind = sum(1 for name, step in last_step.items() if shown.get(name) != step)
        if not behind:
            break
        time.sleep(1)
    requests = _requests(scrape(port), before)
    seconds = ended - started
    return {
        "reports": float(count), "seconds": seconds, "failed_reports": float(len(failures)),
        "operator_cpu_percent": cpu / seconds * 100,
        "operator_max_cpu_percent": sampler.max_cpu_percent(started, ended) or 0.0,
        "apiserver_cpu_percent": (apiserver_after - apiserver_before) / seconds * 100
        if apiserver_before is not None and apiserver_after is not None else 0.0,
        "requests_per_report": sum(requests.values()) / count,
        "status_writes_per_report": requests.get("patch", 0.0) / count,
        "reflected_after_s": time.monotonic() - ended, "jobs_behind": float(behind),
    }  # fmt: skip


# The series this script reads from the operator, asked for by name: each scrape then renders
# only them, not every job's series (a 1000-job page, read every second while a phase
# settles, cost the operator seconds of CPU no Prometheus scraping every 30 s would). The
# Kubeflow managers' pages hold no per-job series.
SCRAPED = ("finetune_api_requests_total", "finetune_reconcile_duration_seconds_count",
           "finetune_reconcile_duration_seconds_sum", "finetune_watch_events_total",
           "finetune_operator_gc_seconds_total")  # fmt: skip


def scrape(port: int) -> dict[str, float]:
    """The operator's SCRAPED series as {'name{labels}': value}."""
    query = "&".join(f"name[]={name}" for name in SCRAPED)
    return read_metrics(f"http://127.0.0.1:{port}/metrics?{query}")


def _requests(now: dict[str, float], before: dict[str, float]) -> dict[str, float]:
    return _increase_by(now, before, "finetune_api_requests_total", "verb")


def _increase_by(
    now: dict[str, float], before: dict[str, float], counter: str, label: str
) -> dict[str, float]:
    """How much each series of `counter` grew between two scrapes, by its `label`."""
    prefix = counter + "{"
    return {
        re.sub(rf'.*{label}="([^"]*)".*', r"\1", key): value - before.get(key, 0.0)
        for key, value in now.items()
        if key.startswith(prefix)
    }


def _reconcile(metrics: dict[str, float]) -> tuple[float, float]:
    return (
        metrics.get("finetune_reconcile_duration_seconds_count", 0.0),
        metrics.get("finetune_reconcile_duration_seconds_sum", 0.0),
    )


def _list_raw(call: Callable[..., Any], *args: Any, **kwargs: Any) -> list[dict[str, Any]]:
    """A list call's items as plain JSON (no client models: 1000 pods deserialize slowly)."""
    response = call(*args, _preload_content=False, **kwargs)
    return list(json.loads(response.data)["items"])


def ftj_phases(api: client.ApiClient, namespace: str) -> dict[str, int]:
    items = _list_raw(
        client.CustomObjectsApi(api).list_namespaced_custom_object,
        GROUP,
        VERSION,
        namespace,
        PLURAL,
    )
    return dict(Counter((i.get("status") or {}).get("phase", "(none)") for i in items))


def _counts(counts: dict[str, int]) -> str:
    return ", ".join(f"{n} {k}" for k, n in sorted(counts.items())) or "none"


if __name__ == "__main__":
    sys.exit(main())
