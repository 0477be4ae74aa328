"""What every config style shares: key tables, the manifest builder, notes and suggestions.

A style reads its own file or flags into `{key: value}` pairs under the exact names its tool
documents, then maps each pair through its key table onto a FineTuneJob manifest. A key
lands in exactly one of three places, so nothing is dropped without a word:

- `To(path)`: a FineTuneJob field (optionally through a value conversion);
- `Ignore(reason)`: no field, and ignoring it cannot change the trained model (a warning);
- `Refuse(reason)`: no field, and ignoring it would change the result (an error).

Keys that need more than one field, or that depend on other keys, use `Custom(handler)`.
A key in no table is an error with "did you mean ...".
"""

from __future__ import annotations

import difflib
import re
from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass, field
from datetime import datetime
from pathlib import Path
from typing import Any, Literal

from fttrainer.overrides import parse_value

Level = Literal["info", "warning", "error"]
# The timestamp the CLI-style tools put in run directories and auto-generated run names.
DIRECTORY_TIME = "%Y%m%d_%H%M%S"
RUN_NAME_TIME = "%Y%m%d-%H%M%S"


class ConfigError(ValueError):
    """The config cannot be turned into a FineTuneJob (the message lists every problem)."""


def read_config_text(path: Path) -> str:
    """A config file's text (UTF-8, a byte-order mark allowed); a file in another encoding
    is a ConfigError naming the file and the byte, not a traceback."""
    try:
        return path.read_text(encoding="utf-8-sig")
    except UnicodeDecodeError as exc:
        raise ConfigError(
            f"{path}: not UTF-8 text (byte {exc.start}: {exc.reason}); save it as UTF-8"
        ) from None


@dataclass(frozen=True)
class Note:
    """Something the user should know about one of their keys: how it was read (info),
    what was ignored and why (warning), or what cannot run (error)."""

    key: str
    message: str
    level: Level = "info"

    def __str__(self) -> str:
        return f"{self.level}: {self.key}: {self.message}"


@dataclass(frozen=True)
class To:
    """The key is the FineTuneJob field at `path` (dotted, below `spec.`), through
    `convert` when the tool spells the value differently. `weak`: another key that sets the
    same field wins (the tool's more specific spelling), with a warning when they differ."""

    path: str
    convert: Callable[[Any], Any] | None = None
    weak: bool = False


@dataclass(frozen=True)
class Ignore:
    """No FineTuneJob field, and nothing about the trained model changes without it."""

    reason: str


@dataclass(frozen=True)
class Refuse:
    """No FineTuneJob field, and running without it would not do what the user asked."""

    reason: str


@dataclass(frozen=True)
class Custom:
    """A key whose meaning spans fields or other keys: `handler(builder, key, value)`."""

    handler: Callable[[Builder, str, Any], None]


Mapping_ = To | Ignore | Refuse | Custom
KeyTable = dict[str, Mapping_]


@dataclass
class Translation:
    """A config read in one style: the manifest it means, and what the user should know."""

    style: str
    source: str
    manifest: dict[str, Any]
    notes: list[Note] = field(default_factory=list)
    # Credentials given on the command line: handed to the libraries through the
    # environment, never written into the manifest.
    environment: dict[str, str] = field(default_factory=dict)
    # Where a local run writes: the tool's own layout (e.g. results/<project>/<model>/<time>)
    # when the style has one; None means output.uri itself.
    run_directory: str | None = None
    # spec path (below `spec.`) -> the user's key that set it, to name it in API errors.
    origin: dict[str, str] = field(default_factory=dict)

    @property
    def errors(self) -> list[Note]:
        return [note for note in self.notes if note.level == "error"]

    def raise_errors(self) -> None:
        if self.errors:
            lines = "\n".join(f"  {note.key}: {note.message}" for note in self.errors)
            raise ConfigError(f"{self.source} ({self.style}): cannot run as it is:\n{lines}")

    def blame(self, path: str) -> str | None:
        """The user's key(s) behind an API error at `spec.<path>`: the keys that set the
        field (or fields below it), else the keys that set its neighbours (a cross-field
        rule names one field of several)."""

        def keys_where(match: Callable[[str], bool]) -> list[str]:
            return sorted({key for field_path, key in self.origin.items() if match(field_path)})

        own = keys_where(
            lambda f: f == path or path.startswith(f + ".") or f.startswith(path + ".")
        )
        users = [key for key in own if not key.startswith("default")]
        if not users:
            parent = path.rsplit(".", 1)[0]
            users = [
                key
                for key in keys_where(lambda f: f.rsplit(".", 1)[0] == parent)
                if not key.startswith("default")
            ]
        shown = users or own
        return ", ".join(shown) if shown else None


class Builder:
    """Accumulates a manifest from keys, remembering which key set which field so that
    conflicts and API errors can name the user's own key."""

    def __init__(self, *, name: str = "finetune") -> None:
        self.manifest: dict[str, Any] = {
            "apiVersion": "finetune.dev/v1alpha1",
            "kind": "FineTuneJob",
            "metadata": {"name": name},
            "spec": {},
        }
        self.origin: dict[str, tuple[str, bool]] = {}  # spec path -> (key, weak)
        self.notes: list[Note] = []
        self.environment: dict[str, str] = {}
        # Style-specific values that are not fields (a project name, a results root).
        self.extra: dict[str, Any] = {}

    @property
    def spec(self) -> dict[str, Any]:
        spec: dict[str, Any] = self.manifest["spec"]
        return spec

    def set(self, path: str, value: Any, key: str, *, weak: bool = False) -> None:
        """Set spec.<path>; a second key setting a different value is an error, unless one
        of the two is weak (a default, or the tool's less specific spelling): then the
        strong one wins and the user is told."""
        previous = self.origin.get(path)
        if previous is not None and previous[0] != key and self.get(path) != value:
            old_key, old_weak = previous
            if weak and not old_weak:
                if not key.startswith("default"):
                    self.warn(key, f"ignored: {old_key} sets {path} to {self.get(path)!r}")
                return
            if old_weak and not weak:
                if not old_key.startswith("default"):
                    self.warn(old_key, f"ignored: {key} sets {path} to {value!r}")
            else:
                self.error(key, f"conflicts with {old_key} ({self.get(path)!r} vs {value!r})")
                return
        node = self.spec
        parts = path.split(".")
        for part in parts[:-1]:
            node = node.setdefault(part, {})
        node[parts[-1]] = value
        self.origin[path] = (key, weak)

    def get(self, path: str, default: Any = None) -> Any:
        node: Any = self.spec
        for part in path.split("."):
            if not isinstance(node, dict) or part not in node:
                return default
            node = node[part]
        return node

    def has(self, path: str) -> bool:
        return self.get(path, _MISSING) is not _MISSING

    def setdefault(self, path: str, value: Any, key: str) -> None:
        """Set a field the user did not set (the tool's documented default)."""
        if not self.has(path):
            self.set(path, value, key, weak=True)

    def no_holdout_without_validation(self, key: str, tool: str) -> None:
        """Tools that evaluate only on a validation set they are given train on every row
        without one; the API's default would hold 10% out for evaluation instead."""
        if not self.has("dataset.validation.uri") and not self.has("evaluation.strategy"):
            self.set("evaluation.strategy", "no", f"default of {tool}", weak=True)
            self.info(
                key,
                "not given: every row trains and nothing is evaluated during training, as "
                f"{tool} does (give validation data, or set dataset.split, to evaluate)",
            )

    def info(self, key: str, message: str) -> None:
        self.notes.append(Note(key, message, "info"))

    def warn(self, key: str, message: str) -> None:
        self.notes.append(Note(key, message, "warning"))

    def error(self, key: str, message: str) -> None:
        self.notes.append(Note(key, message, "error"))

    def apply(
        self, table: KeyTable, values: Mapping[str, Any], *, spell: Callable[[str], str]
    ) -> None:
        """Map every key through `table`; `spell` renders a key as the user wrote it
        (`--lora_r`, `LORA_R`, `training.epochs`) for messages."""
        for key, value in values.items():
            shown = spell(key)
            mapping = table.get(key)
            if mapping is None:
                # Suggestions spelled like the unknown key (LORA_R for LORA_RANK in a file).
                like = (lambda k: k.upper()) if shown == key.upper() != key else spell
                self.error(shown, unknown_key_message(key, table, like))
            elif isinstance(mapping, To):
                try:
                    converted = mapping.convert(value) if mapping.convert else value
                except (TypeError, ValueError) as exc:
                    self.error(shown, str(exc))
                    continue
                self.set(mapping.path, converted, shown, weak=mapping.weak)
            elif isinstance(mapping, Ignore):
                self.warn(shown, f"ignored: {mapping.reason}")
            elif isinstance(mapping, Refuse):
                self.error(shown, mapping.reason)
            else:
                try:
                    mapping.handler(self, shown, value)
                except (TypeError, ValueError) as exc:
                    self.error(shown, str(exc))

    def translation(self, style: str, source: str, run_directory: str | None = None) -> Translation:
        origin = {path: key for path, (key, _) in self.origin.items()}
        return Translation(
            style,
            source,
            self.manifest,
            self.notes,
            dict(self.environment),
            run_directory,
            origin,
        )


_MISSING = object()


def unknown_key_message(key: str, known: Iterable[str], spell: Callable[[str], str]) -> str:
    """'unknown setting; did you mean --lora_r?' (close matches under the style's spelling)."""
    close = difflib.get_close_matches(key, list(known), n=3, cutoff=0.6)
    if not close:
        return "unknown setting (not a key of this config style)"
    return "unknown setting; did you mean " + " or ".join(spell(c) for c in close) + "?"


# --- value conversions shared by the styles ------------------------------------------------


def scalar(value: Any) -> Any:
    """A value as a flag or .env file gives it (a string) parsed like YAML 1.2 (`2` is an
    int, `1e-4` a float, `true` a bool); typed values (TOML, YAML) pass through."""
    return parse_value(value) if isinstance(value, str) else value


def is_null(value: Any) -> bool:
    """The tools write `"null"` (or leave it empty) for "unset"."""
    return value is None or (
        isinstance(value, str) and value.strip().lower() in ("null", "none", "")
    )


def boolean(value: Any) -> bool:
    parsed = scalar(value)
    if isinstance(parsed, bool):
        return parsed
    if isinstance(parsed, str) and parsed.lower() in ("yes", "no", "on", "off", "1", "0"):
        return parsed.lower() in ("yes", "on", "1")
    if parsed in (0, 1):
        return bool(parsed)
    raise ValueError(f"expected true or false, got {value!r}")


def integer(value: Any) -> int:
    parsed = scalar(value)
    if isinstance(parsed, bool) or not isinstance(parsed, int | float) or int(parsed) != parsed:
        raise ValueError(f"expected a whole number, got {value!r}")
    return int(parsed)


def number(value: Any) -> float | int:
    parsed = scalar(value)
    if isinstance(parsed, bool) or not isinstance(parsed, int | float):
        raise ValueError(f"expected a number, got {value!r}")
    return parsed


def text(value: Any) -> str:
    if isinstance(value, dict | list):
        raise ValueError(f"expected a single value, got {value!r}")
    return str(value)


def string_list(value: Any) -> list[str]:
    """A list, or a comma-separated string (`q_proj,v_proj`)."""
    parsed = scalar(value)
    if isinstance(parsed, str):
        return [part.strip() for part in parsed.split(",") if part.strip()]
    if isinstance(parsed, list) and all(isinstance(item, str | int) for item in parsed):
        return [str(item) for item in parsed]
    raise ValueError(f"expected a list of names, got {value!r}")


def target_modules(value: Any) -> list[str]:
    """`auto` / `all-linear` (every linear layer but the head) or a list of module names."""
    names = string_list(value)
    if names in (["auto"], ["all-linear"], ["all_linear"]):
        return ["all-linear"]
    return names


def one_of(choices: Mapping[str, Any]) -> Callable[[Any], Any]:
    """A tool's option values → ours; an unknown value names the valid ones."""

    def convert(value: Any) -> Any:
        key = str(value).strip()
        if isinstance(value, bool):
            # YAML 1.1 (PyYAML, the tools' own reader) reads an unquoted no/off as false:
            # `mixed_precision: no` meant the choice "no".
            key = "no" if not value and "no" in choices else key
            key = "yes" if value and "yes" in choices else key
        for candidate in (key, key.lower()):
            if candidate in choices:
                return choices[candidate]
        raise ValueError(f"{value!r} is not one of {', '.join(choices)}")

    return convert


def trackers(value: Any) -> list[str]:
    """report_to: "mlflow", "wandb,tensorboard", ["mlflow"], "none" / "all"."""
    names = [name.lower() for name in string_list(value)]
    if names in ([], ["none"], ["null"]):
        return []
    if names == ["all"]:
        return ["tensorboard", "mlflow", "wandb"]
    known = ("tensorboard", "mlflow", "wandb")
    unknown = [name for name in names if name not in known]
    if unknown:
        raise ValueError(f"unknown tracker(s) {unknown}: use {', '.join(known)} or none")
    return list(dict.fromkeys(names))


def data_uri(value: Any) -> str:
    """A dataset as the tools name it: a local file, s3://..., hf://..., or a bare hub id
    (`org/name`), which becomes hf://org/name."""
    uri = text(value).strip()
    if "://" in uri:
        return uri
    looks_local = uri.startswith((".", "/", "~")) or re.search(r"\.\w+$", uri) is not None
    if not looks_local and re.fullmatch(r"[\w.-]+/[\w.-]+", uri):
        return f"hf://{uri}"
    return uri


def job_name(text_: str) -> str:
    """A project or model name as a FineTuneJob name: a DNS-1035 label short enough for
    the names of the job's children (lowercase letters, digits, '-'; a letter first)."""
    from ftapi.constants import MAX_NAME_LENGTH

    name = re.sub(r"[^a-z0-9-]+", "-", text_.lower()).strip("-")
    if name and not name[0].isalpha():
        name = f"ft-{name}"
    return name[:MAX_NAME_LENGTH].strip("-") or "finetune"


def model_directory_name(model: str) -> str:
    """`meta-llama/Llama-2-7b-hf` → `Llama-2-7b-hf`: the model part of results/<project>/<model>."""
    return model.rstrip("/").split("/")[-1] or "model"


def timestamp(now: datetime, fmt: str = DIRECTORY_TIME) -> str:
    return now.strftime(fmt)


def complete_trackers(builder: Builder, key: str) -> None:
    """Trackers named without their settings get the settings their clients default to
    (the environment's, else W&B's "huggingface" project and MLflow's sqlite:///mlflow.db)."""
    import os

    reports = builder.get("logging.reportTo", [])
    if "wandb" in reports and not builder.has("logging.wandb.project"):
        project = os.environ.get("WANDB_PROJECT", "huggingface")
        builder.set("logging.wandb.project", project, key)
        builder.info(key, f"W&B project {project!r} (WANDB_PROJECT, else W&B's default)")
    if "mlflow" in reports and not builder.has("logging.mlflow.trackingUri"):
        uri = os.environ.get("MLFLOW_TRACKING_URI", "sqlite:///mlflow.db")
        builder.set("logging.mlflow.trackingUri", uri, key)
        builder.info(key, f"MLflow tracking URI {uri} (MLFLOW_TRACKING_URI, else ./mlflow.db)")


def stored(name: str, convert: Any = None) -> Custom:
    """A key read together with others after the table pass (method, columns, markers):
    kept in `builder.extra` as (key as written, converted value)."""

    def handler(builder: Builder, key: str, value: Any) -> None:
        builder.extra[name] = (key, convert(value) if convert else value)

    return Custom(handler)


def flash_attention(builder: Builder, key: str, value: Any) -> None:
    if boolean(value):
        builder.set("model.attention", "auto", key)
        builder.info(
            key,
            "model.attention auto: flash_attention_2 where installed on a GPU, else PyTorch SDPA",
        )
    else:
        builder.set("model.attention", "sdpa", key)
