"""Fuzz of the HTTP API's request handling (hypothesis): any body, any headers, any payment
id, on the app built over a fake producer and a fake Redis. Every answer is a 2xx, a 4xx or a
503, as a JSON object with a one-line "error" when it is not a 2xx, and never echoes a card
number the request held."""

from __future__ import annotations

import functools
import json
import time
import urllib.parse
import uuid
from typing import Any

import redis
from confluent_kafka import KafkaError
from flask import Flask
from flask.testing import FlaskClient
from hypothesis import example, given
from hypothesis import strategies as st
from werkzeug.test import TestResponse

from paysim.domain import cards
from paysim.domain.messages import Merchant, PaymentOutcome, encode
from paysim.domain.requests import AuthorizeRequest
from paysim.edge import health, http_server, validation
from paysim.edge.app import create_app
from paysim.pipeline import store
from tests.unit import fuzzing
from tests.unit.fakes import KEYS, AckingProducer, FakeRedis, pure_settings
from tests.unit.on_loop import run_on_loop

# Luhn-valid card numbers (a test card among them), planted in fields, ids and headers.
PANS = ("4242424242424242", "4000000000000002", "5555555555554444", "378282246310005",
        "6011111111111117", "4111111111111111111")
GROUPED = ("4242 4242 4242 4242", "5555-5555-5555-4444", "3782-822463-10005")
STORED_ID = str(uuid.UUID(int=1))  # a payment with an outcome in the fake Redis
VALID_BODY: dict[str, Any] = {
    "card_number": PANS[0], "exp_month": 12, "exp_year": 2099, "cvv": "123",
    "amount": 1250, "currency": "USD",
}
AUTHORIZE_FIELDS = (*VALID_BODY, "expiry", "merchant", "callback_url", "run_id", "seq")

texts = st.one_of(
    st.text(max_size=40),
    st.sampled_from(PANS + GROUPED),
    st.builds(lambda before, pan, after: before + pan + after,
              st.text(max_size=8), st.sampled_from(PANS + GROUPED), st.text(max_size=8)),
)
json_values = fuzzing.json_values(texts)
# Values near what each field takes, so that requests get past the shape checks too.
NEAR: dict[str, st.SearchStrategy[Any]] = {
    "card_number": st.sampled_from(PANS + GROUPED + ("4242424242424241", "")),
    "exp_month": st.integers(-1, 13), "exp_year": st.integers(1999, 2100),
    "expiry": st.sampled_from(["12/99", "1/99", "00/2099", "12/2099", "13/30"]),
    "cvv": st.sampled_from(["123", "1234", "12", "abc"]),
    "amount": st.integers(-1, 10**9), "currency": st.sampled_from(["USD", "EUR", "JPY", "usd"]),
    "merchant": st.fixed_dictionaries({}, optional={
        "id": texts, "name": texts, "mcc": st.sampled_from(["5411", "541"]) | texts,
        "country": st.sampled_from(["US", "us"]) | texts, "extra": json_values}),
    "callback_url": st.sampled_from(["https://shop.example/hook", "ftp://x", ""]) | texts,
    "run_id": texts, "seq": st.integers(-1, 2**54),
}


@st.composite
def authorize_bodies(draw: st.DrawFn) -> dict[str, Any]:
    """A valid POST /authorize body with some fields taken away, some given values near or
    far from what they take, now and then an unknown one."""
    body = {k: v for k, v in VALID_BODY.items() if draw(st.integers(0, 9))}
    for name in draw(st.lists(st.sampled_from(AUTHORIZE_FIELDS), max_size=3)):
        body[name] = draw(NEAR[name] | json_values)
    if not draw(st.integers(0, 9)):
        body[draw(texts)] = draw(json_values)
    return body


def encoded(value: Any, ascii_only: bool) -> bytes:
    # surrogatepass: a lone surrogate the strategy drew goes out as the bytes a client could
    # send, rather than failing here.
    return json.dumps(value, ensure_ascii=ascii_only).encode(errors="surrogatepass")


payment_ids = st.one_of(texts, st.just(STORED_ID), st.builds(lambda: str(uuid.uuid4())))
any_body = st.binary(max_size=200) | st.builds(encoded, json_values, st.booleans())
posts = st.one_of(
    st.tuples(st.just("/authorize"), st.builds(encoded, authorize_bodies(), st.booleans())),
    st.tuples(st.just("/notify_client"), st.builds(encoded, st.fixed_dictionaries(
        {"transaction_id": payment_ids | json_values}), st.booleans())),
    st.tuples(st.sampled_from(["/authorize", "/notify_client"]), any_body),
)
# Header values as WSGI carries them (latin-1), without the line breaks no client can send.
header_text = st.text(st.characters(max_codepoint=0xFF, exclude_characters="\r\n"),
                      max_size=40) | st.sampled_from(PANS + GROUPED)
headers = st.fixed_dictionaries({}, optional={
    "Content-Type": st.sampled_from(["application/json", "text/plain", "application/xml",
                                     "application/json; charset=latin-1"]) | header_text,
    "Idempotency-Key": header_text,
    "X-Anything": header_text,
})
class DownRedis(FakeRedis):
    """Redis that does not answer."""

    def _down(self, *_: Any, **__: Any) -> Any:
        raise redis.ConnectionError("Connection refused")

    get = set = delete = hgetall = ping = pipeline = execute_command = _down


class CheckedHealth:
    """The health checker's answer without its thread: everything was fine just now."""

    def answer(self) -> tuple[int, dict[str, Any]]:
        now = time.monotonic()
        return health.answer(health.Health(health.OK, health.OK, {}, now), now)


class Current:
    """Stands for the fake of the example being run: the app, whose state is all in its Redis
    and producer, is built once (building it took most of an example's time) and each example
    still starts on fresh fakes."""

    def __init__(self) -> None:
        self.fake: Any = None

    def __getattr__(self, name: str) -> Any:
        return getattr(self.fake, name)


CURRENT_REDIS, CURRENT_PRODUCER = Current(), Current()


@functools.cache
def shared_app() -> Flask:
    return create_app(pure_settings(), KEYS, CURRENT_PRODUCER,  # type: ignore[arg-type]
                      CURRENT_REDIS, CheckedHealth())  # type: ignore[arg-type]


def client(world: str = "up") -> FlaskClient:
    """The app on fresh fakes, one outcome stored (each example starts from the same state);
    with Redis or Kafka down when ``world`` says so."""
    fake_redis = DownRedis() if world == "redis down" else FakeRedis()
    outcome = PaymentOutcome(
        payment_id=STORED_ID, run_id="run-f", amount=1250, currency="USD",
        merchant=Merchant(id="m", name="Shop", mcc="5411", country="US"),
        callback_url="https://shop.example/hook", stages={"requested": 1}, status="approved",
        reason_code="00", reason_text="Approved", masked_pan="424242******4242")
    fake_redis.hashes[store.outcome_key(STORED_ID)] = {b"status": b"approved",
                                                       b"doc": encode(outcome)}
    producer = AckingProducer(KafkaError(KafkaError._MSG_TIMED_OUT, "Local: Message timed out")
                              if world == "kafka down" else None)
    CURRENT_REDIS.fake, CURRENT_PRODUCER.fake = fake_redis, producer
    return shared_app().test_client()


worlds = st.sampled_from(["up", "up", "up", "redis down", "kafka down"])


def check_answer(response: TestResponse) -> None:
    status = response.status_code
    assert 200 <= status < 300 or 400 <= status < 500 or status == 503, (
        status, response.get_data(as_text=True))
    assert response.mimetype == "application/json"
    body = json.loads(response.get_data())
    assert isinstance(body, dict)
    if status >= 300:
        error = body.get("error")
        assert isinstance(error, str) and error and "\n" not in error, body
    # No answer holds a card number: an error names what was wrong, not the value; the stored
    # outcome's PAN is masked. (Payment ids are UUIDs, which are never taken for one.)
    text = response.get_data(as_text=True)
    assert not cards.contains_card_number(text), text


@fuzzing.FUZZ
@given(post=posts, sent=headers, world=worlds)
# What the fuzz found first, kept as fixed cases: a card number as an unknown field's name,
# and as the id of a payment to notify about, came back in the error.
@example(post=("/authorize", b'{"4242424222424": null}'), sent={}, world="up")
@example(post=("/notify_client", b'{"transaction_id": "4242 4242 4242 4242"}'), sent={},
         world="up")
def test_any_post_body_and_headers_get_a_json_answer_without_a_card_number(
    post: tuple[str, bytes], sent: dict[str, str], world: str,
) -> None:
    path, body = post
    app = client(world)
    check_answer(app.post(path, data=body, headers=sent))
    if "Idempotency-Key" in sent:  # again: the replay, or the answer why not
        check_answer(app.post(path, data=body, headers=sent))


@fuzzing.FUZZ
@given(payment_id=payment_ids, sent=headers, world=worlds)
@example(payment_id="4242424242424242", sent={}, world="up")
@example(payment_id="/0", sent={}, world="up")  # %2F: once an HTML 308 redirect
def test_any_payment_id_gets_a_json_answer_without_a_card_number(
    payment_id: str, sent: dict[str, str], world: str,
) -> None:
    path = "/payments/" + urllib.parse.quote(payment_id.encode(errors="surrogatepass"), safe="")
    response = client(world).get(path, headers=sent)
    check_answer(response)


def _direct_post(body: bytes, sent: dict[str, str]) -> tuple[int, dict[str, Any], bool]:
    """POST /authorize through the server's direct path (no Flask): status, body, replayed."""
    handler = shared_app().extensions["paysim.direct"][("POST", "/authorize")]
    answer = handler(http_server.Request(
        method="POST", target=b"/authorize", version="1.1", body=[body],
        headers=[(name.encode("latin-1"), value.encode("latin-1"))
                 for name, value in sent.items()]))
    assert ("Content-Type", "application/json") in answer.headers
    replayed = ("Idempotent-Replayed", "true") in answer.headers
    return int(answer.status.split()[0]), json.loads(answer.body), replayed


def _loop_post(body: bytes, sent: dict[str, str]) -> tuple[int, dict[str, Any], bool]:
    """POST /authorize as the server runs it on its event loop: status, body, replayed."""
    app = shared_app()
    handler = app.extensions["paysim.direct_on_loop"][("POST", "/authorize")]
    deliveries = app.extensions["paysim.deliveries"]
    request = http_server.Request(
        method="POST", target=b"/authorize", version="1.1", body=[body],
        headers=[(name.encode("latin-1"), value.encode("latin-1"))
                 for name, value in sent.items()])
    (answer,) = run_on_loop([lambda done: handler(request, done)],
                            between=lambda: deliveries.poll_once(0))
    replayed = ("Idempotent-Replayed", "true") in answer.headers
    return int(answer.status.split()[0]), json.loads(answer.body), replayed


def _flask_post(app: FlaskClient, body: bytes,
                sent: dict[str, str]) -> tuple[int, dict[str, Any], bool]:
    response = app.post("/authorize", data=body, headers=sent)
    return (response.status_code, json.loads(response.get_data()),
            response.headers.get("Idempotent-Replayed") == "true")


def _same_payment(answer: tuple[int, dict[str, Any], bool]) -> tuple[int, dict[str, Any], bool]:
    """An answer with its new payment id blanked: each path makes its own."""
    status, body, replayed = answer
    return status, {**body, **({"payment_id": "?"} if "payment_id" in body else {})}, replayed


@fuzzing.FUZZ
@given(body=st.builds(encoded, authorize_bodies(), st.booleans()) | any_body, sent=headers,
       world=worlds)
@example(body=b"x" * (64 * 1024 + 1), sent={}, world="up")  # past the body limit: 413
@example(body=encoded(VALID_BODY, True), sent={"Idempotency-Key": "k-1"}, world="up")
@example(body=encoded(VALID_BODY, True), sent={"Idempotency_Key": PANS[0]}, world="up")
def test_the_direct_paths_answer_post_authorize_as_the_flask_route(
    body: bytes, sent: dict[str, str], world: str,
) -> None:
    # With a key, twice each: the second is the replay (or the answer why not).
    times = 2 if {"Idempotency-Key", "Idempotency_Key"} & set(sent) else 1
    app = client(world)
    through_flask = [_flask_post(app, body, sent) for _ in range(times)]
    client(world)  # fresh fakes, the same state
    direct = [_direct_post(body, sent) for _ in range(times)]
    assert [_same_payment(a) for a in direct] == [_same_payment(a) for a in through_flask]
    client(world)
    on_loop = [_loop_post(body, sent) for _ in range(times)]
    assert [_same_payment(a) for a in on_loop] == [_same_payment(a) for a in through_flask]


@fuzzing.FUZZ
@given(body=st.builds(encoded, authorize_bodies(), st.booleans()) | any_body)
@example(body=b'{"card_number":"4242424242424242","exp_month":12,"exp_year":2099,"cvv":"1",'
              b'"amount":1,"currency":"USD","merchant":{"id":"m","name":"n","mcc":"5411",'
              b'"country":"US","extra":1}}')  # a nested unknown field: msgspec would take it
@example(body=b'{"card_number":"4242424242424242","exp_month":12,"exp_year":null,"cvv":"1",'
              b'"amount":1,"currency":"USD"}')  # half a way of the expiry group
@example(body=b"[" * 30_000)  # msgspec's decoder raises RecursionError: the walk answers
def test_msgspecs_decoder_takes_no_body_the_walk_refuses(body: bytes) -> None:
    fast = validation.fast_typed(body, AuthorizeRequest)
    try:
        walked: AuthorizeRequest | None = validation.authorize_request(
            validation.json_object(body))
    except validation.BadRequest:
        walked = None
    if fast is not None:
        assert fast == walked


def test_msgspecs_decoder_takes_a_good_body() -> None:
    good = encoded({**VALID_BODY, "merchant": {"id": "m", "name": "Shop", "mcc": "5411",
                                               "country": "US"}, "seq": 3}, True)
    assert validation.fast_typed(good, AuthorizeRequest) == validation.authorize_request(
        json.loads(good))
