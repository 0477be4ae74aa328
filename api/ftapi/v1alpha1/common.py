"""Small types shared by several sections of the spec."""

from __future__ import annotations

import re
from typing import Annotated, Literal, TypeVar

from pydantic import AfterValidator, Field, StringConstraints, WithJsonSchema
from pydantic.alias_generators import to_snake

from ._base import ApiModel, Rule, is_set

# Kubernetes resource.Quantity ("8", "500m", "32Gi"): YAML gives an int for `cpu: 8`, so the
# schema is int-or-string, as in core/v1. The API's quantities (CPU, memory, /dev/shm) are
# sizes of something a pod gets: more than 0. Kubernetes refuses a negative one only when it
# creates the pod (and takes 0 as "no limit" for memory and tmpfs), so the sign is part of
# the pattern: no "-", and a digit other than 0 before any exponent or suffix. Exponents
# have at most two digits and the whole at most 64 characters: Kubernetes' own grammar takes
# any exponent, and the API server spends over a minute on a Job with cpu "1e99999999999"
# (measured: the request times out), while no quantity past 2^63 means anything to it.
_QUANTITY_SUFFIX = r"(([KMGTPE]i)|[numkMGTPE]|([eE][+-]?[0-9]{1,2}))?$"
QUANTITY_PATTERN = r"^[+-]?(([0-9]+(\.[0-9]*)?)|(\.[0-9]+))" + _QUANTITY_SUFFIX
POSITIVE_QUANTITY_PATTERN = (
    r"^\+?(([0-9]*[1-9][0-9]*(\.[0-9]*)?)|([0-9]*\.[0-9]*[1-9][0-9]*))" + _QUANTITY_SUFFIX
)
MAX_QUANTITY_LENGTH = 64

NonFinite = Literal["NaN", "Infinity", "-Infinity"]
"""A metric's value that JSON cannot carry as a number, spelled as JavaScript does."""


def check_quantity(value: int | str) -> int | str:
    """A quantity more than 0, or ValueError saying what is wrong with it (shared with the
    operator's settings, e.g. --default-memory)."""
    example = "(e.g. 8, 500m, 64Gi, 1e9; exponents of at most two digits)"
    if isinstance(value, bool):
        raise ValueError(f"{value!r} is not a Kubernetes quantity {example}")
    if isinstance(value, int):
        if value < 1:
            raise ValueError(f"must be more than 0 (got {value})")
        return value
    if len(value) > MAX_QUANTITY_LENGTH:
        raise ValueError(f"is longer than {MAX_QUANTITY_LENGTH} characters")
    if re.fullmatch(POSITIVE_QUANTITY_PATTERN, value):
        return value
    if re.fullmatch(QUANTITY_PATTERN, value):
        raise ValueError(f"must be more than 0 (got {value!r})")
    raise ValueError(f"{value!r} is not a Kubernetes quantity {example}")


Quantity = Annotated[
    int | str,
    AfterValidator(check_quantity),
    WithJsonSchema(
        {
            "anyOf": [{"type": "integer"}, {"type": "string"}],
            "pattern": POSITIVE_QUANTITY_PATTERN,
            "maxLength": MAX_QUANTITY_LENGTH,
            "minimum": 1,
            "x-kubernetes-int-or-string": True,
        }
    ),
]
"""A Kubernetes quantity more than 0."""


_Item = TypeVar("_Item")


def unique_by(key: str | None) -> AfterValidator:
    """The API server's refusal of a repeated item in a list of x-kubernetes-list-type set
    (`key` None: the items themselves) or map (`key`: the one-word field keying it)."""

    def check(items: list[_Item]) -> list[_Item]:
        seen: list[object] = []
        for item in items:
            value = item if key is None else getattr(item, key)
            if value in seen:
                what = f"{value!r} is given twice (the items form a set)"
                raise ValueError(what if key is None else f"{key} {value!r} is given twice")
            seen.append(value)
        return items

    return AfterValidator(check)


SET_LIST = {"x-kubernetes-list-type": "set"}
"""Schema marker of a list whose items are a set: the API server refuses a duplicate."""
UniqueItems = unique_by(None)
"""The same refusal for local runs (use together with SET_LIST)."""

# Lower-case RFC 1123 names for Secrets, ConfigMaps, PriorityClasses...
ObjectName = Annotated[
    str,
    StringConstraints(min_length=1, max_length=253, pattern=r"^[a-z0-9]([-a-z0-9.]*[a-z0-9])?$"),
]
# Environment variable names as the kubelet accepts them.
EnvName = Annotated[
    str, StringConstraints(min_length=1, max_length=128, pattern=r"^[-._a-zA-Z][-._a-zA-Z0-9]*$")
]
# A label value (pod labels, nodeSelector, toleration values): what the API server admits.
LabelValue = Annotated[
    str,
    StringConstraints(max_length=63, pattern=r"^(([A-Za-z0-9][-A-Za-z0-9_.]*)?[A-Za-z0-9])?$"),
]
# A label or annotation key (a "qualified name"): an optional DNS-subdomain prefix of at most
# 253 characters and '/', then a name of at most 63. Map keys have no schema of their own in
# a CRD, so keys are checked by rules (ResourcesSpec's map rules, Toleration's key rule):
# the structure by one regular expression, the lengths by another (RE2 has no look-ahead to
# do both at once).
_KEY_SHAPE = (
    r"^([a-z0-9]([-a-z0-9]*[a-z0-9])?(\.[a-z0-9]([-a-z0-9]*[a-z0-9])?)*/)?"
    r"[A-Za-z0-9]([-A-Za-z0-9_.]*[A-Za-z0-9])?$"
)
_KEY_LENGTHS = r"^([^/]{1,253}/)?[^/]{1,63}$"
QUALIFIED_KEY_HELP = (
    "an optional DNS subdomain of at most 253 characters and '/', then a name of at most 63 "
    "characters (letters, digits, '-', '_', '.', starting and ending with a letter or digit)"
)


def qualified_key(key: str) -> bool:
    """Whether the API server admits `key` as a label or annotation key."""
    # fullmatch: Python's `$` also matches before a final newline, RE2's (the server's) not.
    return bool(re.fullmatch(_KEY_SHAPE, key) and re.fullmatch(_KEY_LENGTHS, key))


def qualified_key_cel(expression: str) -> str:
    """The CEL form of qualified_key() for a string expression."""
    shape, lengths = (p.replace("\\", "\\\\") for p in (_KEY_SHAPE, _KEY_LENGTHS))
    return f"{expression}.matches('{shape}') && {expression}.matches('{lengths}')"


# Free text and identifiers; every string carries a bound so CEL cost estimates stay finite.
ShortText = Annotated[str, StringConstraints(max_length=256)]
Text = Annotated[str, StringConstraints(max_length=4096)]
# A container image reference: the API server refuses a pod (not a Job's template) whose
# image has leading or trailing whitespace, so it would pass the Job and fail every pod.
IMAGE_PATTERN = r"^\S(.*\S)?$"
ImageRef = Annotated[str, StringConstraints(min_length=1, max_length=4096, pattern=IMAGE_PATTERN)]
LongText = Annotated[str, StringConstraints(max_length=65536)]
# Where data lives: a local path, s3://bucket/key, or hf://org/name.
Uri = Annotated[str, StringConstraints(min_length=1, max_length=2048)]
Dtype = Literal["auto", "bfloat16", "float16", "float32"]


USERINFO = r"^[A-Za-z][A-Za-z0-9+.-]*://[^/?#]*@"
"""A URL with user:password@ (or a token@) before the host: a credential in the spec."""


# An http(s) URL of a server: scheme, host (and port), optional path; nothing else (no
# user:password@, query or fragment, and no $: the kubelet would expand $(VAR) in it).
SERVER_URL = "^https?://[^/?#@$ \t\r\n]+(/[^?#@$ \t\r\n]*)?$"


def _cel_escaped(text: str) -> str:
    """`text` inside a CEL string literal (its control characters as escapes)."""
    return text.replace("\t", "\\t").replace("\r", "\\r").replace("\n", "\\n")


def server_url(field: str, example: str) -> Rule:
    """A field naming a server the job's credentials go to is a plain http(s) URL: what the
    operator's allow-lists can match (ftoperator.policy)."""
    attribute = to_snake(field)
    return Rule(
        cel=f"!has(self.{field}) || self.{field}.matches('{_cel_escaped(SERVER_URL)}')",
        message=f"{field} must be an http(s) URL such as {example} (no credentials, query or "
        "fragment)",
        check=lambda o: (
            getattr(o, attribute) is None
            or re.fullmatch(SERVER_URL, getattr(o, attribute)) is not None
        ),
        field=f".{field}",
    )


def no_credentials_in_url(field: str) -> Rule:
    """A URL field (`field` on the wire) may not carry credentials: specs are readable by
    everyone who may list the job, and appear in logs and status."""
    attribute = to_snake(field)
    return Rule(
        cel=f"!has(self.{field}) || !self.{field}.matches('{USERINFO}')",
        message=f"{field} may not carry credentials (user:password@): give them through "
        "the field's Secret reference",
        check=lambda o: not re.match(USERINFO, getattr(o, attribute) or ""),
        field=f".{field}",
    )


class SecretRef(ApiModel):
    """A Secret in the FineTuneJob's namespace, used whole (its keys are documented where
    it is referenced). Secret values never enter the spec."""

    name: ObjectName
    """Name of the Secret."""


class SecretKeyRef(ApiModel):
    """A key in a Secret in the FineTuneJob's namespace. Secret values never enter the spec."""

    name: ObjectName
    """Name of the Secret."""
    key: Annotated[str, StringConstraints(min_length=1, max_length=253)]
    """Key inside the Secret whose value is used."""


CREDENTIAL_ENV_SUFFIXES = (
    "_TOKEN",
    "_SECRET",
    "_PASSWORD",
    "_API_KEY",
    "_ACCESS_KEY",
    "_ACCESS_KEY_ID",
)
CREDENTIAL_ENV_NAMES = ("TOKEN", "SECRET", "PASSWORD", "API_KEY")


def is_credential_env(name: str) -> bool:
    """HF_TOKEN, AWS_SECRET_ACCESS_KEY, WANDB_API_KEY, MLFLOW_TRACKING_PASSWORD... (not
    TOKENIZERS_PARALLELISM)."""
    return name.endswith(CREDENTIAL_ENV_SUFFIXES) or name in CREDENTIAL_ENV_NAMES


class EnvVar(ApiModel):
    """An extra environment variable for the trainer container.

    Values come from literals or from Secret keys; torchrun's own variables (PET_*, RANK,
    WORLD_SIZE, MASTER_ADDR...) are set by the operator and refused here.
    """

    name: EnvName
    """Variable name."""
    value: Text | None = None
    """Literal value. Never put credentials here: use `secretKeyRef`."""
    secret_key_ref: SecretKeyRef | None = None
    """Take the value from a Secret key instead of a literal."""

    rules = (
        Rule(
            cel="!(has(self.value) && has(self.secretKeyRef))",
            message="set either value or secretKeyRef, not both",
            check=lambda e: not (is_set(e.value) and is_set(e.secret_key_ref)),
            field=".secretKeyRef",
        ),
        Rule(
            cel="!has(self.value) || !("
            + " || ".join(f"self.name.endsWith('{s}')" for s in CREDENTIAL_ENV_SUFFIXES)
            + " || self.name in ["
            + ", ".join(f"'{n}'" for n in CREDENTIAL_ENV_NAMES)
            + "])",
            message="a credential (a name ending in _TOKEN, _SECRET, _PASSWORD, _API_KEY, "
            "_ACCESS_KEY or _ACCESS_KEY_ID) comes from secretKeyRef, never a literal value: "
            "specs are readable by everyone who can list the job",
            check=lambda e: not (is_set(e.value) and is_credential_env(e.name)),
            field=".value",
        ),
    )


class Toleration(ApiModel):
    """A core/v1 Toleration, so trainer pods may land on tainted (GPU, spot) nodes."""

    key: Annotated[str, StringConstraints(max_length=317)] | None = None
    """Taint key to tolerate (a label key); empty with operator Exists tolerates every
    taint."""
    operator: Literal["Exists", "Equal"] = "Equal"
    """Exists matches any value; Equal matches `value`."""
    value: LabelValue | None = None
    """Taint value to match when operator is Equal (a label value)."""
    effect: Literal["NoSchedule", "PreferNoSchedule", "NoExecute"] | None = None
    """Taint effect to match; empty matches all effects."""
    toleration_seconds: Annotated[int, Field(ge=0)] | None = None
    """For NoExecute: how long the pod stays bound after the taint appears."""

    rules = (
        Rule(
            cel="!has(self.tolerationSeconds) || (has(self.effect) && self.effect == 'NoExecute')",
            message="tolerationSeconds applies only to effect NoExecute",
            check=lambda t: t.toleration_seconds is None or t.effect == "NoExecute",
            field=".tolerationSeconds",
        ),
        Rule(
            cel="self.operator != 'Exists' || !has(self.value)",
            message="operator Exists takes no value",
            check=lambda t: t.operator != "Exists" or t.value is None,
            field=".value",
        ),
        Rule(
            cel=f"!has(self.key) || {qualified_key_cel('self.key')}",
            message=f"a taint key is {QUALIFIED_KEY_HELP}",
            check=lambda t: t.key is None or qualified_key(t.key),
            field=".key",
        ),
        Rule(
            cel="has(self.key) || self.operator == 'Exists'",
            message="an empty key (every taint) needs operator Exists",
            check=lambda t: t.key is not None or t.operator == "Exists",
            field=".operator",
        ),
    )
