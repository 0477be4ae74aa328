"""Every Makefile target a user can type, in its cheapest real form: `make help` lists them
all, and each one runs (with --help, a tiny size, or against the running test cluster) or,
where running it would stop this very suite (cluster-down, clean, fmt, the test targets),
make shows exactly what it would do. A target whose recipe breaks fails here, not in the
hands of the first user who types it.
"""

from __future__ import annotations

import os
import re
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
import yaml

from fttestkit.cluster import Cluster
from fttestkit.paths import REPO

pytestmark = pytest.mark.integration
MAKEFILE = REPO / "Makefile"


def _targets() -> list[str]:
    """Targets a user may type: the documented ones (`## ...`)."""
    return re.findall(r"^([a-z][a-z0-9-]*):.*## ", MAKEFILE.read_text(), flags=re.MULTILINE)


def _make(*args: str, timeout: float = 600) -> subprocess.CompletedProcess[str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith("MAKE")}
    return subprocess.run(
        ["make", "--no-print-directory", *args], cwd=REPO, capture_output=True, text=True,
        timeout=timeout, check=False, env=env,
    )  # fmt: skip


def test_help_lists_every_target() -> None:
    listed = re.findall(r"^  make (\S+)", _make("help").stdout, flags=re.MULTILINE)
    assert listed == _targets()
    every_rule = set(re.findall(r"^([a-z][a-z0-9-]*):", MAKEFILE.read_text(), flags=re.MULTILINE))
    assert every_rule - set(listed) == set(), "a target without a `## description`"


# What each target runs for real here (args), and what its output must show.
CHEAP_FORMS: dict[str, tuple[list[str], str]] = {
    "install": (["install"], ""),
    "tools": (["tools"], ""),
    "cluster-up": (["cluster-up"], ""),
    "lint-docker": (["lint-docker"], ""),
    "lint-workflows": (["lint-workflows"], "actionlint"),
    "crds": (["crds"], "api-reference"),
    "run-operator": (["run-operator", "RUN_OPERATOR_ARGS=--help"], "usage: finetune-operator"),
    "bench": ([
        "bench", "BENCH_TRAINER_ARGS=--help", "BENCH_DATA_ARGS=--help",
        "BENCH_STORAGE_ARGS=--help", "BENCH_CREATE_COST_ARGS=--help",
        "BENCH_OPERATOR_ARGS=--help", "BENCH_REALNODE_ARGS=--help"], "usage:"),
    "bench-trainer": (["bench-trainer", "BENCH_TRAINER_ARGS=--help"], "usage:"),
    "bench-data": (["bench-data", "BENCH_DATA_ARGS=--help"], "usage:"),
    # 17 wheels the device lacks, 16 more for the bench's unsloth side (hack/gpu/versions.env)
    "gpu-kit": (["gpu-kit", "GPU_KIT=/tmp/fto-gpu-kit-test"], "gpu kit: 33 wheels"),
    "bench-storage": (["bench-storage", "BENCH_STORAGE_ARGS=--help"], "usage:"),
    "bench-create-cost": (["bench-create-cost", "BENCH_CREATE_COST_ARGS=--help"], "usage:"),
    "bench-operator": (["bench-operator", "BENCH_OPERATOR_ARGS=--help"], "usage:"),
    "bench-realnode": (["bench-realnode", "BENCH_REALNODE_ARGS=--help"], "usage:"),
    # Run for real once per change of the CRD or the chart (its result is in the notes).
    "test-kube-oldest": (["test-kube-oldest", "PLAN=1"], "test: tests/integration/"),
}  # fmt: skip
# Running these would stop or rewrite what the suite stands on: their recipe is checked.
DRY_RUN: dict[str, str] = {
    "help": "grep",
    "lint": "ruff check",
    "fmt": "ruff format",
    "unit": "pytest tests/unit tests/helm",
    "integration": "pytest tests/integration",
    "e2e": "pytest tests/e2e",
    "test": "hack/test.sh",
    "cluster-down": "hack/cluster-down.sh",
    "clean": "rm -rf .venv",
}


def test_every_target_has_a_cheap_form_here() -> None:
    # quickstart-cluster, images and release run for real in the e2e tier
    # (tests/e2e/test_quickstart_cluster.py; hack/test.sh's images step;
    # tests/e2e/test_release_install.py), release's refusals below.
    covered = {*CHEAP_FORMS, *DRY_RUN, "quickstart", "images", "quickstart-cluster", "release"}
    assert set(_targets()) == covered


# `make crds` rewrites crds/ while tests on other workers may be reading it. `make tools`
# builds every Go tool: serial and `platform`, because `make test` builds them all in steps
# before the serial tier's `platform` part (hack/test.sh), so here it only finds them (a bare
# `pytest` run may build).
_SERIAL_TARGETS = {"crds", "tools"}
# `make tools` finds (or builds) Kueue's and Kubeflow Trainer's tools too.
_PLATFORM_TARGETS = {"tools"}
_TIMEOUTS = {"tools": 1800.0}
# Targets that need the cluster, not the platform around it: they neither build nor wait on
# Kueue or Kubeflow Trainer (on a new machine `make test`'s other lane may be building those
# right then, which once ran these past their time limit: `make tools` as a prerequisite).
_BUILD_ONLY_THE_CLUSTER = {"cluster-up", "bench", "bench-storage", "bench-create-cost",
                           "bench-operator", "bench-realnode"}  # fmt: skip


def _marks(target: str) -> list[pytest.MarkDecorator]:
    return [pytest.mark.serial] * (target in _SERIAL_TARGETS) + [pytest.mark.platform] * (
        target in _PLATFORM_TARGETS
    )


@pytest.mark.parametrize(
    "target",
    [pytest.param(t, marks=_marks(t)) for t in CHEAP_FORMS],
)
def test_target_runs(cluster: Cluster, target: str) -> None:
    args, shows = CHEAP_FORMS[target]
    done = _make(*args, timeout=_TIMEOUTS.get(target, 600))
    assert done.returncode == 0, (done.stdout + done.stderr)[-4000:]
    assert shows in done.stdout + done.stderr
    if target in _BUILD_ONLY_THE_CLUSTER:  # hack/build.sh logs every component it looks at
        assert not re.search(r"\] (kueue|kubeflow) v", done.stderr), done.stderr[-4000:]
    if target == "bench":  # all six benchmarks, one after another
        assert (done.stdout + done.stderr).count("usage:") == 6
    if target == "crds":  # regenerated byte for byte: the committed files are current
        changed = subprocess.run(
            ["git", "status", "--porcelain", "crds", "helm/finetune-operator/crds",
             "docs/api-reference.md"], cwd=REPO, capture_output=True, text=True, check=True,
        ).stdout  # fmt: skip
        assert changed == ""


@pytest.mark.parametrize("target", list(DRY_RUN))
def test_target_recipe(target: str) -> None:
    done = _make("-n", target)
    assert done.returncode == 0, done.stderr
    assert DRY_RUN[target] in done.stdout


@pytest.mark.parametrize(
    ("args", "said"),
    [
        ([], "set VERSION"),
        (["VERSION=1.0"], "VERSION must be semantic"),
        (["VERSION=1.0.0"], "set REGISTRY"),
        (["VERSION=1.0.0", "REGISTRY=https://registry.internal/ml"], "without a scheme"),
        (
            ["VERSION=1.0.0", "REGISTRY=registry.internal/ml", "FTO_RELEASE_TRAINER_DIGEST=latest"],
            "must be sha256:<64 hex>",
        ),
        (
            ["VERSION=1.0.0", "REGISTRY=registry.internal/ml", "FTO_RELEASE_SOURCE=/"],
            "is not a git checkout",
        ),
    ],
)
def test_release_refuses_what_it_cannot_publish_before_building(args: list[str], said: str) -> None:
    done = _make("release", *args)
    assert done.returncode != 0
    assert said in done.stderr


def test_the_oldest_kubernetes_plan_names_its_pin_and_real_tests() -> None:
    done = _make("test-kube-oldest", "PLAN=1")
    assert done.returncode == 0, done.stderr
    pinned = (REPO / "hack/versions.env").read_text()
    pin = re.search(r"^KUBERNETES_OLDEST_VERSION=(\S+)$", pinned, re.M)
    assert pin is not None
    assert f"kubernetes: {pin.group(1)} " in done.stdout
    tests = re.findall(r"^test: (\S+)$", done.stdout, flags=re.MULTILINE)
    assert "tests/integration/test_api_server.py" in tests
    assert all((REPO / t).is_file() for t in tests), tests


def test_the_oldest_control_plane_refuses_a_real_node(tmp_path: Path) -> None:
    # A v1.36 kubelet under a v1.33 API server is outside Kubernetes' skew policy.
    done = subprocess.run(
        [str(REPO / "hack/cluster-up.sh")], capture_output=True, text=True, timeout=60, check=False,
        env={**os.environ, "FTO_KUBERNETES": "oldest", "FTO_NODE": "1", "FTO_STATE": str(tmp_path)},
    )  # fmt: skip
    assert done.returncode != 0
    assert "FTO_KUBERNETES=oldest runs kwok nodes only" in done.stderr
    assert not (tmp_path / "kubeconfig").exists()


def test_images_says_plainly_that_nothing_was_built() -> None:
    # No Docker engine and no local node to build into (FTO_NODE=0): an error, not a skip.
    # (The e2e tier builds both images for real with this target's hack/images.sh.)
    done = _make("images", "DOCKER=false", "FTO_NODE=0")
    assert done.returncode != 0
    assert "no Docker engine" in done.stderr and "nothing was built" in done.stderr


def test_quickstart_fine_tunes_the_tiny_model(tmp_path: Path) -> None:
    output = tmp_path / "quickstart"
    done = _make("quickstart", f"QUICKSTART_OUTPUT={output}", timeout=900)
    assert done.returncode == 0, (done.stdout + done.stderr)[-4000:]
    assert "done:" in done.stdout
    assert (output / "final" / "adapter_model.safetensors").is_file()


@pytest.mark.serial  # its kwok nodes come and go while other tests list the nodes
@pytest.mark.platform  # Kubeflow Trainer and JobSet, as shipped and tuned
def test_the_operator_benchmark_runs_directly_as_its_docstring_says(
    cluster: Cluster, tmp_path: Path
) -> None:
    """`python bench/operator_load.py`, without the cluster's env sourced: it finds (or
    starts) the local cluster and reads its kubeconfig itself. Every phase at its smallest:
    the create cost alone (5 creates), then 3 jobs on 2 nodes in each of raw, Kubeflow as
    shipped, Kubeflow tuned and the operator, and 2 s of the steady state (every job
    reporting progress every second). The Kubeflow phases run the real Trainer and JobSet
    managers (built if missing), whose Jobs must come from JobSets that come from the
    TrainJobs, with the shipped and the tuned Configuration each, and whose webhooks are gone
    afterwards (they would refuse objects with no process behind them). Then --resume of
    its --json: nothing left to run, the same report."""
    # Not the cluster's env file; FTO_NODE stays (how the tier runs cluster-up: as root its
    # default would bring the real node into a cluster that runs without it).
    env = {k: v for k, v in os.environ.items()
           if not k.startswith(("KUBE", "FTO_")) or k == "FTO_NODE"}  # fmt: skip
    command = [sys.executable, "bench/operator_load.py", "--jobs", "3", "--rate", "0",
               "--nodes", "2", "--settle", "30", "--quiet", "2", "--idle", "1", "--timeout",
               "120", "--create-cost", "5", "--max-load", "1000", "--steady", "2",
               "--progress-every", "1"]  # fmt: skip
    saved = tmp_path / "run.json"
    done = subprocess.run(
        [*command, "--keep-log", "--json", str(saved)],
        cwd=REPO, capture_output=True, text=True, timeout=600, check=False, env=env,
    )  # fmt: skip
    assert done.returncode == 0, (done.stdout + done.stderr)[-4000:]
    kept = Path(done.stderr.split("controller logs kept in ", 1)[1].split()[0])
    try:
        # The tuned peer's Trainer reconciled as many TrainJobs at once as the operator's
        # workers, with no client limit in effect; the shipped one as it ships.
        configs = {kind: yaml.safe_load((kept / f"{kind}-0/trainer.yaml").read_text())
                   for kind in ("kubeflow", "kubeflow-tuned")}  # fmt: skip
    finally:
        shutil.rmtree(kept, ignore_errors=True)
    trainjobs = "TrainJob.trainer.kubeflow.org"
    concurrency = {kind: config["controller"]["groupKindConcurrency"][trainjobs]
                   for kind, config in configs.items()}  # fmt: skip
    assert concurrency == {"kubeflow": 5, "kubeflow-tuned": 64}
    assert configs["kubeflow-tuned"]["clientConnection"]["qps"] >= 5000
    assert "a FineTuneJob create alone" in done.stdout
    # The operator's own collector time (finetune_operator_gc_seconds_total) over its window.
    assert re.search(r"garbage collector \d+\.\d s \(full collections \d+\.\d s\)", done.stdout)
    assert "raw API" in done.stdout and "3 Jobs;" in done.stdout
    assert done.stdout.count("3 Jobs of JobSets of TrainJobs") == 2, done.stdout[-3000:]
    header = next(line for line in done.stdout.splitlines() if "op/tuned" in line)
    assert header.split() == ["raw", "kubeflow", "kubeflow-tuned", "operator", "op/raw",
                              "op/tuned"]  # fmt: skip
    running = next(line for line in done.stdout.splitlines() if line.startswith("pods Running"))
    # Every phase's window lasted until its pods ran (the raw one's too).
    assert running.split()[-6:-2] == ["3", "3", "3", "3"], running
    assert "API requests per job <= 1.2x kubeflow-tuned's" in done.stdout
    hooks = cluster.kubectl("get", "mutatingwebhookconfigurations,validatingwebhookconfigurations",
                            "-l", "finetune.dev/bench", "-o", "name")  # fmt: skip
    assert hooks.strip() == "", hooks
    assert "steady state: 6 progress reports" in done.stdout, done.stdout[-3000:]
    assert "(0 failed)" in done.stdout and "(0 still behind)" in done.stdout
    again = subprocess.run([*command, "--resume", str(saved)], cwd=REPO, capture_output=True,
                           text=True, timeout=300, check=False, env=env)  # fmt: skip
    assert again.returncode == 0, (again.stdout + again.stderr)[-4000:]
    assert "4 phase runs done" in again.stdout and "[repeat" not in again.stdout
    table = done.stdout[done.stdout.index("\n3 jobs at max/s") :].split("\ntotal ")[0]
    assert table in again.stdout


@pytest.mark.serial  # it adds and removes CRDs: API discovery changes under other tests
@pytest.mark.platform  # the trainjob variant reads Kubeflow Trainer's TrainJob CRD
def test_the_create_cost_benchmark_takes_the_create_apart(cluster: Cluster) -> None:
    """`python bench/create_cost.py` at its smallest: 5 creates of every variant, once. Each
    variant's CRD has what its name says (the schema rows), the defaults are what make the
    stored object large, and the variants' CRDs are gone afterwards."""
    env = {**os.environ, **cluster.env}
    done = subprocess.run(
        [sys.executable, "bench/create_cost.py", "--creates", "5", "--repeats", "1",
         "--idle", "0.2"], cwd=REPO, capture_output=True, text=True, timeout=300,
        check=False, env=env,
    )  # fmt: skip
    assert done.returncode == 0, (done.stdout + done.stderr)[-4000:]
    lines = done.stdout.splitlines()
    header = next(line for line in lines if line.startswith("| | "))
    assert header.strip("| ").split(" | ") == ["installed", "copy", "no-cel", "no-cel-defaults",
                                               "no-descriptions", "open", "trainjob"]  # fmt: skip

    def row(title: str) -> list[int]:
        cells = next(line for line in lines if line.startswith(f"| {title} |"))
        return [int(float(c.split()[0])) for c in cells.strip("| ").split(" | ")[1:]]

    installed, copy, no_cel, no_defaults, no_descriptions, open_, trainjob = row(
        "CEL rules in the schema"
    )
    assert installed == copy == no_descriptions > 100 and no_cel == no_defaults == open_ == 0
    assert trainjob > 0
    assert row("defaults in the schema")[3] == 0 and row("descriptions in the schema")[4] == 0
    stored = row("stored object (bytes)")
    assert stored[3] < stored[2] / 2, stored  # the defaults, written into every object
    left = cluster.kubectl("get", "crd", "-l", "finetune.dev/bench", "-o", "name")
    assert left.strip() == "", left
    cluster.kubectl("get", "crd", "finetunejobs.finetune.dev")  # the installed one stays
