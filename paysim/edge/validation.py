"""A request body to typed fields, against the types declared in paysim.domain.

The constraints are the declarations' own (msgspec.Meta, and messages.Check for what Meta cannot
say): each field is converted with msgspec against its declared type. What this module adds is
the API's one-line answers, which name the first problem in a fixed order, whatever the order of
the keys in the body:

1. a field the type does not declare: ``unknown field 'x'``;
2. each required field, in declaration order: ``missing field 'x'``, or ``field 'x' must be a
   string`` (or a whole number, or an object with ...);
3. each field in declaration order: a given optional field's type, then the field's
   constraints: ``field 'x' must be <the description declared with the constraint>``; an object
   field is checked the same way, its names prefixed (``merchant.mcc``).

A description that begins with the type ("a string of 1 to 100 characters") is the answer to a
wrong type as well.
"""

from __future__ import annotations

import functools
import json
import types
import typing
from dataclasses import dataclass
from typing import Annotated, Any, TypeVar

import msgspec
from flask import Request

from paysim.domain.messages import Check, declared_checks
from paysim.domain.requests import AuthorizeRequest

S = TypeVar("S", bound=msgspec.Struct)

_TYPE_PHRASES: dict[Any, str] = {str: "a string", int: "a whole number"}


class BadRequest(Exception):
    """A request paysim cannot take: answered with ``status`` and ``{"error": message}``."""

    def __init__(self, message: str, status: int = 400, **fields: Any) -> None:
        super().__init__(message)
        self.status = status
        self.fields = fields


def short(name: str) -> str:
    """A client-supplied name, safe to put in a one-line error."""
    name = " ".join(str(name).split())
    return name if len(name) <= 40 else name[:40] + "..."


def body_object(request: Request) -> tuple[bytes, dict[str, Any]]:
    """The raw body (413 when too large) and the JSON object in it."""
    raw = request.get_data(cache=True)  # raises 413 past MAX_CONTENT_LENGTH
    if not raw.strip():
        raise BadRequest("request body is empty; expected a JSON object")
    try:
        body = json.loads(raw)
    except (UnicodeDecodeError, ValueError):
        raise BadRequest("request body is not valid JSON") from None
    except RecursionError:
        raise BadRequest("request body is nested too deeply") from None
    if not isinstance(body, dict):
        raise BadRequest("request body must be a JSON object")
    return raw, body


def authorize_request(body: dict[str, Any]) -> AuthorizeRequest:
    """The POST /authorize body, checked and typed; BadRequest naming the first problem."""
    return typed(body, AuthorizeRequest)


def transaction_id(body: dict[str, Any]) -> str:
    """The POST /notify_client body's payment id (other fields are ignored)."""
    payment_id = body.get("transaction_id")
    if payment_id is None:
        raise BadRequest("missing field 'transaction_id'")
    if not isinstance(payment_id, str) or not payment_id.strip():
        raise BadRequest("field 'transaction_id' must be a non-empty string")
    return payment_id


def typed(body: dict[str, Any], kind: type[S]) -> S:
    """``body`` as a ``kind``; BadRequest naming the first problem (see the module's order)."""
    _check_object(body, kind, "")
    given = _without_nulls(body, kind)
    # Cannot fail after the checks above; were it to, it is a bug: a 500, not a 400.
    return msgspec.convert(given, kind)


# ---------------------------------------------------------------------------- the walk


@dataclass(frozen=True)
class _Field:
    """One declared field, as the checks need it."""

    name: str
    required: bool
    base: Any  # str, int or a Struct type: what a wrong type is told it should be
    declared: Any  # the type with its constraints, without `| None`
    description: str | None
    checks: tuple[Check, ...]

    @property
    def is_object(self) -> bool:
        return isinstance(self.base, type) and issubclass(self.base, msgspec.Struct)

    def type_phrase(self) -> str:
        if self.is_object:
            names = _fields(self.base)
            listed = ", ".join(f.name for f in names[:-1]) + f" and {names[-1].name}"
            return f"an object with {listed}"
        phrase = _TYPE_PHRASES[self.base]
        if self.description and self.description.startswith(phrase):
            return self.description
        return phrase


def _strip_none(hint: Any) -> Any:
    if typing.get_origin(hint) in (typing.Union, types.UnionType):
        kept = [arg for arg in typing.get_args(hint) if arg is not type(None)]
        if len(kept) == 1:
            return kept[0]
    return hint


@functools.cache
def _fields(kind: type[msgspec.Struct]) -> tuple[_Field, ...]:
    hints = typing.get_type_hints(kind, include_extras=True)
    fields = []
    for info in msgspec.structs.fields(kind):
        declared = _strip_none(hints[info.name])
        base, metadata = declared, ()
        if typing.get_origin(declared) is Annotated:
            base, metadata = declared.__origin__, declared.__metadata__
        description = next((meta.description for meta in metadata
                            if isinstance(meta, msgspec.Meta) and meta.description), None)
        checks = tuple(check for name, check in declared_checks(kind) if name == info.name)
        fields.append(_Field(info.encode_name, info.required, base, declared, description,
                             checks))
    return tuple(fields)


def _fits(value: Any, kind: Any) -> bool:
    try:
        msgspec.convert(value, kind)  # strict: true is no whole number, 12.5 and "12" neither
    except msgspec.ValidationError:
        return False
    return True


def _check_type(value: Any, field: _Field, prefix: str) -> None:
    fits = isinstance(value, dict) if field.is_object else _fits(value, field.base)
    if not fits:
        raise BadRequest(f"field '{prefix}{field.name}' must be {field.type_phrase()}")


def _check_object(body: dict[str, Any], kind: type[msgspec.Struct], prefix: str) -> None:
    fields = _fields(kind)
    # Unknown fields are refused at every depth, whatever the type does when decoding from a
    # topic: a client's typo should not pass as a default.
    unknown = sorted(set(body) - {field.name for field in fields})
    if unknown:
        raise BadRequest(f"unknown field '{prefix}{short(unknown[0])}'")
    for field in fields:
        if field.required:
            if field.name not in body:
                raise BadRequest(f"missing field '{prefix}{field.name}'")
            _check_type(body[field.name], field, prefix)
    for field in fields:
        value = body.get(field.name)
        if value is None:
            continue  # an optional field left out or null (a required one failed above)
        if not field.required:
            _check_type(value, field, prefix)
        if field.is_object:
            _check_object(value, field.base, f"{prefix}{field.name}.")
        elif not (_fits(value, field.declared)
                  and all(check.predicate(value) for check in field.checks)):
            wanted = field.description or field.type_phrase()
            raise BadRequest(f"field '{prefix}{field.name}' must be {wanted}")


def _without_nulls(body: dict[str, Any], kind: type[msgspec.Struct]) -> dict[str, Any]:
    """The body with its optional nulls left out, so that they take their defaults."""
    optional = {field.name for field in _fields(kind) if not field.required}
    return {name: value for name, value in body.items()
            if not (value is None and name in optional)}
