"""`finetune submit | status | logs | list | cancel | wait`: the cluster commands, added to the
`finetune` command (an entry point in the `finetune.commands` group) where this package is
installed.

    finetune submit examples/quickstart-cpu.yaml --follow    # validate, upload, apply, follow
    finetune status quickstart                               # phase, progress, loss, Events
    finetune logs quickstart -f                              # across restarts
    finetune logs quickstart --attempt 0 --all               # a failed attempt's, pods gone
    finetune wait quickstart && echo done                    # 0 Succeeded, 1 Failed, ...
"""

from __future__ import annotations

import argparse
import signal
import sys
import threading
from pathlib import Path
from typing import Any

from .errors import ClientError
from .status import EXIT_CODES, EXIT_DELETED, EXIT_TIMEOUT

EXIT_ERROR = 2


def register(commands: Any) -> None:
    from fttrainer.cli import config_command

    submit = config_command(
        commands,
        "submit",
        _submit,
        "validate, upload local files to S3, and run the job on the cluster",
        "Validate a config exactly as `finetune validate` does, upload every local path it "
        "names to the staging location (by content: unchanged files are not uploaded again), "
        "rewrite them to s3:// URIs, and apply the FineTuneJob with server-side apply.",
    )
    _cluster_flags(submit)
    submit.add_argument("--name", help="the FineTuneJob's name (default: the manifest's)")
    submit.add_argument(
        "--staging",
        metavar="S3_URI",
        help="where local files go (default: `staging:` in the client config)",
    )
    mode = submit.add_mutually_exclusive_group()
    mode.add_argument(
        "--follow", action="store_true", help="follow it until it ends (Ctrl-C detaches)"
    )
    mode.add_argument(
        "--detach", dest="follow", action="store_false", help="return once applied (default)"
    )
    submit.add_argument(
        "--dry-run",
        action="store_true",
        help="validate and show what would be uploaded and applied; change nothing",
    )

    status = _simple(
        commands, "status", _status, "a job's phase, progress, loss, ETA, reason, Events"
    )
    status.add_argument("name")
    status.add_argument(
        "--events", type=int, default=8, metavar="N", help="the last N Events (default 8)"
    )

    logs = _simple(
        commands, "logs", _logs, "a job's log: live, across restarts, or a gone attempt's"
    )
    logs.add_argument("name")
    logs.add_argument(
        "-f",
        "--follow",
        action="store_true",
        help="follow the current attempt and the ones after it until the job ends",
    )
    logs.add_argument(
        "--attempt", type=int, metavar="N", help="this attempt only (default: the current one)"
    )
    which = logs.add_mutually_exclusive_group()
    which.add_argument(
        "--rank", type=int, default=0, metavar="N", help="the pod of node rank N (default 0)"
    )
    which.add_argument("--all", action="store_true", help="every rank's pod, each line labelled")

    listing = _simple(commands, "list", _list, "the FineTuneJobs of the namespace")
    listing.add_argument("-A", "--all-namespaces", action="store_true")

    cancel = _simple(commands, "cancel", _cancel, "stop a job: suspend it (default) or delete it")
    cancel.add_argument("name")
    cancel.add_argument(
        "--delete",
        action="store_true",
        help="delete the FineTuneJob (its output and checkpoints stay in S3)",
    )
    cancel.add_argument("-y", "--yes", action="store_true", help="do not ask")

    wait = _simple(commands, "wait", _wait, "wait for a job to end; the exit status says how")
    wait.add_argument("name")
    wait.add_argument(
        "--timeout", type=float, metavar="SECONDS", help="give up after this long (exit 124)"
    )


def _simple(commands: Any, name: str, handler: Any, summary: str) -> argparse.ArgumentParser:
    parser: argparse.ArgumentParser = commands.add_parser(
        name, help=summary, description=summary[0].upper() + summary[1:] + "."
    )
    _cluster_flags(parser)
    parser.set_defaults(handler=handler)
    return parser


def _cluster_flags(parser: argparse.ArgumentParser) -> None:
    group = parser.add_argument_group("cluster")
    group.add_argument("-n", "--namespace", help="default: the client config's, else the context's")
    group.add_argument("--context", help="kubeconfig context (default: the current one)")
    group.add_argument(
        "--client-config",
        type=Path,
        metavar="FILE",
        help="the client config (default: $FINETUNE_CONFIG, else ~/.config/finetune/config.yaml)",
    )


def _client(args: argparse.Namespace) -> Any:
    from .client import Client

    return Client(
        context=args.context,
        namespace=args.namespace,
        config=args.client_config,
        staging=getattr(args, "staging", None),
    )


def _guarded(handler: Any) -> Any:
    def run(args: argparse.Namespace) -> int:
        try:
            return int(handler(args))
        except ClientError as exc:
            print(f"finetune {args.command}: {exc}", file=sys.stderr)
            return EXIT_ERROR
        except KeyboardInterrupt:
            return 130

    return run


@_guarded
def _submit(args: argparse.Namespace) -> int:
    from fttrainer.cli import checked

    from .validation import Checked

    loaded = checked(args)  # prints what `finetune validate` prints
    if loaded is None:
        print("finetune submit: not submitted (nothing was uploaded or applied)", file=sys.stderr)
        return 1
    client = _client(args)
    source = loaded.translation.source
    submitted = client.submit(
        source,
        name=args.name,
        dry_run=args.dry_run,
        checked=Checked(loaded.job, loaded.manifest, source, ""),
        progress=_upload_bar,
    ).submitted
    assert submitted is not None
    print(_where(submitted, dry_run=args.dry_run))
    if args.dry_run:
        import yaml

        print("---")
        print(yaml.safe_dump(submitted.manifest, sort_keys=False), end="")
        return 0
    if not args.follow:
        print(
            f"follow it:  finetune logs {submitted.name} -f -n {submitted.namespace}   "
            f"|   finetune status {submitted.name} -n {submitted.namespace}"
        )
        return 0
    return _follow(client, submitted.name)


def _where(submitted: Any, *, dry_run: bool) -> str:
    report = submitted.report
    lines = []
    if submitted.staged:
        verb = "would upload" if dry_run else "uploaded"
        lines.append(
            f"{verb} {report.uploaded_files if not dry_run else _missing(report)} file(s) "
            f"({_mib(report.uploaded_bytes)}); {report.present_files} already there "
            f"({_mib(report.present_bytes)})"
        )
        for staged in submitted.staged:
            location = staged.local.location
            lines.append(f"  {location.field}: {location.value} -> {staged.uri}{location.suffix}")
    if submitted.output_moved:
        before, after = submitted.output_moved
        lines.append(f"  spec.output.uri: {before} -> {after}")
    else:
        lines.append(f"  output: {submitted.output_uri}")
    verb = "would apply" if dry_run else "applied"
    lines.append(
        f"{verb} FineTuneJob {submitted.name} in namespace {submitted.namespace} "
        f"(context {submitted.context})"
    )
    return "\n".join(lines)


def _missing(report: Any) -> int:
    return int(sum(len(p.files) for p in report.paths) - report.present_files)


def _mib(size: int) -> str:
    return f"{size / 1024 / 1024:.1f} MiB"


def _upload_bar(total: int) -> Any:
    if total == 0:
        return None
    from tqdm import tqdm

    bar = tqdm(
        total=total,
        unit="B",
        unit_scale=True,
        unit_divisor=1024,
        desc="uploading",
        file=sys.stderr,
        disable=not sys.stderr.isatty(),
        leave=False,
    )
    lock = threading.Lock()

    def advance(amount: int) -> None:
        with lock:
            bar.update(amount)
            if bar.n >= total:
                bar.close()

    return advance


def _follow(client: Any, name: str) -> int:
    """Until the job ends: its phase changes, progress, and Warning Events, as lines (or a bar
    on a terminal). Ctrl-C detaches: the job goes on."""
    from .followers import ProgressPrinter

    printer = ProgressPrinter(client.kube, name, out=sys.stdout)
    previous = signal.getsignal(signal.SIGINT)
    try:
        job = printer.run()
    except KeyboardInterrupt:
        print(f"\ndetached; {name} goes on:  finetune status {name} -n {client.namespace}")
        return 130
    finally:
        signal.signal(signal.SIGINT, previous)
    if job is None:
        print(f"FineTuneJob {name} was deleted", file=sys.stderr)
        return EXIT_DELETED
    return _final(job)


def _final(job: dict[str, Any]) -> int:
    status = job.get("status") or {}
    phase = status.get("phase", "Pending")
    if phase == "Succeeded":
        print(f"{job['metadata']['name']} Succeeded; the model is at {status.get('modelUri')}")
    else:
        reason = status.get("failureReason") or phase
        print(
            f"{job['metadata']['name']} {phase}: {reason}: {status.get('message') or ''}",
            file=sys.stderr,
        )
    return EXIT_CODES.get(phase, EXIT_ERROR)


@_guarded
def _status(args: argparse.Namespace) -> int:
    from .status import describe, now_utc

    with _client(args) as client:
        job = client.kube.get(args.name)
        print(describe(job, client.kube.events(args.name), now_utc(), last_events=args.events))
    return 0


@_guarded
def _logs(args: argparse.Namespace) -> int:
    from .client import Handle

    with _client(args) as client:
        handle = Handle(client, args.name)  # with -f, a job about to be submitted is awaited
        try:
            for line in handle.logs(
                follow=args.follow, attempt=args.attempt, rank=None if args.all else args.rank
            ):
                print(line, flush=True)
        except BrokenPipeError:  # | head
            return 0
    return 0


@_guarded
def _list(args: argparse.Namespace) -> int:
    from .status import list_rows, now_utc, table

    with _client(args) as client:
        jobs = client.kube.list_jobs(all_namespaces=args.all_namespaces)
    if not jobs:
        print(
            "no FineTuneJobs" + ("" if args.all_namespaces else f" in namespace {client.namespace}")
        )
        return 0
    print(table(list_rows(jobs, now_utc(), namespaces=args.all_namespaces)))
    return 0


@_guarded
def _cancel(args: argparse.Namespace) -> int:
    with _client(args) as client:
        handle = client.job(args.name)
        what = "delete" if args.delete else "suspend"
        if not args.yes:
            if not sys.stdin.isatty():
                print(
                    f"finetune cancel: {what} {args.name}? give --yes (no terminal to ask on)",
                    file=sys.stderr,
                )
                return EXIT_ERROR
            answer = input(f"{what} FineTuneJob {args.name} in {client.namespace}? [y/N] ")
            if answer.strip().lower() not in ("y", "yes"):
                print("nothing done")
                return 1
        handle.cancel(delete=args.delete)
        done = "deleted" if args.delete else "suspended (spec.scheduling.suspend: true)"
        print(f"{args.name}: {done}")
    return 0


@_guarded
def _wait(args: argparse.Namespace) -> int:
    from .logs import wait_for

    with _client(args) as client:
        try:
            job = wait_for(client.kube, args.name, timeout=args.timeout)
        except TimeoutError:
            print(f"{args.name}: not ended within {args.timeout:g}s", file=sys.stderr)
            return EXIT_TIMEOUT
    if job is None:
        print(f"FineTuneJob {args.name} was deleted", file=sys.stderr)
        return EXIT_DELETED
    return _final(job)
