"""Publishing is idempotent: DONE.json is written only after every publish step, a publish
error that may pass (the Hub unreachable, a 5xx) exits 1 and the next run of the job resumes
from the final checkpoint and publishes again without training (so does a run killed in the
middle of the push), and a refusal that would repeat (the Hub's 403) ends the run as
PublishFailed with the model kept in output.uri.

No Hub is reachable here: a local HTTP server stands in for the Hub's API and answers every
request with the status the test sets; the job's model.hubEndpoint points the client at it
(the trainer sets HF_ENDPOINT from it before huggingface_hub is imported)."""

from __future__ import annotations

import os
import signal
import subprocess
import threading
import time
from collections.abc import Iterator
from http.server import BaseHTTPRequestHandler, HTTPServer
from pathlib import Path

import pytest

from ftapi.contract import PUBLISH_FAILED
from fttrainer.checkpointing.protocol import CHECKPOINTS, MANIFEST
from fttrainer.checkpointing.store import DONE
from tests.trainer.recipes import run_quickstart

TOKEN = "hf_not_a_real_token_0123456789"


class _Hub(BaseHTTPRequestHandler):
    status = 503
    requests = 0

    def do_POST(self) -> None:
        type(self).requests += 1
        self.send_response(self.status)
        self.end_headers()

    do_GET = do_PUT = do_POST

    def log_message(self, *args: object) -> None:
        pass


@pytest.fixture
def hub() -> Iterator[tuple[type[_Hub], str]]:
    handler = type("Hub", (_Hub,), {})
    server = HTTPServer(("127.0.0.1", 0), handler)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    yield handler, f"http://127.0.0.1:{server.server_address[1]}"
    server.shutdown()


def _run(model: Path, data: Path, out: Path, endpoint: str) -> tuple[
    subprocess.CompletedProcess[str], str
]:  # fmt: skip
    push = "output.pushToHub={repoId: team/model, tokenSecretRef: {name: hub, key: token}}"
    env = {"FINETUNE_HUB_PUSH_TOKEN": TOKEN}
    hub = f"model.hubEndpoint={endpoint}"
    return run_quickstart(model, data, out, "output.saveSteps=2", push, hub, env=env)


def test_a_failed_publish_is_retried_without_training_and_a_refusal_fails_it(
    tiny_llama: Path, qa_data: Path, tmp_path: Path, hub: tuple[type[_Hub], str]
) -> None:
    handler, endpoint = hub
    out = tmp_path / "run"
    first, said = _run(tiny_llama, qa_data, out, endpoint)
    assert first.returncode == 1, first.stderr[-3000:]
    assert handler.requests > 0 and "the Hub answered 503" in first.stderr
    assert "publishes again without training" in first.stderr and said == ""
    assert (out / "final" / "adapter_model.safetensors").is_file()  # the model is out
    job_dir = next((out / CHECKPOINTS).iterdir())
    assert not (job_dir / DONE).exists()  # not done: the next run publishes again
    # Training ended on a checkpoint (step 5 is no multiple of saveSteps).
    final = job_dir / "checkpoint-5" / MANIFEST
    committed = final.read_bytes()

    handler.status = 403  # the token may not write: no restart can help
    second, said = _run(tiny_llama, qa_data, out, endpoint)
    assert second.returncode == PUBLISH_FAILED.exit_code, second.stderr[-3000:]
    assert "resuming from" in second.stderr and "(step 5)" in second.stderr
    assert final.read_bytes() == committed  # not trained, not checkpointed again
    assert sorted(p.name for p in job_dir.glob("checkpoint-*")) == ["checkpoint-4", "checkpoint-5"]
    assert said.startswith(PUBLISH_FAILED.marker)
    assert "the Hub answered 403" in said and f"the model is in {out}/final" in said
    assert not (job_dir / DONE).exists() and TOKEN not in second.stderr + said


def _kill_run(out: Path) -> None:
    """SIGKILL the `finetune run` writing to `out` (found by its command line)."""
    for cmdline in Path("/proc").glob("[0-9]*/cmdline"):
        try:
            args = cmdline.read_bytes().split(b"\0")
        except OSError:
            continue
        if b"fttrainer.cli" in args and str(out).encode() in args:
            os.kill(int(cmdline.parent.name), signal.SIGKILL)


def test_a_kill_in_the_middle_of_the_push_resumes_the_publish_not_the_training(
    tiny_llama: Path, qa_data: Path, tmp_path: Path, hub: tuple[type[_Hub], str]
) -> None:
    """The pod dies (SIGKILL: a node lost, a preemption past its grace) while the Hub push is
    under way: the Hub stand-in holds the first request open until the process is gone. The
    next run resumes from the final checkpoint and goes straight to publishing (here to a
    refusal, which ends it), training nothing again."""
    handler, endpoint = hub
    out = tmp_path / "run"
    release = threading.Event()
    real_post = handler.do_POST

    pushes: list[str] = []

    def held_open(self: _Hub) -> None:
        if (out / "final").is_dir():  # the push, after training (not the start's checks)
            pushes.append(self.path)
            release.wait(120)  # it hangs here until the test lets go
        real_post(self)

    handler.do_POST = handler.do_GET = handler.do_PUT = held_open  # type: ignore[method-assign]
    finished: list[subprocess.CompletedProcess[str]] = []
    runner = threading.Thread(target=lambda: finished.append(_run(tiny_llama, qa_data, out,
                                                                  endpoint)[0]))  # fmt: skip
    runner.start()
    deadline = time.monotonic() + 300
    while not pushes and runner.is_alive() and time.monotonic() < deadline:
        time.sleep(0.2)
    assert pushes, finished[0].stderr[-3000:] if finished else "no push began"
    _kill_run(out)
    runner.join(60)
    release.set()
    (killed,) = finished
    assert killed.returncode == -9, killed.stderr[-3000:]
    job_dir = next((out / CHECKPOINTS).iterdir())
    assert not (job_dir / DONE).exists()
    final = job_dir / "checkpoint-5" / MANIFEST
    committed = final.read_bytes()

    handler.do_POST = handler.do_GET = handler.do_PUT = real_post  # type: ignore[method-assign]
    handler.status = 403
    again, said = _run(tiny_llama, qa_data, out, endpoint)
    assert again.returncode == PUBLISH_FAILED.exit_code, again.stderr[-3000:]
    assert "resuming from" in again.stderr and "(step 5)" in again.stderr
    assert final.read_bytes() == committed  # not trained, not checkpointed again
    assert "the Hub answered 403" in said
    print(f"killed while the Hub held {pushes[0]}; the rerun resumed at step 5 and published")
