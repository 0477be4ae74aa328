"""The base every API model derives from, and the cross-field rule type.

A cross-field rule is written once, as a `Rule` holding both its CEL expression (which
the generated CRD gives to the API server as an `x-kubernetes-validations` entry, so
`kubectl apply` refuses the manifest) and the same predicate in Python (which pydantic
runs for local runs and inside the operator). `tests/unit/api/test_rules.py` evaluates every
rule's CEL next to its Python twin on a table of manifests, so the two cannot drift.
"""

from __future__ import annotations

import re
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any, ClassVar, Self

from pydantic import BaseModel, ConfigDict, ValidationInfo, model_validator
from pydantic.alias_generators import to_camel, to_snake
from pydantic.json_schema import JsonSchemaValue
from pydantic_core import CoreSchema, PydanticCustomError

CEL_RULES_KEY = "x-kubernetes-validations"
# Validation context flag that skips cross-field rules: tests use it to build objects that
# break a rule, so the rule's CEL and Python forms can be compared on the same object.
SKIP_RULES = "skip_cross_field_rules"


@dataclass(frozen=True)
class Rule:
    """One cross-field validation rule, enforced by the API server and by pydantic alike.

    `cel` sees `self` as the object the rule is attached to, with defaults applied (as the
    API server does). `check` is the same predicate over the pydantic model. `field` is the
    path, relative to that object, that the message blames (CEL `fieldPath`), so both
    layers point the user at the same field.
    """

    cel: str
    message: str
    check: Callable[[Any], bool]
    field: str = ""

    def to_crd(self) -> dict[str, str]:
        entry = {"rule": self.cel, "message": self.message}
        if self.field:
            entry["fieldPath"] = self.field
        return entry


class ApiModel(BaseModel):
    """camelCase on the wire, snake_case in Python; unknown fields are errors, not ignored.

    Attribute docstrings become field descriptions, which the CRD generator copies into
    the OpenAPI schema: that is what `kubectl explain finetunejob.spec...` prints.
    """

    model_config = ConfigDict(
        alias_generator=to_camel,
        validate_by_name=True,
        validate_by_alias=True,
        serialize_by_alias=True,
        extra="forbid",
        use_attribute_docstrings=True,
        validate_default=True,
        allow_inf_nan=False,
    )

    rules: ClassVar[tuple[Rule, ...]] = ()

    @model_validator(mode="after")
    def _check_rules(self, info: ValidationInfo) -> Self:
        if info.context and info.context.get(SKIP_RULES):
            return self
        broken = self.broken_rules()
        if broken:
            raise PydanticCustomError(
                "cross_field",
                "{summary}",
                {
                    "summary": "; ".join(_describe(rule) for rule in broken),
                    "violations": [(rule.field.lstrip("."), rule.message) for rule in broken],
                },
            )
        return self

    def broken_rules(self) -> list[Rule]:
        """This object's own rules that fail (nested objects check their own)."""
        return [rule for rule in type(self).rules if not rule.check(self)]

    @classmethod
    def __get_pydantic_json_schema__(cls, core_schema: CoreSchema, handler: Any) -> JsonSchemaValue:
        schema: JsonSchemaValue = handler(core_schema)
        if cls.rules:
            target = handler.resolve_ref_schema(schema)
            target[CEL_RULES_KEY] = [rule.to_crd() for rule in cls.rules]
        return schema

    def to_dict(self) -> dict[str, Any]:
        """The manifest form: camelCase keys, unset optional fields left out."""
        return self.model_dump(mode="json", by_alias=True, exclude_none=True)


def _describe(rule: Rule) -> str:
    return f"{rule.field.lstrip('.')}: {rule.message}" if rule.field else rule.message


def cel_list(values: tuple[str, ...] | list[str]) -> str:
    """A CEL list literal of strings, for `x in [...]` tests built from Python constants."""
    return "[" + ", ".join(f"'{value}'" for value in values) + "]"


def only_for(block: str, selector: str, values: tuple[str, ...], *, noun: str = "settings") -> Rule:
    """Rule: the optional settings block (or field) `block` is set only when `selector` is
    one of `values` (e.g. `lora` settings only for LoRA methods), so no setting is silently
    ignored."""
    block_attr, selector_attr = to_snake(block), to_snake(selector)
    subject = f"{block} {noun} are" if noun else f"{block} is"
    return Rule(
        cel=f"!has(self.{block}) || {_cel_is_one_of(selector, values)}",
        message=f"{subject} only used by {selector} {spoken_list(values)}",
        check=lambda obj: getattr(obj, block_attr) is None or getattr(obj, selector_attr) in values,
        field=f".{block}",
    )


def required_for(field: str, selector: str, value: str, message: str) -> Rule:
    """Rule: `field` must be set when `selector` equals `value`."""
    field_attr, selector_attr = to_snake(field), to_snake(selector)
    return Rule(
        cel=f"self.{selector} != '{value}' || has(self.{field})",
        message=message,
        check=lambda obj: getattr(obj, selector_attr) != value or is_set(getattr(obj, field_attr)),
        field=f".{field}",
    )


def _cel_is_one_of(selector: str, values: tuple[str, ...]) -> str:
    if len(values) == 1:
        return f"self.{selector} == '{values[0]}'"
    return f"self.{selector} in {cel_list(values)}"


def spoken_list(values: tuple[str, ...]) -> str:
    return values[0] if len(values) == 1 else ", ".join(values[:-1]) + f" or {values[-1]}"


def is_set(value: object) -> bool:
    """`has()` in CEL: the field is present (defaults count as present, None does not)."""
    return value is not None


def compiled(pattern: str, flags: int = 0) -> str:
    """`pattern` if Python's re compiles it, else ValueError: the trainer compiles it only
    after the model has loaded, so the job is refused instead."""
    try:
        re.compile(pattern, flags)
    except re.error as error:
        raise ValueError(f"{pattern!r}: not a valid regular expression: {error}") from None
    return pattern
