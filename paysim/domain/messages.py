"""The messages on paysim's topics: typed, versioned, JSON on the wire.

Every message carries the payment id (a UUID, also the idempotency key), the run it belongs to,
the amount in integer minor units with its ISO 4217 currency, the merchant, and ``stages``: the
time (Unix microseconds) it entered each stage, for per-stage latency.
"""

from __future__ import annotations

import functools
import os
import re
import time
import types
import typing
from collections.abc import Callable, Iterable
from enum import StrEnum
from typing import Annotated, Any, Generic, TypeVar

import msgspec

from paysim.domain import cards
from paysim.domain.webhooks import valid_callback_url

SCHEMA_VERSION = 1

# Stage names, in pipeline order.
REQUESTED = "requested"
AUTHORIZED = "authorized"
PROCESSED = "processed"
NOTIFIED = "notified"
STAGES = (REQUESTED, AUTHORIZED, PROCESSED, NOTIFIED)


class Check:
    """A rule on a field that no msgspec.Meta constraint can say, declared beside the field's
    type (``Annotated[str, Meta(...), Check(...)]``). msgspec ignores it when decoding; the
    HTTP edge applies it with the rest of the declaration, the Kafka services through
    ``failed_check``. ``brief`` completes "<field> is not ..."; ``answer``, the HTTP API's
    one-line answer, completes "field '<field>' ..." (without one, the API answers with the
    field's description: "must be <description>").
    """

    def __init__(self, predicate: Callable[[Any], bool], brief: str,
                 answer: str | None = None) -> None:
        self.predicate = predicate
        self.brief = brief
        self.answer = answer


def _no_card_number(text: str) -> bool:
    return not cards.contains_card_number(text)


# On every free-text field: the edge refuses a card number there (400), the authorizer
# dead-letters it without its bytes; nothing past the edge may hold one in clear.
NoCardNumber = Check(_no_card_number, "allowed to hold a card number",
                     "must not hold a card number (a Luhn-valid run of 13 to 19 digits)")


CARD_NUMBER_LIKE = 10**12 - 1  # the largest number of fewer than 13 digits


def _number_no_card_number(number: int) -> bool:
    # Below 13 digits no number can be one (and no real payment's amount is 10^12 minor units).
    return -CARD_NUMBER_LIKE <= number <= CARD_NUMBER_LIKE or _no_card_number(str(number))


# On the numbers every record and answer about a payment echoes (its amount, its seq): a card
# number given as one would go on, in clear. The edge refuses it (400), the authorizer
# dead-letters it.
NumberNoCardNumber = Check(_number_no_card_number, "allowed to look like a card number",
                           "must not look like a card number (a Luhn-valid run of 13 to 19 "
                           "digits)")
MinorUnits = Annotated[int, NumberNoCardNumber]
RunIndex = Annotated[int, NumberNoCardNumber]  # a payment's seq in its run


class Pattern:
    """A regular expression a text field of a topic's message must match, declared beside
    its type (``matching`` declares both: the pattern for the schemas, as msgspec's own
    pattern shows there, and this for ``Codec``, which applies it after decoding). msgspec's
    own check cost 0.4 µs a field (each stage name of ``stages`` is one), three quarters of
    decoding a message in every service, where Codec's costs a set lookup for the values of a
    field that takes few (a currency, a stage's name) and one match for the others (a
    payment id)."""

    MAX_REMEMBERED = 4096  # values remembered per pattern: a stage name or currency per run

    def __init__(self, regex: str, *, few_values: bool) -> None:
        self.regex = regex
        self._match = re.compile(regex).match
        self._remembered: set[str] | None = set() if few_values else None

    def matches(self, value: str) -> bool:
        remembered = self._remembered
        if remembered is not None and value in remembered:
            return True
        if self._match(value) is None:
            return False
        if remembered is not None and len(remembered) < self.MAX_REMEMBERED:
            remembered.add(value)
        return True

    def all_match(self, values: Iterable[str]) -> bool:
        """Whether every one of ``values`` (a dict's keys) matches."""
        remembered = self._remembered
        if remembered is not None and remembered.issuperset(values):
            return True
        return all(self.matches(value) for value in values)


def matching(regex: str, *, few_values: bool = False) -> Any:
    """A text type that must match ``regex`` (anchored: ``^...\\Z``), checked by Codec."""
    return Annotated[str, msgspec.Meta(extra_json_schema={"pattern": regex}),
                     Pattern(regex, few_values=few_values)]


# Field types, declared once for the topics and the HTTP API. A description completes
# "field '<name>' must be ...": the HTTP API's answer when a value breaks the constraint.
# \Z, not $: $ also matches before a trailing newline. The topics' own types (not in an HTTP
# request's body) are ``matching``: checked by Codec, not by msgspec.
UUID_PATTERN = r"^[0-9a-f]{8}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{12}\Z"
Uuid = matching(UUID_PATTERN)
Currency = matching(r"^[A-Z]{3}\Z", few_values=True)
Text = Annotated[str, msgspec.Meta(min_length=1, max_length=200,
                                   description="1 to 200 characters"), NoCardNumber]
Mcc = Annotated[str, msgspec.Meta(pattern=r"^[0-9]{4}\Z", description="4 digits")]
Country = Annotated[str, msgspec.Meta(pattern=r"^[A-Z]{2}\Z",
                                      description="2 capital letters (ISO 3166)")]
# The stage a time was stamped at ("requested", ...): a word, so that no card number or other
# data rides along under a stage's name (the Kafka services do not check it otherwise).
StageName = matching(r"^[a-z][a-z_]{0,31}\Z", few_values=True)
CallbackUrl = Annotated[str, msgspec.Meta(description="an http:// or https:// URL"),
                        Check(valid_callback_url, "an http(s) URL"), NoCardNumber]


class CaptureMode(StrEnum):
    """automatic: the authorization is captured at once (one message, as before the
    lifecycle); manual: the issuer holds the amount until a capture, void or expiry."""

    AUTOMATIC = "automatic"
    MANUAL = "manual"


def now_us() -> int:
    return time.time_ns() // 1000


class Merchant(msgspec.Struct, frozen=True):
    id: Text
    name: Text
    mcc: Mcc
    country: Country


class Message(msgspec.Struct, frozen=True, kw_only=True):
    """Fields every message shares."""

    v: int = SCHEMA_VERSION
    payment_id: Uuid
    run_id: Text
    seq: RunIndex = 0  # the payment's index in its run
    amount: MinorUnits
    currency: Currency
    merchant: Merchant
    callback_url: CallbackUrl | None = None
    stages: dict[StageName, int]
    capture: CaptureMode = CaptureMode.AUTOMATIC
    partial_approval: bool = False  # the issuer may approve less than asked (code 10)


class PaymentRequested(Message, frozen=True, kw_only=True):
    """On payments.requested: the card block sealed with AES-GCM (paysim.cards.CardCipher)."""

    card: str


def new_payment_id() -> str:
    """A random (version 4) UUID as text, as ``str(uuid.uuid4())`` gives it, at a third of its
    cost: no UUID object is built (the generator draws one per payment)."""
    raw = bytearray(os.urandom(16))
    raw[6] = (raw[6] & 0x0F) | 0x40  # version 4
    raw[8] = (raw[8] & 0x3F) | 0x80  # RFC 4122 variant
    h = raw.hex()
    return f"{h[:8]}-{h[8:12]}-{h[12:16]}-{h[16:20]}-{h[20:]}"


def new_payment_request(card: cards.CardBlock, cipher: cards.CardCipher, *, run_id: str,
                        seq: int, amount: int, currency: str, merchant: Merchant,
                        callback_url: str | None, requested_at: int | None = None,
                        capture: CaptureMode = CaptureMode.AUTOMATIC,
                        partial_approval: bool = False) -> PaymentRequested:
    """A payment entering the pipeline, under a new payment id: its card sealed for the
    authorizer and bound to that id, its ``requested`` stage at ``requested_at`` (now)."""
    payment_id = new_payment_id()
    at = now_us() if requested_at is None else requested_at
    return PaymentRequested(
        payment_id=payment_id, run_id=run_id, seq=seq, amount=amount, currency=currency,
        merchant=merchant, callback_url=callback_url, stages={REQUESTED: at},
        capture=capture, partial_approval=partial_approval,
        card=cipher.encrypt(card, payment_id.encode()),
    )


class PaymentAuthorized(Message, frozen=True, kw_only=True):
    """On payments.authorized, keyed by card token: no PAN, no CVV."""

    token: str
    masked_pan: str
    network: str
    exp_month: int
    exp_year: int
    test_reason: str | None = None  # a documented test card's forced issuer answer


class PaymentOutcome(Message, frozen=True, kw_only=True):
    """On payments.results: the final answer for a payment."""

    status: str
    reason_code: str
    reason_text: str
    token: str | None = None
    masked_pan: str | None = None
    network: str | None = None
    approved_amount: int | None = None  # what the issuer approved: less than asked on a 10


class OperationKind(StrEnum):
    """What can happen to a payment after its authorization."""

    CAPTURE = "capture"
    INCREMENT = "increment"
    VOID = "void"
    EXPIRE = "expire"
    REVERSE = "reverse"
    REFUND = "refund"
    DISPUTE = "dispute"
    RESOLVE = "resolve"


OperationId = Annotated[str, msgspec.Meta(pattern=r"^[A-Za-z0-9_.:-]{1,80}\Z")]
DisputeReason = Annotated[str, msgspec.Meta(pattern=r"^(?:[0-9]{1,2}\.[0-9]{1,2}|[0-9]{4})\Z",
                                            description="a network's dispute reason code")]


class OperationRequested(msgspec.Struct, frozen=True, kw_only=True):
    """On payments.operations, keyed by card token: one operation on one payment, applied
    once (``op_id`` is its idempotency key) by the lifecycle service."""

    v: int = SCHEMA_VERSION
    op_id: OperationId
    kind: OperationKind
    payment_id: Uuid
    run_id: Text
    token: Annotated[str, msgspec.Meta(min_length=1, max_length=100)]
    amount: Annotated[int, msgspec.Meta(gt=0)] | None = None  # None: all there is
    final: bool = False  # a capture that releases the rest of the hold
    reason_code: DisputeReason | None = None  # a dispute's
    won: bool | None = None  # a dispute resolution's
    requested_at: int


class PaymentEvent(msgspec.Struct, frozen=True, kw_only=True):
    """On payments.events, keyed by card token: one change in a payment's life, with the
    ISO 8583 message type it corresponds to (none for disputes and settlement, which card
    networks carry in clearing files, not in 0xxx messages). An authorization captured at
    once is one event, captured (0200/0210); a manual one's is authorized (0100/0110)."""

    v: int = SCHEMA_VERSION
    event_id: str
    kind: str
    payment_id: str
    run_id: str
    op_id: str
    amount: int
    currency: str
    merchant_id: str
    network: str
    mti: str | None
    state: str  # the payment's state after it
    at: int


class Notification(msgspec.Struct, frozen=True, kw_only=True):
    """On payments.notifications: what the client was told."""

    v: int = SCHEMA_VERSION
    event_id: str
    payment_id: str
    run_id: str
    status: str
    reason_code: str
    amount: int
    currency: str
    masked_pan: str | None
    notified_at: int


class DeadLetter(msgspec.Struct, frozen=True, kw_only=True):
    """On payments.dlq: a message a service could not take, with why and its original bytes."""

    v: int = SCHEMA_VERSION
    service: str
    source_topic: str
    partition: int
    offset: int
    reason: str
    key: str | None  # base64; None where the original is withheld
    # base64 of the value as it arrived (at most the first 64 KiB: see ``truncated``); None
    # for the edge topic, whose malformed records may hold card data in clear.
    original: str | None
    original_size: int = 0
    original_sha256: str = ""
    truncated: bool = False
    at: int


encode = msgspec.json.Encoder().encode


@functools.cache  # per type, not per message: reading the type hints costs tens of µs
def declared_checks(kind: type[msgspec.Struct]) -> tuple[tuple[str, Check], ...]:
    """The Check of each field of ``kind`` that declares one, in field order."""
    hints = typing.get_type_hints(kind, include_extras=True)
    found = []
    for name in kind.__struct_fields__:
        for declared in (hints[name], *typing.get_args(hints[name])):  # X or Optional[X]
            if typing.get_origin(declared) is Annotated:
                found += [(name, meta) for meta in declared.__metadata__
                          if isinstance(meta, Check)]
    return tuple(found)


@functools.cache
def _checked_paths(kind: type[msgspec.Struct]) -> tuple[tuple[tuple[str, ...], Check], ...]:
    """Each declared Check of ``kind`` and of the Structs in its fields (the merchant), with
    the path to its field, in field order."""
    hints = typing.get_type_hints(kind, include_extras=True)
    own = declared_checks(kind)
    found: list[tuple[tuple[str, ...], Check]] = []
    for name in kind.__struct_fields__:
        found += [((name,), check) for field, check in own if field == name]
        for declared in (hints[name], *typing.get_args(hints[name])):  # X or Optional[X]
            if isinstance(declared, type) and issubclass(declared, msgspec.Struct):
                found += [((name, *path), check) for path, check in _checked_paths(declared)]
    return tuple(found)


def failed_check(message: msgspec.Struct) -> str | None:
    """What is wrong with the first field whose declared Check fails ("callback_url is not an
    http(s) URL", "merchant.name is not allowed to hold a card number"), else None. Never the
    value: it may be the very card number the rule keeps out.
    Separate from decoding: the Kafka services reject such a message (a dead letter) as
    they reject an unreadable card block, not as a schema error."""
    for path, check in _checked_paths(type(message)):
        value: Any = message
        for name in path:
            value = getattr(value, name)
            if value is None:
                break
        if value is not None and not check.predicate(value):
            return f"{'.'.join(path)} is not {check.brief}"
    return None


def failed_value_check(declared: Any, value: Any) -> str | None:
    """What is wrong with ``value`` by the first failing Check declared on the field type
    ``declared`` ("is not an http(s) URL"), else None; for a value given alone, such as a
    command-line flag. Never the value."""
    for meta in getattr(declared, "__metadata__", ()):
        if isinstance(meta, Check) and not meta.predicate(value):
            return f"is not {meta.brief}"
    return None


class SchemaError(ValueError):
    """A message that is not valid JSON, or does not fit its schema."""


T = TypeVar("T", bound=msgspec.Struct)


def _struct_of(hint: Any) -> type[msgspec.Struct] | None:
    """The Struct ``hint`` is, itself or a generic one's alias (``WebhookEvent[Notification]``)."""
    struct = typing.get_origin(hint) or hint
    return struct if isinstance(struct, type) and issubclass(struct, msgspec.Struct) else None


def _field_hints(kind: Any) -> dict[str, Any]:
    """Each field's declared type, a generic Struct's type parameters given as in ``kind``."""
    struct = _struct_of(kind)
    if struct is None:
        raise TypeError(f"{kind!r} is not a Struct")
    hints = typing.get_type_hints(struct, include_extras=True)
    given = dict(zip(getattr(struct, "__parameters__", ()), typing.get_args(kind), strict=False))
    return {name: given.get(hint, hint) if isinstance(hint, typing.TypeVar) else hint
            for name, hint in ((name, hints[name]) for name in struct.__struct_fields__)}


def _patterns_within(hint: Any, seen: set[Any]) -> int:
    """How many Patterns ``hint`` declares anywhere in it, its Structs' fields included."""
    count = 0
    if typing.get_origin(hint) is Annotated:
        count = sum(isinstance(meta, Pattern) for meta in hint.__metadata__)
        hint = typing.get_args(hint)[0]
    if _struct_of(hint) is not None:
        if hint in seen:
            return count
        seen.add(hint)
        return count + sum(_patterns_within(field, seen)
                           for field in _field_hints(hint).values())
    return count + sum(_patterns_within(arg, seen) for arg in typing.get_args(hint))


@functools.cache
def declared_patterns(kind: type[msgspec.Struct]) -> tuple[tuple[str, Pattern, bool], ...]:
    """(field, Pattern, whether it is on the keys of a dict field) of each field of ``kind``
    whose type declares one, in field order: on a text field, or on a dict field's keys (each
    maybe optional). A Pattern anywhere else (a list's items, a dict's values, a nested
    Struct's field, a generic's parameter) is a TypeError: Codec would not check it."""
    if any(_patterns_within(arg, set()) for arg in typing.get_args(kind)):
        raise TypeError(f"{kind!r}: a pattern in a generic's parameter, which Codec would not "
                        "check")
    found = []
    for name, hint in _field_hints(kind).items():
        optional = typing.get_origin(hint) in (typing.Union, types.UnionType)
        own = []
        for declared in typing.get_args(hint) if optional else (hint,):  # X or Optional[X]
            keys = typing.get_origin(declared) is dict
            checked = typing.get_args(declared)[0] if keys else declared
            if typing.get_origin(checked) is Annotated:
                own += [(name, meta, keys) for meta in checked.__metadata__
                        if isinstance(meta, Pattern)]
        if _patterns_within(hint, set()) != len(own):
            raise TypeError(f"{_struct_of(kind).__name__}.{name}: a pattern Codec would not "
                            "check (it checks a message's own text fields and its dict fields' "
                            "keys)")
        found += own
    return tuple(found)


class Codec(Generic[T]):  # Generic, not PEP 695: paysim supports Python 3.11
    """Decodes one message type and turns every failure into a one-line SchemaError."""

    def __init__(self, kind: type[T]) -> None:
        self.kind = kind
        self._decoder = msgspec.json.Decoder(kind)
        self._patterns = declared_patterns(kind)

    def decode(self, raw: bytes | None) -> T:
        if raw is None:
            raise SchemaError("empty message (no value)")
        try:
            message = self._decoder.decode(raw)
        except msgspec.ValidationError as exc:
            raise SchemaError(f"{self.kind.__name__} schema: {exc}") from None
        except msgspec.DecodeError as exc:
            raise SchemaError(f"not valid JSON: {exc}") from None
        except RecursionError:
            raise SchemaError("JSON nested too deeply") from None
        for name, pattern, keys in self._patterns:
            value = getattr(message, name)
            if value is not None and not (pattern.all_match(value) if keys
                                          else pattern.matches(value)):
                where = f"`key` in `$.{name}`" if keys else f"`$.{name}`"
                raise SchemaError(f"{self.kind.__name__} schema: Expected `str` matching "
                                  f"regex {pattern.regex!r} - at {where}")
        if getattr(message, "v", SCHEMA_VERSION) != SCHEMA_VERSION:
            raise SchemaError(f"unsupported schema version {message.v} (this paysim reads "
                              f"{SCHEMA_VERSION})")
        return message
