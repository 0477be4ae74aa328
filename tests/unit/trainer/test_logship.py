"""Keeping a pod's log (fttrainer.reporting.logship): whole lines in order, redacted, bounded to a
head and a tail, written again after a store failure, and the command's exit status and signals
passed through. The writes go to a dict here; to the real S3 server in
tests/integration/test_client.py."""

from __future__ import annotations

import base64
import json
import os
import signal
import subprocess
import sys
from pathlib import Path

from ftapi.kept_logs import chunk_sequence
from fttrainer.reporting.logship import (
    KeptLog,
    Shipper,
    make_redactor,
    run_keeping_log,
    secret_values,
    shipping_target,
)

PLAIN = make_redactor([])


def joined(writes: dict[str, bytes]) -> bytes:
    chunks = sorted((chunk_sequence(n), c) for n, c in writes.items() if chunk_sequence(n))
    return b"".join(c for _, c in chunks)


def test_chunks_hold_whole_lines_in_order_and_the_last_partial_line_at_the_end() -> None:
    log = KeptLog(PLAIN)
    log.feed(b"step 1\nstep")
    assert log.take() == [("000001.log", b"step 1\n")]  # "step" waits for its newline
    log.feed(b" 2\nstep 3")
    assert log.take() == [("000002.log", b"step 2\n")]
    assert log.take(final=True) == [("000003.log", b"step 3\n")]
    assert log.take(final=True) == []


def test_secrets_and_url_credentials_never_reach_the_kept_log() -> None:
    environ = {"AWS_SECRET_ACCESS_KEY": "s3cr3t-value-123", "HF_TOKEN": "hf_abcdefgh",
               "WANDB_API_KEY": "short", "PATH": "/usr/bin:/bin"}  # fmt: skip
    secrets = secret_values(environ)
    assert secrets == ["s3cr3t-value-123", "hf_abcdefgh"]  # longest first; PATH is no secret
    log = KeptLog(make_redactor(secrets))
    log.feed(b"key=s3cr3t-value-123 token hf_abcdefgh at http://user:pw@minio:9000/b /usr/bin\n")
    ((_, content),) = log.take()
    assert content == b"key=[redacted] token [redacted] at http://minio:9000/b /usr/bin\n"


def test_a_registry_secrets_password_and_auth_never_reach_the_kept_log() -> None:
    """output.oci's dockerconfigjson arrives whole in one variable; a library that quotes the
    password or the base64 auth it built from it is redacted too."""
    auth = base64.b64encode(b"robot:pa55-word-xyz").decode()
    config = json.dumps({"auths": {"r.example:5000": {"auth": auth}}})
    secrets = secret_values({"FINETUNE_OCI_PUSH_SECRET": config})
    log = KeptLog(make_redactor(secrets))
    log.feed(f"Authorization: Basic {auth}; password pa55-word-xyz\n".encode())
    ((_, content),) = log.take()
    assert content == b"Authorization: Basic [redacted]; password [redacted]\n"


def test_past_the_cap_the_head_and_the_end_are_kept_and_the_gap_is_said() -> None:
    log = KeptLog(PLAIN, keep_bytes=20, tail_bytes=16)
    log.feed(b"".join(b"line %02d\n" % i for i in range(10)))  # 8 bytes a line
    writes = dict(log.take(final=True))
    assert joined(writes) == b"line 00\nline 01\n"  # whole lines within 20 bytes
    assert writes["tail.log"].endswith(b"line 09\n")
    assert b"bytes of this log were not kept" in writes["tail.log"]
    log.feed(b"line 10\n")
    assert dict(log.take())["tail.log"].endswith(b"line 09\nline 10\n")


def test_a_line_without_end_is_cut_not_held_forever() -> None:
    log = KeptLog(PLAIN)
    log.feed(b"x" * (200 * 1024))  # a progress bar's \r updates, no newline
    assert len(joined(dict(log.take()))) >= 192 * 1024


def test_a_failed_write_is_written_again_at_the_next_flush_in_order() -> None:
    written: dict[str, bytes] = {}
    failing = {"on": True}

    def put(name: str, content: bytes) -> None:
        if failing["on"]:
            raise ConnectionError("store down")
        written[name] = content

    shipper = Shipper(KeptLog(PLAIN), put, interval=3600)
    shipper.feed(b"one\n")
    shipper.flush()
    assert written == {} and shipper.failures == 1 and "store down" in shipper.last_error
    failing["on"] = False
    shipper.feed(b"two\n")
    shipper.flush()
    assert joined(written) == b"one\ntwo\n"


def test_the_command_runs_with_its_output_copied_and_kept_and_its_exit_status(
    tmp_path: Path,
) -> None:
    written: dict[str, bytes] = {}
    out = tmp_path / "stdout"
    script = "import sys; print('to stdout'); print('to stderr', file=sys.stderr); sys.exit(7)"
    with open(out, "wb") as sink:
        code = run_keeping_log([sys.executable, "-c", script], written.__setitem__,
                               {"FINETUNE_LOG_FLUSH_SECONDS": "0.1"},
                               out=sink.fileno())  # fmt: skip
    assert code == 7
    assert sorted(out.read_bytes().splitlines()) == [b"to stderr", b"to stdout"]
    assert sorted(joined(written).splitlines()) == [b"to stderr", b"to stdout"]


def test_signals_are_passed_on_and_a_signal_death_reads_as_a_shell_says_it(tmp_path: Path) -> None:
    """SIGTERM to the entrypoint (tini passes the kubelet's on) reaches the trainer, which
    can stop gracefully; a trainer killed by a signal exits 128 + its number."""
    script = tmp_path / "run.py"
    script.write_text(
        "import os, signal, sys, time, subprocess\n"
        "from fttrainer.reporting.logship import run_keeping_log\n"
        "child = [sys.executable, '-c', \"import signal, sys, time\\n"
        "signal.signal(signal.SIGTERM,\\n"
        "    lambda *a: (print('graceful stop', flush=True), sys.exit(3)))\\n"
        "print('ready', flush=True)\\ntime.sleep(60)\"]\n"
        "sys.exit(run_keeping_log(child, lambda n, c: None, {}))\n"
    )
    process = subprocess.Popen([sys.executable, str(script)], stdout=subprocess.PIPE)
    assert process.stdout is not None
    assert process.stdout.readline() == b"ready\n"
    process.send_signal(signal.SIGTERM)
    assert process.stdout.read() == b"graceful stop\n"
    assert process.wait(timeout=30) == 3
    killed = run_keeping_log([sys.executable, "-c", "import os; os.kill(os.getpid(), 9)"],
                             lambda n, c: None, {})  # fmt: skip
    assert killed == 128 + 9


def test_logs_are_kept_only_in_an_operator_pod_writing_to_s3(tmp_path: Path) -> None:
    config = tmp_path / "job.yaml"
    config.write_text(
        "apiVersion: finetune.dev/v1alpha1\nkind: FineTuneJob\nmetadata: {name: j}\n"
        "spec: {model: {name: m/m}, dataset: {train: {uri: s3://b/d.jsonl}}, "
        "output: {uri: 's3://b/out/', s3: {forcePathStyle: true}}}\n"
    )
    assert shipping_target({}, str(config)) is None  # not in an operator's pod
    target = shipping_target({"FINETUNE_ATTEMPT": "2", "JOB_COMPLETION_INDEX": "1"}, str(config))
    assert target is not None and target.prefix == "s3://b/out/logs/attempt-2/rank-1/"
    assert target.s3.force_path_style
    config.write_text(
        config.read_text().replace("s3://b/out/', s3: {forcePathStyle: true}", "/tmp/out'")
    )
    assert shipping_target({"FINETUNE_ATTEMPT": "0"}, str(config)) is None
    assert shipping_target({"FINETUNE_ATTEMPT": "0"}, str(tmp_path / "absent.yaml")) is None


def test_a_command_that_cannot_start_exits_127_as_exec_would(tmp_path: Path) -> None:
    """The entrypoint keeping a log (an operator's pod writing to S3) still says why its
    command did not start, with the shell's status."""
    config = tmp_path / "job.yaml"
    config.write_text(
        "apiVersion: finetune.dev/v1alpha1\nkind: FineTuneJob\nmetadata: {name: j}\n"
        "spec: {model: {name: m/m}, dataset: {train: {uri: s3://b/d.jsonl}}, "
        "output: {uri: 's3://b/out'}}\n"
    )
    environ = {**os.environ, "FINETUNE_ATTEMPT": "0", "FINETUNE_JOB_CONFIG": str(config),
               "AWS_ENDPOINT_URL_S3": "http://127.0.0.1:9", "AWS_REGION": "us-east-1"}  # fmt: skip
    command = [sys.executable, "-m", "fttrainer.entrypoint", "no-such-command-x"]
    done = subprocess.run(command, env=environ, capture_output=True, text=True, timeout=60,
                          check=False)  # fmt: skip
    assert done.returncode == 127, done.stderr
    assert "cannot run no-such-command-x" in done.stderr
