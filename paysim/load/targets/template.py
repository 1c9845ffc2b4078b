"""Templates: paysim's payment fields in a target's own format, and how to read its answer.

A template is a TOML file. Its strings may hold placeholders, ``{field}`` or
``{field:spec}`` (a Python format spec, such as ``{exp_month:02d}``), naming one of FIELDS;
``{{`` and ``}}`` are literal braces. A string that is exactly one placeholder without a spec
keeps the field's JSON type (``"{amount}"`` is the number 1234); any other string is text.
Numbers, booleans, arrays and tables are copied, their strings rendered the same way.

Every mistake (an unknown field, a bad format spec, a pointer that is not one, an unknown key)
is a ConfigError, raised when the file is loaded: nothing has been sent yet. A template is
tried once on a sample payment when it loads, so a spec that does not fit its field fails
there too, not on the first payment.
"""

from __future__ import annotations

import json
import string
import tomllib
import uuid
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any, TypeVar

import msgspec

from paysim.domain import cards, money
from paysim.domain.messages import Merchant
from paysim.infra.errors import ConfigError
from paysim.load.generator import GeneratedPayment
from paysim.load.targets.pointer import MISSING, Pointer, parse_pointer

Value = str | int
T = TypeVar("T")


@dataclass(frozen=True)
class PaymentFields:
    """One payment as a template sees it: the generated payment and the ids it is sent under."""

    payment: GeneratedPayment
    payment_id: str
    idempotency_key: str
    run_id: str


def new_fields(payment: GeneratedPayment, run_id: str) -> PaymentFields:
    return PaymentFields(payment, str(uuid.uuid4()), str(uuid.uuid4()), run_id)


def _amount_decimal(fields: PaymentFields) -> str:
    payment = fields.payment
    digits = money.exponent(payment.currency) if money.is_currency(payment.currency) else 2
    sign = "-" if payment.amount < 0 else ""
    whole, part = divmod(abs(payment.amount), 10 ** digits)
    return f"{sign}{whole}.{part:0{digits}d}" if digits else f"{sign}{whole}"


# name -> (what it is, for the README and errors; its value for a payment)
FIELDS: dict[str, tuple[str, Callable[[PaymentFields], Value]]] = {
    "card_number": ("the card number (PAN), digits", lambda f: f.payment.card.number),
    "exp_month": ("expiry month 1-12 (integer)", lambda f: f.payment.card.exp_month),
    "exp_year": ("expiry year, four digits (integer)", lambda f: f.payment.card.exp_year),
    "exp_year2": ("expiry year's last two digits (integer)",
                  lambda f: f.payment.card.exp_year % 100),
    "cvv": ("card verification value (text)", lambda f: f.payment.card.cvv),
    "amount": ("amount in minor units (integer)", lambda f: f.payment.amount),
    "amount_decimal": ("amount in major units as text, e.g. 12.34", _amount_decimal),
    "currency": ("ISO 4217 code", lambda f: f.payment.currency),
    "merchant_id": ("merchant id", lambda f: f.payment.merchant.id),
    "merchant_name": ("merchant name", lambda f: f.payment.merchant.name),
    "merchant_mcc": ("merchant category code, 4 digits", lambda f: f.payment.merchant.mcc),
    "merchant_country": ("merchant country, ISO 3166 alpha-2",
                         lambda f: f.payment.merchant.country),
    "payment_id": ("paysim's id of the payment (a UUID)", lambda f: f.payment_id),
    "idempotency_key": ("a fresh UUID per payment", lambda f: f.idempotency_key),
    "run_id": ("the run's id", lambda f: f.run_id),
    "seq": ("the payment's number in the run (integer)", lambda f: f.payment.seq),
}
# Fields unique to one payment: what an outcome can be matched by.
CORRELATABLE = ("payment_id", "idempotency_key")

SAMPLE = GeneratedPayment(0, cards.CardBlock("4111111111111111", 12, 2030, "123"), 1234, "USD",
                          Merchant("m00000", "Sample", "5411", "US"), None)


# ------------------------------------------------------------------------- rendering


Render = Callable[[PaymentFields], Any]


def _placeholder(field: str, spec: str, where: str) -> Callable[[PaymentFields], Value]:
    if field not in FIELDS:
        raise ConfigError(f"{where}: unknown field {{{field}}}; the fields are "
                          f"{', '.join(FIELDS)}")
    get = FIELDS[field][1]
    if not spec:
        return get
    return lambda fields: format(get(fields), spec)


def compile_text(text: str, where: str) -> Render:
    """A template string as a function of the payment's fields."""
    try:
        pieces = list(string.Formatter().parse(text))
    except ValueError as exc:  # a lone { or }
        raise ConfigError(f"{where}: {exc} in {text!r} (write {{{{ and }}}} for braces)"
                          ) from None
    parts: list[Callable[[PaymentFields], Any]] = []
    for literal, field, spec, conversion in pieces:
        if literal:
            parts.append(lambda _f, literal=literal: literal)
        if field is None:
            continue
        if conversion or "{" in (spec or ""):
            raise ConfigError(f"{where}: {{{field}...}} takes a format spec only, such as "
                              "{exp_month:02d}")
        parts.append(_placeholder(field, spec or "", where))
    if len(pieces) == 1 and pieces[0][0] == "" and pieces[0][1] and not pieces[0][2]:
        return parts[0]  # the whole string is one field: keep its type
    return lambda fields: "".join(str(part(fields)) for part in parts)


def compile_value(value: Any, where: str) -> Render:
    """A template value (TOML's types) as a function of the payment's fields."""
    if isinstance(value, str):
        return compile_text(value, where)
    if isinstance(value, dict):
        members = {key: compile_value(item, f"{where}.{key}") for key, item in value.items()}
        return lambda fields: {key: render(fields) for key, render in members.items()}
    if isinstance(value, list):
        items = [compile_value(item, f"{where}[{index}]") for index, item in enumerate(value)]
        return lambda fields: [render(fields) for render in items]
    if isinstance(value, bool | int | float):
        return lambda _f: value
    # TOML dates and times have no JSON form.
    raise ConfigError(f"{where}: {type(value).__name__} values cannot be sent as JSON; "
                      "quote them")


def fields_used(value: Any) -> set[str]:
    """The fields a template value names anywhere inside it."""
    if isinstance(value, str):
        try:
            return {field for _, field, _, _ in string.Formatter().parse(value) if field}
        except ValueError:
            return set()
    if isinstance(value, dict):
        return set().union(*(fields_used(item) for item in value.values()))
    if isinstance(value, list):
        return set().union(*(fields_used(item) for item in value))
    return set()


# ------------------------------------------------------------------------- decisions


@dataclass(frozen=True)
class Decision:
    approved: bool
    reason: str  # the target's reason as text; "-" when it gave none


class NoDecision(Exception):
    """An answer or record without the decision where the template says it is."""


REASON_CHARS = 40


def _as_text(value: Any) -> str:
    text = value if isinstance(value, str) else json.dumps(value)
    # The reason lands in the report: never a card number, whatever the target echoes.
    return cards.redact_card_numbers(text)[:REASON_CHARS]


@dataclass(frozen=True)
class DecisionRule:
    """Where a decision is: ``decision`` (a pointer; its value one of ``approved`` means
    approved, any other declined) and ``reason``. Without ``decision`` the caller decides
    (HTTP: by status code)."""

    decision: Pointer | None
    approved: tuple[Any, ...]
    reason: Pointer | None

    def read(self, document: Any, default: bool | None = None) -> Decision:
        """The decision in ``document``; ``default`` when there is no ``decision`` pointer.
        NoDecision (one line) when the pointer finds nothing."""
        if self.decision is None:
            if default is None:
                raise NoDecision("no decision pointer")
            approved = default
        else:
            value = self.decision.read(document)
            if value is MISSING:
                raise NoDecision(f"nothing at {self.decision.text}")
            # type-checked: true is not 1 in JSON
            approved = any(type(value) is type(ok) and value == ok for ok in self.approved)
        reason = MISSING if self.reason is None else self.reason.read(document)
        return Decision(approved, "-" if reason is MISSING or reason is None
                        else _as_text(reason))


# ------------------------------------------------------------------------- files


class _Decision(msgspec.Struct, forbid_unknown_fields=True, frozen=True):
    decision: str | None = None
    approved: list[Any] = msgspec.field(default_factory=lambda: ["approved"])
    reason: str | None = None


class _Response(_Decision, forbid_unknown_fields=True, frozen=True):
    # Answers with these statuses carry a decision; any other status is an error.
    statuses: list[int] | None = None  # None: 2xx and 402
    # Without a decision pointer: these statuses approve, the other listed ones decline.
    approved_statuses: list[int] | None = None  # None: 2xx


class _Request(msgspec.Struct, forbid_unknown_fields=True, frozen=True):
    body: dict[str, Any]
    method: str = "POST"
    headers: dict[str, str] = msgspec.field(default_factory=dict)


class _HttpFile(msgspec.Struct, forbid_unknown_fields=True, frozen=True):
    request: _Request
    response: _Response


class _Record(msgspec.Struct, forbid_unknown_fields=True, frozen=True):
    value: dict[str, Any]
    key: str | None = None
    headers: dict[str, str] = msgspec.field(default_factory=dict)


class _Outcome(_Decision, forbid_unknown_fields=True, frozen=True):
    match: str = "payment_id"  # the field the outcome's correlate pointer carries back
    correlate: str | None = None  # a pointer into the outcome; --correlate overrides


class _KafkaFile(msgspec.Struct, forbid_unknown_fields=True, frozen=True):
    record: _Record
    outcome: _Outcome


def _read_file(path: Path, kind: type[T]) -> T:
    try:
        data = tomllib.loads(path.read_text())
    except OSError as exc:
        raise ConfigError(f"{path}: cannot read the template: {exc.strerror}") from None
    except (tomllib.TOMLDecodeError, UnicodeDecodeError) as exc:
        raise ConfigError(f"{path}: not a TOML template: {exc}") from None
    try:
        return msgspec.convert(data, kind)
    except msgspec.ValidationError as exc:
        raise ConfigError(f"{path}: {exc}") from None


def _pointer(text: str | None, where: str) -> Pointer | None:
    if text is None:
        return None
    try:
        return parse_pointer(text)
    except ValueError as exc:
        raise ConfigError(f"{where}: {exc}") from None


def _rule(spec: _Decision, where: str) -> DecisionRule:
    return DecisionRule(_pointer(spec.decision, f"{where}.decision"), tuple(spec.approved),
                        _pointer(spec.reason, f"{where}.reason"))


def _tried(render: Render, path: Path) -> Render:
    """``render``, once tried on a sample payment: a format spec that does not fit its
    field (``{cvv:02d}``) fails now, not on the first payment."""
    try:
        json.dumps(render(new_fields(SAMPLE, "run-sample")))
    except (ValueError, TypeError) as exc:
        raise ConfigError(f"{path}: a placeholder's format does not fit its field: {exc}"
                          ) from None
    return render


@dataclass(frozen=True)
class RequestTemplate:
    """An HTTP authorization request in the target's format, and how to read its answer."""

    method: str
    headers: Render  # -> dict[str, str]
    body: Render  # -> the JSON body
    rule: DecisionRule
    statuses: Callable[[int], bool]  # an answer with this status carries a decision
    approves: Callable[[int], bool]  # without a decision pointer: this status approves


def load_request_template(path: str | Path) -> RequestTemplate:
    """The HTTP template at ``path``; ConfigError (exit 2) on any mistake in it."""
    path = Path(path)
    spec = _read_file(path, _HttpFile)
    method = spec.request.method.upper()
    if method not in ("POST", "PUT", "PATCH"):
        raise ConfigError(f"{path}: request.method: POST, PUT or PATCH (a body is sent), "
                          f"got {spec.request.method!r}")
    listed = spec.response.statuses
    approving = spec.response.approved_statuses
    return RequestTemplate(
        method=method,
        headers=_tried(compile_value(spec.request.headers, "request.headers"), path),
        body=_tried(compile_value(spec.request.body, "request.body"), path),
        rule=_rule(spec.response, "response"),
        statuses=(lambda s: 200 <= s < 300 or s == 402) if listed is None
        else frozenset(listed).__contains__,
        approves=(lambda s: 200 <= s < 300) if approving is None
        else frozenset(approving).__contains__,
    )


@dataclass(frozen=True)
class RecordTemplate:
    """A Kafka record in the target's format, and how to read and match its outcome."""

    key: Render | None  # -> text
    headers: Render  # -> dict[str, str]
    value: Render  # -> the JSON value
    rule: DecisionRule
    match: str  # the field whose value the outcome carries at ``correlate``
    correlate: Pointer | None


def load_record_template(path: str | Path, correlate: str | None = None) -> RecordTemplate:
    """The Kafka template at ``path``; ``correlate`` (the flag) beats the file's. ConfigError
    (exit 2) on any mistake in it."""
    path = Path(path)
    spec = _read_file(path, _KafkaFile)
    outcome = spec.outcome
    if outcome.decision is None:
        raise ConfigError(f"{path}: outcome.decision: a JSON pointer to the decision in the "
                          "outcome record, such as /status")
    if outcome.match not in CORRELATABLE:
        raise ConfigError(f"{path}: outcome.match: {' or '.join(CORRELATABLE)} (a value "
                          f"unique to one payment), got {outcome.match!r}")
    written = fields_used(spec.record.value) | fields_used(spec.record.key or "") | \
        fields_used(spec.record.headers)
    if outcome.match not in written:
        raise ConfigError(f"{path}: the record never writes {{{outcome.match}}}, so no outcome "
                          "could be matched to its payment")
    pointer = correlate if correlate is not None else outcome.correlate
    if pointer is None:
        raise ConfigError(f"{path}: where the outcome carries {{{outcome.match}}}: give "
                          "--correlate /pointer (or outcome.correlate)")
    return RecordTemplate(
        key=None if spec.record.key is None
        else _tried(compile_text(spec.record.key, "record.key"), path),
        headers=_tried(compile_value(spec.record.headers, "record.headers"), path),
        value=_tried(compile_value(spec.record.value, "record.value"), path),
        rule=_rule(outcome, "outcome"),
        match=outcome.match,
        correlate=_pointer(pointer, "--correlate" if correlate is not None
                           else "outcome.correlate"),
    )
