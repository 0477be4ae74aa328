"""Every config style our users bring, read as it is and turned into a FineTuneJob.

    translation = load_config(Path("my.env"), StyleFlags(flat={"epochs": "2"}))
    translation.style      # "flat CLI flags / .env file"
    translation.notes      # what was read how, what was ignored and why, what cannot run
    translation.manifest   # the FineTuneJob it means (what `finetune convert` writes)

The style is detected from the file (its extension and its top-level keys) and the flags:

| style | recognised by | module |
|---|---|---|
| FineTuneJob manifest | YAML/JSON with `kind`/`apiVersion`/`spec` | manifest.py |
| flat CLI flags / .env | `.env` file, or `--model_name`-style flags alone | flat.py |
| TOML `[fine_tuner]` | `.toml` file with a `[fine_tuner]` section | toml_config.py |
| nested YAML | YAML with `model:`/`fine_tuning:`/... sections; `--a.b v` | yaml_config.py |
| Hydra-style flags | `--per-device-train-batch-size`-style (dashed) flags alone | hydra.py |
"""

from __future__ import annotations

from dataclasses import dataclass, field
from datetime import datetime
from pathlib import Path
from typing import Any

import yaml

from . import flat, hydra, manifest, toml_config, yaml_config
from .base import ConfigError, Note, Translation, read_config_text

__all__ = ["STYLES", "ConfigError", "Note", "StyleFlags", "Translation", "load_config"]

# name -> one line on how it is recognised (for `finetune --help` and the docs).
STYLES = {
    manifest.STYLE: "a YAML/JSON FineTuneJob (kind: FineTuneJob)",
    flat.STYLE: "a .env file of KEY=value, and/or --model_name/--data_path/... flags",
    toml_config.STYLE: "a .toml file with a [fine_tuner] (and [mlflow]) section",
    yaml_config.STYLE: "a YAML file with model:/fine_tuning:/training:/... sections",
    hydra.STYLE: "--model/--dataset/--format/--trainer/--per-device-train-batch-size flags",
}
ENV_SUFFIXES = (".env",)
TOML_SUFFIXES = (".toml",)
YAML_SUFFIXES = (".yaml", ".yml", ".json")


@dataclass(frozen=True)
class StyleFlags:
    """Command-line flags that belong to a config style rather than to `finetune` itself."""

    flat: dict[str, str] = field(default_factory=dict)  # --model_name gpt2
    hydra: dict[str, str] = field(default_factory=dict)  # --per-device-train-batch-size 2
    dotted: dict[str, str] = field(default_factory=dict)  # --training.learning_rate 1e-4

    def styles(self) -> list[str]:
        return [
            name
            for name, given in (("flat", self.flat), ("hydra", self.hydra), ("dotted", self.dotted))
            if given
        ]


def load_config(
    file: Path | None,
    flags: StyleFlags | None = None,
    *,
    now: datetime | None = None,
    cwd: Path | None = None,
) -> Translation:
    """Read `file` and/or the style flags in whichever style they are written.

    Raises ConfigError when the style cannot be told or the flags belong to another style;
    problems with individual keys are notes (`translation.errors`), so that every one of
    them is reported at once."""
    flags = flags or StyleFlags()
    now = now or datetime.now()
    given = flags.styles()
    if len(given) > 1:
        raise ConfigError(
            "flags of different config styles cannot be mixed: "
            + "; ".join(_describe_flags(name, flags) for name in given)
        )
    if file is None:
        if flags.flat:
            return flat.translate(dict(flags.flat), source="command line", now=now, cwd=cwd)
        if flags.hydra:
            return hydra.translate(dict(flags.hydra), source="command line", now=now)
        if flags.dotted:
            raise ConfigError(
                "--section.key overrides change a nested YAML config: give its file "
                "(--config config.yaml)"
            )
        raise ConfigError("give a config file or flags")
    return _load_file(file, flags, now=now, cwd=cwd)


def _load_file(file: Path, flags: StyleFlags, *, now: datetime, cwd: Path | None) -> Translation:
    source = str(file)
    suffix = file.suffix.lower()
    if suffix in ENV_SUFFIXES or (suffix not in TOML_SUFFIXES + YAML_SUFFIXES and _is_env(file)):
        _only(flags, "flat", source, flat.STYLE)
        from_file = flat.read_env_file(file)
        values = {**from_file, **flags.flat}
        keys = frozenset(from_file) - frozenset(flags.flat)
        return flat.translate(values, source=source, now=now, cwd=cwd, from_file=keys)
    if suffix in TOML_SUFFIXES:
        document = toml_config.read(file)
        if not toml_config.looks_like(document):
            raise ConfigError(f"{source}: a TOML config needs a [fine_tuner] section")
        _only(flags, None, source, toml_config.STYLE)
        return toml_config.translate(document, source=source, now=now)
    document = _read_yaml(file)
    if manifest.looks_like(document):
        _only(flags, None, source, manifest.STYLE)
        return manifest.translate(document, source=source)
    if yaml_config.looks_like(document):
        _only(flags, "dotted", source, yaml_config.STYLE)
        document = yaml_config.apply_overrides(document, flags.dotted)
        return yaml_config.translate(document, source=source, now=now, base_dir=file.parent)
    raise ConfigError(
        f"{source}: cannot tell its config style. Expected one of:\n"
        + "\n".join(f"  {name}: {how}" for name, how in STYLES.items())
    )


def _read_yaml(file: Path) -> Any:
    from ftapi import read_manifest
    from ftapi.loading import InvalidSpecError, load_yaml_documents

    try:
        documents = [d for d in load_yaml_documents(read_config_text(file)) if d]
    except yaml.YAMLError as exc:
        raise ConfigError(f"{file}: not valid YAML: {exc}") from None
    if len(documents) == 1:
        return documents[0]
    try:  # several documents: the FineTuneJob among them (e.g. with its Secret)
        return read_manifest(file)
    except InvalidSpecError as exc:
        raise ConfigError(str(exc)) from None


def _is_env(file: Path) -> bool:
    """A file without a telling extension whose lines are all KEY=value."""
    try:
        lines = [
            line.strip()
            for line in file.read_text(encoding="utf-8-sig").splitlines()
            if line.strip() and not line.strip().startswith("#")
        ]
    except (OSError, UnicodeDecodeError):
        return False
    return bool(lines) and all(
        "=" in line and line.split("=", 1)[0].removeprefix("export ").strip().isidentifier()
        for line in lines
    )


def _only(flags: StyleFlags, allowed: str | None, source: str, style: str) -> None:
    for name in flags.styles():
        if name != allowed:
            how = "change it with --set path=value" if allowed is None else "use its own keys"
            raise ConfigError(
                f"{source} is a {style}: {_describe_flags(name, flags)} belong to another "
                f"config style ({how})"
            )


def _describe_flags(name: str, flags: StyleFlags) -> str:
    given: dict[str, str] = getattr(flags, name)
    shown = ", ".join(f"--{key}" for key in list(given)[:4])
    return f"{shown}{' ...' if len(given) > 4 else ''} ({name} style)"
