"""Checkpoint upload throughput: our storage layer vs a plain boto3 loop vs a raw local copy.

    hack/cluster-up.sh && . ~/.cache/finetune-operator/cluster/env
    .venv/bin/python bench/storage.py            # = make bench-storage
    .venv/bin/python bench/storage.py --size-gb 1 --repeats 1   # quicker, noisier

Builds a checkpoint-like folder of random (incompressible) bytes under --dir (two large
safetensors shards, an optimizer state, and a couple of hundred small files: configs,
tokenizer, RNG states), then, alternating the order on every repeat so that a noisy
neighbour hurts all methods alike, times:

  ours       S3Store.upload_dir (bounded pool across files + multipart within large files,
             sizes checked with a listing after), default settings, checksum=False;
  ours+sha   the same with checksum=True (SHA-256 of every file returned, as a checkpoint
             manifest wants it);
  baseline   the plainest boto3 loop: for each file, read it and client.put_object(...) with
             a default client (one request after the other);
  upload_file  for context: for each file, client.upload_file(...) with boto3's default
             TransferConfig (threads within a file, files one after the other);
  raw copy   shutil.copytree to another folder on the same disk, every file fsynced.

The files sit in the page cache for every method (they were just written), so the figures
compare how fast each moves bytes into durable storage. Medians of the repeats give the
ratios; targets: ours >= 1.5 x baseline and ours >= 0.8 x raw copy. Everything it writes
(local folders, the bucket) is removed at the end.
"""

from __future__ import annotations

import argparse
import os
import shutil
import statistics
import sys
import tempfile
import time
import uuid
from collections.abc import Callable
from pathlib import Path
from typing import Any

MB = 1_000_000
MiB = 1024 * 1024
TARGET_VS_BASELINE = 1.5
TARGET_VS_COPY = 0.8


def make_checkpoint(root: Path, total: int) -> int:
    """A checkpoint-like folder of about `total` bytes; returns the exact size."""
    small = {f"rng_state_{i}.pth": 15_000 for i in range(64)}
    small |= {f"tokenizer/extra_{i:03d}.json": 20_000 + 977 * i for i in range(120)}
    small |= {"config.json": 1_200, "generation_config.json": 300, "scheduler.pt": 1_100,
              "trainer_state.json": 90_000, "training_args.bin": 6_000,
              "tokenizer/tokenizer.json": 9 * MiB}  # fmt: skip
    rest = max(total - sum(small.values()), 3 * MiB)
    large = {
        "model-00001-of-00002.safetensors": rest * 40 // 100,
        "model-00002-of-00002.safetensors": rest * 35 // 100,
        "optimizer.pt": rest - rest * 40 // 100 - rest * 35 // 100,
    }
    written = 0
    for name, size in {**large, **small}.items():
        path = root / name
        path.parent.mkdir(parents=True, exist_ok=True)
        with open(path, "wb") as writer:
            left = size
            while left:
                chunk = os.urandom(min(left, 16 * MiB))
                writer.write(chunk)
                left -= len(chunk)
        written += size
    return written


def raw_copy(source: Path, target: Path) -> None:
    shutil.copytree(source, target)
    for folder, _, names in os.walk(target):
        for name in names:
            with open(os.path.join(folder, name), "rb+") as handle:
                os.fsync(handle.fileno())
        handle_dir = os.open(folder, os.O_RDONLY)
        os.fsync(handle_dir)
        os.close(handle_dir)


def plain_put_loop(client: Any, bucket: str, source: Path, prefix: str) -> None:
    for path in sorted(p for p in source.rglob("*") if p.is_file()):
        key = f"{prefix}/{path.relative_to(source).as_posix()}"
        client.put_object(Bucket=bucket, Key=key, Body=path.read_bytes())


def upload_file_loop(client: Any, bucket: str, source: Path, prefix: str) -> None:
    for path in sorted(p for p in source.rglob("*") if p.is_file()):
        client.upload_file(str(path), bucket, f"{prefix}/{path.relative_to(source).as_posix()}")


def server_cpu_seconds() -> float | None:
    """CPU time used so far by the cluster's S3 server (Linux; None when unknown)."""
    state = Path(os.environ.get("FTO_STATE", Path.home() / ".cache/finetune-operator/cluster"))
    try:
        pid = int((state / "pids" / "minio.pid").read_text().split()[0])
        fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    except (OSError, ValueError, IndexError):
        return None
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


def client_cpu_seconds() -> float:
    times = os.times()
    return times.user + times.system


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--size-gb", type=float, default=2.5, help="checkpoint size (GB)")
    parser.add_argument("--repeats", type=int, default=2, help="rounds of every method")
    parser.add_argument("--dir", type=Path, default=Path(tempfile.gettempdir()),
                        help="where the checkpoint and the raw copy go")  # fmt: skip
    parser.add_argument("--strict", action="store_true", help="exit 1 when a target is missed")
    args = parser.parse_args(argv)

    endpoint = os.environ.get("FTO_S3_ENDPOINT")
    if not endpoint or not os.environ.get("AWS_SECRET_ACCESS_KEY"):
        print("needs the local S3 server: hack/cluster-up.sh && "
              ". ~/.cache/finetune-operator/cluster/env", file=sys.stderr)  # fmt: skip
        return 2
    total = int(args.size_gb * 1e9)
    free = shutil.disk_usage(args.dir).free
    if free < 3 * total + 2 * 10**9:  # checkpoint + raw copy + the S3 server's copy + slack
        print(f"not enough space in {args.dir}: {free / 1e9:.1f} GB free, "
              f"{(3 * total + 2e9) / 1e9:.1f} GB needed", file=sys.stderr)  # fmt: skip
        return 2

    import boto3
    from botocore.config import Config

    from ftapi.v1alpha1 import S3Spec
    from fttrainer.storage import MAX_CONCURRENCY, PART_SIZE, S3Store, open_store

    work = Path(tempfile.mkdtemp(prefix="fto-bench-storage-", dir=args.dir))
    plain = boto3.session.Session().client(
        "s3", endpoint_url=endpoint, config=Config(s3={"addressing_style": "path"})
    )
    bucket = f"bench-{uuid.uuid4().hex[:10]}"
    store = open_store(f"s3://{bucket}", s3=S3Spec(endpoint=endpoint, force_path_style=True))
    assert isinstance(store, S3Store)
    try:
        plain.create_bucket(Bucket=bucket)
        source = work / "checkpoint-1000"
        started = time.monotonic()
        size = make_checkpoint(source, total)
        files = sum(1 for p in source.rglob("*") if p.is_file())
        print(f"checkpoint: {files} files, {size / 1e9:.2f} GB (largest "
              f"{max(p.stat().st_size for p in source.rglob('*') if p.is_file()) / 1e9:.2f} GB), "
              f"written in {time.monotonic() - started:.0f} s to {source}")  # fmt: skip
        print(f"S3: {endpoint}; ours: part size {PART_SIZE // MiB} MiB, "
              f"{MAX_CONCURRENCY} requests in flight; {os.cpu_count()} CPUs, "
              f"load average {os.getloadavg()[0]:.1f}")  # fmt: skip

        def ours(prefix: str) -> None:
            store.upload_dir(source, prefix)

        def ours_sha(prefix: str) -> None:
            store.upload_dir(source, prefix, checksum=True)

        methods: dict[str, Callable[[str], None]] = {
            "ours": ours,
            "ours+sha": ours_sha,
            "baseline": lambda prefix: plain_put_loop(plain, bucket, source, prefix),
            "upload_file": lambda prefix: upload_file_loop(plain, bucket, source, prefix),
            "raw copy": lambda prefix: raw_copy(source, work / prefix),
        }
        results: dict[str, list[float]] = {name: [] for name in methods}
        names = list(methods)
        for repeat in range(args.repeats):
            order = names[repeat % len(names) :] + names[: repeat % len(names)]
            for name in order:
                prefix = f"r{repeat}-{name.replace(' ', '-').replace('+', '-')}"
                server, client = server_cpu_seconds(), client_cpu_seconds()
                started = time.perf_counter()
                methods[name](prefix)
                seconds = time.perf_counter() - started
                client = client_cpu_seconds() - client
                server_after = server_cpu_seconds()
                cpu = f"CPU s/GB: here {client / size * 1e9:4.1f}"
                if server is not None and server_after is not None and name != "raw copy":
                    cpu += f", S3 server {(server_after - server) / size * 1e9:4.1f}"
                results[name].append(size / MB / seconds)
                print(f"  round {repeat + 1} {name:12s} {size / MB / seconds:7.0f} MB/s "
                      f"({seconds:5.1f} s; {cpu})", flush=True)  # fmt: skip
                # Free the space before the next method (not timed).
                if name == "raw copy":
                    shutil.rmtree(work / prefix)
                else:
                    store.delete(o.key for o in store.list(prefix + "/"))
        return report(results, strict=args.strict)
    finally:
        shutil.rmtree(work, ignore_errors=True)
        try:
            store.delete(o.key for o in store.list())
            plain.delete_bucket(Bucket=bucket)
        except Exception as error:  # the figures are printed already
            print(f"could not remove the bucket {bucket}: {error}", file=sys.stderr)


def report(results: dict[str, list[float]], *, strict: bool) -> int:
    median = {name: statistics.median(values) for name, values in results.items()}
    print("\nmedian throughput (MB/s):")
    for name, value in median.items():
        runs = ", ".join(f"{v:.0f}" for v in results[name])
        print(f"  {name:12s} {value:7.0f}   (runs: {runs})")
    baseline_note = "(a put_object per file, read into memory, default client)"
    vs_baseline = median["ours"] / median["baseline"]
    vs_copy = median["ours"] / median["raw copy"]
    ok_baseline = vs_baseline >= TARGET_VS_BASELINE
    ok_copy = vs_copy >= TARGET_VS_COPY
    print(f"\nours / baseline {baseline_note}: {vs_baseline:.2f}x  "
          f"(target >= {TARGET_VS_BASELINE}x) {'PASS' if ok_baseline else 'FAIL'}")  # fmt: skip
    print(f"ours / raw local copy (fsynced): {vs_copy:.2f}x  "
          f"(target >= {TARGET_VS_COPY}x) {'PASS' if ok_copy else 'FAIL'}")  # fmt: skip
    print(f"for context: ours / upload_file loop {median['ours'] / median['upload_file']:.2f}x, "
          f"ours+sha / ours {median['ours+sha'] / median['ours']:.2f}x")  # fmt: skip
    return 1 if strict and not (ok_baseline and ok_copy) else 0


if __name__ == "__main__":
    sys.exit(main())
