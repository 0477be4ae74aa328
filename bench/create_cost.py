"""Where a FineTuneJob create's time goes: the same creates against copies of the CRD that
each drop one thing the API server does per create, and against Kubeflow's TrainJob CRD.

    make bench-create-cost                                        # 200 creates x 3 repeats
    .venv/bin/python bench/create_cost.py --creates 200 --repeats 3 --json cost.json

Runs on the local cluster (hack/cluster-up.sh; started when KUBECONFIG is not set), with no
controller running: what the object costs by itself. The variants (fttestkit/create_cost.py),
each its own CRD under a group of its own so that nothing else sees its objects:

  installed        the FineTuneJob CRD as `make crds` writes it, in finetune.dev
  copy             the same CRD under another group: the control for the variants below
  no-cel           without its CEL rules (x-kubernetes-validations)
  no-cel-defaults  without its CEL rules and its defaults (the rules read defaulted fields:
                   without the defaults every create is refused)
  no-descriptions  without its descriptions (the schema's size, not its checks)
  open             spec and status unchecked (x-kubernetes-preserve-unknown-fields)
  trainjob         Kubeflow Trainer's TrainJob CRD (hack/build.sh kubeflow), with the
                   TrainJob bench/operator_load.py creates: the peer's object, no webhook

Per variant and repeat, in a fresh namespace: --creates // 5 creates one by one, then
--creates at once from --threads threads; each call timed; the API server's CPU over the
burst less its rate over the --idle seconds before it, per create; the stored object's size
(the create's response, as JSON). --repeats rotate the order. The report: median (min..max)
over the repeats, and each variant's burst p50 and CPU as a ratio of `copy`'s.
docs/benchmarks.md has the method and the results.
"""

from __future__ import annotations

import argparse
import json
import sys
import time
import uuid
from pathlib import Path
from typing import Any

import yaml
from kubernetes import client
from operator_load import (
    BENCH_LABEL,
    CRDS,
    cluster_pid,
    connect,
    cpu_seconds,
    create_namespace,
    delete_namespace,
    kubectl,
    manifest,
    trainjob,
)

from fttestkit.bench_report import Spread
from fttestkit.controllers import component_dir
from fttestkit.create_cost import (
    COST_GROUP,
    DROPPED,
    count_keyword,
    served_as,
    timed_creates,
    variant_crd,
)
from fttestkit.process import sigterm_as_ctrl_c

VARIANTS = ["installed", *DROPPED, "trainjob"]
ROWS = [  # (key, title, format)
    ("sequential_p50_ms", "one by one p50 (ms)", ".1f"),
    ("burst_p50_ms", "burst p50 (ms)", ".1f"),
    ("burst_p99_ms", "burst p99 (ms)", ".1f"),
    ("burst_per_s", "burst creates/s", ".0f"),
    ("apiserver_cpu_ms", "API server CPU per create (ms)", ".2f"),
    ("stored_bytes", "stored object (bytes)", ".0f"),
]


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        description=__doc__.split("\n\n")[0], formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument(
        "--creates",
        type=int,
        default=200,
        help="creates in the burst (one fifth of that one by one first)",
    )
    parser.add_argument("--threads", type=int, default=16, help="client threads of the burst")
    parser.add_argument("--repeats", type=int, default=3, help="rounds over every variant")
    parser.add_argument(
        "--idle",
        type=float,
        default=2.0,
        help="seconds of nothing before each burst: the API server's idle CPU",
    )
    parser.add_argument(
        "--variants", default=",".join(VARIANTS), help=f"comma-separated, of {', '.join(VARIANTS)}"
    )
    parser.add_argument("--json", type=Path, help="write every run's figures here")
    return parser


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    variants = [v for v in args.variants.split(",") if v]
    unknown = sorted(set(variants) - set(VARIANTS))
    if unknown or not variants:
        raise SystemExit(f"--variants: unknown {unknown or 'none given'}; of {VARIANTS}")
    sigterm_as_ctrl_c()
    api = connect(args.threads)
    crds = install(variants)
    run_id = uuid.uuid4().hex[:6]
    runs: list[dict[str, Any]] = []
    namespace = ""
    try:
        for repeat in range(args.repeats):
            namespace = f"ftbench-cost-{run_id}-{repeat}"
            create_namespace(api, namespace)
            order = variants[repeat % len(variants) :] + variants[: repeat % len(variants)]
            for variant in order:
                runs.append(measure(api, namespace, variant, repeat, args))
                print(f"[repeat {repeat + 1}/{args.repeats}] {line(runs[-1])}", flush=True)
            delete_namespace(api, namespace, wait=300)
            namespace = ""
    finally:
        if namespace:
            delete_namespace(api, namespace, wait=300)
        # The variants only (they carry the label): the installed CRD stays, with its objects.
        kubectl("delete", "crd", "-l", BENCH_LABEL, "--ignore-not-found", check=False)
    table = render(runs, crds, variants)
    print(table)
    if args.json:
        args.json.write_text(
            json.dumps(
                {
                    "args": {k: str(v) for k, v in vars(args).items()},
                    "runs": runs,
                    "table": table,
                },
                indent=2,
            )
        )
    return 0


def install(variants: list[str]) -> dict[str, dict[str, Any]]:
    """Every variant's CRD applied and Established: {variant: CRD}."""
    installed = yaml.safe_load(CRDS[0].read_text())
    crds = {v: variant_crd(installed, v) for v in variants if v in DROPPED}
    if "trainjob" in variants:
        path = next(
            (component_dir("kubeflow", build=True) / "config/trainer/crds").glob("*trainjobs.yaml")
        )
        crds["trainjob"] = variant_crd(yaml.safe_load(path.read_text()), "copy")
    kubectl("delete", "crd", "-l", BENCH_LABEL, "--ignore-not-found")  # a killed run's
    for crd in CRDS:
        kubectl("apply", "--server-side", "--force-conflicts", "-f", str(crd))
    kubectl(
        "apply",
        "--server-side",
        "--force-conflicts",
        "-f",
        "-",
        input=yaml.safe_dump_all(crds.values()),
    )
    names = [installed["metadata"]["name"], *(c["metadata"]["name"] for c in crds.values())]
    kubectl("wait", "--for=condition=Established", "--timeout=60s", *(f"crd/{n}" for n in names))
    if "installed" in variants:
        crds["installed"] = installed
    return {v: crds[v] for v in variants}


def body_for(variant: str, name: str, namespace: str) -> tuple[str, str, str, dict[str, Any]]:
    """(group, version, plural, body) of one create of `variant`."""
    if variant == "trainjob":
        body = trainjob(name, namespace)
        return (
            f"copy.{COST_GROUP}",
            body["apiVersion"].split("/")[1],
            "trainjobs",
            served_as(body, f"copy.{COST_GROUP}"),
        )
    body = manifest(name, namespace, "1h")
    group = (
        body["apiVersion"].split("/")[0] if variant == "installed" else f"{variant}.{COST_GROUP}"
    )
    return group, body["apiVersion"].split("/")[1], "finetunejobs", served_as(body, group)


def measure(
    api: client.ApiClient, namespace: str, variant: str, repeat: int, args: argparse.Namespace
) -> dict[str, Any]:
    custom = client.CustomObjectsApi(api)
    stored: list[int] = []

    def creator(prefix: str) -> Any:
        def create(index: int) -> None:
            group, version, plural, body = body_for(variant, f"{prefix}{index:05d}", namespace)
            made = custom.create_namespaced_custom_object(group, version, namespace, plural, body)
            stored.append(len(json.dumps(made, separators=(",", ":"))))

        return create

    short = variant.replace("-", "")[:10]
    one_by_one = timed_creates(creator(f"{short}-{repeat}-s"), max(1, args.creates // 5), 1)
    apiserver = cluster_pid("kube-apiserver")
    idle_before, idle_started = cpu_seconds(apiserver), time.monotonic()
    time.sleep(args.idle)
    idle_after, idle_ended = cpu_seconds(apiserver), time.monotonic()
    burst = timed_creates(creator(f"{short}-{repeat}-b"), args.creates, args.threads)
    burst_cpu = cpu_seconds(apiserver)
    cpu_ms = None
    if None not in (idle_before, idle_after, burst_cpu):
        idle_rate = (idle_after - idle_before) / (idle_ended - idle_started)  # type: ignore[operator]
        spent = burst_cpu - idle_after - idle_rate * args.creates / burst.per_s  # type: ignore[operator]
        cpu_ms = max(0.0, spent) / args.creates * 1000
    return {
        "variant": variant,
        "repeat": repeat,
        "sequential_p50_ms": one_by_one.p50,
        "burst_p50_ms": burst.p50,
        "burst_p99_ms": burst.p99,
        "burst_per_s": burst.per_s,
        "apiserver_cpu_ms": cpu_ms,
        "stored_bytes": sorted(stored)[len(stored) // 2],
    }


def line(run: dict[str, Any]) -> str:
    cpu = run["apiserver_cpu_ms"]
    return (
        f"{run['variant']}: one by one {run['sequential_p50_ms']:.1f} ms, burst p50 "
        f"{run['burst_p50_ms']:.1f} ms p99 {run['burst_p99_ms']:.1f} ms "
        f"{run['burst_per_s']:.0f}/s, API server "
        f"{'?' if cpu is None else f'{cpu:.2f}'} ms CPU per create, "
        f"{run['stored_bytes']} bytes stored"
    )


def render(runs: list[dict[str, Any]], crds: dict[str, dict[str, Any]], variants: list[str]) -> str:
    """The table: a column per variant, median (min..max) over the repeats; then each
    variant's burst p50 and API server CPU as a ratio of `copy`'s, and what its schema has."""
    spread = {
        v: {key: Spread.of([r[key] for r in runs if r["variant"] == v]) for key, _, _ in ROWS}
        for v in variants
    }
    rows = ["| | " + " | ".join(variants) + " |", "|---" * (len(variants) + 1) + "|"]
    for key, title, fmt in ROWS:
        cells = [s.format(fmt) if (s := spread[v][key]) else "-" for v in variants]
        rows.append(f"| {title} | " + " | ".join(cells) + " |")
    base = spread.get("copy")
    if base:
        for key in ("burst_p50_ms", "apiserver_cpu_ms"):
            cells = []
            for v in variants:
                ours, control = spread[v][key], base[key]
                ok = ours and control and control.median
                cells.append(f"{ours.median / control.median:.2f}x" if ok else "-")  # type: ignore[union-attr]
            rows.append(f"| {key} / copy's | " + " | ".join(cells) + " |")
    schema = [crds[v]["spec"]["versions"][0]["schema"]["openAPIV3Schema"] for v in variants]
    for keyword, title in (
        ("x-kubernetes-validations", "CEL rules"),
        ("default", "defaults"),
        ("description", "descriptions"),
    ):
        rows.append(
            f"| {title} in the schema | "
            + " | ".join(str(count_keyword(s, keyword)) for s in schema)
            + " |"
        )
    rows.append(
        "| schema size (JSON bytes) | "
        + " | ".join(str(len(json.dumps(s, separators=(",", ":")))) for s in schema)
        + " |"
    )
    return "\n".join(rows)


if __name__ == "__main__":
    sys.exit(main())
