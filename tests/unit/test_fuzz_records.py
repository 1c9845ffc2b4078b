"""Fuzz of everything that decodes Kafka records (hypothesis): the Codec of each message type,
the three services' loops on fake Kafka and Redis, and `paysim audit --pci`'s reading of a
record. Arbitrary bytes, JSON of any shape, and messages that are valid but for a few fields:
a decode gives a typed message or a one-line SchemaError; a service turns every record into an
output or a dead letter, never an exception and never a lost record."""

from __future__ import annotations

import base64
import json
import uuid
from typing import Any
from unittest import mock

import msgspec
import pytest
from hypothesis import example, given
from hypothesis import strategies as st

from paysim.domain import cards, decisions
from paysim.domain.cards import CardBlock, CardCipher
from paysim.domain.messages import (
    Codec,
    DeadLetter,
    PaymentAuthorized,
    PaymentOutcome,
    PaymentRequested,
    SchemaError,
)
from paysim.ops import audit
from paysim.pipeline import loop
from paysim.pipeline.registry import AUTHORIZER, NOTIFIER, PROCESSOR
from paysim.pipeline.service import ServiceSpec
from tests.unit import fuzzing
from tests.unit.fakes import KEYS, FakeMessage, pure_settings
from tests.unit.test_service_loop import Harness

SETTINGS = pure_settings({"services.batch_size": 4, "issuer.decline_rate": 0,
                          "issuer.fault_rate": 0})
PANS = ("4242424242424242", "4000000000000002", "5555555555554444", "378282246310005",
        "4242 4242 4242 4242")

texts = st.one_of(
    st.text(max_size=30),
    st.sampled_from(PANS),
    st.builds(lambda before, pan: before + pan, st.text(max_size=6), st.sampled_from(PANS)),
)
int64 = st.integers(-(2**63), 2**63 - 1)
json_values = fuzzing.json_values(texts)
merchants = st.builds(
    lambda id_, name, mcc, country: {"id": id_, "name": name, "mcc": mcc, "country": country},
    st.sampled_from(["m-1", ""]) | texts, st.sampled_from(["Shop"]) | texts,
    st.sampled_from(["5411", "541"]) | texts, st.sampled_from(["US", "us"]) | texts)


def common(payment_id: str) -> dict[str, Any]:
    return {"payment_id": payment_id, "run_id": "run-z", "seq": 3, "amount": 1250,
            "currency": "USD",
            "merchant": {"id": "m-1", "name": "Shop", "mcc": "5411", "country": "US"},
            "callback_url": "https://shop.example/hook", "stages": {"requested": 1}}


# Values near what each field takes, so that records get past decoding too.
NEAR: dict[str, st.SearchStrategy[Any]] = {
    "v": st.sampled_from([1, 2, 0]), "payment_id": st.builds(lambda: str(uuid.uuid4())),
    "run_id": texts, "seq": int64, "amount": int64,
    "currency": st.sampled_from(["USD", "JPY", "XYZ", "usd"]), "merchant": merchants,
    "callback_url": st.sampled_from(["https://shop.example/hook", "ftp://x", None]) | texts,
    "stages": st.dictionaries(texts, int64, max_size=3),
    "token": st.sampled_from(["tok_1", ""]) | texts,
    "masked_pan": st.sampled_from(["424242******4242", None]) | texts,
    "network": st.sampled_from(["visa", "unknown", None]) | texts,
    "exp_month": int64, "exp_year": int64,
    "test_reason": st.sampled_from([None, *decisions.TEST_CARDS.values()]) | texts,
    "status": st.sampled_from(["approved", "declined", "?"]),
    "reason_code": st.sampled_from(["00", "05", "14", "zz"]) | texts,
    "reason_text": texts,
}
card_blocks = st.builds(
    CardBlock, st.sampled_from([*PANS, *decisions.TEST_CARDS, "4242424242424241", ""]) | texts,
    st.integers(0, 13) | int64, st.integers(2020, 2100) | int64,
    st.sampled_from(["123", "1234", ""]) | texts)
GOOD_CARDS = st.builds(CardBlock, st.sampled_from([PANS[0], *decisions.TEST_CARDS]),
                       st.just(12), st.just(2099), st.just("123"))


@st.composite
def authorized_doc(draw: st.DrawFn, payment_id: str) -> dict[str, Any]:
    return {**common(payment_id), "token": "tok_" + "a" * 32, "masked_pan": "424242******4242",
            "network": "visa", "exp_month": 12, "exp_year": 2099,
            "test_reason": draw(st.sampled_from([None, *decisions.TEST_CARDS.values()]))}


@st.composite
def valid_doc(draw: st.DrawFn, kind: type) -> dict[str, Any]:
    """A valid message of ``kind`` as a JSON document; a request's card block is sealed for
    it, whatever the card (the authorizer decides on it)."""
    payment_id = str(uuid.uuid4())
    if kind is PaymentRequested:
        card = draw(GOOD_CARDS | card_blocks)
        sealed = CardCipher(KEYS.card_key).encrypt(card, payment_id.encode())
        return {**common(payment_id), "card": sealed}
    if kind is PaymentAuthorized:
        return draw(authorized_doc(payment_id))
    if kind is PaymentOutcome:
        return {**common(payment_id), "status": "approved", "reason_code": "00",
                "reason_text": "Approved", "token": "tok_1", "masked_pan": "424242******4242",
                "network": "visa"}
    raise AssertionError(kind)


@st.composite
def near_valid(draw: st.DrawFn, kind: type) -> bytes:
    """A valid message with some fields taken away, some given values near or far from what
    they take, now and then an unknown one."""
    doc = draw(valid_doc(kind))
    for name in list(doc):
        if not draw(st.integers(0, 49)):
            del doc[name]
    for name in draw(st.lists(st.sampled_from(sorted(NEAR)), max_size=2)):
        doc[name] = draw(NEAR[name] | json_values)
    if not draw(st.integers(0, 9)):
        doc[draw(texts)] = draw(json_values)
    return json.dumps(doc, ensure_ascii=draw(st.booleans())).encode(errors="surrogatepass")


def records(kind: type) -> st.SearchStrategy[bytes | None]:
    """Records for a service reading ``kind``: half of them near a valid one."""
    anything = st.one_of(
        st.none(), st.binary(max_size=200),
        st.builds(lambda value: json.dumps(value).encode(), json_values),
        st.integers(1, 100_000).map(lambda depth: b"[" * depth + b"]" * depth),
    )
    return st.one_of(anything, near_valid(kind))


def check_decode(codec: Codec[Any], raw: bytes | None) -> None:
    """A typed message, or a one-line SchemaError that holds no card number."""
    try:
        message = codec.decode(raw)
    except SchemaError as exc:
        reason = str(exc)
        assert reason and "\n" not in reason, reason
        assert not cards.contains_card_number(reason), reason
    else:
        assert isinstance(message, codec.kind)


CODECS = [Codec(kind) for kind in (PaymentRequested, PaymentAuthorized, PaymentOutcome,
                                   DeadLetter)]
MESSAGE_KINDS = (PaymentRequested, PaymentAuthorized, PaymentOutcome)


@fuzzing.FUZZ
@given(raw=st.one_of(*(records(kind) for kind in MESSAGE_KINDS)))
@example(raw=b"[" * 100_000 + b"]" * 100_000)
def test_every_codec_gives_a_typed_message_or_a_one_line_schema_error(raw: bytes | None) -> None:
    for codec in CODECS:
        check_decode(codec, raw)


def run_service(spec: ServiceSpec, values: list[bytes | None]) -> Harness:
    topic = getattr(SETTINGS.topics, spec.input_topic or "")
    harness = Harness([FakeMessage(topic, index % 2, index // 2, value, key=b"k")
                       for index, value in enumerate(values)], spec=spec, settings=SETTINGS)
    with mock.patch.object(loop, "ensure_topics"):  # no broker here
        harness.run()
    return harness


def check_every_record_answered(harness: Harness, values: list[bytes | None]) -> None:
    """Each record is an output or a dead letter, once; the last offsets are committed."""
    counters = harness.loop.counters
    assert counters.processed + counters.dead_letters == len(values)
    letters = harness.letters()
    assert len({(d.partition, d.offset) for d in letters}) == len(letters) == counters.dead_letters
    # Each service answers a record with one output (the processor's ledger events beside it).
    outputs = [r for r in harness.producer.records
               if r.topic not in (SETTINGS.topics.dlq, SETTINGS.topics.events)]
    assert len(outputs) == counters.processed
    committed: dict[int, int] = {}
    for transaction in harness.producer.committed:
        for _, partition, offset in transaction.offsets:
            committed[partition] = max(committed.get(partition, 0), offset)
    assert committed == {p: len(values[p::2]) for p in (0, 1) if values[p::2]}
    for letter in letters:
        # A record a service cannot take is refused for what is wrong with it: an internal
        # error on some input is a bug the loop's safety net hid.
        assert not letter.reason.startswith("internal error"), letter.reason
        assert "\n" not in letter.reason


def check_no_clear_card_number(harness: Harness) -> None:
    """Nothing the authorizer produces holds card data as `paysim audit --pci` sees it:
    outputs carry masked PANs, and its dead letters keep no bytes of the record."""
    findings: list[audit.Finding] = []
    for index, record in enumerate(harness.producer.records):
        audit.scan_record(SETTINGS.topics, record.topic, record.value, str(index), findings)
    assert findings == [], findings


@fuzzing.FUZZ
@given(values=st.lists(records(PaymentRequested), min_size=1, max_size=6))
def test_the_authorizer_answers_every_record_and_lets_no_card_number_through(
    values: list[bytes | None],
) -> None:
    harness = run_service(AUTHORIZER, values)
    check_every_record_answered(harness, values)
    check_no_clear_card_number(harness)


@pytest.mark.parametrize(("field", "number"), [
    # Found by the fuzz, each: the authorizer declined the first ("invalid amount") and passed
    # the second on, and their records echoed the number, a Luhn-valid run of 18 and of 13
    # digits, onto payments.results and payments.authorized.
    ("amount", 525969678039357312), ("seq", 7379123212343)])
def test_a_number_that_looks_like_a_card_number_is_a_dead_letter_without_its_bytes(
        field: str, number: int) -> None:
    payment_id = str(uuid.uuid4())
    card = CardBlock(PANS[0], 12, 2099, "123")
    doc = {**common(payment_id), field: number,
           "card": CardCipher(KEYS.card_key).encrypt(card, payment_id.encode())}
    values: list[bytes | None] = [json.dumps(doc).encode()]
    harness = run_service(AUTHORIZER, values)
    check_every_record_answered(harness, values)
    check_no_clear_card_number(harness)
    assert [letter.reason for letter in harness.letters()] == [
        f"{field} is not allowed to look like a card number"]


@fuzzing.FUZZ
@given(values=st.lists(records(PaymentAuthorized), min_size=1, max_size=6))
def test_the_processor_answers_every_record(values: list[bytes | None]) -> None:
    check_every_record_answered(run_service(PROCESSOR, values), values)


@fuzzing.FUZZ
@given(values=st.lists(records(PaymentOutcome), min_size=1, max_size=6))
def test_the_notifier_answers_every_record(values: list[bytes | None]) -> None:
    check_every_record_answered(run_service(NOTIFIER, values), values)


# ------------------------------------------------------------------------ paysim audit --pci


def dead_letters() -> st.SearchStrategy[bytes]:
    """Dead letters whose original is base64 or not, of anything."""
    return st.builds(
        lambda original, reason: msgspec.json.encode(DeadLetter(
            service="processor", source_topic="payments.authorized", partition=0, offset=1,
            reason=reason, key=None, original=original, at=1)),
        st.none() | st.builds(lambda raw: base64.b64encode(raw).decode(),
                              st.binary(max_size=60) | st.sampled_from(PANS).map(str.encode))
        | texts, texts)


@fuzzing.FUZZ
@given(raw=st.one_of(*(records(kind) for kind in MESSAGE_KINDS), dead_letters()),
       topic=st.sampled_from(["authorized", "dlq"]))
@example(raw=b"[" * 100_000 + b"]" * 100_000, topic="authorized")
@example(raw=msgspec.json.encode(DeadLetter(service="p", source_topic="t", partition=0,
                                            offset=0, reason="r", key=None, original="abc",
                                            at=0)), topic="dlq")
def test_the_card_data_scan_reads_any_record(raw: bytes | None, topic: str) -> None:
    findings: list[audit.Finding] = []
    audit.scan_record(SETTINGS.topics, getattr(SETTINGS.topics, topic), raw or b"", "here",
                      findings)
    for finding in findings:
        assert not cards.contains_card_number(str(finding)), finding
