"""A real tiny run reports its progress: steps go up, checkpoints are reported once they
are committed, and the last report says done and where the model was published."""

from __future__ import annotations

import json
import threading
from collections.abc import Iterator
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any

import pytest

from ftapi import parse_job
from ftapi.progress import REPORT_FIELD, ProgressReport
from fttestkit.builders import make_job
from fttrainer.recipe import Recipe
from fttrainer.reporting.progress import KubeTarget, ProgressObjectSink, ProgressReporter

STAGES = ["starting", "training", "evaluating", "saving", "publishing", "done"]
PROGRESS_OBJECT = (
    "/apis/finetune.dev/v1alpha1/namespaces/team-a/finetunejobprogresses/recipe-progress"
)


@pytest.fixture
def api_server() -> Iterator[tuple[str, list[ProgressReport]]]:
    """A stand-in for the API server (plain HTTP): the reports patched into the progress object."""
    received: list[ProgressReport] = []

    class Handler(BaseHTTPRequestHandler):
        def do_PATCH(self) -> None:
            body = json.loads(self.rfile.read(int(self.headers["Content-Length"])))
            ok = self.path == PROGRESS_OBJECT and self.headers["Authorization"] == "Bearer t0ken"
            if ok:
                received.append(ProgressReport.model_validate_json(body[REPORT_FIELD]))
            self.send_response(200 if ok else 403)
            self.end_headers()

        def log_message(self, *args: Any) -> None:
            pass

    server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    yield f"http://127.0.0.1:{server.server_address[1]}", received
    server.shutdown()
    server.server_close()


def test_a_tiny_run_reports_steps_checkpoints_and_done(
    tiny_llama: Path, qa_data: Path, tmp_path: Path, api_server: tuple[str, list[ProgressReport]]
) -> None:
    url, received = api_server
    (tmp_path / "token").write_text("t0ken")
    sink = ProgressObjectSink(KubeTarget(url, tmp_path / "token"), "team-a", "recipe-progress")
    # Every step reported (no rate limit) and sent in line, so the order is exact.
    reporter = ProgressReporter(sink, attempt=1, interval=0.0, background=False)
    published = tmp_path / "published"
    job = (
        make_job("recipe")
        .set("model.name", str(tiny_llama))
        .set("dataset", {"train": {"uri": str(qa_data)}, "format": "qa", "maxSeqLength": 64})
        .set("training", {"maxSteps": 6, "batchSize": 8, "learningRate": 1e-2, "device": "cpu"})
        .set("evaluation.strategy", "no")
        .set("logging.steps", 1)
        .set("resources.gpusPerNode", 0)
        .set("output", {"uri": str(published), "saveSteps": 2, "saveTotalLimit": 2})
    )
    recipe = Recipe(parse_job(job.obj()), tmp_path / "run", progress=reporter)
    recipe.setup()
    recipe.save(recipe.train())
    recipe.publish()

    assert reporter.failures == 0 and reporter.sent == len(received) > 6
    assert {r.attempt for r in received} == {1}
    # Stages only move forward (no evaluation during training here), ending with done.
    stages = [r.stage for r in received]
    assert [STAGES.index(s) for s in stages] == sorted(STAGES.index(s) for s in stages)
    changes = [s for i, s in enumerate(stages) if i == 0 or s != stages[i - 1]]
    assert changes[0] == "starting" and changes[-3:] == ["saving", "publishing", "done"]
    # The final model is named once it is in output.uri, before the later publish steps.
    assert received[-2].stage == "publishing" and received[-2].model_uri == f"{published}/final"
    steps = [r.step for r in received]
    assert steps == sorted(steps) and set(range(7)) <= set(steps)
    done = received[-1]
    assert (done.step, done.total_steps) == (6, 6)
    assert done.model_uri == f"{published}/final"
    assert (published / "final" / "adapter_model.safetensors").is_file()
    assert done.metrics["train_loss"] > 0 and "learning_rate" in done.metrics
    assert any(r.tokens_per_second for r in received if r.stage == "training")
    assert any(r.eta_seconds is not None for r in received if r.stage == "training")
    # A checkpoint is reported at the step that committed it (the progress callback runs
    # after the upload's), with the count that retention (2) left.
    first_seen: dict[int, tuple[int, int]] = {}
    for report in received:
        if report.checkpoint and report.checkpoint.step not in first_seen:
            first_seen[report.checkpoint.step] = (report.step, report.checkpoint.count)  # type: ignore[index]
    assert first_seen == {2: (2, 1), 4: (4, 2), 6: (6, 2)}
    assert done.checkpoint is not None
    assert done.checkpoint.latest == f"{recipe.checkpoints.uri}/checkpoint-6"
    assert (published / "checkpoints" / recipe.checkpoints.identity / "checkpoint-6").is_dir()
