"""Version skew: reading what a newer release wrote, without failing and without losing it.

An upgrade applies the new CRD before the new operator runs, and `helm rollback` leaves the
newer CRD in place (Helm never touches crds/ again), so an operator may read objects whose
schema is newer than its own models:

- A **FineTuneJob** read from the API server holds every field of the stored CRD, defaults
  filled in: a field added by a newer release appears in every job, even one created
  before the CRD changed. The API server has already checked the field against the CRD (and
  pruned any the CRD does not know), so a field unknown here is newer than this code, not a
  typo. What the operator does with it depends on its value (`newer_fields`): the CRD's own
  default means "as before" and is ignored (said in the Validated condition and an Event);
  any other value asks for something this operator cannot do, and the job waits for a newer
  operator (docs/install.md, "Version skew").
- Its **status** and the trainer's **progress reports** may carry fields a newer operator or
  trainer added: they are read leniently (`parse_lenient`), unknown fields left out. A status
  may also hold a value this code cannot read (a phase or a range a newer release added):
  `read_status` leaves that field out and says which, and the operator leaves such a job
  alone rather than act on a state it cannot read.

A manifest a user gives the CLI (`finetune validate`, `finetune run`) is still strict: there
a field this code does not know is the user's mistake, and an error.
"""

from __future__ import annotations

import copy
import json
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any, TypeVar

from pydantic import BaseModel, ValidationError

from .contract import ANNOTATION_CONTRACT, ANNOTATION_WRITTEN_BY, CONTRACT
from .loading import (
    UNKNOWN_FIELD,
    FieldError,
    InvalidSpecError,
    dotted,
    field_errors,
    manifest_loc,
    parse_job,
)
from .v1alpha1 import FineTuneJob, FineTuneJobStatus

M = TypeVar("M", bound=BaseModel)
Loc = tuple[int | str, ...]
# How many rounds of stripping a lenient parse makes: an unknown field inside an unknown
# field is reported with its parent, so one round nearly always does.
_ROUNDS = 4


def unknown_locations(error: ValidationError) -> list[Loc] | None:
    """The manifest locations of the unknown fields that `error` reports, or None when it
    reports anything else too (then the data is invalid, not merely newer)."""
    locations: list[Loc] = []
    for item in error.errors():
        if item["type"] != "extra_forbidden":
            return None
        locations.append(manifest_loc(item["loc"]))
    return locations


def without(data: Any, locations: list[Loc]) -> Any:
    """A deep copy of `data` with the value at each location removed."""
    result = copy.deepcopy(data)
    for loc in locations:
        parent = result
        for part in loc[:-1]:
            try:
                parent = parent[part]
            except (KeyError, IndexError, TypeError):
                parent = None
                break
        if isinstance(parent, dict):
            parent.pop(loc[-1], None)
    return result


def kept(target: dict[str, Any], source: dict[str, Any], locations: list[Loc]) -> dict[str, Any]:
    """`target` with the values `source` holds at `locations` put back: what a lenient read
    left out (a newer release's status fields) is written back as it was, not deleted."""
    result = copy.deepcopy(target)
    for loc in locations:
        try:
            value = value_at(source, loc)
        except (KeyError, IndexError, TypeError):
            continue
        node: Any = result
        for part in loc[:-1]:
            if not isinstance(node, dict) or not isinstance(part, str):
                node = None
                break
            node = node.setdefault(part, {})
        if isinstance(node, dict) and isinstance(loc[-1], str):
            node[loc[-1]] = copy.deepcopy(value)
    return result


def value_at(data: Any, loc: Loc) -> Any:
    for part in loc:
        data = data[part]
    return data


def _stripped(
    model: type[M],
    data: Any,
    left_out_of: Callable[[ValidationError], list[Loc] | None],
    **validate: Any,
) -> tuple[M, list[Loc]]:
    """`model` validated from JSON-shaped `data`, leaving out what `left_out_of` names for
    each error and trying again (None: the error stands); and where it left things out."""
    ignored: list[Loc] = []
    for _ in range(_ROUNDS):
        try:
            return model.model_validate_json(json.dumps(data, default=str), **validate), ignored
        except ValidationError as error:
            dropped = left_out_of(error)
            if not dropped:
                raise
            ignored += [loc for loc in dropped if loc not in ignored]
            data = without(data, dropped)
    return model.model_validate_json(json.dumps(data, default=str), **validate), ignored


def parse_lenient(model: type[M], data: Any, **validate: Any) -> tuple[M, list[Loc]]:
    """`model` validated from JSON-shaped `data` (as the API server delivers it), leaving out
    the fields the model does not know and returning where they were. Any other error raises
    ValidationError as usual."""
    return _stripped(model, data, unknown_locations, **validate)


def read_status(data: dict[str, Any]) -> tuple[FineTuneJobStatus, list[Loc], list[FieldError]]:
    """A stored status as this code can read it: (the status, the locations left out, the
    values it could not read). Unknown fields are left out where they are; a field holding a
    value this code rejects (a newer release's phase, say) is left out whole, at the top
    level of the status (a bad item of a list takes the list). Both kinds are returned as
    locations, for `kept`; the second also as errors, since what the status says is then
    not fully known."""
    unreadable: list[FieldError] = []

    def left_out_of(error: ValidationError) -> list[Loc] | None:
        dropped: list[Loc] = []
        for item in error.errors():
            loc = manifest_loc(item["loc"])
            if not loc:  # the status is not even an object
                return None
            if item["type"] == "extra_forbidden":
                dropped.append(loc)
            elif loc[:1] not in dropped:
                dropped.append(loc[:1])
                said = f"{item.get('input')!r}: {item['msg']}"
                unreadable.append(FieldError(f"status.{dotted(item['loc'])}", said))
        return dropped

    status, left_out = _stripped(FineTuneJobStatus, data, left_out_of)
    return status, left_out, unreadable


def parse_stored_job(manifest: dict[str, Any]) -> tuple[FineTuneJob, list[Loc]]:
    """A FineTuneJob as the API server stores it: validated as strictly as `parse_job`,
    except that fields newer than this code are left out (and returned, for
    `newer_fields`). Raises InvalidSpecError for anything else."""
    try:
        return parse_job(manifest), []
    except InvalidSpecError as error:
        if not all(e.message == UNKNOWN_FIELD for e in error.errors):
            raise
        source = error.source
    try:
        return parse_lenient(FineTuneJob, manifest, strict=True, by_alias=True, by_name=False)
    except ValidationError as exc:
        raise InvalidSpecError(field_errors(exc), source) from None


# --- the stored CRD's defaults -------------------------------------------------------------


def schema_at(schema: dict[str, Any], loc: Loc) -> dict[str, Any] | None:
    """The OpenAPI schema of the value at `loc` under `schema`; None where it says nothing."""
    for part in loc:
        if isinstance(part, int):
            schema = schema.get("items") or {}
        else:
            properties = schema.get("properties") or {}
            if part in properties:
                schema = properties[part]
            elif isinstance(schema.get("additionalProperties"), dict):
                schema = schema["additionalProperties"]
            else:
                return None
    return schema


def defaulted(schema: dict[str, Any], value: Any) -> Any:
    """What the API server stores for `value` under `schema`: its structural defaulting
    (a missing property with a default gets it, recursively, inside objects and lists)."""
    if value is None:
        if "default" not in schema:
            return None
        value = copy.deepcopy(schema["default"])
    if isinstance(value, dict):
        for name, sub in (schema.get("properties") or {}).items():
            filled = defaulted(sub, value.get(name))
            if filled is not None:
                value[name] = filled
    elif isinstance(value, list) and isinstance(schema.get("items"), dict):
        value = [defaulted(schema["items"], item) for item in value]
    return value


def holds_default(schema: dict[str, Any] | None, loc: Loc, value: Any) -> bool:
    """Whether `value` at `loc` is exactly what the CRD's defaulting puts there when the
    field is left out (the newer release's "as before")."""
    sub = schema_at(schema or {}, loc)
    if sub is None or "default" not in sub:
        return False
    return bool(defaulted(sub, None) == value)


@dataclass(frozen=True)
class NewerFields:
    """The fields of a stored FineTuneJob that this code does not know, by what they hold."""

    at_default: tuple[str, ...] = ()
    """Holding the CRD's default: "as before", ignored."""
    set: tuple[str, ...] = ()
    """Holding anything else (or the CRD could not be read): a newer operator is needed."""

    def __bool__(self) -> bool:
        return bool(self.at_default or self.set)


def newer_fields(
    manifest: dict[str, Any], locations: list[Loc], crd_schema: dict[str, Any] | None
) -> NewerFields:
    """Sort the unknown fields of a stored FineTuneJob (`locations`, from parse_lenient) by
    whether they hold the stored CRD's default (`crd_schema`: its openAPIV3Schema)."""
    at_default: list[str] = []
    set_: list[str] = []
    for loc in locations:
        try:
            value = value_at(manifest, loc)
        except (KeyError, IndexError, TypeError):
            continue
        (at_default if holds_default(crd_schema, loc, value) else set_).append(dotted(loc))
    return NewerFields(tuple(at_default), tuple(set_))


# --- a trainer reading a ConfigMap of a newer operator ---------------------------------------


def writer_of(manifest: dict[str, Any]) -> tuple[str | None, str | None]:
    """(the release that wrote a job's ConfigMap, the contract it speaks), when it says."""
    metadata = manifest.get("metadata") if isinstance(manifest, dict) else None
    annotations = (metadata or {}).get("annotations") if isinstance(metadata, dict) else None
    if not isinstance(annotations, dict):
        return None, None
    writer, contract = annotations.get(ANNOTATION_WRITTEN_BY), annotations.get(ANNOTATION_CONTRACT)
    return (str(writer) if writer else None), (str(contract) if contract else None)


def contract_refusal(manifest: dict[str, Any], reader: str) -> FieldError | None:
    """The job was written for another contract than this reader's (an incompatible change
    between the operator's release and the trainer image's)."""
    writer, contract = writer_of(manifest)
    if contract is None or contract == str(CONTRACT):
        return None
    return FieldError(
        f"metadata.annotations[{ANNOTATION_CONTRACT}]",
        f"written by {writer or 'an operator'} for contract {contract}; this trainer ({reader}) "
        f"reads contract {CONTRACT}: run the job with the trainer image of the operator's release",
    )


def older_reader_hint(
    manifest: dict[str, Any], errors: list[FieldError], reader: str
) -> str | None:
    """Why a trainer refuses fields it does not know in a ConfigMap an operator wrote: the
    operator is newer, and the job uses a field this image predates."""
    writer, _ = writer_of(manifest)
    if writer is None or not any(e.message == UNKNOWN_FIELD for e in errors):
        return None
    return (
        f"the job was written by {writer} and sets fields this trainer ({reader}) is too old "
        "to know: run it with a trainer image of that release or newer (spec.resources.image, "
        "or the operator's --default-image)"
    )
