"""Reading FineTuneJob manifests, with errors that name the offending field."""

from __future__ import annotations

import json
import re
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import yaml
from pydantic import ValidationError

from .constants import API_VERSION, KIND
from .v1alpha1 import FineTuneJob


@dataclass(frozen=True)
class FieldError:
    """One problem, located by its dotted path in the manifest (spec.method.lora.r)."""

    path: str
    message: str

    def __str__(self) -> str:
        return f"{self.path}: {self.message}" if self.path else self.message


class InvalidSpecError(ValueError):
    """The manifest is not a valid FineTuneJob. `errors` lists every problem found."""

    def __init__(self, errors: list[FieldError], source: str = "") -> None:
        self.errors = errors
        self.source = source
        where = f"{source}: " if source else ""
        super().__init__(f"{where}invalid FineTuneJob\n" + "\n".join(f"  {e}" for e in errors))


def parse_job(manifest: Any, source: str = "") -> FineTuneJob:
    """Validate a manifest (a dict as read from YAML/JSON or from the API server)."""
    if not isinstance(manifest, dict):
        raise InvalidSpecError([FieldError("", "a manifest must be a mapping")], source)
    if manifest.get("kind", KIND) != KIND or manifest.get("apiVersion", API_VERSION) != API_VERSION:
        found = f"{manifest.get('apiVersion')}/{manifest.get('kind')}"
        raise InvalidSpecError(
            [FieldError("kind", f"expected {API_VERSION} {KIND}, found {found}")], source
        )
    try:
        return FineTuneJob.model_validate_json(
            _as_json(manifest), strict=True, by_alias=True, by_name=False
        )
    except ValidationError as exc:
        raise InvalidSpecError(field_errors(exc), source) from None


def _as_json(manifest: dict[str, Any]) -> str:
    """The manifest as the API server receives it from kubectl: JSON, so validation sees what
    the server's schema sees. Strict JSON validation then refuses what the server refuses and
    pydantic's lax mode would take: "8" or true for an integer, a snake_case key for a
    camelCase field, .inf and .nan. YAML timestamps (unquoted dates) are strings there."""
    return json.dumps(manifest, default=str)


def load_job(path: str | Path) -> FineTuneJob:
    """Read one FineTuneJob from a YAML (or JSON) file."""
    return parse_job(read_manifest(path), str(path))


# Values a document may expand to through aliases (`*name` repeats what `&name` marks):
# nine aliases of nine aliases, nine levels deep, are a few hundred bytes that expand to
# 387 million strings ("billion laughs"); `finetune validate` spent minutes on one. kubectl
# (go-yaml) refuses excessive aliasing too. A manifest or config holds a few hundred values.
MAX_YAML_VALUES = 1_000_000


def expanded_size(root: yaml.Node) -> int | None:
    """How many nodes the document has once every alias is expanded, counted once per
    distinct node (so in time linear in what was written); None for a recursive alias."""
    sizes: dict[int, int] = {}
    on_path: set[int] = set()
    stack: list[tuple[yaml.Node, bool]] = [(root, False)]
    while stack:
        node, children_done = stack.pop()
        key = id(node)
        if children_done:
            on_path.discard(key)
            sizes[key] = 1 + sum(sizes[id(child)] for child in _children(node))
            continue
        if key in sizes:
            continue
        if key in on_path:
            return None
        on_path.add(key)
        stack.append((node, True))
        stack.extend((child, False) for child in _children(node) if id(child) not in sizes)
    return sizes[id(root)]


def _children(node: yaml.Node) -> list[yaml.Node]:
    if isinstance(node, yaml.SequenceNode):
        return list(node.value)
    if isinstance(node, yaml.MappingNode):
        return [item for pair in node.value for item in pair]
    return []


class _UniqueKeyLoader(yaml.SafeLoader):
    """YAML that refuses a key given twice in one mapping, as kubectl and the API server do
    (PyYAML keeps the last one, so `training:` written twice loses the first block without a
    word). Keys a merge (`<<: *base`) brings in may still be overridden. A document that
    expands to more than MAX_YAML_VALUES values through aliases, or holds a recursive one,
    is refused before anything is built from it."""

    def compose_document(self) -> yaml.Node | None:
        node: yaml.Node | None = super().compose_document()
        if node is not None:
            size = expanded_size(node)
            if size is None or size > MAX_YAML_VALUES:
                what = (
                    "an alias inside the value it names (a recursive alias)"
                    if size is None
                    else f"more than {MAX_YAML_VALUES:,} values once its aliases (*name) "
                    "are expanded"
                )
                raise yaml.composer.ComposerError(
                    "while reading a document", node.start_mark, f"it holds {what}", None
                )
        return node

    def construct_mapping(self, node: yaml.MappingNode, deep: bool = False) -> dict[Any, Any]:
        seen: set[Any] = set()
        for key_node, _ in node.value:
            if key_node.tag == "tag:yaml.org,2002:merge":
                continue
            key = self.construct_object(key_node, deep=True)
            try:
                duplicate = key in seen
                seen.add(key)
            except TypeError:  # an unhashable key: the base class says what is wrong
                continue
            if duplicate:
                raise yaml.constructor.ConstructorError(
                    "while reading a mapping",
                    node.start_mark,
                    f"the key {key!r} is given twice",
                    key_node.start_mark,
                )
        return super().construct_mapping(node, deep=deep)


# Scalars as kubectl's YAML (go-yaml v2) reads them, not as PyYAML's YAML 1.1 does: a float
# needs no dot (`learningRate: 1e-4` is a number, not the string "1e-4"), `1:30` is a
# string (not 90, base 60), and an unquoted date stays the text it is (go-yaml hands
# timestamps to untyped fields as strings).
def replace_scalar_resolvers(
    loader: type[yaml.SafeLoader], tags: tuple[str, ...], resolvers: list[tuple[str, str, str]]
) -> None:
    """Give `loader` PyYAML's implicit resolvers less those of `tags`, plus `resolvers`
    (tag, regular expression, the characters a match may start with): how a plain scalar
    becomes a number, a boolean or a date is all in these."""
    loader.yaml_implicit_resolvers = {
        first: [(tag, regexp) for tag, regexp in entries if tag not in tags]
        for first, entries in yaml.SafeLoader.yaml_implicit_resolvers.items()
    }
    for tag, regexp, first in resolvers:
        loader.add_implicit_resolver(tag, re.compile(regexp), list(first))


INT, FLOAT = "tag:yaml.org,2002:int", "tag:yaml.org,2002:float"
replace_scalar_resolvers(
    _UniqueKeyLoader,
    (INT, FLOAT, "tag:yaml.org,2002:timestamp"),
    [
        (INT, r"^(?:[-+]?0b[0-1_]+|[-+]?0[0-7_]+|[-+]?(?:0|[1-9][0-9_]*)|[-+]?0x[0-9a-fA-F_]+)$",
         "-+0123456789"),
        (FLOAT, r"^(?:[-+]?(?:[0-9][0-9_]*)(?:\.[0-9_]*)?(?:[eE][-+]?[0-9]+)?"
                r"|[-+]?\.[0-9][0-9_]*(?:[eE][-+]?[0-9]+)?"
                r"|[-+]?\.(?:inf|Inf|INF)|\.(?:nan|NaN|NAN))$", "-+0123456789."),
    ],
)  # fmt: skip


def load_yaml_documents(text: str) -> list[Any]:
    """The documents of a YAML (or JSON) text, a key given twice being an error."""
    return list(yaml.load_all(text, Loader=_UniqueKeyLoader))


def read_manifest(path: str | Path) -> dict[str, Any]:
    """The one FineTuneJob document of a YAML/JSON file, unvalidated (other kinds ignored),
    for callers that change it before validation (`finetune --set`)."""
    path = Path(path)
    try:
        documents = [d for d in load_yaml_documents(path.read_text()) if d is not None]
    except yaml.YAMLError as exc:
        raise InvalidSpecError([FieldError("", f"not valid YAML: {exc}")], str(path)) from None
    jobs = [d for d in documents if isinstance(d, dict) and d.get("kind", KIND) == KIND]
    if len(jobs) != 1:
        message = f"expected exactly one {KIND} document, found {len(jobs)}"
        raise InvalidSpecError([FieldError("", message)], str(path))
    return dict(jobs[0])


def field_errors(exc: ValidationError) -> list[FieldError]:
    """pydantic's errors as dotted manifest paths; cross-field rules name their own field."""
    result: list[FieldError] = []
    for error in exc.errors():
        base = dotted(error["loc"])
        ctx = error.get("ctx") or {}
        if error["type"] == "cross_field":
            for field, message in ctx["violations"]:
                result.append(FieldError(".".join(p for p in (base, field) if p), message))
        else:
            result.append(FieldError(base, _message(error["type"], error["msg"], ctx, error)))
    return result


UNKNOWN_FIELD = "unknown field"
# pydantic's wording for the common cases, in the terms `kubectl` users know.
_MESSAGES = {
    "extra_forbidden": UNKNOWN_FIELD,
    "missing": "required field is missing",
    "greater_than_equal": "must be >= {ge}",
    "greater_than": "must be > {gt}",
    "less_than_equal": "must be <= {le}",
    "less_than": "must be < {lt}",
    "literal_error": "must be one of {expected}",
    "string_pattern_mismatch": "must match {pattern}",
    "string_too_long": "must be at most {max_length} characters",
    "too_long": "must have at most {max_length} items",
    "too_short": "must have at least {min_length} items",
    "model_type": "must be an object (a mapping)",
    "dict_type": "must be an object (a mapping)",
    "list_type": "must be a list",
    "int_type": "must be an integer",
    "int_from_float": "must be an integer",
    "float_type": "must be a number",
    "finite_number": "must be a finite number",
    "string_type": "must be a string",
    "bool_type": "must be true or false",
}


def _message(kind: str, default: str, ctx: dict[str, Any], error: Any) -> str:
    template = _MESSAGES.get(kind)
    if template is None:
        return default.removeprefix("Value error, ")
    message = template.format(**ctx)
    if kind not in ("extra_forbidden", "missing", "model_type", "dict_type", "list_type"):
        message += f" (got {error['input']!r})"
    return message


_BRANCH_TAGS = {"int", "str", "float", "bool", "list", "dict"}
_BRANCH_PREFIXES = ("function-", "union[", "json-or-python[", "constrained-", "lax-or-strict[")


def manifest_loc(loc: tuple[int | str, ...]) -> tuple[int | str, ...]:
    """pydantic's location of an error as manifest keys and list indexes (its names for
    union branches left out)."""
    return tuple(
        part
        for part in loc
        if isinstance(part, int) or not (part in _BRANCH_TAGS or part.startswith(_BRANCH_PREFIXES))
    )


def dotted(loc: tuple[int | str, ...]) -> str:
    """spec.dataset.eval[0].uri: a manifest location as users write it."""
    path = ""
    for part in manifest_loc(loc):
        if isinstance(part, int):
            path += f"[{part}]"
        else:
            path += f".{part}" if path else part
    return path
