"""`--set dotted.path=value` overrides applied to a manifest before validation.

Values are parsed as YAML scalars/collections, so `--set training.epochs=2` gives an int,
`--set method.lora.targetModules=[q_proj,v_proj]` a list. The `spec.` prefix is optional.
"""

from __future__ import annotations

import copy
from typing import Any

import yaml

from ftapi.loading import FLOAT, INT, replace_scalar_resolvers


class OverrideError(ValueError):
    """A --set argument that is not `path=value`."""


def apply_overrides(manifest: dict[str, Any], assignments: list[str]) -> dict[str, Any]:
    result = copy.deepcopy(manifest)
    for assignment in assignments:
        path, sep, raw = assignment.partition("=")
        if not sep or not path.strip():
            raise OverrideError(f"--set {assignment!r}: expected dotted.path=value")
        parts = path.strip().split(".")
        if parts[0] not in ("spec", "metadata"):
            parts.insert(0, "spec")
        try:
            set_path(result, parts, parse_value(raw))
        except NotAMapping as exc:
            raise OverrideError(f"--set {path}: {exc.part} is not a mapping") from None
        except OverrideError as exc:
            raise OverrideError(f"--set {path.strip()}: {exc}") from None
    return result


class NotAMapping(ValueError):
    """set_path met a value where the path needs a mapping."""

    def __init__(self, part: str) -> None:
        super().__init__(f"{part} is not a mapping")
        self.part = part


def set_path(document: dict[str, Any], parts: list[str], value: Any) -> None:
    """document[parts[0]][parts[1]]... = value, making the mappings on the way (both the
    `--set a.b=c` overrides and the YAML configs' `--section.key value` flags)."""
    node = document
    for part in parts[:-1]:
        child = node.setdefault(part, {})
        if not isinstance(child, dict):
            raise NotAMapping(part)
        node = child
    node[parts[-1]] = value


class _Yaml12Loader(yaml.SafeLoader):
    """YAML 1.2 (core schema) scalars. Only true/false are booleans (`--set
    evaluation.strategy=no` stays "no"; YAML 1.1 turns no/yes/on/off into booleans), 1e-4 is
    a float, and integers are decimal unless they say 0o/0x: YAML 1.1 reads 016 as octal 14,
    1:30 as 90 (base 60) and 1_000 as 1000."""


BOOL = "tag:yaml.org,2002:bool"
replace_scalar_resolvers(
    _Yaml12Loader,
    (BOOL, INT, FLOAT),
    [
        (BOOL, r"^(?:true|True|TRUE|false|False|FALSE)$", "tTfF"),
        (INT, r"^(?:[-+]?[0-9]+|0o[0-7]+|0x[0-9a-fA-F]+)$", "-+0123456789"),
        (FLOAT, r"^(?:[-+]?(?:\.[0-9]+|[0-9]+(?:\.[0-9]*)?)(?:[eE][-+]?[0-9]+)?"
                r"|[-+]?\.(?:inf|Inf|INF)|\.(?:nan|NaN|NAN))$", "-+0123456789."),
    ],
)  # fmt: skip


def _yaml12_int(loader: yaml.SafeLoader, node: yaml.ScalarNode) -> int:
    text = str(loader.construct_scalar(node))
    if text.startswith(("0o", "0x")):
        return int(text[2:], 8 if text[1] == "o" else 16)
    return int(text, 10)


_Yaml12Loader.add_constructor(INT, _yaml12_int)


def parse_value(raw: str) -> Any:
    """A command-line or .env value read as YAML 1.2 (`[a, b]` and `{bits: 4}` too)."""
    if not raw.strip():
        return ""
    try:
        return yaml.load(raw, Loader=_Yaml12Loader)
    except yaml.YAMLError as exc:
        problem = getattr(exc, "problem", None) or "not a YAML value"
        raise OverrideError(f"{raw!r}: {problem} (quote it to mean a string)") from None
