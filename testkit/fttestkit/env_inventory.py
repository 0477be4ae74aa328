"""Which environment variables the trainer image's network clients read, from their
installed source (regular expressions over the text; nothing is imported).

    names = environment_names(site_packages)     # {name: "package/file.py:line"}

What counts as a read: `os.environ.get("X")`, `os.environ["X"]`, `os.getenv("X")`,
`"X" in os.environ`, `env.get("X")` on a mapping passed around (botocore), the packages' own
helpers (mlflow's `_EnvironmentVariable("X")`, botocore's `EnvironmentProvider(name="X")`),
name constants in the files that hold them (botocore's configprovider and credentials,
huggingface_hub's constants, datasets' config, wandb's env.py, any `*ENV* = "X"`), and every
field of wandb's Settings (wandb reads WANDB_<FIELD>, and WANDB_X_<F> / WANDB__<F> for x_<f>).

What it cannot see, reviewed by hand in redirects.py: names built at run time
(AWS_ENDPOINT_URL_<SERVICE>, FSSPEC_<PROTOCOL>_<ARG>), names read by compiled code (the
hf_xet and wandb-core binaries, OpenSSL), and the standard library's (*_proxy, HOME).
"""

from __future__ import annotations

import re
from pathlib import Path

# The packages that send a credential somewhere, and the HTTP stacks they send it with.
PACKAGES = (
    "huggingface_hub", "datasets", "transformers", "evaluate", "peft", "trl", "accelerate",
    "botocore", "boto3", "s3transfer", "mlflow", "wandb", "requests", "urllib3", "httpx",
    "httpx2", "httpcore2", "aiohttp", "fsspec", "certifi", "tensorboard", "databricks",
    "google", "truststore",
    # What else the trainer image runs: a variable that loads code or a cache from a path
    # would run what a job downloaded there (its model or data folder).
    "torch", "triton", "deepspeed", "lm_eval", "nltk", "bitsandbytes", "matplotlib",
    "safetensors", "tokenizers", "pyarrow", "tqdm", "sympy", "networkx", "numpy", "scipy",
    "sklearn", "pandas", "sacrebleu", "rouge_score", "jinja2", "filelock", "multiprocess",
    "dill", "psutil",
)  # fmt: skip
_NAME = r"[A-Za-z_][A-Za-z0-9_]*"
_QUOTE = r"[rbuRBU]?['\"]"
_READS = (
    re.compile(r"environb?\s*(?:\.\s*(?:get|pop|setdefault|__getitem__)\s*)?[\[(]\s*"
               + _QUOTE + f"({_NAME})['\"]"),
    re.compile(r"getenvb?\s*\(\s*" + _QUOTE + f"({_NAME})['\"]"),
    re.compile(_QUOTE + f"({_NAME})" + r"['\"]\s*(?:not\s+)?in\s+(?:os\.)?environ\b"),
    re.compile(r"\b(?:env|environ|environment|_environ)\s*\.\s*get\s*\(\s*" + _QUOTE
               + r"([A-Z][A-Z0-9_]+)['\"]"),
    re.compile(r"_?(?:Boolean)?EnvironmentVariable\s*\(\s*" + _QUOTE + r"([A-Z][A-Z0-9_]+)['\"]"),
    re.compile(r"EnvironmentProvider\s*\(\s*(?:name\s*=\s*)?" + _QUOTE
               + r"([A-Z][A-Z0-9_]+)['\"]"),
)  # fmt: skip
_CONSTANT = re.compile(
    r"^\s*([A-Z_][A-Z0-9_]*)\s*(?::\s*\w+\s*)?=\s*"
    + _QUOTE
    + r"([A-Z][A-Z0-9]*(?:_[A-Z0-9]+)+)['\"]"
)
_QUOTED_AWS = re.compile(_QUOTE + r"(AWS_[A-Z0-9_]+)['\"]")
# Files whose upper-case string constants are environment variable names.
_NAME_FILES = (
    "botocore/configprovider.py", "botocore/credentials.py", "botocore/utils.py",
    "botocore/session.py", "huggingface_hub/constants.py", "datasets/config.py",
    "wandb/env.py",
)  # fmt: skip
_SKIPPED_DIRS = {"__pycache__", "tests", "test", "testing"}


def environment_names(site_packages: Path) -> dict[str, str]:
    """Every variable name PACKAGES read, with where (the first place found)."""
    found: dict[str, str] = {}
    for package in PACKAGES:
        root = site_packages / package
        if not root.is_dir():
            continue
        for path in sorted(root.rglob("*.py")):
            if _SKIPPED_DIRS & set(path.relative_to(root).parts[:-1]) or path.name.startswith(
                "test_"
            ):
                continue
            _scan(path, str(path.relative_to(site_packages)), found)
    settings = site_packages / "wandb" / "sdk" / "wandb_settings.py"
    if settings.is_file():
        for name in _wandb_settings(settings.read_text(encoding="utf-8")):
            found.setdefault(name, "wandb/sdk/wandb_settings.py (a Settings field)")
    return found


def _scan(path: Path, where: str, found: dict[str, str]) -> None:
    text = path.read_text(encoding="utf-8", errors="replace")
    reads = "environ" in text or "getenv" in text or "Environment" in text
    if not reads and not where.endswith(_NAME_FILES):
        return
    for pattern in _READS:
        for match in pattern.finditer(text):
            at = text.count("\n", 0, match.start()) + 1
            found.setdefault(match.group(1), f"{where}:{at}")
    name_file = where.endswith(_NAME_FILES)
    for number, line in enumerate(text.splitlines(), 1):
        constant = _CONSTANT.match(line)
        if constant and (name_file or "ENV" in constant.group(1)):
            found.setdefault(constant.group(2), f"{where}:{number}")
        if name_file and where.startswith("botocore/"):
            for quoted in _QUOTED_AWS.finditer(line):
                found.setdefault(quoted.group(1), f"{where}:{number}")


def _wandb_settings(text: str) -> list[str]:
    """WANDB_<FIELD> for each field of `class Settings`, and WANDB__<F> for x_<f>."""
    start = re.search(r"^class Settings\(", text, re.M)
    if start is None:
        return []
    body = text[start.end() :]
    end = re.compile(r"^(?:class |def |[A-Za-z_@])", re.M).search(body, body.find("\n") + 1)
    body = body[: end.start()] if end else body
    names = []
    for field in re.findall(r"^    ([a-z][a-z0-9_]*)\s*:\s*[^=\n]", body, re.M):
        names.append(f"WANDB_{field.upper()}")
        if field.startswith("x_"):
            names.append(f"WANDB__{field[2:].upper()}")
    return names
