"""logging.reportTo on real tiny-model runs: TensorBoard event files, a W&B offline run, and a
run on a real local `mlflow server` read back through MLflow's client; an attempt that
resumes from a checkpoint continues the same MLflow and W&B runs."""

from __future__ import annotations

import json
import os
import struct
import sys
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from transformers import TrainerCallback

from ftapi import parse_job
from fttestkit.builders import make_job
from fttestkit.ports import free_port
from fttestkit.process import ManagedProcess, http_ok
from fttrainer.recipe import Recipe

# What the trackers create by default: mlflow's ./mlflow.db and ./mlruns, ./wandb, and
# TensorBoard's <output_dir>/runs.
TRACKER_FILES = ("mlflow.db", "mlruns", "wandb", "runs", "tensorboard")


def _job(model: Path, data: Path, out: Path, logging: dict[str, Any]) -> Any:
    return (
        make_job("tracked")
        .set("model.name", str(model))
        .set("dataset", {"train": {"uri": str(data)}, "format": "qa", "maxSeqLength": 64,
                         "split": {"train": 0.8, "test": 0.2}})
        .set("training", {"maxSteps": 8, "batchSize": 8, "learningRate": 1e-2})
        .set("evaluation", {"strategy": "no", "metrics": ["loss", "perplexity"]})
        .set("logging", {"steps": 2, "firstStep": False, **logging})
        .set("output.uri", str(out / "published"))
        .set("resources.gpusPerNode", 0)
    )  # fmt: skip


def _run(model: Path, data: Path, out: Path, logging: dict[str, Any]) -> dict[str, Any]:
    """8 steps logged every 2, a test split scored after training, results published to
    out/published; the final metrics."""
    recipe = Recipe(parse_job(_job(model, data, out, logging).obj()), out)
    recipe.setup()
    result = recipe.train()
    recipe.save(result)
    recipe.publish()
    return result.final_metrics


def _logged_losses(out: Path) -> dict[int, float]:
    return {m["step"]: m["loss"] for m in json.loads((out / "step_metrics.json").read_text())}


def test_no_report_to_creates_no_tracker_files(
    tiny_llama: Path, qa_data: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.chdir(tmp_path)  # mlflow and wandb default to ./mlruns and ./wandb
    _run(tiny_llama, qa_data, tmp_path / "out", {})
    found = [p for p in tmp_path.rglob("*") if p.name in TRACKER_FILES]
    assert found == []


def test_tensorboard_event_files_under_the_output(
    tiny_llama: Path, qa_data: Path, tmp_path: Path
) -> None:
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    out = tmp_path / "out"
    final = _run(tiny_llama, qa_data, out, {"reportTo": ["tensorboard"]})
    events = EventAccumulator(str(out / "tensorboard")).Reload()
    losses = {e.step: e.value for e in events.Scalars("train/loss")}
    assert losses == pytest.approx(_logged_losses(out))
    assert sorted(losses) == [2, 4, 6, 8]
    # Scored after training: the test set and the final metrics, at the last step.
    (test_loss,) = events.Scalars("test/loss")
    assert test_loss.value == pytest.approx(final["test_loss"], rel=1e-5)
    (perplexity,) = events.Scalars("final/test_perplexity")
    assert (perplexity.step, perplexity.value) == (8, pytest.approx(final["test_perplexity"]))
    published = out / "published" / "tensorboard"
    assert any(p.name.startswith("events.out.tfevents") for p in published.iterdir())


def test_wandb_offline_run_in_the_output(
    tiny_llama: Path, qa_data: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.chdir(tmp_path)
    monkeypatch.delenv("WANDB_API_KEY", raising=False)
    out = tmp_path / "out"
    wandb = {"project": "ft-tests", "mode": "offline", "group": "g", "tags": ["tiny", "ci"]}
    final = _run(tiny_llama, qa_data, out, {"reportTo": ["wandb"], "wandb": wandb})
    (run_file,) = (out / "wandb").glob("offline-run-*/run-*.wandb")
    records = list(_wandb_records(run_file))
    (run,) = [r.run for r in records if r.WhichOneof("record_type") == "run"]
    assert (run.project, run.display_name, run.run_group) == ("ft-tests", "tracked", "g")
    assert list(run.tags) == ["tiny", "ci"]
    history = [_items(r.history.item) for r in records if r.WhichOneof("record_type") == "history"]
    losses = {h["train/global_step"]: h["train/loss"] for h in history if "train/loss" in h}
    assert losses == pytest.approx(_logged_losses(out))
    summary: dict[str, Any] = {}
    for record in records:
        if record.WhichOneof("record_type") == "summary":
            summary.update(_items(record.summary.update))
    assert summary["test_perplexity"] == pytest.approx(final["test_perplexity"])
    assert any(r.WhichOneof("record_type") == "exit" for r in records)  # the run was finished
    assert not (tmp_path / "wandb").exists()  # nothing outside the output


def test_mlflow_run_on_a_real_server(
    tiny_llama: Path, qa_data: Path, tmp_path: Path, mlflow_server: str
) -> None:
    from mlflow.tracking import MlflowClient

    mlflow = {"trackingUri": mlflow_server, "experiment": "ft-tests",
              "runNamePrefix": "pre-", "tags": {"team": "nlp"}}  # fmt: skip
    out = tmp_path / "out"
    final = _run(tiny_llama, qa_data, out, {"reportTo": ["mlflow"], "mlflow": mlflow})
    client = MlflowClient(tracking_uri=mlflow_server)
    experiment = client.get_experiment_by_name("ft-tests")
    assert experiment is not None
    # One run: the test-set evaluation after training did not open a second one.
    (run,) = client.search_runs([experiment.experiment_id])
    assert run.info.run_name == "pre-tracked" and run.info.status == "FINISHED"
    assert run.data.tags["team"] == "nlp"
    assert run.data.params["learning_rate"] == "0.01"
    assert run.data.params["max_steps"] == "8"
    history = client.get_metric_history(run.info.run_id, "loss")
    assert {m.step: m.value for m in history} == pytest.approx(_logged_losses(out))
    assert run.data.metrics["test_loss"] == pytest.approx(final["test_loss"])
    assert run.data.metrics["test_perplexity"] == pytest.approx(final["test_perplexity"])
    assert run.data.metrics["global_step"] == 8
    # The final model is a registered version (name: the job's), linked to the run. The
    # output is local, so it was logged to the run's artifacts: the registry holds it.
    (version,) = client.search_model_versions("name='tracked'")
    assert (version.version, version.run_id) == ("1", run.info.run_id)
    assert version.tags["finetune.dev/model-uri"] == str(out / "published" / "final")
    assert version.tags["finetune.dev/job"] == "tracked"
    assert version.tags["finetune.dev/method"] == "lora"
    assert float(version.tags["metric.test_loss"]) == pytest.approx(final["test_loss"])
    import mlflow.artifacts

    downloaded = Path(
        mlflow.artifacts.download_artifacts(
            "models:/tracked/1", tracking_uri=mlflow_server, dst_path=str(tmp_path / "dl")
        )
    )
    assert (downloaded / "adapter_config.json").is_file()
    assert (downloaded / "adapter_model.safetensors").is_file()


def test_an_s3_model_is_registered_where_it_is_once_per_run(
    mlflow_server: str, tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    """The registry step alone, against the real server: an S3 output is registered at its
    URI (no copy), a second publish of the same run finds its version, the name comes from
    the spec, and `registerModel: false` registers nothing."""
    from mlflow.tracking import MlflowClient

    from ftapi.v1alpha1 import LoggingSpec
    from fttrainer.reporting.tracking import TrackerRuns

    def runs(**mlflow: Any) -> TrackerRuns:
        spec = LoggingSpec.model_validate({"reportTo": ["mlflow"], "mlflow": {
            "trackingUri": mlflow_server, "experiment": "ft-registry", **mlflow}})  # fmt: skip
        tracker = TrackerRuns(spec, job_name="s3-job", env={})
        tracker.start()
        tracker.finish({"train_loss": 0.5}, step=3)
        return tracker

    uri = "s3://models/s3-job/final"
    named = runs(registeredModel="team-a.chat-assistant")
    first = named.register_model(tmp_path, uri, local=False, tags={"k": "v"})
    again = named.register_model(tmp_path, uri, local=False, tags={"k": "v"})
    assert first == again == ("team-a.chat-assistant", "1")
    client = MlflowClient(tracking_uri=mlflow_server)
    (version,) = client.search_model_versions("name='team-a.chat-assistant'")
    assert (version.source, version.run_id) == (uri, named.ids["mlflow"])
    assert version.tags == {"k": "v", "finetune.dev/model-uri": uri}
    assert client.list_artifacts(named.ids["mlflow"]) == []  # nothing copied
    # A new run of the same name is a new version.
    second = runs(registeredModel="team-a.chat-assistant")
    assert second.register_model(tmp_path, uri, local=False, tags={}) == (
        "team-a.chat-assistant", "2")  # fmt: skip
    # Off: nothing registered.
    off = runs(registerModel=False)
    assert off.register_model(tmp_path, uri, local=False, tags={}) is None
    assert client.search_model_versions("name='s3-job'") == []
    # The server refusing is a warning (the model is published already), not an exception.
    refused = runs()
    with caplog.at_level("WARNING", logger="fttrainer"):
        assert refused.register_model(tmp_path, str(tmp_path), local=False, tags={}) is None
    assert "could not register the model as 's3-job'" in caplog.text


class _FailAt(TrainerCallback):  # type: ignore[misc]
    """A rank that dies after `step` (the checkpoint before it is committed)."""

    def __init__(self, step: int) -> None:
        self.step = step

    def on_step_end(self, args: Any, state: Any, control: Any, **_: Any) -> None:
        if state.global_step == self.step:
            raise RuntimeError(f"injected failure after step {self.step}")


def test_a_resumed_attempt_continues_the_same_mlflow_and_wandb_runs(
    tiny_llama: Path, qa_data: Path, tmp_path: Path, mlflow_server: str,
    monkeypatch: pytest.MonkeyPatch,
) -> None:  # fmt: skip
    from mlflow.tracking import MlflowClient

    monkeypatch.delenv("WANDB_API_KEY", raising=False)
    logging = {"reportTo": ["mlflow", "wandb"],
               "mlflow": {"trackingUri": mlflow_server, "experiment": "ft-resume"},
               "wandb": {"project": "ft-tests", "mode": "offline"}}  # fmt: skip
    # Both attempts publish to (and resume from) the same place, as a pod's restarts do;
    # their local output directories differ, as two local runs' do.
    job = parse_job(_job(tiny_llama, qa_data, tmp_path, logging).set("output.saveSteps", 2).obj())
    first = Recipe(job, tmp_path / "attempt-1")
    first.setup()
    first.trainer.add_callback(_FailAt(5))
    with pytest.raises(RuntimeError, match="injected failure"):
        first.train()
    second = Recipe(job, tmp_path / "attempt-2")
    second.setup()
    result = second.train()
    second.save(result)
    assert second.resumed_from is not None and second.resumed_from.name == "checkpoint-4"
    # Every committed checkpoint names the runs (the local copies are rotated away by now).
    published = sorted((tmp_path / "published" / "checkpoints").glob("*/checkpoint-*"))
    assert [p.name for p in published] == ["checkpoint-6", "checkpoint-8"]
    recorded = json.loads((published[0] / "trackers.json").read_text())
    assert recorded.keys() == {"mlflow", "wandb"}
    assert recorded == first.tracker_runs.ids == second.tracker_runs.ids
    # MLflow: one run, finished, with the parameters the first attempt logged and the whole
    # loss curve (steps 2 and 4 from the first attempt, 6 and 8 from the second).
    client = MlflowClient(tracking_uri=mlflow_server)
    experiment = client.get_experiment_by_name("ft-resume")
    assert experiment is not None
    (run,) = client.search_runs([experiment.experiment_id])
    assert run.info.run_id == recorded["mlflow"] and run.info.status == "FINISHED"
    assert run.data.params["max_steps"] == "8"
    history = client.get_metric_history(run.info.run_id, "loss")
    assert {m.step: m.value for m in history} == pytest.approx(
        _logged_losses(tmp_path / "attempt-2")
    )
    assert sorted({m.step for m in history}) == [2, 4, 6, 8]
    assert run.data.metrics["test_loss"] == pytest.approx(result.final_metrics["test_loss"])
    # W&B: each attempt's offline log is of the same run (wandb sync merges them).
    ids = set()
    for attempt in ("attempt-1", "attempt-2"):
        (run_file,) = (tmp_path / attempt / "wandb").glob("offline-run-*/run-*.wandb")
        (record,) = [
            r.run for r in _wandb_records(run_file) if r.WhichOneof("record_type") == "run"
        ]
        ids.add(record.run_id)
    assert ids == {recorded["wandb"]}


@pytest.fixture(scope="module", autouse=True)
def _mlflow_process(
    request: pytest.FixtureRequest, tmp_path_factory: pytest.TempPathFactory
) -> Iterator[tuple[ManagedProcess, str] | None]:
    """`mlflow server` on a free loopback port (SQLite store, local artifact directory),
    started with the module's first test when an MLflow test is selected: its imports take
    a while, so it boots while the other trackers' tests train."""
    selected = [item for item in request.session.items if item.module is request.module]
    if not any("mlflow_server" in item.fixturenames for item in selected):
        yield None
        return
    root = tmp_path_factory.mktemp("mlflow")
    port = free_port()
    server = ManagedProcess("mlflow server", root / "server.log")
    server.start(
        [sys.executable, "-m", "mlflow", "server", "--host", "127.0.0.1", "--port", str(port),
         "--workers", "1", "--backend-store-uri", f"sqlite:///{root / 'mlflow.db'}",
         "--artifacts-destination", str(root / "artifacts")],
        env={**os.environ, "MLFLOW_SERVER_ENABLE_JOB_EXECUTION": "false"},  # no job workers
        new_session=True,  # stop() then reaches uvicorn's worker too
    )  # fmt: skip
    try:
        yield server, f"http://127.0.0.1:{port}"
    finally:
        server.stop()


@pytest.fixture(scope="module")
def mlflow_server(_mlflow_process: tuple[ManagedProcess, str] | None) -> str:
    """The server's URL, once /health answers (a loaded 2-core machine needs minutes for
    MLflow's imports)."""
    assert _mlflow_process is not None
    server, url = _mlflow_process
    server.wait_until(lambda: http_ok(f"{url}/health"), 300, "healthy")
    return url


# W&B writes an offline run as a LevelDB-style log of protobuf records (the format
# `wandb sync` uploads); wandb 0.31 no longer ships a Python reader, so here is one.
_BLOCK, _HEADER = 32768, 7
_FULL, _FIRST, _MIDDLE, _LAST = 1, 2, 3, 4


def _wandb_records(path: Path) -> Iterator[Any]:
    from wandb.proto import wandb_internal_pb2

    data = path.read_bytes()
    assert data[:4] == b":W&B", "not a W&B transaction log"
    position, pending = _HEADER, b""
    while position + _HEADER <= len(data):
        room = _BLOCK - position % _BLOCK
        if room < _HEADER:  # a block's tail too short for a header is padding
            position += room
            continue
        _, length, kind = struct.unpack("<IHB", data[position : position + _HEADER])
        chunk = data[position + _HEADER : position + _HEADER + length]
        position += _HEADER + length
        if kind in (_FIRST, _MIDDLE):
            pending = chunk if kind == _FIRST else pending + chunk
            continue
        if kind not in (_FULL, _LAST):
            continue  # zero padding
        record = wandb_internal_pb2.Record()
        record.ParseFromString(pending + chunk if kind == _LAST else chunk)
        pending = b""
        yield record


def _items(items: Any) -> dict[str, Any]:
    return {item.key or "/".join(item.nested_key): json.loads(item.value_json) for item in items}
