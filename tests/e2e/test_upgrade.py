"""Upgrading the operator, and rolling it back, with a job running, the way docs/install.md
says: the previous release installed from the registry (its CRD applied as its users have
it), a job started; then this tree's CRD applied and `helm upgrade` to this tree's release;
then `helm rollback` to the previous one. The job is shown by `kubectl get ftj` the whole
time, reaches Succeeded, and loses at most one checkpoint interval.

The previous release is this repository at PREVIOUS_COMMIT, released by `make release` from a
`git worktree` of it (FTO_RELEASE_SOURCE): its operator image and its chart. Its trainer is
this tree's released trainer (FTO_RELEASE_TRAINER_DIGEST): building a second multi-GB trainer
image would double the e2e tier's build, and what the upgrade changes under a running job is
the operator, its CRD and its chart, never the job's pods. Move PREVIOUS_COMMIT forward to
each release's commit; it must be one whose operator tolerates newer fields (docs/install.md,
"Version skew"), as every commit from 45691fd on does.
"""

from __future__ import annotations

import shutil
import subprocess
import threading
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pytest

from fttestkit.cluster import Cluster, eventually, install_crds
from fttestkit.finetunejobs import create_ftj, phase_is, read_ftj
from fttestkit.paths import REPO
from fttestkit.release import Release
from tests.e2e.realnode import (
    Bucket,
    make_release,
    pod_logs,
    registry_release,
    tiny_cpu_job,
    training_pod,
)

PREVIOUS_COMMIT = "b77d15b3e924be36c35d76c254659f53dfab74b5"
PREVIOUS_VERSION = "0.1.0"
# Long enough to outlast an upgrade and a rollback (each a rollout of the operator's pod,
# pulled from the registry) on the 2-CPU node; a checkpoint every SAVE_STEPS. Each step
# accumulates ACCUMULATION micro-batches: at one, a quiet machine trained all 1200 steps
# (86 steps/s) before the rollback was done; four give about a minute of training.
STEPS = 1200
ACCUMULATION = 4
SAVE_STEPS = 100


@pytest.fixture(scope="module")
def previous(
    cluster: Cluster, released: dict[str, Any], tmp_path_factory: pytest.TempPathFactory
) -> dict[str, Any]:
    """The previous release, pushed beside this tree's (same registry path): its summary,
    and its CRDs (`crds`, a folder)."""
    commit = f"{PREVIOUS_COMMIT}^{{commit}}"
    have = subprocess.run(["git", "-C", str(REPO), "cat-file", "-e", commit], check=False)
    if have.returncode != 0:
        pytest.fail(f"{PREVIOUS_COMMIT} is not in this clone's history (a shallow clone? "
                    "`git fetch --unshallow`)")  # fmt: skip
    work = tmp_path_factory.mktemp("previous")
    source = work / "source"
    git = ["git", "-C", str(REPO), "worktree"]
    subprocess.run([*git, "add", "--detach", str(source), PREVIOUS_COMMIT], check=True,
                   capture_output=True)  # fmt: skip
    try:
        trainer = next(i["digest"] for ref, i in released["images"].items() if "/trainer" in ref)
        summary = make_release(
            cluster, released["registry"], PREVIOUS_VERSION,
            FTO_RELEASE_SOURCE=str(source), FTO_RELEASE_TRAINER_DIGEST=trainer,
        )  # fmt: skip
        shutil.copytree(source / "crds", work / "crds")
    finally:
        subprocess.run([*git, "remove", "--force", str(source)], check=False, capture_output=True)
    assert summary["commit"] == PREVIOUS_COMMIT
    # Only the operator was built, from the older source, then labelled as the release.
    assert f"building finetune-operator:src-{PREVIOUS_COMMIT[:12]}" in summary["log"]
    assert f"building {released['registry']}/operator:{PREVIOUS_VERSION}" in summary["log"]
    assert "finetune-trainer:src-" not in summary["log"]
    assert f"/trainer:{PREVIOUS_VERSION}" not in summary["log"]
    return {**summary, "crds": work / "crds"}


def _operator_digest(release: dict[str, Any]) -> str:
    return str(next(i["digest"] for r, i in release["images"].items() if "/operator:" in r))


@dataclass
class Sample:
    seconds: float
    printed: str
    """`kubectl get ftj NAME --no-headers`, or what kubectl said when it failed."""
    ok: bool
    phase: str
    step: int
    restarts: int


@dataclass
class Watch:
    """`kubectl get ftj` and the job's status, once a second, in a thread: what a user
    watching the job during the upgrade sees."""

    cluster: Cluster
    namespace: str
    name: str
    samples: list[Sample] = field(default_factory=list)
    _stop: threading.Event = field(default_factory=threading.Event)
    _thread: threading.Thread | None = None

    def __enter__(self) -> Watch:
        self._thread = threading.Thread(target=self._run, daemon=True)
        self._thread.start()
        return self

    def __exit__(self, *_: object) -> None:
        self._stop.set()
        assert self._thread is not None
        self._thread.join(timeout=30)

    def _run(self) -> None:
        start = time.monotonic()
        while not self._stop.is_set():
            printed = self.cluster.kubectl(
                "get", "ftj", "-n", self.namespace, self.name, "--no-headers", check=False
            ).strip()
            status = read_ftj(self.cluster, self.namespace, self.name).get("status") or {}
            self.samples.append(Sample(
                seconds=time.monotonic() - start, printed=printed,
                ok=printed.split()[:1] == [self.name], phase=status.get("phase", ""),
                step=(status.get("progress") or {}).get("step", 0),
                restarts=status.get("restarts", 0),
            ))  # fmt: skip
            self._stop.wait(1.0)

    def last(self) -> Sample:
        return eventually(lambda: self.samples[-1] if self.samples else None, what="a sample")


def _runs(release: Release, digest: str) -> Any:
    """The operator's pod once the newest running one is `digest`'s and no other runs."""
    pods = [p for p in release.pods() if p.status.phase == "Running"
            and not p.metadata.deletion_timestamp]  # fmt: skip
    images = {p.spec.containers[0].image.rsplit("@", 1)[-1] for p in pods}
    return pods[0] if images == {digest} else None


def test_upgrade_and_rollback_with_a_job_running(
    cluster: Cluster, released: dict[str, Any], previous: dict[str, Any], bucket: Bucket,
    tmp_path: Path,
) -> None:  # fmt: skip
    registry = released["registry"]
    old, new = _operator_digest(previous), _operator_digest(released)
    assert old != new
    try:
        # The previous release as its users run it: its CRDs, its chart from the registry.
        cluster.kubectl("apply", "--server-side", "--force-conflicts", "-f", str(previous["crds"]))
        with registry_release(cluster, registry, PREVIOUS_VERSION, "e2e-upg") as release:
            eventually(lambda: _runs(release, old), what="the previous operator running")
            name = "across-upgrades"
            job = tiny_cpu_job(release, bucket, tmp_path, name, steps=STEPS,
                               save_steps=SAVE_STEPS, log_every=10)  # fmt: skip
            job["spec"]["resources"]["imagePullSecrets"] = ["registry"]
            job["spec"]["training"]["gradientAccumulationSteps"] = ACCUMULATION
            create_ftj(cluster, release.watched, job)
            eventually(lambda: training_pod(release, name), timeout=300, interval=0.5,
                       what="the job training under the previous operator")  # fmt: skip

            with Watch(cluster, release.watched, name) as watch:
                # 1. Upgrade, in the documented order: the CRDs, then the chart.
                cluster.kubectl("apply", "--server-side", "--force-conflicts", "-f",
                                str(REPO / "crds"))  # fmt: skip
                release.chart_args = ("--version", released["version"], *release.chart_args[2:])
                release.install_or_upgrade("upgrade")
                eventually(lambda: _runs(release, new), timeout=120, what="the new operator")
                upgraded = watch.last()
                # The new operator has the job in hand: it reports progress past this point.
                eventually(lambda: watch.last().step > upgraded.step, timeout=120,
                           what="progress reported by the new operator")  # fmt: skip
                # 2. Roll back (the CRD stays the newer one: Helm never touches CRDs).
                release.helm("rollback", release.name, "1", "--wait", "--timeout", "180s")
                eventually(lambda: _runs(release, old), timeout=120, what="the old operator")
                rolled_back = watch.last()
                status = eventually(
                    lambda: phase_is(cluster, release.watched, name, "Succeeded", "Failed"),
                    timeout=600, interval=2.0, what="the job to finish",
                )  # fmt: skip
    finally:
        install_crds(cluster)  # this tree's CRDs again, for the tests after this one

    assert status["phase"] == "Succeeded", (status, pod_logs(release, name))
    # Both changes came while the job was training, not after it.
    assert upgraded.phase == "Running" and upgraded.step < STEPS, upgraded
    assert rolled_back.phase in ("Running", "Restarting") and rolled_back.step < STEPS, rolled_back
    # `kubectl get ftj` showed it every time it was asked.
    failed = [s for s in watch.samples if not s.ok]
    assert not failed, failed[:5]
    assert {s.phase for s in watch.samples} <= {"Running", "Restarting", "Succeeded"}, [
        (s.seconds, s.phase) for s in watch.samples
    ]
    # What it lost: nothing if its attempt went on; else what lay past the checkpoint it
    # resumed from.
    result = bucket.get_json(f"{name}/result.json")
    if status.get("restarts", 0) == 0:
        lost = 0
    else:
        before = max(s.step for s in watch.samples if s.restarts == 0)
        lost = before - int(result["resumed_from_step"] or 0)
    print(f"upgrade done at step {upgraded.step} ({upgraded.seconds:.0f} s), rollback done at "
          f"step {rolled_back.step} ({rolled_back.seconds:.0f} s), finished after "
          f"{watch.samples[-1].seconds:.0f} s; restarts {status.get('restarts', 0)}, "
          f"steps lost {lost}")  # fmt: skip
    assert lost <= SAVE_STEPS, (lost, status)
    assert bucket.get_json(f"{name}/final_metrics.json")["global_step"] == STEPS
