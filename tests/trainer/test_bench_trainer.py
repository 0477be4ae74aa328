"""bench/trainer.py's options for exploring our side on a device (what a lent GPU's minutes go
to): one side alone, `--set` changes to our FineTuneJob, a profile of 3 steps, a reused work
directory. Run for real on the tiny model, a few steps."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest

from fttestkit.paths import REPO


def _bench(tmp_path: Path, *args: str, timeout: float = 600) -> subprocess.CompletedProcess[str]:
    command = [sys.executable, "bench/trainer.py", "--workdir", str(tmp_path / "work"),
               "--steps", "3", "--repeats", "1", "--sides", "ours", *args]  # fmt: skip
    return subprocess.run(command, cwd=REPO, capture_output=True, text=True, timeout=timeout,
                          check=False)  # fmt: skip


def test_our_side_alone_with_set_changes_and_a_reused_model(tmp_path: Path) -> None:
    result = tmp_path / "ours.json"
    profiles = tmp_path / "profiles"
    done = _bench(tmp_path, "--set", "training.batchSize=2", "--json", str(result),
                  "--steps", "8", "--warmup-steps", "5", "--profile", str(profiles))  # fmt: skip
    assert done.returncode == 0, done.stdout[-3000:] + done.stderr[-3000:]
    document = json.loads(result.read_text())
    assert [run["side"] for run in document["runs"]] == ["ours"]
    # The change reached the trainer: micro-batches of 2 rows of at most 128 tokens (the
    # bench's own batch, 8 rows of 72 tokens on average, carries about 600).
    assert 0 < document["runs"][0]["extra"]["max_tokens_per_step"] <= 2 * 128
    assert document["config"]["overrides"] == ["training.batchSize=2"]
    assert "ratio" not in done.stdout and "tokens/s ours/baseline" not in done.stdout
    assert "--set training.batchSize=2" in done.stdout
    # Profiled inside the warm-up (steps 2-4 of 5 untimed), so tokens/s is not flagged.
    profile = (profiles / "profile.txt").read_text()
    assert "== ours training.batchSize=2: steps 2-4, wall" in profile, profile[:500]
    assert "aten::" in profile and "timed" not in profile
    model = next((tmp_path / "work").glob("model-*/model.safetensors"))
    written = model.stat().st_mtime_ns

    # A field our API does not know is an error, never dropped; the model is reused.
    done = _bench(tmp_path, "--set", "training.notAField=1")
    assert done.returncode != 0
    assert "notAField" in done.stdout + done.stderr
    assert model.stat().st_mtime_ns == written


@pytest.fixture(scope="module")
def peers(
    tmp_path_factory: pytest.TempPathFactory,
) -> tuple[subprocess.CompletedProcess[str], Path]:
    """One run of the default CPU sides and of a side this machine cannot run (Unsloth refuses
    a machine without CUDA), two repeats, read by the two tests below. One run for both:
    each side's process imports torch, transformers and TRL (40 s apiece on a new machine's
    first CI run, beside the Go builds), so the seven processes are the module's cost."""
    tmp = tmp_path_factory.mktemp("peers")
    result = tmp / "bench.json"
    done = _bench(tmp, "--sides", "ours,trl,trl-tuned,unsloth", "--repeats", "2",
                  "--json", str(result), timeout=1200)  # fmt: skip
    return done, result


def test_every_peer_trains_the_same_batches_in_abba_order(
    peers: tuple[subprocess.CompletedProcess[str], Path],
) -> None:
    """The default sides on CPU: ours, TRL's quick start and TRL tuned, interleaved ABBA; each
    side's real settings recorded; every side saw the same tokens per step (same data, same
    batches), which is what makes their tokens/s comparable."""
    done, result = peers
    assert result.is_file(), done.stdout[-3000:] + done.stderr[-3000:]
    document = json.loads(result.read_text())
    assert set(document["config"]["failed"]) == {"unsloth"}, done.stdout[-3000:]
    runs = document["runs"]
    assert [r["side"] for r in runs] == ["ours", "trl", "trl-tuned", "trl-tuned", "trl", "ours"]
    settings = {r["side"]: r["extra"]["settings"] for r in runs}
    assert settings["trl"]["gradient_checkpointing"] is True  # TRL's default
    assert settings["trl-tuned"]["gradient_checkpointing"] is False
    assert settings["trl-tuned"]["optimizer"] == "adamw_torch_fused"
    per_step = {round(r["tokens_per_step"]) for r in runs}
    assert len(per_step) == 1, per_step
    assert {r["extra"]["forwards_per_step"] for r in runs} == {1.0}
    assert {r["extra"]["rows_per_step"] for r in runs} == {8.0}
    summary = document["summary"]
    assert set(summary["ratios"]) == {"trl", "trl-tuned"}
    best = max(("trl", "trl-tuned"), key=lambda side: summary["sides"][side]["tokens_per_s"])
    assert summary["best_peer"] == best
    assert summary["checks"][0]["check"] == f"tokens/s ours/{best} (best peer)"
    assert f"ratio ours/{best}" in done.stdout and "(best peer)" in done.stdout


def test_a_side_that_cannot_run_is_recorded_and_the_rest_still_run(
    peers: tuple[subprocess.CompletedProcess[str], Path], tmp_path: Path
) -> None:
    """Unsloth's error is in the JSON and the output, its later repeat is skipped, the other
    sides still run both repeats (the test above), and the exit status says a side failed.
    A run past --run-timeout is killed and said so."""
    done, result = peers
    assert done.returncode == 1, done.stdout[-3000:] + done.stderr[-3000:]
    document = json.loads(result.read_text())
    assert "unsloth" not in {r["side"] for r in document["runs"]}
    assert "needs a CUDA GPU" in document["config"]["failed"]["unsloth"]
    assert "needs a CUDA GPU" in document["config"]["failed_logs"]["unsloth"]
    assert "FAILED  unsloth: exit 1: the unsloth side needs a CUDA GPU" in done.stdout
    assert done.stdout.count("unsloth   #") == 1  # tried once: the second repeat skips it

    timed_out = tmp_path / "timed-out.json"
    done = _bench(tmp_path, "--run-timeout", "1", "--json", str(timed_out))
    assert done.returncode == 1
    assert "ours: killed after 1 s (--run-timeout)" in done.stdout
    assert json.loads(timed_out.read_text())["runs"] == []


def test_sides_are_named_once_each_from_the_known_ones(tmp_path: Path) -> None:
    done = _bench(tmp_path, "--sides", "ours,vllm")
    assert done.returncode == 2 and "unknown: vllm" in done.stderr
    done = _bench(tmp_path, "--sides", "ours,ours")
    assert done.returncode == 2 and "name sides once each" in done.stderr
    done = _bench(tmp_path, "--prepare-only", "--model-shape", "tiny")
    assert done.returncode == 0 and "prepared" in done.stdout
    assert next((tmp_path / "work").glob("model-tiny/*.safetensors"))
