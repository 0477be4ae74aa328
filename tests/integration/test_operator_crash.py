"""Crash safety: the operator SIGKILLed at random moments while 50 FineTuneJobs progress.

What the status-first design (controller.py, planner.py) promises, checked end to end:
an operator killed between any two of its writes and started again never creates an attempt
twice (no Job name ADDED with two uids), never skips or adds an attempt (each FineTuneJob's
Jobs are exactly <name>-0 .. <name>-<restarts>), never loses a FineTuneJob, and every job
still reaches the terminal phase, restart count and failure reason its kwok script implies.

The jobs live in their own namespace (prefix crash-, not op-*), watched only by this test's
operator: the module-scoped `operator` fixture of a concurrently running test module watches
op-* and would otherwise reconcile these jobs too, hiding the crashes.

Leader election: the 50-job test runs without it (every SIGKILL would leave the Lease held
and the next process would wait out its 15 s: 8+ kills would cost minutes of idle time). A
second, smaller test runs two replicas with leader election and kills the leader 3 times:
the standby must take over and finish every job, still without a duplicate.

    FTO_CRASH_SEED=7 FTO_KEEP_CLUSTER=1 pytest -s tests/integration/test_operator_crash.py
"""

from __future__ import annotations

import os
import random
import re
import threading
import time
import uuid
from collections import Counter
from collections.abc import Iterable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pytest
from kubernetes import client, config, watch
from kubernetes.client.exceptions import ApiException

from ftapi.constants import GROUP, PLURAL, VERSION
from ftoperator.children import LABEL_ATTEMPT, LABEL_JOB
from fttestkit.builders import make_job
from fttestkit.cluster import Cluster, eventually, fresh_namespace
from fttestkit.operator import Operator

# serial: 50 jobs fill the GPU pool that other tests' pods need, and the crash timings
# assume an otherwise quiet cluster.
pytestmark = [pytest.mark.integration, pytest.mark.serial]

SEED = int(os.environ.get("FTO_CRASH_SEED", "20240611"))
MIN_KILLS = 8
MAX_KILLS = 10
KILL_PHASE_LIMIT = 100.0  # seconds of killing at most, then the operator is left alone
SETTLE_TIMEOUT = 300.0  # after the last restart, for every job to be terminal
LEADER_KILLS = 3
STARTED = "finetune-operator starting"  # logged just before the watches start
ACQUIRED = "Acquired leader Lease"
TERMINAL = ("Succeeded", "Failed")


@dataclass(frozen=True)
class Expected:
    """One FineTuneJob's script (kwok annotations) and the end it must reach."""

    name: str
    phase: str
    restarts: int
    reason: str | None = None
    nodes: int = 1
    max_restarts: int = 3
    annotations: dict[str, str] = field(default_factory=dict)
    fail_one_pod: bool = False
    """Annotate one running pod of attempt 0 with kwok-fail exit:1: exactly one restart."""

    def manifest(self) -> dict[str, Any]:
        resources = {"nodes": self.nodes, "gpusPerNode": 1, "annotations": self.annotations}
        return (
            make_job(self.name)
            .set("resources", resources)
            .set("runPolicy", {"maxRestarts": self.max_restarts})
            .obj()
        )


FAILURES = [("exit:3", "ExitCode"), ("oom", "OOMKilled"), ("exit:1", "ExitCode"),
            ("exit:42", "ExitCode"), ("oom", "OOMKilled")]  # fmt: skip


def _plans(
    rng: random.Random, *, ok: int, bad: int, gang: int, flaky: int,
    ok_run: tuple[int, int] = (1, 12), bad_run: tuple[int, int] = (1, 4),
    gang_run: tuple[int, int] = (2, 10), flaky_run: int = 12,
) -> list[Expected]:  # fmt: skip
    def run(span: tuple[int, int]) -> dict[str, str]:
        return {"finetune.dev/kwok-run-duration": f"{rng.randint(*span)}s"}

    plans = [Expected(f"ok-{i:02d}", "Succeeded", 0, annotations=run(ok_run)) for i in range(ok)]
    for i in range(bad):  # every attempt fails: maxRestarts 0, 1, 2 used up; every 5th a gang
        fail, reason = FAILURES[i % len(FAILURES)]
        plans.append(Expected(
            f"bad-{i:02d}", "Failed", i % 3, reason, nodes=2 if i % 5 == 4 else 1,
            max_restarts=i % 3, annotations={"finetune.dev/kwok-fail": fail, **run(bad_run)},
        ))  # fmt: skip
    plans += [
        Expected(f"gang-{i:02d}", "Succeeded", 0, nodes=2, annotations=run(gang_run))
        for i in range(gang)
    ]
    plans += [
        Expected(
            f"flaky-{i}", "Succeeded", 1, nodes=1 + i % 2, fail_one_pod=True,
            annotations={"finetune.dev/kwok-run-duration": f"{flaky_run}s"},
        )
        for i in range(flaky)
    ]  # fmt: skip
    return plans


# --- observers running beside the operator ----------------------------------------------


class JobWatch(threading.Thread):
    """Every batch/v1 Job event in the namespace, from before the first FineTuneJob."""

    def __init__(self, kubeconfig: str, namespace: str) -> None:
        super().__init__(daemon=True, name="job-watch")
        self.api = config.new_client_from_config(config_file=kubeconfig)
        self.batch = client.BatchV1Api(self.api)
        self.namespace = namespace
        self.version = self.batch.list_namespaced_job(namespace).metadata.resource_version
        self.added: list[tuple[str, str]] = []  # (name, uid), in order
        self.deleted: list[tuple[str, str]] = []
        self.errors: list[str] = []
        self.halt = threading.Event()

    def run(self) -> None:
        while not self.halt.is_set():
            stream = watch.Watch()
            try:
                for event in stream.stream(
                    self.batch.list_namespaced_job, self.namespace, resource_version=self.version,
                    timeout_seconds=5, allow_watch_bookmarks=True,
                ):  # fmt: skip
                    if event["type"] in ("ADDED", "DELETED"):
                        job = event["object"]
                        entry = (job.metadata.name, job.metadata.uid)
                        (self.added if event["type"] == "ADDED" else self.deleted).append(entry)
                    self.version = stream.resource_version or self.version  # bookmarks too
                    if self.halt.is_set():
                        break
            except ApiException as error:  # 410 Gone: events were missed
                self.errors.append(f"watch failed: {error.status} {error.reason}")
                return
            except Exception as error:  # a dropped connection: resume from self.version
                self.errors.append(f"reconnected after {type(error).__name__}")
                time.sleep(0.2)

    def close(self) -> None:
        self.halt.set()
        self.join(timeout=15)
        self.api.close()


class PodFailer(threading.Thread):
    """Fails one running pod of attempt 0 of each `fail_one_pod` job (kwok-fail exit:1)."""

    def __init__(self, cluster: Cluster, namespace: str, names: Iterable[str]) -> None:
        super().__init__(daemon=True, name="pod-failer")
        self.core = client.CoreV1Api(cluster.api)
        self.namespace = namespace
        self.waiting = set(names)
        self.failed: dict[str, str] = {}
        self.missed: dict[str, str] = {}
        self.halt = threading.Event()

    def run(self) -> None:
        patch = {"metadata": {"annotations": {"finetune.dev/kwok-fail": "exit:1"}}}
        while self.waiting and not self.halt.wait(0.3):
            for name in sorted(self.waiting):
                selector = f"{LABEL_JOB}={name},{LABEL_ATTEMPT}=0"
                try:
                    found = self.core.list_namespaced_pod(self.namespace, label_selector=selector)
                    pods = sorted(found.items, key=lambda p: p.metadata.name)
                    if any(p.status.phase in TERMINAL for p in pods):
                        self.missed[name] = "attempt 0 ended before its pod could be failed"
                        self.waiting.discard(name)
                        continue
                    running = [p for p in pods if p.status.phase == "Running"]
                    if running:
                        pod = running[0].metadata.name
                        self.core.patch_namespaced_pod(pod, self.namespace, patch)
                        self.failed[name] = pod
                        self.waiting.discard(name)
                except ApiException as error:
                    if error.status != 404:
                        raise


# --- the API ------------------------------------------------------------------------------


def _ftjs(cluster: Cluster, namespace: str) -> dict[str, dict[str, Any]]:
    api = client.CustomObjectsApi(cluster.api)
    found = api.list_namespaced_custom_object(GROUP, VERSION, namespace, PLURAL)
    return {item["metadata"]["name"]: item for item in found["items"]}


def _phase(ftj: dict[str, Any]) -> str:
    return str((ftj.get("status") or {}).get("phase", "Pending"))


def _terminal(cluster: Cluster, namespace: str) -> tuple[int, int]:
    found = _ftjs(cluster, namespace)
    return sum(_phase(f) in TERMINAL for f in found.values()), len(found)


def _running_pods(cluster: Cluster, namespace: str) -> int:
    pods = client.CoreV1Api(cluster.api).list_namespaced_pod(namespace).items
    return sum(p.status.phase == "Running" for p in pods)


def _condition(status: dict[str, Any], type_: str) -> dict[str, Any]:
    return next((c for c in status.get("conditions", []) if c["type"] == type_), {})


def _logged_since(operator: Operator, offset: int, line: str) -> bool:
    with operator.log_path.open("rb") as f:
        f.seek(offset)
        return line.encode() in f.read()


def _mark(operator: Operator, text: str) -> int:
    """A line in the operator's log (the process is dead); the offset after it."""
    with operator.log_path.open("a") as log:
        log.write(f"===== test: {text} =====\n")
    return operator.log_path.stat().st_size


def _grep(log_text: str, names: Iterable[str], limit: int = 100) -> str:
    """The operator's log lines about these FineTuneJobs or Jobs, and the test's markers."""
    wanted = [w for n in names for w in (f"/{n}:", f"/{n}-", f"'{n}'", f" {n}-")]
    lines = [
        line
        for line in log_text.splitlines()
        if line.startswith("===== test") or any(w in line for w in wanted)
    ]
    return "\n".join(lines[-limit:])


@pytest.fixture
def crash_ns(cluster: Cluster, crd: dict[str, Any]) -> Iterator[str]:
    with fresh_namespace(cluster, f"crash-{uuid.uuid4().hex[:10]}") as name:
        yield name


class Scenario:
    """The FineTuneJobs of one test, the observers, and the checks of the end state."""

    def __init__(self, cluster: Cluster, namespace: str, plans: list[Expected]) -> None:
        self.cluster = cluster
        self.namespace = namespace
        self.plans = {p.name: p for p in plans}
        self.began = time.monotonic()
        self.jobs = JobWatch(cluster.kubeconfig, namespace)
        self.jobs.start()
        self.failer = PodFailer(cluster, namespace, [p.name for p in plans if p.fail_one_pod])
        self.failer.start()
        self.batch = client.BatchV1Api(cluster.api)

    def create(self) -> None:
        custom = client.CustomObjectsApi(self.cluster.api)
        for plan in self.plans.values():
            custom.create_namespaced_custom_object(
                GROUP, VERSION, self.namespace, PLURAL, plan.manifest()
            )

    def elapsed(self) -> float:
        return time.monotonic() - self.began

    def all_terminal(self) -> bool:
        done, total = _terminal(self.cluster, self.namespace)
        return done == total == len(self.plans)

    def settle(self, log: str, timeout: float = SETTLE_TIMEOUT) -> None:
        """Every job terminal, none of their pods still running, older attempts' Jobs gone."""
        try:
            eventually(self.all_terminal, timeout=timeout, interval=1.0, what="all terminal")
        except AssertionError:
            stuck = {n: _phase(f) for n, f in _ftjs(self.cluster, self.namespace).items()
                     if _phase(f) not in TERMINAL}  # fmt: skip
            raise AssertionError(f"not terminal: {stuck}\n{log[-6000:]}") from None
        try:
            eventually(lambda: not self.leftovers(), timeout=60, what="terminal jobs stopped")
        except AssertionError:
            raise AssertionError(f"{self.leftovers()}\n{log[-6000:]}") from None
        time.sleep(3)  # a late (wrong) creation would show in the watch

    def leftovers(self) -> list[str]:
        problems = []
        ftjs = _ftjs(self.cluster, self.namespace)
        for job in self.batch.list_namespaced_job(self.namespace).items:
            owner, attempt = job.metadata.name.rsplit("-", 1)
            final = (ftjs.get(owner, {}).get("status") or {}).get("attempt", 0)
            if job.status.active:
                problems.append(f"{job.metadata.name}: {job.status.active} active pod(s)")
            if int(attempt) != final and not job.metadata.deletion_timestamp:
                problems.append(f"{job.metadata.name}: an old attempt's Job (final {final})")
        return problems

    def close(self) -> None:
        self.failer.halt.set()
        self.jobs.close()

    def summary(self) -> str:
        expected = sum(p.restarts + 1 for p in self.plans.values())
        return (
            f"Jobs created {len(self.jobs.added)} (expected {expected}), deleted "
            f"{len(self.jobs.deleted)}; watch notes {self.jobs.errors}; pods failed by hand "
            f"{len(self.failer.failed)}"
        )

    def problems(self) -> list[str]:
        """Everything that differs from the scripts; empty when the operator kept its word."""
        found: list[str] = []
        if self.failer.missed:
            found.append(f"test timing, not the operator: {self.failer.missed}")
        found += [e for e in self.jobs.errors if not e.startswith("reconnected")]
        # The watch saw every Job that exists now, under the same uid.
        watched = dict(self.jobs.added)
        for job in self.batch.list_namespaced_job(self.namespace).items:
            if watched.get(job.metadata.name) != job.metadata.uid:
                found.append(f"{job.metadata.name}: not seen by the watch (test problem)")
        # No Job name ADDED with two uids: no attempt deleted and created again.
        uids: dict[str, set[str]] = {}
        for name, uid in self.jobs.added:
            uids.setdefault(name, set()).add(uid)
        found += [f"{n}: created {len(u)} times (uids {sorted(u)})"
                  for n, u in uids.items() if len(u) > 1]  # fmt: skip
        found += [f"{n}: ADDED twice with one uid (watch replay?)"
                  for n, count in Counter(self.jobs.added).items() if count > 1]  # fmt: skip
        # Nothing lost; each job reached its end by exactly the attempts its script implies.
        ftjs = _ftjs(self.cluster, self.namespace)
        found += [f"{n}: the FineTuneJob is gone" for n in sorted(set(self.plans) - set(ftjs))]
        for name, plan in sorted(self.plans.items()):
            if name not in ftjs:
                continue
            status = ftjs[name].get("status") or {}
            created = {n for n in uids if n.rsplit("-", 1)[0] == name}
            expected_jobs = {f"{name}-{i}" for i in range(plan.restarts + 1)}
            got = (status.get("phase"), status.get("restarts", 0), status.get("failureReason"))
            if got != (plan.phase, plan.restarts, plan.reason):
                found.append(f"{name}: (phase, restarts, failureReason) {got}, expected "
                             f"{(plan.phase, plan.restarts, plan.reason)}; message: "
                             f"{status.get('message')}")  # fmt: skip
            if status.get("attempt", 0) != plan.restarts:
                found.append(f"{name}: attempt {status.get('attempt')}, expected {plan.restarts}")
            if created != expected_jobs:
                found.append(f"{name}: Jobs {sorted(created)}, expected {sorted(expected_jobs)}")
            if plan.fail_one_pod and status.get("restarts", 0) == 0:
                found.append(
                    f"{name}: (maybe test timing: did kwok complete the pod before "
                    f"the injected exit:1 took effect? {self.failer.failed.get(name)})"
                )
            succeeded, failed = _condition(status, "Succeeded"), _condition(status, "Failed")
            if plan.phase == "Succeeded":
                ok = succeeded.get("status") == "True" and failed.get("status") != "True"
            else:
                ok = (failed.get("status"), failed.get("reason")) == ("True", plan.reason) and (
                    succeeded.get("status") != "True"
                )
            if not ok:
                conditions = {
                    c["type"]: (c["status"], c["reason"]) for c in status.get("conditions", [])
                }
                found.append(f"{name}: conditions {conditions}")
        return found

    def check(self, log_text: str) -> None:
        problems = self.problems()
        names = {p.split(":")[0].rsplit(" ", 1)[-1] for p in problems}
        assert not problems, (
            "\n".join(problems) + "\n--- operator log ---\n" + _grep(log_text, names)
        )


def _regressions(log_text: str) -> int:
    """Running -> Pending phase changes (a pass that saw the Job but not yet its pods)."""
    running: set[str] = set()
    count = 0
    for match in re.finditer(r"/([\w.-]+): (Running|Pending|Restarting): ", log_text):
        name, phase = match.groups()
        if phase == "Running":
            running.add(name)
        elif phase == "Restarting":
            running.discard(name)
        elif name in running:
            count += 1
            running.discard(name)
    return count


def _report(title: str, lines: list[str], scenario: Scenario, log_text: str) -> None:
    retried = len(re.findall(r"failed; retrying in", log_text))
    print(f"\n--- {title} (seed {SEED}) ---")
    print("\n".join(lines))
    print(
        f"{scenario.summary()}; reconcile errors retried {retried}; "
        f"tracebacks {log_text.count('Traceback')}; Running->Pending flaps "
        f"{_regressions(log_text)}; total {scenario.elapsed():.0f}s"
    )


# --- the tests ----------------------------------------------------------------------------


def test_killing_the_operator_at_random_moments_never_duplicates_loses_or_misjudges_a_job(
    cluster: Cluster, crash_ns: str, tmp_path: Path
) -> None:
    rng = random.Random(SEED)
    plans = _plans(rng, ok=17, bad=15, gang=14, flaky=4)
    assert len(plans) == 50
    scenario = Scenario(cluster, crash_ns, plans)
    operator = Operator(cluster, tmp_path / "operator.log", namespaces=(crash_ns,))
    scenario.create()

    # Most delays count from the line logged just before the watches start (a kill during
    # Python's imports tests little), one in five from the spawn.
    kills: list[str] = []
    offset = 0
    try:
        while len(kills) < MIN_KILLS or (
            len(kills) < MAX_KILLS
            and scenario.elapsed() < KILL_PHASE_LIMIT
            and not scenario.all_terminal()
        ):
            from_spawn = rng.random() < 0.2
            if not from_spawn:
                eventually(lambda at=offset: _logged_since(operator, at, STARTED), interval=0.1,
                           what="the operator started")  # fmt: skip
            time.sleep(rng.uniform(0.5, 5.0))
            operator.kill()
            done, total = _terminal(cluster, crash_ns)
            # Mostly at once; sometimes down long enough for pods to finish meanwhile.
            gap = rng.choice([0.0, 0.0, rng.uniform(0.1, 2.0), rng.uniform(3.0, 8.0)])
            kills.append(
                f"kill {len(kills) + 1} at {scenario.elapsed():5.1f}s "
                f"({'after spawn' if from_spawn else 'after start'}): {done}/{total} terminal, "
                f"{len(scenario.jobs.added)} Jobs created, {_running_pods(cluster, crash_ns)} "
                f"pods running; restart after {gap:.1f}s"
            )
            time.sleep(gap)
            offset = _mark(operator, kills[-1])
            operator.restart()
        restarted = scenario.elapsed()
        kills.append(f"{len(kills)} SIGKILLs in {restarted:.0f}s")
        scenario.settle(operator.log())
        kills.append(
            f"all 50 terminal {scenario.elapsed() - restarted:.0f}s after the last restart"
        )
    finally:
        operator.stop()
        scenario.close()
        log_text = operator.log_path.read_text(errors="replace")
        _report("operator crash test", kills, scenario, log_text)
    scenario.check(log_text)


def test_a_killed_leader_is_replaced_by_its_standby_and_no_job_is_duplicated(
    cluster: Cluster, crash_ns: str, tmp_path: Path
) -> None:
    rng = random.Random(SEED + 1)
    plans = _plans(rng, ok=4, bad=5, gang=3, flaky=0, ok_run=(5, 25), bad_run=(3, 8),
                   gang_run=(5, 25))  # fmt: skip
    scenario = Scenario(cluster, crash_ns, plans)
    election = ("--leader-election", "--lease-namespace", crash_ns)
    replicas = [
        Operator(cluster, tmp_path / f"replica-{i}.log", *election, namespaces=(crash_ns,))
        for i in range(2)
    ]
    offsets = [0, 0]

    def leaders() -> list[int]:
        return [
            i
            for i, r in enumerate(replicas)
            if r.running() and _logged_since(r, offsets[i], ACQUIRED)
        ]

    def one_leader() -> int:
        current = eventually(lambda: leaders() or None, timeout=60, interval=0.2, what="a leader")
        assert len(current) == 1, f"two replicas lead at once: {current}"
        return current[0]

    scenario.create()
    lines: list[str] = []
    try:
        leader = one_leader()
        for kill in range(LEADER_KILLS):
            time.sleep(rng.uniform(0.5, 5.0))
            replicas[leader].kill()
            killed_at, killed_elapsed = time.monotonic(), scenario.elapsed()
            done, total = _terminal(cluster, crash_ns)
            offsets[leader] = _mark(replicas[leader], f"leader killed ({kill + 1})")
            replicas[leader].restart()  # it comes back as a standby
            leader = one_leader()
            lines.append(
                f"leader kill {kill + 1} at {killed_elapsed:5.1f}s"
                f" ({done}/{total} terminal): replica {leader} led "
                f"{time.monotonic() - killed_at:.1f}s later"
            )
        scenario.settle("\n".join(r.log() for r in replicas))
        assert len(leaders()) == 1, f"two replicas lead at once: {leaders()}"
    finally:
        for replica in replicas:
            replica.stop()
        scenario.close()
        log_text = "\n".join(r.log_path.read_text(errors="replace") for r in replicas)
        _report("leader election crash test", lines, scenario, log_text)
    scenario.check(log_text)
