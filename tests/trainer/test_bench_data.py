"""bench/data.py in its cheapest form: a few hundred rows, one repeat, run for real (our
`finetune run`, the same again on its node cache, TRL's quick start)."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

from fttestkit.paths import REPO


def test_the_data_benchmark_measures_each_side_and_the_restart_reuses(tmp_path: Path) -> None:
    result = tmp_path / "bench.json"
    done = subprocess.run(
        [
            sys.executable,
            "bench/data.py",
            "--rows",
            "300",
            "--repeats",
            "1",
            "--sides",
            "ours,ours-again,trl",
            "--workdir",
            str(tmp_path / "work"),
            "--json",
            str(result),
        ],
        cwd=REPO,
        capture_output=True,
        text=True,
        timeout=900,
        check=False,
    )
    assert done.returncode == 0, done.stdout[-4000:] + done.stderr[-4000:]
    document = json.loads(result.read_text())
    runs = {run["side"]: run for run in document["runs"]}
    assert set(runs) == {"ours", "ours-again", "trl"}
    for run in runs.values():
        assert run["ok"] and 0 < run["first_step_s"] <= run["second_step_s"], run
        # torch alone is more: the sampler saw the process, and the three figures differ as
        # they must (PSS splits shared pages; anonymous pages leave out mapped files). Each
        # is its own peak, read a moment apart: RSS may trail PSS by what grew between.
        assert 1.05 * run["peak_rss_mb"] >= run["peak_pss_mb"] > run["peak_anon_mb"] > 100, run
    logs = {side: (tmp_path / "work" / f"{side}-0" / "log.txt").read_text() for side in runs}
    assert "data: prepared " in logs["ours"] and "data: reused " not in logs["ours"]
    assert "data: reused " in logs["ours-again"] and "data: prepared " not in logs["ours-again"]
    assert runs["ours"]["startup"]["dataReused"] is False
    assert runs["ours-again"]["startup"]["dataReused"] is True
    assert {t["target"] for t in document["targets"]} >= {"ours / TRL, time to step 2"}
