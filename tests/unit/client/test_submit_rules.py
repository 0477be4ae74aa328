"""The manifest submit applies (named, namespaced, the cluster's defaults beneath, a local
output moved to staging), the client config's rules, and the status texts. Pure."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta
from pathlib import Path
from types import SimpleNamespace

import pytest

from ftclient.config import ClientConfig, load_config, parse_config
from ftclient.errors import ClientError, StagingError, ValidationError
from ftclient.status import EXIT_CODES, describe, ended, list_rows, table
from ftclient.submit import check_applied, prepare_manifest

NOW = 1_700_000_000.0


def quickstart() -> dict[str, object]:
    return {"apiVersion": "finetune.dev/v1alpha1", "kind": "FineTuneJob",
            "metadata": {"name": "quickstart"},
            "spec": {"model": {"name": "s3://b/m"}, "dataset": {"train": {"uri": "s3://b/d.jsonl"}},
                     "output": {"uri": "results/quickstart"}, "logging": {"steps": 5}}}  # fmt: skip


DEFAULTS = ClientConfig(
    job_defaults={
        "output": {"s3": {"forcePathStyle": True, "credentialsSecretRef": {"name": "s3"}}},
        "resources": {"cpu": "800m", "nodeSelector": {"pool": "local"}},
        "logging": {"steps": 50, "statusIntervalSeconds": 2},
    }
)


def test_a_local_output_moves_under_staging_and_defaults_fill_what_the_manifest_leaves() -> None:
    prepared, moved = prepare_manifest(
        quickstart(), name=None, namespace="team", config=DEFAULTS, staging="s3://stage/p/", now=NOW
    )
    uri = "s3://stage/p/outputs/team/quickstart/20231114T221320Z"
    assert moved == ("results/quickstart", uri)
    assert prepared["metadata"] == {"name": "quickstart", "namespace": "team"}
    spec = prepared["spec"]
    s3 = {"forcePathStyle": True, "credentialsSecretRef": {"name": "s3"}}
    assert spec["output"] == {"uri": uri, "s3": s3}
    assert spec["logging"] == {"steps": 5, "statusIntervalSeconds": 2}  # the manifest wins
    assert spec["resources"] == {"cpu": "800m", "nodeSelector": {"pool": "local"}}
    check_applied(prepared, "quickstart.yaml")  # still a valid FineTuneJob


def test_an_s3_output_stays_and_name_renames() -> None:
    job = quickstart()
    job["spec"]["output"] = {"uri": "s3://mine/run"}  # type: ignore[index]
    prepared, moved = prepare_manifest(job, name="other", namespace="n", config=ClientConfig(),
                                       staging=None, now=NOW)  # fmt: skip
    assert moved is None
    assert prepared["spec"]["output"] == {"uri": "s3://mine/run"}
    assert prepared["metadata"]["name"] == "other"
    assert job["metadata"] == {"name": "quickstart"}  # the caller's manifest is not changed


def test_a_local_output_without_staging_is_refused_with_what_to_do() -> None:
    with pytest.raises(
        StagingError, match=r"spec.output.uri 'results/quickstart' is on this machine.*--staging"
    ):
        prepare_manifest(quickstart(), name=None, namespace="n", config=ClientConfig(),
                         staging=None)  # fmt: skip


def test_defaults_that_break_the_job_are_reported_as_such() -> None:
    config = ClientConfig(job_defaults={"resources": {"gpusPerNod": 1}})
    prepared, _ = prepare_manifest(quickstart(), name=None, namespace="n", config=config,
                                   staging="s3://s/p")  # fmt: skip
    with pytest.raises(ValidationError, match=r"jobDefaults.*\n.*gpusPerNod"):
        check_applied(prepared, "job.yaml")


def test_the_client_config_refuses_what_it_does_not_know(tmp_path: Path) -> None:
    s3 = {"endpoint": "http://x:9000", "forcePathStyle": True}
    config = parse_config({"namespace": "a", "staging": "s3://b/p", "s3": s3}, "f")
    assert config.s3.endpoint == "http://x:9000" and config.s3.force_path_style
    with pytest.raises(ClientError, match=r"unknown key.*namespaces"):
        parse_config({"namespaces": "a"}, "f")
    with pytest.raises(ClientError, match="s3 takes only"):
        parse_config({"s3": {"secretKey": "x"}}, "f")
    with pytest.raises(ClientError, match="jobDefaults must be a mapping"):
        parse_config({"jobDefaults": ["x"]}, "f")
    with pytest.raises(ClientError, match="does not exist"):
        load_config(tmp_path / "missing.yaml")
    path = tmp_path / "config.yaml"
    path.write_text("staging: s3://b/p\njobDefaults: {resources: {cpu: '1'}}\n")
    assert load_config(path).job_defaults == {"resources": {"cpu": "1"}}


def job_object(phase: str, **status: object) -> dict[str, object]:
    created = (datetime(2026, 1, 1, tzinfo=UTC) - timedelta(minutes=5)).isoformat()
    return {"metadata": {"name": "j", "namespace": "ns", "creationTimestamp": created},
            "spec": {"output": {"uri": "s3://b/out"}},
            "status": {"phase": phase, **status}}  # fmt: skip


def test_status_says_phase_reason_progress_and_the_latest_events() -> None:
    job = job_object(
        "Failed", failureReason="OOMKilled", message="rank 0 ran out of memory",
        progress={"summary": "40/100 (40%)", "loss": "1.25", "eta": "3m", "epoch": 1.5},
        restarts=2, attempt=2, checkpoint={"latest": "s3://b/out/checkpoints/step-40", "step": 40},
        warnings=[{"reason": "LossSpike", "step": 30, "message": "loss 9.1 > 3x median"}],
    )  # fmt: skip
    event = SimpleNamespace(
        type="Warning", reason="AttemptFailed", message="pod j-0 OOMKilled",
        last_timestamp=datetime(2026, 1, 1, tzinfo=UTC) - timedelta(seconds=30),
        event_time=None, first_timestamp=None,
    )  # fmt: skip
    text = describe(job, [event], datetime(2026, 1, 1, tzinfo=UTC))
    for expected in ("phase:      Failed (OOMKilled)", "message:    rank 0 ran out of memory",
                     "progress:   40/100 (40%), epoch 1.50", "loss:       1.25", "eta:        3m",
                     "attempt:    2 (restarts: 2)", "checkpoint: step 40 at s3://b/out/checkpoints",
                     "warning:    step 30: LossSpike",
                     "30s Warning AttemptFailed: pod j-0 OOMKilled",
                     "output:     s3://b/out"):  # fmt: skip
        assert expected in text, text


def test_list_rows_and_what_wait_stops_at() -> None:
    rows = list_rows([job_object("Running", progress={"summary": "1/2 (50%)"}),
                      job_object("Succeeded")], datetime(2026, 1, 1, tzinfo=UTC))  # fmt: skip
    assert rows[0] == ["NAME", "PHASE", "PROGRESS", "LOSS", "ETA", "RESTARTS", "AGE"]
    assert rows[1][:3] == ["j", "Running", "1/2 (50%)"] and rows[1][-1] == "5m"
    assert table(rows).splitlines()[0].split() == rows[0]
    assert [ended(job_object(p)) for p in ("Pending", "Running", "Restarting", "Queued")] == [
        False
    ] * 4
    assert EXIT_CODES == {"Succeeded": 0, "Failed": 1, "Suspended": 3}
