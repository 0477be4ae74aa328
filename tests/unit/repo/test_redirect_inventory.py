"""The list of refused environment variables (ftapi.v1alpha1.redirects) is complete for the
libraries this project installs: every variable their source reads (fttestkit.env_inventory)
whose name looks like an endpoint, a proxy, TLS trust or a credential source, and every
name in their compiled libraries that names a library, a plugin, a hook, a path or a config
file (what CUDA, NCCL, cuDNN, torch's C++ side and Triton load), is either refused or
reviewed here with a reason. A library upgrade that reads a new such variable
fails this test until someone decides which it is; a reviewed name no library reads any
more fails it too, so the review stays the libraries' current list.

The name test is deliberately wide (PATH, DIR, FILE, KEY... match); names that move a
credential without such a word (HUGGINGFACE_CO_STAGING, AWS_CSM_ENABLED,
MLFLOW_DEPLOYMENTS_TARGET) were found by reading the code, and are refused by name.
"""

from __future__ import annotations

import re
import sysconfig
from functools import cache
from pathlib import Path

from ftapi.v1alpha1.redirects import redirect_group
from fttestkit.env_inventory import environment_names, loader_names

LOOKS_LIKE_A_DESTINATION = re.compile(
    r"URL|URI|ENDPOINT|HOST|PROXY|PROXIES|CA_|_CA|CERT|BUNDLE|SSL|TLS|VERIFY|INSECURE|TOKEN|"
    r"KEY|SECRET|CREDENTIAL|PROFILE|CONFIG|FILE|PATH|HOME|DIR|SERVER|ADDR|PORT|DOMAIN|"
    r"REGISTRY|BASE|NETRC|AUTH|IDENTITY|ROLE|METADATA|OIDC|STAGING|CSM|SIGV4|GATEWAY|TARGET|"
    r"SOCKET|SETTINGS",
    re.IGNORECASE,
)
# Why a reviewed variable may stay the user's (the second column of reviewed_env.tsv).
REASONS = {
    "local-path": "a local cache, log or output directory (or a binary's path); chooses no "
    "server and no credential (the Hub token file is pinned: HF_TOKEN_PATH)",
    "server-side": "read only by the MLflow server, gateway or deployment tooling, which the "
    "trainer does not run",
    "tuning": "a compute, parallelism, timeout or size setting",
    "credential-value": "a credential itself, which the user may give from their own Secret "
    "(one a spec field feeds is refused by that field's rule); it chooses no destination",
    "wandb-local": "a setting of the local wandb-core process (its transport, buffering)",
    "aws-on-aws": "AWS behaviour that keeps requests on AWS's own hosts (region, FIPS, "
    "dual-stack, regional STS)",
    "metadata": "run metadata, names and UI links; no request carries a credential there",
    "monitor-scrape": "a local metrics endpoint wandb-core scrapes, without a credential",
    "no-platform-token": "a login or sandbox setting that sends no credential of the job",
    "otel-export": "an OpenTelemetry export target; it carries only headers the user sets",
    "server-chosen": "presigned-URL transfers whose hosts the (allowed) tracking server picks",
    "same-host": "an identifier or mode that keeps the same host",
    "unused-provider": "an LLM provider (MLflow's judges, lm-eval's API models) the trainer "
    "never calls: its evaluation runs the job's own model in process",
    "build-time": "read only when a package builds native code at install time (numpy's "
    "distutils, pyarrow's build helpers), never by the trainer at run time",
    "diagnostic": "read only by an environment report (ds_report, collect_env)",
    "windows-only": "a Windows or macOS setting; the trainer image is Linux",
    "test-only": "read only by the library's own test runner",
}
REVIEWED = Path(__file__).with_name("reviewed_env.tsv")
# Why a name found in a compiled library may stay the user's (reviewed_native_env.tsv).
NATIVE_REASONS = {
    "not-a-variable": "an error code, enum, macro, section or symbol name among the "
    "library's strings: no getenv reads it",
    "output-path": "where a log, dump or reproducer is written: nothing is loaded from it",
    "tuning": "an allocator or debug setting of the C++ runtime; loads nothing",
}
REVIEWED_NATIVE = Path(__file__).with_name("reviewed_native_env.tsv")


@cache
def _read() -> dict[str, str]:
    """The scan, once for both tests (it reads some 20,000 source files)."""
    return environment_names(Path(sysconfig.get_paths()["purelib"]))


@cache
def _loaders() -> dict[str, str]:
    return loader_names(Path(sysconfig.get_paths()["purelib"]))


def _reviewed(path: Path = REVIEWED) -> dict[str, str]:
    rows = [line.split("\t") for line in path.read_text().splitlines()]
    return {row[0]: row[1] for row in rows if row and not row[0].startswith("#")}


def _assert_refused_or_reviewed(
    candidates: dict[str, str], reviewed_file: Path, reasons: dict[str, str], what: str
) -> None:
    """Every candidate (name: where found) is refused or reviewed in `reviewed_file` with one
    of `reasons`; no reviewed name is refused now or gone from the libraries."""
    open_ = {n: candidates[n] for n in sorted(candidates) if redirect_group(n) is None}
    reviewed = _reviewed(reviewed_file)
    unreviewed = {n: where for n, where in open_.items() if n not in reviewed}
    assert not unreviewed, (
        f"{what}: refuse them in redirects.py or review them in {reviewed_file.name}: {unreviewed}"
    )
    stale = sorted(set(reviewed) - set(open_))
    assert not stale, f"reviewed, but no library holds them (or now refused): {stale}"
    unknown = {n: r for n, r in reviewed.items() if r not in reasons}
    assert not unknown, f"reasons without a legend: {unknown}"


def test_every_variable_that_could_move_a_credential_is_refused_or_reviewed() -> None:
    read = _read()
    assert len(read) > 1500, f"the scan found only {len(read)} names"
    candidates = {n for n in read if LOOKS_LIKE_A_DESTINATION.search(n)}
    what = "variables the libraries read that look like an endpoint or credential source"
    _assert_refused_or_reviewed({n: read[n] for n in candidates}, REVIEWED, REASONS, what)


def test_the_scan_sees_the_variables_known_to_move_credentials() -> None:
    """The scan's patterns still match the libraries' code: the names whose redirection was
    read by hand are among what it finds (a scan that found nothing would pass above)."""
    read = _read()
    known = ["HF_ENDPOINT", "HF_TOKEN_PATH", "HUGGINGFACE_CO_STAGING", "AWS_CONFIG_FILE",
             "AWS_CONTAINER_CREDENTIALS_FULL_URI", "AWS_CA_BUNDLE", "REQUESTS_CA_BUNDLE",
             "MLFLOW_TRACKING_URI", "MLFLOW_TRACKING_INSECURE_TLS", "WANDB_BASE_URL",
             "WANDB__PROXIES", "KUBEFLOW_TRAINER_SERVER_URL",
             # what loads code from a path or a server (torch, Triton, lm-eval, NLTK)
             "TORCH_CUSTOM_PYTHONPATH", "TRITON_PTXAS_PATH", "TORCHINDUCTOR_REDIS_HOST",
             "LM_HARNESS_CACHE_PATH", "NLTK_DOWNLOAD_URL", "MPLCONFIGDIR"]  # fmt: skip
    assert [n for n in known if n not in read] == []
    assert all(redirect_group(n) is not None for n in known)


def test_every_name_compiled_code_loads_from_is_refused_or_reviewed() -> None:
    found = _loaders()
    assert len(found) > 150, f"the scan of the shared libraries found only {len(found)} names"
    what = "names in the image's shared libraries that may load a library, a plugin or a file"
    _assert_refused_or_reviewed(found, REVIEWED_NATIVE, NATIVE_REASONS, what)


def test_the_scan_sees_the_loader_variables_of_cuda_and_nccl() -> None:
    """The compiled code's hooks are among what the scan finds, and refused; CUDA's own
    (CUDA_INJECTION64_PATH) lives in the driver, which the image does not ship, and is
    refused by its family."""
    found = _loaders()
    known = ["NVTX_INJECTION64_PATH", "CASK_INJECTION64_PATH", "NCCL_NET_PLUGIN",
             "NCCL_TUNER_PLUGIN", "NCCL_PROFILER_PLUGIN", "NCCL_ENV_PLUGIN", "NCCL_CONF_FILE",
             "NCCL_IBVERBS_LIB", "NVSHMEM_BOOTSTRAP_PLUGIN", "TRITON_PLUGIN_PATHS",
             "LLVM_PASS_PLUGIN_PATH", "PYTORCH_KERNEL_CACHE_PATH", "LD_LIBRARY_PATH"]  # fmt: skip
    assert [n for n in known if n not in found] == []
    refused = [*known, "CUDA_INJECTION64_PATH", "LD_PRELOAD", "LUA_CPATH"]
    assert [n for n in refused if redirect_group(n) is None] == []
