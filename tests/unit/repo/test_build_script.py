"""hack/build.sh, as `make test` runs it: its Go builds use every CPU the machine gives.
`make test` exports OMP_NUM_THREADS=1 for torch, and coreutils' `nproc` answers that
variable, so every Go tool was once built with `go build -p 1` (one package at a time:
the control plane took ~15 minutes on a new machine). Built here: CNI's plugins, the
smallest component, into an empty tool cache (Go's own caches are shared)."""

from __future__ import annotations

import os
import subprocess
from pathlib import Path

from fttestkit.paths import REPO


def test_go_builds_use_every_cpu_under_make_tests_environment(tmp_path: Path) -> None:
    env = {**os.environ, "OMP_NUM_THREADS": "1", "FTO_CACHE": str(tmp_path)}
    env.pop("FTO_BUILD_P", None)
    done = subprocess.run(
        [str(REPO / "hack" / "build.sh"), "cni"], env=env, capture_output=True, text=True,
        timeout=900, check=False,
    )  # fmt: skip
    assert done.returncode == 0, done.stderr[-3000:]
    (info_file,) = tmp_path.glob("cni-*/build-info.txt")
    info = dict(line.split("=", 1) for line in info_file.read_text().splitlines())
    assert int(info["go_build_p"]) == len(os.sched_getaffinity(0))
    assert int(info["nproc"]) == len(os.sched_getaffinity(0))
