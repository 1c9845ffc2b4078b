"""Messages on the topics: valid ones round-trip, every invalid one is a one-line SchemaError."""

from __future__ import annotations

import functools
import json
import operator
import uuid
from typing import Annotated

import msgspec
import pytest

from paysim.domain import cards, messages
from paysim.domain.messages import (
    Codec,
    DeadLetter,
    Merchant,
    Notification,
    PaymentAuthorized,
    PaymentOutcome,
    PaymentRequested,
    SchemaError,
    encode,
)

PAYMENT_ID = "0b6f5c1e-2d3a-4b5c-8d9e-0f1a2b3c4d5e"
MERCHANT = Merchant(id="m00001", name="Acme Groceries", mcc="5411", country="US")
COMMON: dict[str, object] = {
    "payment_id": PAYMENT_ID, "run_id": "run-20260101-000000-abcdef", "seq": 7,
    "amount": 1234, "currency": "USD", "merchant": MERCHANT,
    "stages": {"requested": 1_700_000_000_000_000},
}

MESSAGES: list[msgspec.Struct] = [
    PaymentRequested(**COMMON, card="bm9uY2UrY2lwaGVydGV4dA=="),
    PaymentRequested(**{**COMMON, "callback_url": "http://127.0.0.1:9/hook"}, card="x"),
    PaymentAuthorized(**COMMON, token="tok_" + "a" * 32, masked_pan="424242******4242",
                      network="visa", exp_month=12, exp_year=2030),
    PaymentAuthorized(**COMMON, token="tok_" + "b" * 32, masked_pan="400000******9995",
                      network="visa", exp_month=1, exp_year=27, test_reason="51"),
    PaymentOutcome(**COMMON, status="approved", reason_code="00", reason_text="approved",
                   token="tok_" + "a" * 32, masked_pan="424242******4242", network="visa"),
    PaymentOutcome(**COMMON, status="declined", reason_code="14",
                   reason_text="invalid card number"),
    Notification(event_id="evt_1", payment_id=PAYMENT_ID, run_id="r", status="approved",
                 reason_code="00", amount=1234, currency="USD", masked_pan=None,
                 notified_at=1_700_000_000_000_000),
    DeadLetter(service="authorizer", source_topic="payments.requested", partition=3,
               offset=42, reason="not valid JSON", key=None, original="e30=", at=1),
]


def valid_requested() -> dict[str, object]:
    return json.loads(encode(MESSAGES[0]))


def assert_one_line_schema_error(codec: Codec, raw: bytes | None) -> SchemaError:
    with pytest.raises(SchemaError) as caught:
        codec.decode(raw)
    message = str(caught.value)
    assert message
    assert "\n" not in message
    assert "\r" not in message
    return caught.value


@pytest.mark.parametrize("message", MESSAGES, ids=lambda m: type(m).__name__)
def test_round_trip(message: msgspec.Struct) -> None:
    decoded = Codec(type(message)).decode(encode(message))
    assert decoded == message
    assert type(decoded) is type(message)


def test_encoded_messages_carry_the_version() -> None:
    for message in MESSAGES:
        assert json.loads(encode(message))["v"] == messages.SCHEMA_VERSION == 1


def test_missing_optional_fields_take_their_defaults() -> None:
    raw = valid_requested()
    for name in ("v", "seq", "callback_url"):
        raw.pop(name, None)
    decoded = Codec(PaymentRequested).decode(json.dumps(raw).encode())
    assert (decoded.v, decoded.seq, decoded.callback_url) == (1, 0, None)


def test_schema_error_is_a_value_error() -> None:
    assert issubclass(SchemaError, ValueError)


def test_none_is_a_schema_error() -> None:
    error = assert_one_line_schema_error(Codec(PaymentRequested), None)
    assert "empty message" in str(error)


@pytest.mark.parametrize("raw", [b"", b"{", b"{not json}", b'{"amount": }', b"\xff\xfe",
                                 b"{\n\n", b"nul", b'{"amount": 1,}'])
def test_invalid_json_is_a_schema_error(raw: bytes) -> None:
    error = assert_one_line_schema_error(Codec(PaymentRequested), raw)
    assert str(error).startswith("not valid JSON")


@pytest.mark.parametrize(("field", "value"), [
    ("amount", "1234"),
    ("amount", None),
    ("amount", True),
    ("seq", "7"),
    ("currency", 840),
    ("currency", "usd"),
    ("currency", "USDX"),
    ("merchant", "m00001"),
    ("merchant", {"id": "m1", "name": "A", "mcc": "54a1", "country": "US"}),
    ("merchant", {"id": "m1", "name": "A", "mcc": "5411", "country": "USA"}),
    ("merchant", {"id": "m1", "name": "", "mcc": "5411", "country": "US"}),
    ("stages", {"requested": "soon"}),
    ("stages", [1, 2]),
    ("stages", {"4242424242424242": 1}),  # stage names are words: a card number is none
    ("stages", {"requested now": 1}),
    ("run_id", ""),
    ("run_id", "r" * 201),
    ("card", 123),
    ("callback_url", 5),
    ("v", "1"),
])
def test_wrong_types_are_schema_errors(field: str, value: object) -> None:
    raw = valid_requested()
    raw[field] = value
    error = assert_one_line_schema_error(Codec(PaymentRequested), json.dumps(raw).encode())
    assert str(error).startswith("PaymentRequested schema:")


@pytest.mark.parametrize("field", ["payment_id", "run_id", "amount", "currency", "merchant",
                                   "stages", "card"])
def test_missing_required_field_is_a_schema_error(field: str) -> None:
    raw = valid_requested()
    del raw[field]
    error = assert_one_line_schema_error(Codec(PaymentRequested), json.dumps(raw).encode())
    assert field in str(error)


@pytest.mark.parametrize("amount", [1234.0, 12.34, 1e3])
def test_a_float_amount_is_a_schema_error(amount: float) -> None:
    compact = json.dumps(valid_requested(), separators=(",", ":"))
    raw = compact.replace('"amount":1234', f'"amount":{amount!r}')
    assert f'"amount":{amount!r}' in raw
    error = assert_one_line_schema_error(Codec(PaymentRequested), raw.encode())
    assert "amount" in str(error)


@pytest.mark.parametrize("payment_id", [
    "not-a-uuid",
    "",
    PAYMENT_ID.upper(),
    PAYMENT_ID.replace("-", ""),
    PAYMENT_ID + "0",
    PAYMENT_ID[:-1],
    "{" + PAYMENT_ID + "}",
    PAYMENT_ID + "\n",  # `$` in UUID_PATTERN also matches before a final newline
])
def test_a_bad_payment_id_is_a_schema_error(payment_id: str) -> None:
    raw = valid_requested()
    raw["payment_id"] = payment_id
    error = assert_one_line_schema_error(Codec(PaymentRequested), json.dumps(raw).encode())
    assert "payment_id" in str(error)


@pytest.mark.parametrize(("field", "value"), [
    ("currency", "USD\n"),
    ("merchant", {"id": "m1", "name": "A", "mcc": "5411\n", "country": "US"}),
    ("merchant", {"id": "m1", "name": "A", "mcc": "5411", "country": "US\n"}),
], ids=["currency", "mcc", "country"])
def test_a_trailing_newline_does_not_fit_a_pattern(field: str, value: object) -> None:
    raw = valid_requested()
    raw[field] = value
    assert_one_line_schema_error(Codec(PaymentRequested), json.dumps(raw).encode())


@pytest.mark.parametrize("version", [0, 2, 99, -1])
def test_a_wrong_schema_version_is_a_schema_error(version: int) -> None:
    raw = valid_requested()
    raw["v"] = version
    error = assert_one_line_schema_error(Codec(PaymentRequested), json.dumps(raw).encode())
    assert f"unsupported schema version {version}" in str(error)


@pytest.mark.parametrize("kind", [PaymentAuthorized, PaymentOutcome, Notification, DeadLetter])
def test_other_kinds_check_the_version_too(kind: type[msgspec.Struct]) -> None:
    message = next(m for m in MESSAGES if type(m) is kind)
    raw = json.loads(encode(message))
    raw["v"] = 2
    assert_one_line_schema_error(Codec(kind), json.dumps(raw).encode())


def test_another_kind_of_message_is_a_schema_error() -> None:
    notification = next(m for m in MESSAGES if isinstance(m, Notification))
    assert_one_line_schema_error(Codec(PaymentRequested), encode(notification))


@pytest.mark.parametrize("raw", [b"[]", b"1", b'"text"', b"null", b"true"])
def test_a_non_object_is_a_schema_error(raw: bytes) -> None:
    assert_one_line_schema_error(Codec(PaymentRequested), raw)


def test_deeply_nested_unknown_field_is_a_schema_error() -> None:
    # About 2 kB from any producer on the topic; it must become a dead letter, not escape the
    # loop's `except SchemaError`.
    depth = 1_000
    raw = json.dumps(valid_requested())[:-1].encode() + (
        b', "extra": ' + b"[" * depth + b"]" * depth + b"}")
    assert_one_line_schema_error(Codec(PaymentRequested), raw)


def test_a_new_payment_request_has_its_card_sealed_under_its_own_id() -> None:
    key = bytes(range(32))
    card = cards.CardBlock(number="4242424242424242", exp_month=12, exp_year=2030, cvv="987")
    first, second = (
        messages.new_payment_request(card, cards.CardCipher(key), run_id="r", seq=4,
                                     amount=100, currency="EUR", merchant=MERCHANT,
                                     callback_url=None, requested_at=123)
        for _ in range(2))
    assert first.payment_id != second.payment_id
    assert Codec(PaymentRequested).decode(encode(first)) == first
    assert (first.run_id, first.seq, first.amount, first.currency, first.merchant,
            first.callback_url, first.stages) == ("r", 4, 100, "EUR", MERCHANT, None,
                                                  {"requested": 123})
    assert cards.CardCipher(key).decrypt(first.card, first.payment_id.encode()) == card
    with pytest.raises(ValueError):
        cards.CardCipher(key).decrypt(first.card, second.payment_id.encode())


@pytest.mark.parametrize(("url", "problem"), [
    (None, None),
    ("https://example.test/hook", None),
    ("ftp://example.test/x", "callback_url is not an http(s) URL"),
    ("http://[::1", "callback_url is not an http(s) URL"),
])
def test_the_declared_callback_url_check(url: str | None, problem: str | None) -> None:
    message = PaymentRequested(**{**COMMON, "callback_url": url}, card="x")
    assert messages.failed_check(message) == problem


PAN = "4242424242424242"
NO_PAN = "is not allowed to hold a card number"


@pytest.mark.parametrize(("changes", "problem"), [
    ({}, None),
    ({"run_id": f"run {PAN}"}, f"run_id {NO_PAN}"),
    ({"merchant": Merchant(id=PAN, name="n", mcc="5411", country="US")},
     f"merchant.id {NO_PAN}"),
    ({"merchant": Merchant(id="m", name="4242 4242 4242 4242", mcc="5411", country="US")},
     f"merchant.name {NO_PAN}"),
    ({"callback_url": f"https://e.test/h?c={PAN}"}, f"callback_url {NO_PAN}"),
    # The first problem in field order: the run id before the merchant.
    ({"run_id": PAN, "merchant": Merchant(id=PAN, name="n", mcc="5411", country="US")},
     f"run_id {NO_PAN}"),
], ids=["clean", "run_id", "merchant.id", "merchant.name", "callback_url", "first"])
def test_the_declared_card_number_check(changes: dict[str, object], problem: str | None
                                        ) -> None:
    message = PaymentRequested(**{**COMMON, **changes}, card="x")
    assert messages.failed_check(message) == problem


@pytest.mark.parametrize(("amount", "problem"), [
    (1234, None),
    (10**12 - 1, None),  # 12 digits: no card number is that short
    (10**18, None),  # 19 digits, but not Luhn-valid
    (int(PAN), "amount is not allowed to look like a card number"),
    (525969678039357312, "amount is not allowed to look like a card number"),  # the fuzz's
    (-int(PAN), "amount is not allowed to look like a card number"),
], ids=["small", "12-digits", "not-luhn", "pan", "18-digits", "negative"])
def test_an_amount_that_looks_like_a_card_number_fails_its_check(amount: int,
                                                                 problem: str | None) -> None:
    # It would be echoed, in clear, by every record and answer about the payment.
    message = PaymentRequested(**{**COMMON, "amount": amount}, card="x")
    assert messages.failed_check(message) == problem


@pytest.mark.parametrize(("seq", "problem"), [
    (0, None), (10**12 - 1, None), (10**18, None),
    (int(PAN), "seq is not allowed to look like a card number"),
    (7379123212343, "seq is not allowed to look like a card number"),  # the fuzz's, 13 digits
], ids=["zero", "12-digits", "not-luhn", "pan", "13-digits"])
def test_a_seq_that_looks_like_a_card_number_fails_its_check(seq: int,
                                                             problem: str | None) -> None:
    # Like the amount, every record about the payment echoes it.
    message = PaymentRequested(**{**COMMON, "seq": seq}, card="x")
    assert messages.failed_check(message) == problem


def test_new_payment_id_is_a_random_version_4_uuid_in_its_canonical_text() -> None:
    ids = [messages.new_payment_id() for _ in range(2000)]
    assert len(set(ids)) == len(ids)
    for text in ids:
        parsed = uuid.UUID(text)
        assert str(parsed) == text  # lowercase, dashed: what str(uuid.uuid4()) gives
        assert parsed.version == 4 and parsed.variant == uuid.RFC_4122
    # Every bit the version and variant leave free varies.
    free = ~((0xF << 76) | (0x3 << 62)) & ((1 << 128) - 1)
    assert functools.reduce(operator.or_, (uuid.UUID(t).int for t in ids)) & free == free


@pytest.mark.parametrize(("kind", "field", "value", "where"), [
    (PaymentRequested, "currency", "usd", "`$.currency`"),
    (PaymentAuthorized, "payment_id", "not-a-uuid", "`$.payment_id`"),
    (PaymentOutcome, "stages", {"requested": 1, "Processed": 2}, "`key` in `$.stages`"),
    (messages.OperationRequested, "payment_id", PAYMENT_ID.upper(), "`$.payment_id`"),
])
def test_a_topic_fields_pattern_is_checked_after_decoding_and_named(
        kind: type[msgspec.Struct], field: str, value: object, where: str) -> None:
    """The topics' own patterns (payment ids, currencies, stage names) are Codec's to check,
    not msgspec's: the answer still names the type, the pattern and where."""
    raw = json.loads(encode(next((m for m in MESSAGES if isinstance(m, kind)), None)
                            or messages.OperationRequested(
                                op_id="op-1", kind=messages.OperationKind.VOID,
                                payment_id=PAYMENT_ID, run_id="r", token="tok_1",
                                requested_at=1)))
    raw[field] = value
    error = str(assert_one_line_schema_error(Codec(kind), json.dumps(raw).encode()))
    assert error.startswith(f"{kind.__name__} schema: Expected `str` matching regex '^"), error
    assert error.endswith(f"- at {where}"), error


def test_a_pattern_remembers_the_values_that_matched_and_only_those() -> None:
    pattern = messages.Pattern(r"^[A-Z]{3}\Z", few_values=True)
    pattern.MAX_REMEMBERED = 2
    assert not pattern.matches("usd") and not pattern.matches("usd")  # refused each time
    assert pattern.matches("USD") and pattern.matches("EUR") and pattern.matches("GBP")
    assert pattern._remembered == {"USD", "EUR"}  # bounded: GBP matched, not kept
    assert pattern.all_match({"USD": 1, "EUR": 2}) and pattern.all_match(["GBP"])
    assert not pattern.all_match(["USD", "gbp"])
    many = messages.Pattern(messages.UUID_PATTERN, few_values=False)
    assert many.matches(PAYMENT_ID) and many._remembered is None


def test_the_schemas_still_show_the_patterns_codec_checks() -> None:
    """The AsyncAPI document's schemas come from the types: a pattern checked by Codec shows
    there as msgspec's own would."""
    schema = msgspec.json.schema(PaymentOutcome)["$defs"]["PaymentOutcome"]["properties"]
    assert schema["payment_id"] == {"type": "string", "pattern": messages.UUID_PATTERN}
    assert schema["currency"] == {"type": "string", "pattern": r"^[A-Z]{3}\Z"}
    assert schema["stages"]["propertyNames"] == {"pattern": r"^[a-z][a-z_]{0,31}\Z"}


class _Inner(msgspec.Struct):
    code: messages.matching(r"^[0-9]\Z")  # type: ignore[valid-type]


class _Outer(msgspec.Struct):
    inner: _Inner | None = None


class _InList(msgspec.Struct):
    ids: list[messages.Uuid]  # type: ignore[valid-type]


class _InValues(msgspec.Struct):
    by_name: dict[str, messages.Uuid]  # type: ignore[valid-type]


class _Wrapped(msgspec.Struct):
    stages: Annotated[dict[messages.StageName, int],  # type: ignore[valid-type]
                      msgspec.Meta(min_length=1)]


class _Listed(msgspec.Struct):
    inners: list[_Inner]


@pytest.mark.parametrize(("kind", "field"), [
    (_Outer, "inner"), (_InList, "ids"), (_InValues, "by_name"), (_Wrapped, "stages"),
    (_Listed, "inners"),
])
def test_a_pattern_codec_would_not_check_is_refused(kind: type[msgspec.Struct],
                                                    field: str) -> None:
    """Codec checks a message's own text fields and its dict fields' keys; a pattern anywhere
    else would go unchecked, so declaring one is an error at once."""
    with pytest.raises(TypeError, match=rf"{kind.__name__}\.{field}: a pattern Codec would"):
        Codec(kind)


def test_a_repeated_key_is_checked_as_msgspec_keeps_it() -> None:
    """JSON leaves repeated names to the reader; msgspec keeps the last copy, and Codec checks
    what msgspec kept. (msgspec's own pattern check refused a bad copy before a good one: the
    bad copy never reaches the message either way.)"""
    compact = json.dumps(valid_requested(), separators=(",", ":"))
    good_last = compact.replace('"currency":"USD"', '"currency":"usd","currency":"USD"')
    assert Codec(PaymentRequested).decode(good_last.encode()).currency == "USD"
    bad_last = compact.replace('"currency":"USD"', '"currency":"USD","currency":"usd"')
    assert "`$.currency`" in str(assert_one_line_schema_error(Codec(PaymentRequested),
                                                              bad_last.encode()))


def test_no_http_request_body_declares_a_pattern_only_codec_checks() -> None:
    """The HTTP API checks a body with msgspec and its own walk (edge/validation.py), never
    with Codec: a `matching` type there would go unchecked."""
    from paysim.domain.requests import AuthorizeRequest
    from paysim.edge.openapi import ENDPOINTS

    bodies = {endpoint.request for endpoint in ENDPOINTS  # some are schemas, not types
              if isinstance(endpoint.request, type) and issubclass(endpoint.request,
                                                                   msgspec.Struct)}
    assert AuthorizeRequest in bodies and len(bodies) > 3, bodies
    for body in bodies:
        assert messages.declared_patterns(body) == (), body


def test_a_generic_messages_alias_is_decoded_with_its_patterns_found() -> None:
    """Codec takes a generic Struct given its type (the webhook's envelope around a
    notification), as msgspec does."""
    from paysim.pipeline.notifications import EventData, WebhookEvent

    event = WebhookEvent[Notification](id="evt_1", type="payment.approved", created=1,
                                       data=EventData(MESSAGES[6]))
    decoded = Codec(WebhookEvent[Notification]).decode(encode(event))
    assert decoded.data.object == MESSAGES[6]
    with pytest.raises(TypeError, match="a pattern in a generic's parameter"):
        Codec(WebhookEvent[PaymentOutcome])  # the outcome's patterns would go unchecked
