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
(AWS_ENDPOINT_URL_<SERVICE>, FSSPEC_<PROTOCOL>_<ARG>) and the standard library's (*_proxy,
HOME).

Compiled code (CUDA, NCCL, cuDNN, cuBLAS, NVSHMEM, torch's C++ side, Triton's launcher, the
hf_xet and wandb-core binaries) is read too, for the names that load something:

    names = loader_names(site_packages)           # {name: "package/lib/libx.so"}

every upper-case word in a shared library's string sections (.rodata*, .dynstr, .data*)
that names a library, a plugin, an injection hook, a preload, a search path, a toolchain
root, an executable or a config file. A compiled library keeps the names it passes to
getenv as such strings; the word test is wide (error codes and symbols match too), and
what is not refused is reviewed by hand.
"""

from __future__ import annotations

import mmap
import re
import struct
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


LOADS = re.compile(
    r"INJECTION|PLUGIN|PRELOAD|LIB|^LD_|_PATHS?$|_HOME$|_EXECUTABLE|CONF_FILE$|CONFIG_FILE$"
)
"""A name that may load code or configuration from where it points."""
_KEYWORDS = re.compile(rb"INJECTION|PLUGIN|PRELOAD|LIB|LD_|PATH|HOME|EXECUTABLE|CONF")
_WORD_BYTE = frozenset(b"ABCDEFGHIJKLMNOPQRSTUVWXYZ0123456789_")
_LOWER = frozenset(b"abcdefghijklmnopqrstuvwxyz")
_STRING_SECTIONS = (b".rodata", b".dynstr", b".data")


def loader_names(site_packages: Path) -> dict[str, str]:
    """Upper-case words matching LOADS in the string sections of every shared library
    under `site_packages`, with the first library found in."""
    found: dict[str, str] = {}
    for path in sorted(site_packages.rglob("*.so*")):
        if not path.is_file() or path.stat().st_size < 4096:
            continue
        with path.open("rb") as handle, mmap.mmap(handle.fileno(), 0, access=mmap.ACCESS_READ) as m:
            for start, size in _string_sections(m):
                for word in _upper_words(m[start : start + size]):
                    if LOADS.search(word):
                        found.setdefault(word, str(path.relative_to(site_packages)))
    return found


def _string_sections(elf: mmap.mmap) -> list[tuple[int, int]]:
    """(offset, size) of a 64-bit little-endian ELF file's string-holding sections."""
    if elf[:6] != b"\x7fELF\x02\x01":
        return []
    (table,) = struct.unpack_from("<Q", elf, 0x28)
    entry, count, names = struct.unpack_from("<HHH", elf, 0x3A)
    headers = [struct.unpack_from("<IIQQQQ", elf, table + i * entry) for i in range(count)]
    name_base = headers[names][4]
    sections = []
    for name_at, kind, _, _, offset, size in headers:
        start = name_base + name_at
        name = elf[start : elf.find(b"\0", start)]
        if kind != 8 and name.startswith(_STRING_SECTIONS):  # 8: SHT_NOBITS (.bss)
            sections.append((offset, size))
    return sections


def _upper_words(blob: bytes) -> set[str]:
    """Whole words of [A-Z0-9_] around each keyword, starting with a letter, holding an
    underscore, and not part of a mixed-case identifier."""
    words = set()
    for hit in _KEYWORDS.finditer(blob):
        start = end = hit.start()
        while start > 0 and blob[start - 1] in _WORD_BYTE:
            start -= 1
        while end < len(blob) and blob[end] in _WORD_BYTE:
            end += 1
        mixed = (start > 0 and blob[start - 1] in _LOWER) or (
            end < len(blob) and blob[end] in _LOWER
        )
        word = blob[start:end]
        if not mixed and word[:1].isalpha() and b"_" in word:
            words.add(word.decode())
    return words
