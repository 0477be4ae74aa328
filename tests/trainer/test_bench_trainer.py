"""bench/trainer.py's options for exploring our side on a device (what a lent GPU's minutes go
to): one side alone, `--set` changes to our FineTuneJob, a profile of 3 steps, a reused work
directory. Run for real on the tiny model, a few steps."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

from fttestkit.paths import REPO


def _bench(tmp_path: Path, *args: str) -> subprocess.CompletedProcess[str]:
    command = [sys.executable, "bench/trainer.py", "--workdir", str(tmp_path / "work"),
               "--steps", "3", "--repeats", "1", "--sides", "ours", *args]  # fmt: skip
    return subprocess.run(command, cwd=REPO, capture_output=True, text=True, timeout=600,
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
