"""A request body to typed fields, against the types declared in paysim.domain.

The constraints are the declarations' own (msgspec.Meta, and messages.Check for what Meta cannot
say): each field is converted with msgspec against its declared type. What this module adds is
the API's one-line answers, which name the first problem in a fixed order, whatever the order of
the keys in the body:

1. a field the type does not declare: ``unknown field 'x'``;
2. each required field, in declaration order: ``missing field 'x'``, or ``field 'x' must be a
   string`` (or a whole number, or an object with ...); a group of the type's ``one_of`` (the
   expiry) where its first field is declared: ``missing <what>`` or ``<what> is given twice``,
   then the given way's fields as required fields;
3. each field in declaration order: a given optional field's type, then the field's
   constraints: ``field 'x' must be <the description declared with the constraint>``, or the
   answer of a failing messages.Check (``field 'x' must not hold a card number ...``); an
   object field is checked the same way, its names prefixed (``merchant.mcc``).

A body goes through msgspec's own decoder first (``fast_typed``: a tenth of the walk's time);
only a body it refuses, or one that fails a check after it, takes the field-by-field walk,
which names the problem. The decoder takes no body the walk would refuse.

A description that begins with the type ("a string of 1 to 100 characters") is the answer to a
wrong type as well. A string holding a lone UTF-16 surrogate (json.loads takes ``"\\ud800"``;
nothing can encode it afterwards) is refused with its type. ``authorize_raw`` and
``notify_body`` add to every answer which fields the endpoint expects.
"""

from __future__ import annotations

import enum
import functools
import json
import types
import typing
from dataclasses import dataclass
from typing import Annotated, Any, TypeVar

import msgspec
from flask import Request

from paysim.domain import cards
from paysim.domain.messages import Check, declared_checks
from paysim.domain.requests import AuthorizeRequest, OneOf

S = TypeVar("S", bound=msgspec.Struct)

MAX_BODY_BYTES = 64 * 1024  # larger bodies are refused (413) before they are read

_TYPE_PHRASES: dict[Any, str] = {str: "a string", int: "a whole number",
                                  bool: "true or false"}


class BadRequest(Exception):
    """A request paysim cannot take: answered with ``status`` and ``{"error": message}``."""

    def __init__(self, message: str, status: int = 400, **fields: Any) -> None:
        super().__init__(message)
        self.status = status
        self.fields = fields

    def expecting(self, fields: str) -> BadRequest:
        """The same answer, telling which fields are expected."""
        return BadRequest(f"{self}; {fields}", self.status, **self.fields)


def short(name: str) -> str:
    """A client-supplied name, safe to put in a one-line error (a lone surrogate becomes ?, a
    card number "[card number]", before the cut to 40 characters could leave its digits)."""
    name = " ".join(str(name).encode(errors="replace").decode().split())
    name = cards.redact_card_numbers(name)
    return name if len(name) <= 40 else name[:40] + "..."


def body_object(request: Request) -> tuple[bytes, dict[str, Any]]:
    """The raw body (413 when too large) and the JSON object in it."""
    raw = request.get_data(cache=True)  # raises 413 past MAX_CONTENT_LENGTH
    return raw, json_object(raw)


def json_object(raw: bytes) -> dict[str, Any]:
    """The JSON object in a request body; BadRequest when it is none."""
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
    return body


def authorize_raw(raw: bytes) -> AuthorizeRequest:
    """The request in a POST /authorize body. Every BadRequest says which fields are
    expected: the seed took any JSON, so its clients learn them here."""
    fast = fast_typed(raw, AuthorizeRequest)
    if fast is not None:
        return fast
    try:
        return authorize_request(json_object(raw))
    except BadRequest as exc:
        raise exc.expecting(expected_fields(AuthorizeRequest)) from None


def notify_body(request: Request) -> str:
    """The POST /notify_client body's payment id; every BadRequest says what is expected."""
    try:
        return transaction_id(body_object(request)[1])
    except BadRequest as exc:
        raise exc.expecting("expected fields: transaction_id") from None


def operation_body(request: Request, kind: type[S]) -> tuple[bytes, S]:
    """The raw body of an operation on a payment and the request in it; an empty body is {}
    (void and reverse take no fields). Every BadRequest says which fields are expected."""
    raw = request.get_data(cache=True)
    try:
        body = body_object(request)[1] if raw.strip() else {}
        return raw, typed(body, kind)
    except BadRequest as exc:
        raise exc.expecting(expected_fields(kind)) from None


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
    _check_unicode(payment_id, "transaction_id")
    return payment_id


@functools.cache
def expected_fields(kind: type[msgspec.Struct]) -> str:
    """``kind``'s fields for a client: "expected fields: a, b (or c: <description>), d;
    optional: e {its fields}, f"."""
    groups = _groups(kind)
    by_name = _by_name(kind)
    required: list[str] = []
    optional: list[str] = []
    listed_groups: list[OneOf] = []
    for field in by_name.values():
        group = groups.get(field.name)
        if group is not None:
            if group not in listed_groups:  # the whole group where its first field is declared
                listed_groups.append(group)
                first = group.ways[0]
                others = ", or ".join(_way(way, by_name, listed=True) for way in group.ways[1:])
                required += [*first[:-1], f"{first[-1]} (or {others})"]
        elif field.required:
            required.append(field.name)
        elif field.is_object:
            inner = ", ".join(f.name for f in _fields(field.base))
            optional.append(f"{field.name} {{{inner}}}")
        else:
            optional.append(field.name)
    if not required and not optional:
        return "expected no fields: an empty body or {}"
    listed = "expected fields: " + ", ".join(required) if required else "no field required"
    return listed + (f"; optional: {', '.join(optional)}" if optional else "")


def typed(body: dict[str, Any], kind: type[S]) -> S:
    """``body`` as a ``kind``; BadRequest naming the first problem (see the module's order)."""
    _check_object(body, kind, "")
    given = _without_nulls(body, kind)
    # Cannot fail after the checks above; were it to, it is a bug: a 500, not a 400.
    return msgspec.convert(given, kind)


def fast_typed(raw: bytes, kind: type[S]) -> S | None:
    """``raw`` as a ``kind`` through msgspec's decoder, when it passes every check the walk
    makes; None when anything is off (the walk then names the problem)."""
    try:
        body = msgspec.json.decode(raw)  # lone surrogates, NaN, bad UTF-8: refused
        if not isinstance(body, dict) or not _known_fields_only(body, kind):
            return None
        value = msgspec.convert(body, kind)  # types and constraints, strict as the walk
    except (msgspec.MsgspecError, RecursionError):  # msgspec's depth limit is Python's
        return None
    return value if _passes_checks(value, kind) else None


def _known_fields_only(body: dict[str, Any], kind: type[msgspec.Struct]) -> bool:
    """No unknown field at any depth (a nested type may take them when decoding a topic)."""
    fields = _by_name(kind)
    for name, value in body.items():
        field = fields.get(name)
        if field is None:
            return False
        if field.is_object and isinstance(value, dict) and not _known_fields_only(
                value, field.base):
            return False
    return True


def _passes_checks(value: msgspec.Struct, kind: type[msgspec.Struct]) -> bool:
    """The messages.Check of each field and object field, and each one_of group given one
    way, whole."""
    for field in _fields(kind):
        given = getattr(value, field.attr)
        if given is None or given is field.default:  # left out: the declaration's own value
            continue
        if field.is_object and not _passes_checks(given, field.base):
            return False
        for check in field.checks:
            if not check.predicate(given):
                return False
    attrs = _attrs(kind)
    for group in getattr(kind, "one_of", ()):
        ways = [way for way in group.ways
                if any(getattr(value, attrs[name]) is not None for name in way)]
        if len(ways) != 1 or any(getattr(value, attrs[name]) is None for name in ways[0]):
            return False
    return True


# ---------------------------------------------------------------------------- the walk


@dataclass(frozen=True)
class _Field:
    """One declared field, as the checks need it."""

    name: str
    attr: str  # the Struct's attribute (``name`` is the field's name in JSON)
    required: bool
    default: Any  # msgspec.NODEFAULT when required
    base: Any  # str, int or a Struct type: what a wrong type is told it should be
    declared: Any  # the type with its constraints, without `| None`
    description: str | None
    checks: tuple[Check, ...]

    @functools.cached_property  # read for each field of each request's body
    def is_object(self) -> bool:
        return isinstance(self.base, type) and issubclass(self.base, msgspec.Struct)

    def type_phrase(self) -> str:
        if self.is_object:
            names = _fields(self.base)
            listed = ", ".join(f.name for f in names[:-1]) + f" and {names[-1].name}"
            return f"an object with {listed}"
        if isinstance(self.base, type) and issubclass(self.base, enum.Enum):
            return "one of " + ", ".join(str(member.value) for member in self.base)
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
        fields.append(_Field(info.encode_name, info.name, info.required, info.default, base,
                             declared, description, checks))
    return tuple(fields)


@functools.cache
def _by_name(kind: type[msgspec.Struct]) -> dict[str, _Field]:
    """``kind``'s fields by their names in JSON."""
    return {field.name: field for field in _fields(kind)}


@functools.cache
def _attrs(kind: type[msgspec.Struct]) -> dict[str, str]:
    """``kind``'s attributes by their fields' names in JSON."""
    return {field.name: field.attr for field in _fields(kind)}


@functools.cache
def _groups(kind: type[msgspec.Struct]) -> dict[str, OneOf]:
    """Each field of a ``one_of`` group of ``kind``, with its group."""
    declared: tuple[OneOf, ...] = getattr(kind, "one_of", ())
    return {name: group for group in declared for way in group.ways for name in way}


def _way(way: tuple[str, ...], by_name: dict[str, _Field], *, listed: bool = False) -> str:
    """One way of a group: "exp_month and exp_year", "expiry (MM/YY or MM/YYYY)" (in a list
    of fields, which has brackets of its own: "expiry: MM/YY or MM/YYYY")."""
    description = by_name[way[0]].description if len(way) == 1 else None
    if description:
        return f"{way[0]}: {description}" if listed else f"{way[0]} ({description})"
    return " and ".join(way)


def _fits(value: Any, kind: Any) -> bool:
    try:
        msgspec.convert(value, kind)  # strict: true is no whole number, 12.5 and "12" neither
    except msgspec.ValidationError:
        return False
    return True


def _check_unicode(value: str, name: str) -> None:
    try:
        value.encode()
    except UnicodeEncodeError:
        # Not the value: it is unprintable, and may hold card data.
        raise BadRequest(f"field '{name}' must be valid Unicode text (it holds a lone "
                         "UTF-16 surrogate)") from None


def _check_type(value: Any, field: _Field, prefix: str) -> None:
    fits = isinstance(value, dict) if field.is_object else _fits(value, field.base)
    if not fits:
        raise BadRequest(f"field '{prefix}{field.name}' must be {field.type_phrase()}")
    if isinstance(value, str):
        _check_unicode(value, prefix + field.name)


def _check_group(body: dict[str, Any], kind: type[msgspec.Struct], group: OneOf,
                 prefix: str) -> None:
    """Exactly one way of ``group`` given (a field null is one left out), and that way whole."""
    by_name = _by_name(kind)
    given = [way for way in group.ways if any(body.get(name) is not None for name in way)]
    if len(given) != 1:
        ways = ", or ".join(_way(way, by_name) for way in group.ways)
        raise BadRequest(f"missing {group.what}: give {ways}" if not given else
                         f"{group.what} is given twice: give {ways}, not both")
    for name in given[0]:
        if name not in body:
            raise BadRequest(f"missing field '{prefix}{name}'")
        _check_type(body[name], by_name[name], prefix)


def _check_object(body: dict[str, Any], kind: type[msgspec.Struct], prefix: str) -> None:
    fields = _fields(kind)
    # Unknown fields are refused at every depth, whatever the type does when decoding from a
    # topic: a client's typo should not pass as a default.
    unknown = sorted(set(body) - {field.name for field in fields})
    if unknown:
        raise BadRequest(f"unknown field '{prefix}{short(unknown[0])}'")
    groups = _groups(kind)
    checked_groups: list[OneOf] = []
    for field in fields:
        group = groups.get(field.name)
        if group is not None:
            if group not in checked_groups:  # where the group's first field is declared
                checked_groups.append(group)
                _check_group(body, kind, group, prefix)
        elif field.required:
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
            continue
        wanted = f"must be {field.description or field.type_phrase()}"
        if not _fits(value, field.declared):
            raise BadRequest(f"field '{prefix}{field.name}' {wanted}")
        for check in field.checks:
            if not check.predicate(value):
                raise BadRequest(f"field '{prefix}{field.name}' {check.answer or wanted}")


def _without_nulls(body: dict[str, Any], kind: type[msgspec.Struct]) -> dict[str, Any]:
    """The body with its optional nulls left out, so that they take their defaults."""
    optional = {field.name for field in _fields(kind) if not field.required}
    return {name: value for name, value in body.items()
            if not (value is None and name in optional)}
