"""`finetune submit` refuses before anything leaves the machine, with `finetune validate`'s
own words; a cluster that does not answer fails in seconds. The cluster commands join
`finetune` through the entry point of the installed client."""

from __future__ import annotations

import time
from pathlib import Path

import pytest

from fttestkit.paths import REPO
from fttrainer.cli import main

KUBECONFIG = """apiVersion: v1
kind: Config
clusters: [{name: c, cluster: {server: "https://127.0.0.1:1", insecure-skip-tls-verify: true}}]
users: [{name: u, user: {token: t}}]
contexts: [{name: ctx, context: {cluster: c, user: u, namespace: team}}]
current-context: ctx
"""


@pytest.fixture
def nowhere(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    """A kubeconfig whose server refuses connections, and a client config with staging."""
    (tmp_path / "kubeconfig").write_text(KUBECONFIG)
    (tmp_path / "client.yaml").write_text(
        "staging: s3://stage/p\ns3: {endpoint: 'http://127.0.0.1:1'}\n"
    )
    monkeypatch.setenv("KUBECONFIG", str(tmp_path / "kubeconfig"))
    monkeypatch.setenv("FINETUNE_CONFIG", str(tmp_path / "client.yaml"))
    monkeypatch.setenv("HOME", str(tmp_path))  # the hash cache
    monkeypatch.chdir(REPO)
    return tmp_path


def test_the_cluster_commands_are_part_of_finetune(capsys: pytest.CaptureFixture[str]) -> None:
    with pytest.raises(SystemExit):
        main(["--help"])
    usage = capsys.readouterr().out
    for command in ("submit", "status", "logs", "list", "cancel", "wait"):
        assert f"    {command} " in usage, usage


@pytest.mark.parametrize(
    ("change", "expected"),
    [
        ("learningRate: 5.0e-3", "learningRate: -1"),
        (
            "train: {uri: examples/data/quickstart.jsonl}",
            "train: {uri: examples/data/missing.jsonl}",
        ),
        ("train: {uri: examples/data/quickstart.jsonl}", "train: {uri: BAD_ROWS}"),
    ],
    ids=["invalid-field", "missing-file", "bad-rows"],
)
def test_submit_refuses_what_validate_refuses_in_its_words_before_touching_anything(
    nowhere: Path, capsys: pytest.CaptureFixture[str], change: str, expected: str
) -> None:
    bad_rows = nowhere / "bad.jsonl"
    bad_rows.write_text('{"instruction": "a", "output": "b"}\n{"instruction": 3}\n')
    manifest = (REPO / "examples/quickstart-cpu.yaml").read_text()
    assert change in manifest
    path = nowhere / "job.yaml"
    path.write_text(manifest.replace(change, expected.replace("BAD_ROWS", str(bad_rows))))
    assert main(["validate", str(path)]) == 1
    validate = capsys.readouterr()
    started = time.monotonic()
    assert main(["submit", str(path)]) == 1
    submit = capsys.readouterr()
    assert time.monotonic() - started < 10
    assert submit.out == validate.out
    assert (
        submit.err
        == validate.err + "finetune submit: not submitted (nothing was uploaded or applied)\n"
    )
    assert validate.err.strip() or validate.out.strip()


def test_an_unreachable_cluster_fails_in_seconds_and_says_which(
    nowhere: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    # submit validates first (the data report loads the tokenizer): that part is timed alone,
    # and both are timed warm (a first submit imports the Kubernetes and S3 clients), so what
    # is bounded is the cluster's part, not a loaded machine's imports (CI, 2026-11-28: 31 s
    # at 97 % CPU, nearly all before the first connection; 2026-11-29: a cold submit 10.3 s).
    assert main(["validate", "examples/quickstart-cpu.yaml"]) == 0
    assert main(["submit", "examples/quickstart-cpu.yaml"]) == 2
    started = time.monotonic()
    assert main(["validate", "examples/quickstart-cpu.yaml"]) == 0
    validating = time.monotonic() - started
    capsys.readouterr()
    started = time.monotonic()
    assert main(["submit", "examples/quickstart-cpu.yaml"]) == 2
    assert time.monotonic() - started - validating < 10
    err = capsys.readouterr().err
    assert "finetune submit: the cluster at https://127.0.0.1:1 (context ctx) did not answer" in err
    for command in (["status", "j"], ["list"], ["wait", "j"], ["logs", "j"]):
        started = time.monotonic()
        assert main(command) == 2, command
        assert time.monotonic() - started < 10
        assert "did not answer" in capsys.readouterr().err


def test_a_local_file_without_a_staging_location_says_how_to_give_one(
    nowhere: Path, capsys: pytest.CaptureFixture[str], tmp_path: Path
) -> None:
    (nowhere / "client.yaml").write_text("namespace: team\n")
    assert main(["submit", "examples/quickstart-cpu.yaml", "--dry-run"]) == 2
    err = capsys.readouterr().err
    assert "spec.output.uri 'results/quickstart' is on this machine" in err
    assert "--staging" in err
