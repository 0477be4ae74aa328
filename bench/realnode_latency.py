"""Where users feel latency: a FineTuneJob applied -> its first training step and -> its Job
complete, on the real kubelet node, against a TrainJob of Kubeflow Trainer (tuned) running
the very same pod (issue 43, item 5). kwok pods start no containers; these do.

    make bench-realnode                                  # 20 jobs a side, once (as root)
    make bench-realnode BENCH_REALNODE_ARGS="--repeats 3 --json rn.json"

It starts the local cluster with its real node (hack/cluster-up.sh, as root) and builds the
trainer image of this tree into the node (hack/images.sh) when it is not there.

Both sides run the same work: the tiny random-weight Llama of fttrainer.tiny, LoRA on 64 QA
rows for --steps steps, read from and written to the local MinIO, by the trainer image on
the real node, every pod with the same --cpu and --memory (fttestkit.realnode.cpu_job):

  operator        `python -m ftoperator` as a subprocess with the Helm chart's rights
                  (fttestkit.operator.Operator), watching the benchmark's namespaces; the
                  script creates --jobs FineTuneJobs at once.
  kubeflow-tuned  Kubeflow Trainer's and JobSet's managers, tuned as in bench-operator
                  (fttestkit.kubeflow.tuning); a ClusterTrainingRuntime whose pod is the one
                  the operator renders for the same manifest (image, torchrun line, env,
                  resources, security context), with the resolved config in one shared
                  ConfigMap and each TrainJob's own output given as `trainer.args`
                  (`--set output.uri=...`), as a Kubeflow user would share one config; the
                  script creates --jobs TrainJobs at once.

Per job, from the moment its create request was sent (wall clock, as the node's are):
  first line  the pod log's first line (the trainer's process is up): what the controllers,
              the scheduler and the kubelet took, before the container's own start-up
  first step  the pod log's first `{'loss': ...}` line (logging.steps 1), by its kubelet
              timestamp (`kubectl logs --timestamps`, nanoseconds)
  done        the batch Job's status.completionTime (seconds: the API's resolution)
and every job's final_metrics.json in the bucket says it ran --steps steps (else the run
fails: both sides must have done the work). With --repeats N the order of the two sides is
rotated; each row is median (min..max) over the repeats of that repeat's p50 or p99, with
the met / missed / within-noise verdict of fttestkit.bench_report. --json also keeps the
pod logs (kubelet timestamps) of each phase's slowest first steps. Each phase starts its
controllers, runs one job end to end unreported (the warm-up), then the measured ones.
docs/benchmarks.md has the results.
"""

from __future__ import annotations

import argparse
import copy
import json
import os
import re
import subprocess
import sys
import tempfile
import time
import uuid
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from datetime import datetime
from pathlib import Path
from typing import Any

from kubernetes import client, config

from ftapi import parse_job
from ftoperator.children import LABEL_JOB, build_children
from ftoperator.config import Settings
from fttestkit import bench_report as report
from fttestkit.cluster import Cluster, install_crds, read_env_file
from fttestkit.kubeflow import JOBSET_NAME_LABEL, TRAINER_API, Kubeflow, delete_runtime, tuning
from fttestkit.operator import Operator
from fttestkit.paths import REPO
from fttestkit.process import sigterm_as_ctrl_c
from fttestkit.realnode import TRAINER_IMAGE, Bucket, cpu_job, qa_rows
from fttrainer.tiny import save_tiny_model

SIDES = ("operator", "kubeflow-tuned")
PEER = "kubeflow-tuned"
PREFIX = "rn-bench-"  # the namespaces; the operator watches rn-bench-*
BENCH_LABEL = "finetune.dev/bench-realnode"  # not bench-operator's: each cleans up its own
RUNTIME = "fto-realnode-bench"
SHARED_CONFIG = "shared-config"
FIRST_STEP = re.compile(r"^(\S+) \{'loss'")
WORKERS = 64  # the operator's default; the tuned Trainer's TrainJob concurrency
SLOWEST_LOGS = 3  # pod logs kept in --json per side and repeat, the slowest first steps
STATE = Path(os.environ.get("FTO_STATE", Path.home() / ".cache/finetune-operator/cluster"))


@dataclass
class Side:
    name: str
    sent: dict[str, float] = field(default_factory=dict)
    started: dict[str, float] = field(default_factory=dict)
    first_step: dict[str, float] = field(default_factory=dict)
    done: dict[str, float] = field(default_factory=dict)
    retried: dict[str, int] = field(default_factory=dict)
    """Jobs whose first pod failed and whose controller ran another."""
    logs: dict[str, str] = field(default_factory=dict)
    """Each job's pod log with the kubelet's timestamps: where the slowest spent their time."""

    def latencies(self, which: dict[str, float]) -> list[float]:
        return sorted(which[job] - self.sent[job] for job in which)

    def summary(self) -> dict[str, Any]:
        rows: dict[str, Any] = {"side": self.name, "jobs": len(self.sent), "retried": self.retried}
        for label, which in (("started", self.started), ("first_step", self.first_step),
                             ("done", self.done)):  # fmt: skip
            values = self.latencies(which)
            rows[f"{label}_p50_s"] = _percentile(values, 0.50)
            rows[f"{label}_p99_s"] = _percentile(values, 0.99)
            rows[f"{label}_s"] = [round(v, 3) for v in values]
        rows["by_job"] = {
            job: [round(which[job] - sent, 3) if job in which else None
                  for which in (self.started, self.first_step, self.done)]
            for job, sent in self.sent.items()
        }  # fmt: skip
        slowest = sorted(self.first_step, key=lambda job: self.first_step[job] - self.sent[job],
                         reverse=True)  # fmt: skip
        rows["slowest_logs"] = {job: self.logs[job] for job in slowest[:SLOWEST_LOGS]}
        return rows


def _percentile(values: list[float], q: float) -> float | None:
    """Nearest rank (with 20 jobs, p99 is the slowest), to the millisecond."""
    found = report.percentile(values, q * 100)
    return None if found is None else round(found, 3)


def _wall(stamp: str) -> float:
    """An RFC 3339 time with nanoseconds (a kubelet log line's) as epoch seconds."""
    head, _, fraction = stamp.rstrip("Z").partition(".")
    seconds = datetime.fromisoformat(head + "+00:00").timestamp()
    return seconds + (float(f"0.{fraction}") if fraction else 0.0)


class Bench:
    def __init__(self, args: argparse.Namespace, cluster: Cluster, workdir: Path) -> None:
        self.args, self.cluster, self.workdir = args, cluster, workdir
        self.core = client.CoreV1Api(cluster.api)
        self.batch = client.BatchV1Api(cluster.api)
        self.custom = client.CustomObjectsApi(cluster.api)
        self.bucket = Bucket(cluster, f"rn-bench-{uuid.uuid4().hex[:8]}")
        self.model = self.bucket.put_dir(save_tiny_model("llama", workdir / "tiny"), "model")
        self.data = self.bucket.put_text("data/qa.jsonl", qa_rows(64))

    def manifest(self, name: str, namespace: str, secret: str) -> dict[str, Any]:
        job = cpu_job(name, self.model, self.data, self.bucket, secret, steps=self.args.steps,
                      save_steps=self.args.steps, log_every=1)  # fmt: skip
        job["metadata"]["namespace"] = namespace
        job["spec"]["resources"].update(cpu=self.args.cpu, memory=self.args.memory)
        return job

    # ---------------------------------------------------------------- a side, in a namespace

    def run(self, side: str, repeat: int) -> Side:
        namespace = f"{PREFIX}{side.split('-')[0]}-{repeat + 1}-{uuid.uuid4().hex[:6]}"
        self.core.create_namespace({"metadata": {"name": namespace,
                                                 "labels": {BENCH_LABEL: "true"}}})  # fmt: skip
        secret = self.bucket.credentials_secret(namespace, "s3")
        names = [f"{side.split('-')[0]}-{repeat + 1}-{i:03d}" for i in range(self.args.jobs)]
        result = Side(side)
        print(f"{side} (repeat {repeat + 1}): {len(names)} jobs in {namespace}", flush=True)
        try:
            if side == "operator":
                self._operator(namespace, secret, names, result)
            else:
                self._kubeflow(namespace, secret, names, result)
        finally:
            self.core.delete_namespace(namespace)
        self._check_work(result)
        summary = result.summary()
        print(f"  first step p50 {summary['first_step_p50_s']} s, p99 "
              f"{summary['first_step_p99_s']} s; done p50 {summary['done_p50_s']} s, p99 "
              f"{summary['done_p99_s']} s", flush=True)  # fmt: skip
        return result

    def _phase(
        self, namespace: str, names: list[str], result: Side, create: Callable[[str, Side], None],
        selector: Callable[[str], str], ended: Callable[[str, str], bool],
        controller_log: Callable[[], str],
    ) -> None:  # fmt: skip
        """The controllers are up: one job end to end first, unreported (their caches and
        the node's page cache warm; the first phase of a run without it was 7 % slower than
        its repeat, and a Kubeflow phase's first TrainJob waited up to 25 s), then the
        measured ones."""
        try:
            if self.args.warmup:
                warm = Side("warm-up")
                create(f"{names[0]}-warm", warm)
                self._measure(namespace, list(warm.sent), warm, selector, ended)
            self._create_all(names, lambda name: create(name, result))
            self._measure(namespace, names, result, selector, ended)
        except BaseException:
            print(controller_log()[-4000:], file=sys.stderr)
            raise

    def _operator(self, namespace: str, secret: str, names: list[str], result: Side) -> None:
        log = self.workdir / f"operator-{namespace}.log"
        operator = Operator(self.cluster, log, "--default-image", TRAINER_IMAGE,
                            "--workers", str(WORKERS), namespaces=(f"{PREFIX}*",))  # fmt: skip
        try:

            def create(name: str, into: Side) -> None:
                body = self.manifest(name, namespace, secret)
                into.sent[name] = time.time()
                self.custom.create_namespaced_custom_object(
                    "finetune.dev", "v1alpha1", namespace, "finetunejobs", body)  # fmt: skip

            self._phase(namespace, names, result, create, lambda n: f"{LABEL_JOB}={n}",
                        self._finetunejob_ended, log.read_text)  # fmt: skip
        finally:
            operator.stop()

    def _finetunejob_ended(self, namespace: str, name: str) -> bool:
        job = self.custom.get_namespaced_custom_object(
            "finetune.dev", "v1alpha1", namespace, "finetunejobs", name)  # fmt: skip
        phase = (job.get("status") or {}).get("phase")
        if phase == "Failed":
            raise SystemExit(f"FineTuneJob {namespace}/{name} failed: {job['status']}")
        return phase == "Succeeded"

    def _kubeflow(self, namespace: str, secret: str, names: list[str], result: Side) -> None:
        template = self.manifest("shared", namespace, secret)
        parsed = parse_job(template)
        settings = Settings(default_image=TRAINER_IMAGE)
        children = build_children(parsed, attempt=0, settings=settings)
        pod = children.job["spec"]["template"]
        self.core.create_namespaced_config_map(
            namespace, {"metadata": {"name": SHARED_CONFIG}, "data": children.config["data"]}
        )
        peer = Kubeflow(self.cluster.kubectl, self.cluster.kubeconfig, self.workdir / namespace,
                        namespace_selector={BENCH_LABEL: "true"}, labels={BENCH_LABEL: "true"},
                        tuned=tuning(WORKERS))  # fmt: skip
        group, version = TRAINER_API.split("/")
        try:
            runtime = trainer_runtime(peer.torch_runtime(), pod)
            self.cluster.kubectl("apply", "--server-side", "--force-conflicts", "-f", "-",
                                 input=json.dumps(runtime))  # fmt: skip
            args = pod["spec"]["containers"][0]["args"]

            def create(name: str, into: Side) -> None:
                body = {
                    "apiVersion": TRAINER_API, "kind": "TrainJob",
                    "metadata": {"name": name, "namespace": namespace},
                    "spec": {
                        "runtimeRef": {"name": RUNTIME, "apiGroup": group,
                                       "kind": "ClusterTrainingRuntime"},
                        "trainer": {"numNodes": 1, "args": [
                            *args, "--set", f"output.uri=s3://{self.bucket.name}/{name}"]},
                    },
                }  # fmt: skip
                into.sent[name] = time.time()
                self.custom.create_namespaced_custom_object(group, version, namespace,
                                                            "trainjobs", body)  # fmt: skip

            self._phase(namespace, names, result, create, lambda n: f"{JOBSET_NAME_LABEL}={n}",
                        self._trainjob_ended, peer.log)  # fmt: skip
        finally:
            delete_runtime(self.cluster.kubectl, RUNTIME)
            peer.stop()

    def _trainjob_ended(self, namespace: str, name: str) -> bool:
        group, version = TRAINER_API.split("/")
        job = self.custom.get_namespaced_custom_object(group, version, namespace, "trainjobs",
                                                       name)  # fmt: skip
        conditions = {c["type"]: c for c in (job.get("status") or {}).get("conditions", [])}
        if (conditions.get("Failed") or {}).get("status") == "True":
            raise SystemExit(f"TrainJob {namespace}/{name} failed: {conditions['Failed']}")
        return (conditions.get("Complete") or {}).get("status") == "True"

    # ---------------------------------------------------------------- common to both sides

    def _create_all(self, names: list[str], create: Callable[[str], None]) -> None:
        """All at once (a burst: the node's two CPUs then run the pods in waves), or one
        every --interval seconds (the node has room: what the controllers add shows)."""
        if self.args.interval <= 0:
            with ThreadPoolExecutor(max_workers=min(16, len(names))) as pool:
                list(pool.map(create, names))
            return
        start = time.monotonic()
        for i, name in enumerate(names):
            time.sleep(max(0.0, start + i * self.args.interval - time.monotonic()))
            create(name)

    def _measure(
        self, namespace: str, names: list[str], result: Side,
        selector: Callable[[str], str], ended: Callable[[str, str], bool],
    ) -> None:  # fmt: skip
        deadline = time.monotonic() + self.args.timeout
        waiting = set(names)
        while waiting:
            if time.monotonic() > deadline:
                raise SystemExit(f"{result.name}: {sorted(waiting)} not done in "
                                 f"{self.args.timeout} s")  # fmt: skip
            for name in sorted(waiting):
                if ended(namespace, name):
                    waiting.discard(name)
                    self._read(namespace, name, selector(name), result)
            time.sleep(1.0)

    def _read(self, namespace: str, name: str, selector: str, result: Side) -> None:
        pods = self.core.list_namespaced_pod(namespace, label_selector=selector).items
        done = [p for p in pods if p.status.phase == "Succeeded"]
        if len(done) != 1:
            raise SystemExit(f"{namespace}/{name}: {len(done)} pods succeeded: "
                             f"{[(p.metadata.name, p.status.phase) for p in pods]}")  # fmt: skip
        pod = done[0]
        for other in pods:
            if other is not pod:  # a pod that failed before this one (said, and counted)
                states = [c.state.to_dict() for c in other.status.container_statuses or []]
                print(f"  {name}: an earlier pod {other.metadata.name} {other.status.phase}: "
                      f"{states}"[:600], flush=True)  # fmt: skip
                result.retried[name] = result.retried.get(name, 0) + 1
        log = self.core.read_namespaced_pod_log(pod.metadata.name, namespace, timestamps=True)
        lines = log.splitlines()
        stamps = [m.group(1) for m in map(FIRST_STEP.match, lines) if m]
        if not stamps:
            raise SystemExit(f"{namespace}/{pod.metadata.name}: no step logged:\n{log[-3000:]}")
        result.logs[name] = log
        result.started[name] = _wall(lines[0].split(" ", 1)[0])
        result.first_step[name] = _wall(stamps[0])
        owner = pod.metadata.owner_references[0].name
        completed = self.batch.read_namespaced_job(owner, namespace).status.completion_time
        result.done[name] = completed.timestamp()

    def _check_work(self, result: Side) -> None:
        """Both sides did the same work: every job trained --steps steps and published."""
        for name in result.sent:
            metrics = self.bucket.get_json(f"{name}/final_metrics.json")
            if metrics.get("global_step") != self.args.steps:
                raise SystemExit(
                    f"{result.name} {name}: global_step {metrics} != {self.args.steps}"
                )


def trainer_runtime(torch_runtime: dict[str, Any], pod: dict[str, Any]) -> dict[str, Any]:
    """The Trainer's torch-distributed ClusterTrainingRuntime with the operator's pod for the
    same job in it: the container renamed `node` (the one TrainJob.spec.trainer changes), the
    config volume pointed at the shared ConfigMap, and without what only the operator makes
    (the per-job ServiceAccount and progress object)."""
    runtime = copy.deepcopy(torch_runtime)
    runtime["metadata"] = {"name": RUNTIME, "labels": {BENCH_LABEL: "true"}}
    spec = copy.deepcopy(pod["spec"])
    spec.pop("serviceAccountName", None)
    (container,) = spec["containers"]
    container["name"] = "node"
    container["env"] = [e for e in container["env"] if e["name"] != "FINETUNE_PROGRESS_NAME"]
    for volume in spec["volumes"]:
        if "configMap" in volume:
            volume["configMap"]["name"] = SHARED_CONFIG
    (replicated,) = runtime["spec"]["template"]["spec"]["replicatedJobs"]
    replicated["template"]["spec"]["template"]["spec"] = spec
    return runtime


ROWS = (("started_p50_s", "first log line p50 s"), ("started_p99_s", "first log line p99 s"),
        ("first_step_p50_s", "first step p50 s"), ("first_step_p99_s", "first step p99 s"),
        ("done_p50_s", "Job complete p50 s"), ("done_p99_s", "Job complete p99 s"))  # fmt: skip


def render(sides: list[Side], args: argparse.Namespace) -> str:
    by_side = {name: [s.summary() for s in sides if s.name == name] for name in SIDES}
    arrival = f"one every {args.interval:g} s" if args.interval > 0 else "all at once"
    lines = [f"real node: {args.jobs} jobs ({arrival}) x {args.repeats} repeats, "
             f"{args.steps} steps, pods {args.cpu} CPU / {args.memory}", "",
             "| apply -> | " + " | ".join(SIDES) + " | verdict (operator vs peer) |",
             "|---|---|---|---|"]  # fmt: skip
    for key, label in ROWS:
        cells = {name: report.Spread.of([r[key] for r in rows]) for name, rows in by_side.items()}
        ours, peer = cells["operator"], cells[PEER]
        verdict = report.verdict(ours, peer) if ours and peer else "-"
        lines.append(f"| {label} | " + " | ".join(
            c.format(".2f") if c else "-" for c in cells.values()) + f" | {verdict} |")  # fmt: skip
    retried = {name: sum(len(r["retried"]) for r in rows) for name, rows in by_side.items()}
    lines += ["", "jobs whose first pod failed and ran again: "
              + ", ".join(f"{name} {count}" for name, count in retried.items())]  # fmt: skip
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--jobs", type=int, default=20)
    parser.add_argument("--repeats", type=int, default=1)
    parser.add_argument("--interval", type=float, default=0.0,
                        help="seconds between creates (0: all at once)")  # fmt: skip
    parser.add_argument("--no-warmup", dest="warmup", action="store_false",
                        help="no unreported job first in each phase")  # fmt: skip
    parser.add_argument("--steps", type=int, default=5, help="training steps per job")
    parser.add_argument("--cpu", default="250m", help="each pod's CPU request")
    parser.add_argument("--memory", default="1500Mi", help="each pod's memory request = limit")
    parser.add_argument("--timeout", type=float, default=1200, help="per side, seconds")
    parser.add_argument("--json", type=Path, help="write every job's figures here")
    args = parser.parse_args(argv)
    sigterm_as_ctrl_c()
    env = read_env_file(STATE / "env")
    if not env.get("FTO_NODE_NAME"):
        raise SystemExit("no real node in the local cluster: hack/cluster-up.sh runs one as root")
    # The trainer image of this tree in the node's containerd (seconds when up to date).
    images = [str(REPO / "hack" / "images.sh")]
    subprocess.run(images, check=True, stdout=sys.stderr, env={**os.environ, **env})
    api = config.new_client_from_config(config_file=env["KUBECONFIG"])  # type: ignore[no-untyped-call]
    cluster = Cluster(env=env, api=api)
    install_crds(cluster)
    core = client.CoreV1Api(api)  # what a killed run left (its namespaces carry the label)
    for left in core.list_namespace(label_selector=f"{BENCH_LABEL}=true").items:
        if left.status.phase != "Terminating":
            core.delete_namespace(left.metadata.name)
    sides: list[Side] = []
    with tempfile.TemporaryDirectory(prefix="realnode-bench-") as tmp:
        bench = Bench(args, cluster, Path(tmp))
        for repeat in range(args.repeats):
            order = SIDES[repeat % 2 :] + SIDES[: repeat % 2]
            sides += [bench.run(side, repeat) for side in order]
    table = render(sides, args)
    print(table)
    if args.json:
        args.json.write_text(json.dumps({
            "args": {k: str(v) for k, v in vars(args).items()},
            "runs": [s.summary() for s in sides], "table": table,
        }, indent=2))  # fmt: skip
    return 0


if __name__ == "__main__":
    sys.exit(main())
