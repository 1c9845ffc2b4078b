"""The HTTP API on the real broker and redis-server: card checks, Kafka, idempotency, serving."""

from __future__ import annotations

import base64
import hashlib
import hmac
import http.client
import json
import logging
import os
import threading
import time
import uuid
from collections.abc import Iterator
from datetime import UTC, datetime
from typing import Any

import msgspec
import pytest
import redis
from confluent_kafka import OFFSET_BEGINNING, Consumer, KafkaException, Producer, TopicPartition
from flask import Flask
from flask.testing import FlaskClient

from paysim.domain import cards, decisions
from paysim.domain.messages import (
    REQUESTED,
    Codec,
    Merchant,
    Notification,
    PaymentOutcome,
    PaymentRequested,
)
from paysim.edge import server as server_module
from paysim.edge.app import create_app
from paysim.edge.health import HealthChecker
from paysim.edge.operations import route_key
from paysim.infra.config import Settings
from paysim.infra.kafka import client_config
from paysim.infra.secrets import Keys
from paysim.infra.topics import ensure_topics
from paysim.infra.waiting import wait_until
from paysim.pipeline import store
from paysim.pipeline.notifications import WebhookEvent
from paysim.pipeline.registry import PIPELINE
from paysim.stack.manager import LocalStack
from tests.helpers import free_port, settings_for
from tests.integration.http_helpers import http_call, secret_flags, serving

VISA = "4242424242424242"
AMEX = "378282246310005"
NEXT_YEAR = datetime.now(UTC).year + 1
LAST_YEAR = datetime.now(UTC).year - 1


def card_body(**changes: Any) -> dict[str, Any]:
    body: dict[str, Any] = {"card_number": VISA, "exp_month": 12, "exp_year": NEXT_YEAR,
                            "cvv": "987", "amount": 1250, "currency": "USD"}
    body.update(changes)
    return body


@pytest.fixture(scope="module")
def http_settings(local_stack: LocalStack, stack_flags: dict[str, object]) -> Settings:
    """The shared stack, with requested and notifications topics of this module's own, so
    counting the records on them counts only what these tests produced."""
    suffix = uuid.uuid4().hex[:8]
    http_flags = {**stack_flags, "topics.requested": f"test.http.requested.{suffix}",
                  "topics.notifications": f"test.http.notifications.{suffix}"}
    settings = settings_for(http_flags)
    ensure_topics(settings)
    return settings


@pytest.fixture(scope="module")
def keys() -> Keys:
    return Keys(card_key=os.urandom(32), token_key=os.urandom(32), webhook_secret=os.urandom(32))


@pytest.fixture(scope="module")
def redis_client(http_settings: Settings) -> Iterator[redis.Redis]:
    client = store.connect(http_settings)
    yield client
    client.close()


def checked_health(settings: Settings, producer: Producer) -> HealthChecker:
    """A health checker that has checked once (its thread not started: tests check again
    when they need to)."""
    health = HealthChecker(settings, producer, threading.Event())
    health.check()
    return health


@pytest.fixture(scope="module")
def health(http_settings: Settings) -> Iterator[HealthChecker]:
    producer = Producer(client_config(http_settings))
    checker = checked_health(http_settings, producer)
    yield checker
    checker.redis.close()


@pytest.fixture(scope="module")
def app(http_settings: Settings, keys: Keys, redis_client: redis.Redis,
        health: HealthChecker) -> Iterator[Flask]:
    producer = Producer(client_config(http_settings, **{"enable.idempotence": True,
                                                        "linger.ms": 2}))
    yield create_app(http_settings, keys, producer, redis_client, health)
    assert producer.flush(10) == 0


@pytest.fixture
def client(app: Flask) -> FlaskClient:
    return app.test_client()


class TopicReader:
    """Counts and reads back what is on one topic, from a fresh consumer group."""

    def __init__(self, settings: Settings, topic: str) -> None:
        self.topic = topic
        self.partitions = settings.topics.partitions
        self.consumer = Consumer(client_config(settings, **{
            "group.id": f"test-http-{uuid.uuid4()}", "enable.auto.commit": False,
            "enable.partition.eof": False,
        }))

    def count(self) -> int:
        """Records on the topic now (every produce in these tests waits for its ack)."""
        total = 0
        for partition in range(self.partitions):
            low, high = self.consumer.get_watermark_offsets(
                TopicPartition(self.topic, partition), timeout=10)
            total += high - low
        return total

    def all_records(self, expected: int, timeout: float = 30) -> list[Any]:
        """Every record from the beginning, once at least ``expected`` arrived."""
        self.consumer.assign([TopicPartition(self.topic, p, OFFSET_BEGINNING)
                              for p in range(self.partitions)])
        records: list[Any] = []

        def more() -> bool:
            for message in self.consumer.consume(num_messages=500, timeout=0.2):
                assert message.error() is None, message.error()
                records.append(message)
            return len(records) >= expected

        assert wait_until(more, timeout), f"{len(records)} of {expected} records on {self.topic}"
        self.consumer.unassign()
        return records

    def ready(self) -> bool:
        """True once every partition of a freshly created topic has a leader that answers."""
        try:
            self.count()
        except KafkaException:
            return False
        return True

    def close(self) -> None:
        self.consumer.close()


def _reader(settings: Settings, topic: str) -> Iterator[TopicReader]:
    reader = TopicReader(settings, topic)
    assert wait_until(reader.ready, 30), "the new topic's partitions have no leader"
    yield reader
    reader.close()


@pytest.fixture(scope="module")
def requested(http_settings: Settings) -> Iterator[TopicReader]:
    yield from _reader(http_settings, http_settings.topics.requested)


@pytest.fixture(scope="module")
def notifications(http_settings: Settings) -> Iterator[TopicReader]:
    yield from _reader(http_settings, http_settings.topics.notifications)


def find_requested(reader: TopicReader, payment_id: str) -> Any:
    matches = [record for record in reader.all_records(reader.count())
               if Codec(PaymentRequested).decode(record.value()).payment_id == payment_id]
    assert len(matches) == 1, f"{len(matches)} records for payment {payment_id}"
    return matches[0]


# ---------------------------------------------------------------------------- card checks


@pytest.mark.parametrize(("changes", "code"), [
    pytest.param({"card_number": "4242424242424241"}, "14", id="14-bad-luhn"),
    pytest.param({"card_number": cards.luhn_complete("4242424242")}, "14", id="14-too-short"),
    pytest.param({"card_number": "4242 4242 4242 4242"}, "14", id="14-not-digits"),
    pytest.param({"exp_year": LAST_YEAR}, "54", id="54-expired"),
    pytest.param({"exp_month": 13}, "54", id="54-no-such-month"),
    pytest.param({"cvv": "12"}, "N7", id="N7-visa-cvv-short"),
    pytest.param({"cvv": "1234"}, "N7", id="N7-visa-cvv-long"),
    pytest.param({"card_number": AMEX, "cvv": "123"}, "N7", id="N7-amex-needs-4"),
    pytest.param({"cvv": "12a"}, "N7", id="N7-cvv-not-digits"),
    pytest.param({"amount": 0}, "13", id="13-zero"),
    pytest.param({"amount": -5}, "13", id="13-negative"),
    pytest.param({"amount": 1_000_001}, "13", id="13-above-max"),
    pytest.param({"currency": "XYZ"}, "12", id="12-not-iso-4217"),
])
def test_failing_card_check_is_400_with_reason_and_nothing_produced(
    client: FlaskClient, requested: TopicReader, changes: dict[str, Any], code: str,
    caplog: pytest.LogCaptureFixture,
) -> None:
    before = requested.count()
    with caplog.at_level(logging.DEBUG):
        response = client.post("/authorize", json=card_body(**changes))

    assert response.status_code == 400
    assert response.get_json() == {"error": decisions.reason_text(code), "reason_code": code}
    assert requested.count() == before
    body = card_body(**changes)
    assert body["card_number"] not in caplog.text


def test_amount_limit_is_the_configured_maximum(client: FlaskClient,
                                                http_settings: Settings) -> None:
    # 10 000 USD is the default maximum: exactly that is accepted, a cent more is not.
    assert http_settings.issuer.max_amount_usd == 10_000
    assert client.post("/authorize", json=card_body(amount=1_000_000)).status_code == 200
    assert client.post("/authorize", json=card_body(amount=1_000_001)).status_code == 400


# ---------------------------------------------------------------------------- accepted


def test_valid_payment_is_on_the_requested_topic_sealed(
    client: FlaskClient, requested: TopicReader, keys: Keys, caplog: pytest.LogCaptureFixture,
) -> None:
    before = requested.count()
    merchant = {"id": "m-1", "name": "Corner Shop", "mcc": "5411", "country": "GB"}
    body = card_body(cvv="987", amount=4599, currency="EUR", merchant=merchant,
                     callback_url="https://example.test/hooks/paysim")
    with caplog.at_level(logging.DEBUG):
        response = client.post("/authorize", json=body)

    assert response.status_code == 200, response.get_json()
    answer = response.get_json()
    assert answer["status"] == "accepted"
    payment_id = answer["payment_id"]
    assert str(uuid.UUID(payment_id)) == payment_id
    assert requested.count() == before + 1

    record = find_requested(requested, payment_id)
    raw = record.value()
    assert VISA.encode() not in raw
    assert b'"987"' not in raw
    assert b'"cvv"' not in raw and b'"card_number"' not in raw
    assert record.key() == cards.tokenize(VISA, keys.token_key).encode()
    message = Codec(PaymentRequested).decode(raw)
    assert (message.run_id, message.seq, message.amount, message.currency) == (
        "http", 0, 4599, "EUR")
    assert message.merchant == Merchant(id="m-1", name="Corner Shop", mcc="5411",
                                        country="GB")
    assert message.callback_url == "https://example.test/hooks/paysim"
    assert set(message.stages) == {REQUESTED}
    card = cards.CardCipher(keys.card_key).decrypt(message.card, payment_id.encode())
    assert card == cards.CardBlock(number=VISA, exp_month=12, exp_year=NEXT_YEAR, cvv="987")
    # Bound to its payment: the block does not open under another payment id.
    with pytest.raises(ValueError, match="cannot be decrypted"):
        cards.CardCipher(keys.card_key).decrypt(message.card, str(uuid.uuid4()).encode())
    assert VISA not in caplog.text


def test_amex_with_four_digit_cvv_and_default_merchant(
    client: FlaskClient, requested: TopicReader, keys: Keys,
) -> None:
    response = client.post("/authorize", json=card_body(card_number=AMEX, cvv="4321"))

    assert response.status_code == 200, response.get_json()
    payment_id = response.get_json()["payment_id"]
    record = find_requested(requested, payment_id)
    assert AMEX.encode() not in record.value() and b'"4321"' not in record.value()
    message = Codec(PaymentRequested).decode(record.value())
    assert message.merchant == Merchant(id="web", name="paysim web checkout", mcc="5999",
                                        country="US")
    assert message.callback_url is None
    card = cards.CardCipher(keys.card_key).decrypt(message.card, payment_id.encode())
    assert (card.number, card.cvv) == (AMEX, "4321")


# ---------------------------------------------------------------------------- bad requests


@pytest.mark.parametrize(("data", "needle"), [
    pytest.param(b'{"card_number": "4242', "JSON", id="malformed-json"),
    pytest.param(b"", "empty", id="empty-body"),
    pytest.param(b'["not", "an", "object"]', "object", id="array-body"),
    pytest.param(b"\xff\xfe", "JSON", id="not-utf8"),
    pytest.param(json.dumps({k: v for k, v in card_body().items() if k != "cvv"}).encode(),
                 "'cvv'", id="missing-cvv"),
    pytest.param(json.dumps(card_body(amount="12")).encode(), "'amount'", id="amount-string"),
    pytest.param(json.dumps(card_body(amount=True)).encode(), "'amount'", id="amount-true"),
    pytest.param(json.dumps(card_body(amount=12.5)).encode(), "'amount'", id="amount-float"),
    pytest.param(json.dumps(card_body(exp_month="12")).encode(), "'exp_month'",
                 id="exp-month-string"),
    pytest.param(json.dumps(card_body(card_number=4242424242424242)).encode(),
                 "'card_number'", id="card-number-int"),
    pytest.param(json.dumps(card_body(tip=100)).encode(), "'tip'", id="unknown-field"),
    pytest.param(json.dumps(card_body(merchant={"id": "m", "name": "n", "mcc": "54",
                                                "country": "US"})).encode(),
                 "'merchant.mcc'", id="merchant-mcc"),
    pytest.param(json.dumps(card_body(merchant={"id": "m", "name": "n", "mcc": "5411"})
                            ).encode(), "'merchant.country'", id="merchant-missing-country"),
    pytest.param(json.dumps(card_body(merchant="shop")).encode(), "'merchant'",
                 id="merchant-not-object"),
    pytest.param(json.dumps(card_body(callback_url="ftp://example.test/x")).encode(),
                 "'callback_url'", id="callback-not-http"),
    pytest.param(json.dumps(card_body(callback_url="http://[::1")).encode(),
                 "'callback_url'", id="callback-unparseable"),
    pytest.param(json.dumps(card_body(seq=2**70)).encode(), "'seq'", id="seq-too-large"),
    pytest.param(b"[" * 30_000, "nested too deeply", id="nested-too-deep"),
])
def test_bad_request_is_400_naming_the_problem(
    client: FlaskClient, requested: TopicReader, data: bytes, needle: str,
) -> None:
    before = requested.count()
    response = client.post("/authorize", data=data, content_type="application/json")

    assert response.status_code == 400
    assert response.mimetype == "application/json"
    answer = response.get_json()
    assert list(answer) == ["error"]
    problem, _, expected = answer["error"].partition("; expected fields: ")
    assert needle in problem and "\n" not in answer["error"]
    assert expected.startswith("card_number, exp_month, exp_year")
    assert VISA not in answer["error"]
    assert requested.count() == before


SEED_FIELDS = ("; expected fields: card_number, exp_month, exp_year (or expiry: MM/YY or "
               "MM/YYYY), cvv, amount, currency; optional: merchant {id, name, mcc, country}, "
               "callback_url, run_id, seq, capture, partial_approval")
NO_PAN = "must not hold a card number (a Luhn-valid run of 13 to 19 digits)"


@pytest.mark.parametrize(("url", "why"), [
    ("redis", "paysim's own Redis"), ("kafka", "paysim's own Kafka"),
    ("http://localhost:8080/hook", "paysim's own HTTP API"),
    ("ftp://hooks.example.com/", "must be an http:// or https:// URL"),
])
def test_a_callback_url_to_paysim_itself_is_400(
    client: FlaskClient, requested: TopicReader, http_settings: Settings, url: str, why: str,
) -> None:
    ports = {"redis": http_settings.stack.redis_port, "kafka": http_settings.stack.kafka_port}
    if url in ports:
        url = f"http://127.0.0.1:{ports[url]}/"
    before = requested.count()
    response = client.post("/authorize", json=card_body(callback_url=url))
    assert response.status_code == 400
    error = response.get_json()["error"]
    assert error.startswith("field 'callback_url'") and why in error
    assert "\n" not in error
    assert requested.count() == before


def redis_keys_holding(client: redis.Redis, text: str) -> list[bytes]:
    return list(client.scan_iter(match=f"*{text}*", count=1000))


@pytest.mark.parametrize(("changes", "field"), [
    pytest.param({"run_id": f"run-{VISA}"}, "run_id", id="run_id"),
    pytest.param({"run_id": "4242 4242 4242 4242"}, "run_id", id="run_id-spaced"),
    pytest.param({"merchant": {"id": VISA, "name": "n", "mcc": "5411", "country": "US"}},
                 "merchant.id", id="merchant.id"),
    pytest.param({"merchant": {"id": "m", "name": f"Shop {AMEX}", "mcc": "5411",
                               "country": "US"}}, "merchant.name", id="merchant.name"),
    pytest.param({"callback_url": f"https://example.test/h/{VISA}"}, "callback_url",
                 id="callback_url"),
])
def test_a_card_number_in_a_free_field_is_400_and_kept_nowhere(
    client: FlaskClient, requested: TopicReader, redis_client: redis.Redis,
    changes: dict[str, Any], field: str, caplog: pytest.LogCaptureFixture,
) -> None:
    before = requested.count()
    key = f"test-{uuid.uuid4()}"
    with caplog.at_level(logging.DEBUG):
        response = client.post("/authorize", json=card_body(**changes),
                               headers={"Idempotency-Key": key})

    assert response.status_code == 400
    assert response.get_json() == {"error": f"field '{field}' {NO_PAN}{SEED_FIELDS}"}
    assert requested.count() == before
    assert redis_client.get(store.idempotency_key(key)) is None
    for number in (VISA, AMEX, "4242 4242"):
        assert number not in response.get_data(as_text=True)
        assert number not in caplog.text
        assert redis_keys_holding(redis_client, number) == []


def test_a_card_number_in_the_idempotency_key_is_400_and_kept_nowhere(
    client: FlaskClient, requested: TopicReader, redis_client: redis.Redis,
) -> None:
    before = requested.count()
    key = f"order-{VISA}"
    response = client.post("/authorize", json=card_body(), headers={"Idempotency-Key": key})

    assert response.status_code == 400
    assert response.get_json() == {"error": f"Idempotency-Key {NO_PAN}"}
    assert requested.count() == before
    assert redis_client.get(store.idempotency_key(key)) is None
    assert redis_keys_holding(redis_client, VISA) == []


# Raw bodies: a lone surrogate as a JSON escape, as any client may send it.
SURROGATE_BODIES = [
    pytest.param("card_number", b'"card_number": "4242\\ud800"', id="card_number"),
    pytest.param("cvv", b'"cvv": "\\ud800"', id="cvv"),
    pytest.param("currency", b'"currency": "US\\udfff"', id="currency"),
    pytest.param("run_id", b'"run_id": "r\\ud800"', id="run_id"),
    pytest.param("callback_url", b'"callback_url": "https://e.test/\\ud800"',
                 id="callback_url"),
    pytest.param("merchant.name", b'"merchant": {"id": "m", "name": "\\ud800", "mcc": "5411", '
                 b'"country": "US"}', id="merchant.name"),
]


@pytest.mark.parametrize(("field", "given"), SURROGATE_BODIES)
def test_a_lone_surrogate_is_400_naming_the_field(
    client: FlaskClient, requested: TopicReader, field: str, given: bytes,
    caplog: pytest.LogCaptureFixture,
) -> None:
    base = {k: v for k, v in card_body().items() if k != field}
    data = json.dumps(base).encode()[:-1] + b", " + given + b"}"
    before = requested.count()
    with caplog.at_level(logging.DEBUG):
        response = client.post("/authorize", data=data, content_type="application/json",
                               headers={"Idempotency-Key": f"test-{uuid.uuid4()}"})

    assert response.status_code == 400, response.get_data(as_text=True)
    assert response.get_json() == {"error": f"field '{field}' must be valid Unicode text "
                                            f"(it holds a lone UTF-16 surrogate){SEED_FIELDS}"}
    assert requested.count() == before
    assert not [r for r in caplog.records if r.levelno >= logging.ERROR]


def test_a_lone_surrogate_in_the_transaction_id_is_400(
    client: FlaskClient, caplog: pytest.LogCaptureFixture,
) -> None:
    with caplog.at_level(logging.DEBUG):
        response = client.post("/notify_client", data=b'{"transaction_id": "t\\ud800"}',
                               content_type="application/json")

    assert response.status_code == 400
    assert response.get_json() == {
        "error": "field 'transaction_id' must be valid Unicode text (it holds a lone UTF-16 "
                 "surrogate); expected fields: transaction_id"}
    assert not [r for r in caplog.records if r.levelno >= logging.ERROR]


# ---------------------------------------------------------------------------- seed clients


@pytest.mark.parametrize("expiry", [f"12/{NEXT_YEAR % 100:02d}", f"12/{NEXT_YEAR}"])
def test_the_expiry_as_text_and_the_seeds_message(
    client: FlaskClient, requested: TopicReader, keys: Keys, expiry: str,
) -> None:
    body = {k: v for k, v in card_body().items() if k not in ("exp_month", "exp_year")}
    response = client.post("/authorize", json={**body, "expiry": expiry})

    assert response.status_code == 200, response.get_json()
    answer = response.get_json()
    # The seed's 200 was {"message": "платеж разрешен"}; a client of the seed finds it.
    assert answer == {"payment_id": answer["payment_id"], "status": "accepted",
                      "message": "платеж разрешен"}
    message = Codec(PaymentRequested).decode(
        find_requested(requested, answer["payment_id"]).value())
    card = cards.CardCipher(keys.card_key).decrypt(message.card, answer["payment_id"].encode())
    assert (card.exp_month, card.exp_year) == (12, NEXT_YEAR)


def test_an_expired_expiry_as_text_is_declined(client: FlaskClient) -> None:
    body = {k: v for k, v in card_body().items() if k not in ("exp_month", "exp_year")}
    response = client.post("/authorize", json={**body, "expiry": f"01/{LAST_YEAR}"})
    assert response.status_code == 400
    assert response.get_json() == {"error": decisions.reason_text("54"), "reason_code": "54"}


@pytest.mark.parametrize(("changes", "problem"), [
    pytest.param({"expiry": "12/30"}, "the card's expiry is given twice: give exp_month and "
                 "exp_year, or expiry (MM/YY or MM/YYYY), not both", id="both"),
    pytest.param({"exp_month": None, "exp_year": None}, "missing the card's expiry: give "
                 "exp_month and exp_year, or expiry (MM/YY or MM/YYYY)", id="neither"),
    pytest.param({"exp_month": None, "exp_year": None, "expiry": "12-30"},
                 "field 'expiry' must be MM/YY or MM/YYYY", id="not-mm-yy"),
])
def test_the_expiry_one_way_or_the_other(
    client: FlaskClient, requested: TopicReader, changes: dict[str, Any], problem: str,
) -> None:
    before = requested.count()
    response = client.post("/authorize", json=card_body(**changes))
    assert response.status_code == 400
    assert response.get_json() == {"error": problem + SEED_FIELDS}
    assert requested.count() == before


def test_body_over_64_kib_is_413(client: FlaskClient, requested: TopicReader) -> None:
    before = requested.count()
    body = json.dumps(card_body(card_number="4" * 70 * 1024)).encode()
    assert len(body) > 70 * 1024

    response = client.post("/authorize", data=body, content_type="application/json")

    assert response.status_code == 413
    assert "64 KiB" in response.get_json()["error"]
    assert requested.count() == before


def test_unknown_route_and_wrong_method_are_json(client: FlaskClient) -> None:
    missing = client.get("/nowhere")
    assert missing.status_code == 404
    assert missing.mimetype == "application/json"
    assert set(missing.get_json()) == {"error"}

    wrong = client.get("/authorize")
    assert wrong.status_code == 405
    assert wrong.mimetype == "application/json"
    assert "POST" in wrong.headers["Allow"]
    assert set(wrong.get_json()) == {"error"}


# ---------------------------------------------------------------------------- idempotency


def route_notes(client: redis.Redis) -> set[bytes]:
    return set(client.scan_iter(match=route_key("*"), count=1000))


def test_same_idempotency_key_and_body_replays_one_payment(
    client: FlaskClient, requested: TopicReader, redis_client: redis.Redis,
) -> None:
    before = requested.count()
    headers = {"Idempotency-Key": f"test-{uuid.uuid4()}"}
    body = json.dumps(card_body(amount=777)).encode()

    noted_before = route_notes(redis_client)
    first = client.post("/authorize", data=body, headers=headers,
                        content_type="application/json")
    noted = route_notes(redis_client)
    second = client.post("/authorize", data=body, headers=headers,
                         content_type="application/json")

    assert first.status_code == second.status_code == 200
    assert first.get_json() == second.get_json()
    assert second.headers["Idempotent-Replayed"] == "true"
    assert requested.count() == before + 1
    find_requested(requested, first.get_json()["payment_id"])  # exactly one record
    # The route note went with the key's reservation; the replay's own note did not stay.
    payment_id = first.get_json()["payment_id"]
    assert noted - noted_before == {route_key(payment_id).encode()}
    assert route_notes(redis_client) == noted


def test_same_idempotency_key_with_another_body_is_422(
    client: FlaskClient, requested: TopicReader, redis_client: redis.Redis,
) -> None:
    headers = {"Idempotency-Key": f"test-{uuid.uuid4()}"}
    assert client.post("/authorize", json=card_body(amount=100), headers=headers
                       ).status_code == 200
    before = requested.count()
    noted = route_notes(redis_client)

    response = client.post("/authorize", json=card_body(amount=200), headers=headers)

    assert response.status_code == 422
    assert "different" in response.get_json()["error"]
    assert requested.count() == before
    assert route_notes(redis_client) == noted  # nothing of the refused request stays


def test_idempotency_key_still_pending_is_409(
    client: FlaskClient, requested: TopicReader, redis_client: redis.Redis, keys: Keys,
) -> None:
    key = f"test-{uuid.uuid4()}"
    body = json.dumps(card_body()).encode()
    # What a first request holds while it waits for Kafka: a keyed fingerprint of its body.
    fingerprint = hmac.new(keys.token_key, body, hashlib.sha256).hexdigest()
    redis_client.set(store.idempotency_key(key), json.dumps(
        {"hash": fingerprint, "state": "pending"}), ex=60)
    before = requested.count()

    response = client.post("/authorize", data=body, headers={"Idempotency-Key": key},
                           content_type="application/json")

    assert response.status_code == 409
    assert requested.count() == before


def test_declined_card_answer_is_stored_and_replayed(
    client: FlaskClient, redis_client: redis.Redis,
) -> None:
    key = f"test-{uuid.uuid4()}"
    body = card_body(currency="XYZ")

    first = client.post("/authorize", json=body, headers={"Idempotency-Key": key})
    second = client.post("/authorize", json=body, headers={"Idempotency-Key": key})

    assert first.status_code == second.status_code == 400
    assert first.get_json() == second.get_json() == {
        "error": decisions.reason_text("12"), "reason_code": "12"}
    stored = json.loads(redis_client.get(store.idempotency_key(key)))
    assert (stored["state"], stored["status"]) == ("done", 400)
    assert 86000 < redis_client.ttl(store.idempotency_key(key)) <= 86400


# ---------------------------------------------------------------------------- outcomes


def write_outcome(client: redis.Redis, settings: Settings, callback_url: str | None = None
                  ) -> PaymentOutcome:
    outcome = PaymentOutcome(
        payment_id=str(uuid.uuid4()), run_id="test-http", seq=3, amount=1999,
        currency="USD", merchant=Merchant(id="m-9", name="Book Shop", mcc="5942",
                                          country="US"),
        callback_url=callback_url, stages={REQUESTED: 1_700_000_000_000_000,
                                           "notified": 1_700_000_000_500_000},
        status="approved", reason_code="00", reason_text="approved",
        token="tok_test", masked_pan=cards.mask(VISA), network="visa",
    )
    pipe = client.pipeline(transaction=False)
    store.write_outcome(pipe, outcome, settings.redis.outcome_ttl, notification="sent")
    pipe.execute()
    return outcome


def test_notify_client_needs_a_transaction_id(client: FlaskClient) -> None:
    for body in ({}, {"transaction_id": 42}, {"transaction_id": ""}):
        response = client.post("/notify_client", json=body)
        assert response.status_code == 400
        assert "transaction_id" in response.get_json()["error"]
        assert response.get_json()["error"].endswith("; expected fields: transaction_id")
    assert client.post("/notify_client", data=b"{", content_type="application/json"
                       ).status_code == 400


def test_notify_client_unknown_transaction_is_404(
    client: FlaskClient, notifications: TopicReader,
) -> None:
    before = notifications.count()
    response = client.post("/notify_client", json={"transaction_id": str(uuid.uuid4())})

    assert response.status_code == 404
    assert set(response.get_json()) == {"error"}
    assert notifications.count() == before


def test_notify_client_sends_the_notification_again(
    client: FlaskClient, http_settings: Settings, redis_client: redis.Redis,
    notifications: TopicReader,
) -> None:
    outcome = write_outcome(redis_client, http_settings, "http://127.0.0.1:9/hooks")
    before = notifications.count()

    response = client.post("/notify_client", json={"transaction_id": outcome.payment_id})

    assert response.status_code == 200, response.get_json()
    answer = response.get_json()
    assert answer["transaction_id"] == outcome.payment_id
    assert answer["message"] == "отправленное уведомление"  # the seed's 200 answer
    assert answer["outcome"] == msgspec.to_builtins(store.outcome_view(
        store.read_outcome(redis_client, outcome.payment_id)))
    assert answer["outcome"]["amount"] == outcome.amount
    assert answer["outcome"]["status"] == "approved"
    assert notifications.count() == before + 1
    records = [r for r in notifications.all_records(before + 1)
               if r.key() == outcome.payment_id.encode()]
    assert len(records) == 1
    sent = Codec(Notification).decode(records[0].value())
    assert sent.event_id.startswith("evt_resend_")
    assert (sent.payment_id, sent.run_id, sent.status, sent.reason_code, sent.amount,
            sent.currency, sent.masked_pan) == (outcome.payment_id, "test-http", "approved",
                                                "00", 1999, "USD", cards.mask(VISA))
    # The webhook is queued for the dispatcher with the same event; taken off again so that
    # no dispatcher in a later test tries to deliver it.
    queued = [(entry_id, fields) for entry_id, fields
              in redis_client.xrange(store.WEBHOOK_STREAM)
              if fields[b"event_id"] == sent.event_id.encode()]
    assert len(queued) == 1
    entry_id, fields = queued[0]
    redis_client.xdel(store.WEBHOOK_STREAM, entry_id)
    assert fields[b"url"] == b"http://127.0.0.1:9/hooks"
    event = Codec(WebhookEvent[Notification]).decode(fields[b"body"])  # Stripe's envelope around it
    assert (event.id, event.type, event.data.object) == (sent.event_id, "payment.approved", sent)


def test_notify_client_without_callback_queues_no_webhook(
    client: FlaskClient, http_settings: Settings, redis_client: redis.Redis,
) -> None:
    outcome = write_outcome(redis_client, http_settings)
    length = redis_client.xlen(store.WEBHOOK_STREAM)

    response = client.post("/notify_client", json={"transaction_id": outcome.payment_id})

    assert response.status_code == 200
    assert redis_client.xlen(store.WEBHOOK_STREAM) == length


def test_get_payment(client: FlaskClient, http_settings: Settings,
                     redis_client: redis.Redis) -> None:
    outcome = write_outcome(redis_client, http_settings)

    found = client.get(f"/payments/{outcome.payment_id}")
    missing = client.get(f"/payments/{uuid.uuid4()}")

    assert found.status_code == 200
    stored = found.get_json()
    assert stored == msgspec.to_builtins(
        store.outcome_view(store.read_outcome(redis_client, outcome.payment_id)))
    assert (stored["payment_id"], stored["status"], stored["reason_code"], stored["amount"]) == (
        outcome.payment_id, "approved", "00", 1999)
    assert stored["merchant"]["mcc"] == outcome.merchant.mcc
    assert missing.status_code == 404
    assert set(missing.get_json()) == {"error"}


def test_healthz_reports_kafka_redis_and_the_pipeline_services(
    client: FlaskClient, health: HealthChecker, redis_client: redis.Redis,
) -> None:
    names = [spec.name for spec in PIPELINE]
    for name in names:  # as if each service were running (instance 99: none of the tests')
        store.write_heartbeat(redis_client, name, 99, processed=0, dead_letters=0,
                              aborted_batches=0, started_at=time.time(), lag=0)
    try:
        health.check()
        running = client.get("/healthz")
    finally:
        for name in names:
            store.clear_heartbeat(redis_client, name, 99)
    health.check()
    stopped = client.get("/healthz")

    assert running.status_code == 200
    body = running.get_json()
    assert (body["status"], body["kafka"], body["redis"]) == ("ok", "ok", "ok")
    assert body["services"] == dict.fromkeys(names, "up")
    assert 0 <= body["checked_s_ago"] < 5
    # Payments are still accepted without the services (they wait on Kafka): 200, degraded.
    assert stopped.status_code == 200
    assert stopped.get_json()["status"] == "degraded"
    assert stopped.get_json()["services"] == dict.fromkeys(names, "down")


def test_redis_down_is_503_not_a_traceback(http_settings: Settings, keys: Keys,
                                           stack_flags: dict[str, object]) -> None:
    # A real client to a port where nothing listens.
    nowhere_url = f"redis://127.0.0.1:{free_port()}/0"
    nowhere = redis.Redis.from_url(nowhere_url, socket_connect_timeout=1, socket_timeout=1)
    producer = Producer(client_config(http_settings))
    health = checked_health(settings_for({**stack_flags, "redis.url": nowhere_url,
                                          "topics.requested": http_settings.topics.requested}),
                            producer)
    client = create_app(http_settings, keys, producer, nowhere, health).test_client()

    healthz = client.get("/healthz")
    payment = client.get(f"/payments/{uuid.uuid4()}")
    keyed = client.post("/authorize", json=card_body(),
                        headers={"Idempotency-Key": f"test-{uuid.uuid4()}"})

    for response in (healthz, payment, keyed):
        assert response.status_code == 503
        assert "Traceback" not in response.get_data(as_text=True)
    for response in (payment, keyed):
        assert set(response.get_json()) == {"error"}
    assert healthz.get_json()["error"] == "Redis: does not answer (ConnectionError)"
    assert healthz.get_json()["services"] == dict.fromkeys([s.name for s in PIPELINE],
                                                          "unknown")


def test_kafka_down_is_503_and_frees_the_idempotency_key(
    http_settings: Settings, keys: Keys, redis_client: redis.Redis,
) -> None:
    # A real producer to a port where no broker listens; it gives up on a record after 1 s.
    dead = Producer({"bootstrap.servers": f"127.0.0.1:{free_port()}",
                     "message.timeout.ms": 1000, "logger": logging.getLogger("test.dead")})
    client = create_app(http_settings, keys, dead, redis_client,
                        checked_health(http_settings, dead)).test_client()
    key = f"test-{uuid.uuid4()}"

    response = client.post("/authorize", json=card_body(), headers={"Idempotency-Key": key})

    assert response.status_code == 503
    assert "Kafka" in response.get_json()["error"]
    assert redis_client.get(store.idempotency_key(key)) is None  # the client may retry


# ---------------------------------------------------------------------------- serve()


def test_serve_answers_over_http_and_stops(
    http_settings: Settings, stack_flags: dict[str, object], redis_client: redis.Redis,
    requested: TopicReader,
) -> None:
    secrets = secret_flags()
    settings = settings_for({**stack_flags, **secrets, "http.port": free_port(),
                             "topics.requested": http_settings.topics.requested,
                             "topics.notifications": http_settings.topics.notifications})
    with serving(settings) as base:
        before = requested.count()

        status, answer = http_call(f"{base}/authorize", card_body(amount=4242))
        assert (status, answer["status"]) == (200, "accepted")
        record = find_requested(requested, answer["payment_id"])
        card_key = base64.b64decode(str(secrets["secrets.card_key"]))
        card = cards.CardCipher(card_key).decrypt(
            Codec(PaymentRequested).decode(record.value()).card, answer["payment_id"].encode())
        assert card.number == VISA

        status, answer = http_call(f"{base}/authorize", card_body(cvv="1"))
        assert (status, answer) == (400, {"error": "CVV check failed", "reason_code": "N7"})
        status, answer = http_call(f"{base}/nowhere")
        assert status == 404 and set(answer) == {"error"}
        assert requested.count() == before + 1

        heartbeat = store.heartbeat_key("http", 0)

        def beat_counts() -> bool:
            fields = redis_client.hgetall(heartbeat)
            return int(fields.get(b"processed", 0)) >= 4

        assert wait_until(beat_counts, 10)
        fields = {k.decode(): v.decode() for k, v in redis_client.hgetall(heartbeat).items()}
        assert (fields["service"], fields["instance"], fields["lag"]) == ("http", "0", "0")
        assert (fields["dead_letters"], fields["aborted_batches"]) == ("0", "0")
        assert int(fields["pid"]) == os.getpid()
        assert float(fields["started_at"]) <= float(fields["seen_at"])
        assert 0 < redis_client.ttl(heartbeat) <= 5


def test_a_retry_sent_the_moment_the_answer_arrives_is_a_replay(
    http_settings: Settings, stack_flags: dict[str, object], requested: TopicReader,
) -> None:
    """On the event loop the answer is written before its stored answer reaches Redis; the
    retry's reservation goes after it, so the retry replays (never a 409), on the same
    connection or another."""
    settings = settings_for({**stack_flags, **secret_flags(), "http.port": free_port(),
                             "topics.requested": http_settings.topics.requested,
                             "topics.notifications": http_settings.topics.notifications})
    with serving(settings) as base:
        port = int(base.rsplit(":", 1)[1])
        first = http.client.HTTPConnection("127.0.0.1", port, timeout=15)
        other = http.client.HTTPConnection("127.0.0.1", port, timeout=15)
        before = requested.count()

        def post(connection: http.client.HTTPConnection, key: str,
                 body: bytes) -> tuple[int, bytes, str | None]:
            connection.request("POST", "/authorize", body=body, headers={
                "Content-Type": "application/json", "Idempotency-Key": key})
            response = connection.getresponse()
            return response.status, response.read(), response.getheader("Idempotent-Replayed")

        try:
            for n in range(20):
                key, body = f"test-{uuid.uuid4()}", json.dumps(card_body(amount=100 + n)).encode()
                status, answer, replayed = post(first, key, body)
                assert (status, replayed) == (200, None)
                again = other if n % 2 else first
                assert post(again, key, body) == (200, answer, "true")
        finally:
            first.close()
            other.close()
        assert requested.count() == before + 20


def test_healthz_is_503_naming_redis_when_redis_refuses_writes(
    http_settings: Settings, stack_flags: dict[str, object], redis_client: redis.Redis,
) -> None:
    settings = settings_for({**stack_flags, **secret_flags(), "http.port": free_port(),
                             "topics.requested": http_settings.topics.requested,
                             "topics.notifications": http_settings.topics.notifications})
    with serving(settings) as base:
        status, body = http_call(f"{base}/healthz")
        assert (status, body["kafka"], body["redis"]) == (200, "ok", "ok")
        saved = redis_client.config_get("maxmemory*")
        try:
            # Redis answers PING but refuses every write (as at maxmemory with noeviction).
            redis_client.config_set("maxmemory-policy", "noeviction")
            redis_client.config_set("maxmemory", 1)
            seen: list[tuple[int, dict[str, Any]]] = []

            def refused() -> bool:
                seen.append(http_call(f"{base}/healthz"))
                return seen[-1][0] == 503

            assert wait_until(refused, 5), seen[-1]
        finally:
            redis_client.config_set("maxmemory", saved["maxmemory"])
            redis_client.config_set("maxmemory-policy", saved["maxmemory-policy"])
        body = seen[-1][1]
        assert "Redis" in body["error"] and "Kafka" not in body["error"]
        assert body["kafka"] == "ok" and "refuses writes" in body["redis"]
        assert "maxmemory" in body["redis"]
        assert 0 <= body["checked_s_ago"] < 5
        # Writes allowed again: healthy again.
        assert wait_until(lambda: http_call(f"{base}/healthz")[1]["redis"] == "ok", 5)


def test_healthz_answers_while_requests_wait_on_an_unreachable_kafka(
    http_settings: Settings, stack_flags: dict[str, object], monkeypatch: pytest.MonkeyPatch,
) -> None:
    # Nothing listens at the bootstrap, so the topics cannot be ensured: start without.
    monkeypatch.setattr(server_module, "ensure_topics", lambda settings: None)
    port = free_port()
    settings = settings_for({**stack_flags, **secret_flags(), "http.port": port,
                             "kafka.bootstrap": f"127.0.0.1:{free_port()}",
                             "topics.requested": http_settings.topics.requested})
    pending = 16  # every one waits on Kafka
    sent = threading.Semaphore(0)
    answered: list[tuple[float, int, dict[str, Any]]] = []

    def authorize() -> None:
        connection = http.client.HTTPConnection("127.0.0.1", port, timeout=60)
        connection.request("POST", "/authorize", json.dumps(card_body()),
                           {"Content-Type": "application/json"})
        sent.release()
        response = connection.getresponse()
        answered.append((time.monotonic(), response.status, json.loads(response.read())))
        connection.close()

    with serving(settings) as base:
        posts = [threading.Thread(target=authorize, daemon=True) for _ in range(pending)]
        for post in posts:
            post.start()
        for _ in posts:
            assert sent.acquire(timeout=10)
        status, health = http_call(f"{base}/healthz")
        health_at = time.monotonic()
        still_pending = pending - len(answered)
        for post in posts:
            post.join(60)
    # /healthz answered while every payment was still waiting on Kafka, not after them.
    assert still_pending == pending
    assert len(answered) == pending
    assert health_at < min(at for at, _, _ in answered)
    assert {status for _, status, _ in answered} == {503}
    assert status == 503, health
    assert "Kafka" in health["error"] and health["kafka"] != "ok"
    assert health["redis"] == "ok"


def test_the_idempotency_record_holds_no_plain_hash_of_the_card(
    client: FlaskClient, redis_client: redis.Redis,
) -> None:
    key = f"test-{uuid.uuid4()}"
    body = json.dumps(card_body()).encode()
    client.post("/authorize", data=body, headers={"Idempotency-Key": key},
                content_type="application/json")
    stored = redis_client.get(store.idempotency_key(key))
    assert stored is not None
    assert hashlib.sha256(body).hexdigest().encode() not in stored
