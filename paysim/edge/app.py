"""The seed's HTTP endpoints, over the same decision functions as the Kafka services.

``POST /authorize`` runs the authorizer's card checks at the edge (``decisions.check_card``, the
one the authorizer service runs), answers 400 with the reason code when a check fails, and
otherwise seals the card block and puts the payment on the requested topic, answering 200 only
once Kafka has acknowledged it. ``POST /notify_client`` sends a payment's notification again,
``GET /payments/<id>`` reads an outcome, ``GET /healthz`` checks Redis.

Every answer is JSON; errors are ``{"error": "<one line>"}``. Card numbers and CVVs are never
logged, echoed back in an error, or kept anywhere but inside the sealed card block.
"""

from __future__ import annotations

import hashlib
import hmac
import json
import logging
import threading
import time
import traceback
import uuid
from datetime import UTC, datetime
from typing import Any

import redis
import waitress
from confluent_kafka import KafkaError, KafkaException, Producer
from flask import Flask, Response, request
from waitress import wasyncore
from waitress.server import BaseWSGIServer
from werkzeug.exceptions import HTTPException

from paysim.domain import cards, decisions
from paysim.domain.messages import (
    REQUESTED,
    Merchant,
    PaymentOutcome,
    PaymentRequested,
    encode,
    now_us,
)
from paysim.domain.webhooks import valid_callback_url
from paysim.infra.config import Settings
from paysim.infra.errors import PaysimError
from paysim.infra.kafka import client_config, error_text, produce
from paysim.infra.secrets import Keys, load_keys
from paysim.infra.topics import ensure_topics
from paysim.pipeline import notifications, store
from paysim.pipeline.process import run_process
from paysim.pipeline.registry import HTTP

log = logging.getLogger("paysim.http")

MAX_BODY_BYTES = 64 * 1024
DELIVERY_TIMEOUT_S = 10.0
IDEMPOTENCY_PENDING_TTL_S = 60
IDEMPOTENCY_DONE_TTL_S = 86400
MAX_IDEMPOTENCY_KEY_CHARS = 255
THREADS = 8
SHUTDOWN_GRACE_S = DELIVERY_TIMEOUT_S + 2  # an answer waiting on Kafka may finish
LOOP_SLICE_S = 0.2
REPLAY_HEADER = "Idempotent-Replayed"

DEFAULT_MERCHANT = Merchant(id="web", name="paysim web checkout", mcc="5999", country="US")

_REQUIRED: dict[str, type] = {
    "card_number": str, "exp_month": int, "exp_year": int, "cvv": str, "amount": int,
    "currency": str,
}
# run_id and seq let a load tool (`paysim send --via http`) tag its payments as one run.
_OPTIONAL = ("merchant", "callback_url", "run_id", "seq")
HTTP_RUN_ID = "http"
MAX_SEQ = 2**53 - 1  # what JSON readers everywhere hold exactly
_MERCHANT_FIELDS = ("id", "name", "mcc", "country")
_TYPE_NAMES = {str: "a string", int: "a whole number"}


class BadRequest(Exception):
    """A request paysim cannot take: answered with ``status`` and ``{"error": message}``."""

    def __init__(self, message: str, status: int = 400, **fields: Any) -> None:
        super().__init__(message)
        self.status = status
        self.fields = fields


class Counters:
    """Requests answered, for the heartbeat; shared by waitress's threads."""

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self.answered = 0
        self.started_at = time.time()

    def count(self) -> None:
        with self._lock:
            self.answered += 1


def _json(status: int, body: dict[str, Any], headers: dict[str, str] | None = None) -> Response:
    response = Response(json.dumps(body, separators=(",", ":")), status=status,
                        mimetype="application/json")
    for name, value in (headers or {}).items():
        response.headers[name] = value
    return response


def _error(status: int, message: str, **fields: Any) -> Response:
    return _json(status, {"error": message, **fields})


def _short(name: str) -> str:
    """A client-supplied field name, safe to put in a one-line error."""
    name = " ".join(str(name).split())
    return name if len(name) <= 40 else name[:40] + "..."


# ---------------------------------------------------------------------------- validation


def _body_object() -> tuple[bytes, dict[str, Any]]:
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


def _typed(value: Any, kind: type) -> bool:
    # bool is a subclass of int in Python; true is not an amount.
    return isinstance(value, kind) and not isinstance(value, bool)


def _merchant(value: Any) -> Merchant:
    if not isinstance(value, dict):
        raise BadRequest("field 'merchant' must be an object with id, name, mcc and country")
    unknown = sorted(set(value) - set(_MERCHANT_FIELDS))
    if unknown:
        raise BadRequest(f"unknown field 'merchant.{_short(unknown[0])}'")
    for name in _MERCHANT_FIELDS:
        if name not in value:
            raise BadRequest(f"missing field 'merchant.{name}'")
        if not isinstance(value[name], str):
            raise BadRequest(f"field 'merchant.{name}' must be a string")
    for name in ("id", "name"):
        if not 1 <= len(value[name]) <= 200:
            raise BadRequest(f"field 'merchant.{name}' must be 1 to 200 characters")
    mcc, country = value["mcc"], value["country"]
    if not (len(mcc) == 4 and mcc.isascii() and mcc.isdigit()):
        raise BadRequest("field 'merchant.mcc' must be 4 digits")
    if not (len(country) == 2 and country.isascii() and country.isalpha()
            and country.isupper()):
        raise BadRequest("field 'merchant.country' must be 2 capital letters (ISO 3166)")
    return Merchant(id=value["id"], name=value["name"], mcc=mcc, country=country)


def _callback_url(value: Any) -> str:
    if not isinstance(value, str):
        raise BadRequest("field 'callback_url' must be a string")
    if not valid_callback_url(value):
        raise BadRequest("field 'callback_url' must be an http:// or https:// URL")
    return value


def _run_fields(body: dict[str, Any]) -> tuple[str, int]:
    run_id = body.get("run_id")
    if run_id is None:
        run_id = HTTP_RUN_ID
    elif not isinstance(run_id, str) or not 1 <= len(run_id) <= 100:
        raise BadRequest("field 'run_id' must be a string of 1 to 100 characters")
    seq = body.get("seq")
    if seq is None:
        seq = 0
    elif not _typed(seq, int) or not 0 <= seq <= MAX_SEQ:
        raise BadRequest(f"field 'seq' must be a whole number from 0 to {MAX_SEQ}")
    return run_id, seq


def _authorize_fields(body: dict[str, Any]) -> tuple[cards.CardBlock, int, str, Merchant,
                                                     str | None, str, int]:
    unknown = sorted(set(body) - set(_REQUIRED) - set(_OPTIONAL))
    if unknown:
        raise BadRequest(f"unknown field '{_short(unknown[0])}'")
    for name, kind in _REQUIRED.items():
        if name not in body:
            raise BadRequest(f"missing field '{name}'")
        if not _typed(body[name], kind):
            raise BadRequest(f"field '{name}' must be {_TYPE_NAMES[kind]}")
    merchant = DEFAULT_MERCHANT
    if body.get("merchant") is not None:
        merchant = _merchant(body["merchant"])
    callback_url = None
    if body.get("callback_url") is not None:
        callback_url = _callback_url(body["callback_url"])
    card = cards.CardBlock(number=body["card_number"], exp_month=body["exp_month"],
                           exp_year=body["exp_year"], cvv=body["cvv"])
    return (card, body["amount"], body["currency"], merchant, callback_url,
            *_run_fields(body))


# ---------------------------------------------------------------------------- Kafka


def deliver(producer: Producer, topic: str, key: str, value: bytes,
            timeout: float = DELIVERY_TIMEOUT_S + 2) -> str | None:
    """Produce one record and wait for the broker's acknowledgement.

    The wait outlasts the producer's own message.timeout.ms (DELIVERY_TIMEOUT_S), so the
    answer is final: a record reported as failed will not be delivered later.

    None when it was acknowledged, otherwise one line saying why not. Safe from many threads:
    whichever thread polls serves every delivery report, each report sets its own event.
    """
    done = threading.Event()
    outcome: list[KafkaError | None] = []

    def on_delivery(err: KafkaError | None, _msg: Any) -> None:
        outcome.append(err)
        done.set()

    deadline = time.monotonic() + timeout
    try:
        produce(producer, topic, value, key=key, on_delivery=on_delivery, deadline=deadline)
    except BufferError:
        return "the Kafka producer queue is full"
    except KafkaException as exc:
        return error_text(exc)
    while not done.is_set():
        remaining = deadline - time.monotonic()
        if remaining <= 0:
            return f"Kafka did not acknowledge within {timeout:g} s"
        producer.poll(min(0.05, remaining))
    error = outcome[0]
    return None if error is None else error.str()


# ---------------------------------------------------------------------------- idempotency


class _Idempotency:
    """One Idempotency-Key: reserved before the work, then holding the answer to replay."""

    def __init__(self, client: redis.Redis, key: str, body: bytes, secret: bytes) -> None:
        self.client = client
        self.redis_key = store.idempotency_key(key)
        # Keyed: the body holds a PAN and CVV, and a bare hash of them could be brute-forced.
        self.hash = hmac.new(secret, body, hashlib.sha256).hexdigest()

    def reserve(self) -> Response | None:
        """None when this request may do the work; else the answer to give instead."""
        pending = json.dumps({"hash": self.hash, "state": "pending"})
        for _ in range(3):  # the record can expire between the SET and the GET
            if self.client.set(self.redis_key, pending, nx=True, ex=IDEMPOTENCY_PENDING_TTL_S):
                return None
            raw = self.client.get(self.redis_key)
            if raw is None:
                continue
            try:
                record = json.loads(raw)
            except ValueError:
                record = {}
            if record.get("hash") != self.hash:
                return _error(422, "Idempotency-Key was already used with a different "
                                   "request body")
            if record.get("state") != "done":
                return _error(409, "a request with this Idempotency-Key is still being "
                                   "processed; retry later")
            return _json(int(record["status"]), record["body"], {REPLAY_HEADER: "true"})
        raise redis.RedisError("idempotency record keeps changing")

    def finish(self, status: int, body: dict[str, Any]) -> None:
        record = {"hash": self.hash, "state": "done", "status": status, "body": body}
        self.client.set(self.redis_key, json.dumps(record), ex=IDEMPOTENCY_DONE_TTL_S)

    def release(self) -> None:
        """Forget the reservation after a failure that the client should retry."""
        try:
            self.client.delete(self.redis_key)
        except redis.RedisError as exc:
            log.warning("idempotency reservation not released: %s", exc)


def _idempotency_key() -> str | None:
    key = request.headers.get("Idempotency-Key")
    if key is None:
        return None
    key = key.strip()
    if not key or len(key) > MAX_IDEMPOTENCY_KEY_CHARS or not key.isprintable():
        raise BadRequest(f"Idempotency-Key must be 1 to {MAX_IDEMPOTENCY_KEY_CHARS} "
                         "printable characters")
    return key


# ---------------------------------------------------------------------------- outcomes


def outcome_from_stored(stored: dict[str, str]) -> PaymentOutcome:
    """A PaymentOutcome from the hash store.write_outcome wrote; ValueError when incomplete."""
    try:
        merchant = json.loads(stored["merchant"])
        return PaymentOutcome(
            payment_id=stored["payment_id"], run_id=stored["run_id"],
            seq=int(stored.get("seq") or 0), amount=int(stored["amount"]),
            currency=stored["currency"], merchant=Merchant(**merchant),
            callback_url=stored.get("callback_url") or None, stages=store.stage_times(stored),
            status=stored["status"], reason_code=stored["reason_code"],
            reason_text=stored.get("reason_text") or decisions.reason_text(
                stored["reason_code"]),
            token=stored.get("token") or None, masked_pan=stored.get("masked_pan") or None,
            network=stored.get("network") or None,
        )
    except (KeyError, TypeError, ValueError) as exc:
        raise ValueError(f"stored outcome is incomplete ({type(exc).__name__})") from None


# ---------------------------------------------------------------------------- the app


def create_app(settings: Settings, keys: Keys, producer: Producer,
               redis_client: redis.Redis) -> Flask:
    """The HTTP API as a WSGI app; ``producer`` and ``redis_client`` are shared by all threads."""
    app = Flask("paysim.http_api")
    app.config["MAX_CONTENT_LENGTH"] = MAX_BODY_BYTES
    counters = Counters()
    app.extensions["paysim.counters"] = counters
    cipher = cards.CardCipher(keys.card_key)
    topics = settings.topics

    def authorize_once(card: cards.CardBlock, amount: int, currency: str, merchant: Merchant,
                       callback_url: str | None, run_id: str,
                       seq: int) -> tuple[int, dict[str, Any]]:
        at = now_us()
        check = decisions.check_card(card, amount, currency,
                                     datetime.fromtimestamp(at / 1e6, UTC),
                                     settings.issuer.max_amount_usd)
        if not check.accepted:
            return 400, {"error": decisions.reason_text(check.reason),
                         "reason_code": check.reason}
        payment_id = str(uuid.uuid4())
        message = PaymentRequested(
            payment_id=payment_id, run_id=run_id, seq=seq, amount=amount, currency=currency,
            merchant=merchant, callback_url=callback_url, stages={REQUESTED: at},
            card=cipher.encrypt(card, payment_id.encode()),
        )
        failure = deliver(producer, topics.requested,
                          cards.tokenize(card.number, keys.token_key), encode(message))
        if failure is not None:
            log.warning("payment %s not accepted: %s", payment_id, failure)
            return 503, {"error": f"payment not accepted, Kafka is unavailable: {failure}"}
        return 200, {"payment_id": payment_id, "status": "accepted"}

    @app.post("/authorize")
    def authorize() -> Response:
        raw, body = _body_object()
        fields = _authorize_fields(body)
        key = _idempotency_key()
        if key is None:
            status, answer = authorize_once(*fields)
            return _json(status, answer)
        idem = _Idempotency(redis_client, key, raw, keys.token_key)
        earlier = idem.reserve()
        if earlier is not None:
            return earlier
        try:
            status, answer = authorize_once(*fields)
        except BaseException:
            idem.release()
            raise
        if status >= 500:
            idem.release()  # nothing was accepted: the client may retry with this key
            return _json(status, answer)
        try:
            idem.finish(status, answer)
        except redis.RedisError as exc:
            # The payment is on its way: say so. The reservation expires on its own, and a
            # retry meanwhile gets 409 rather than a second payment.
            log.warning("idempotency answer for %s not stored: %s",
                        answer.get("payment_id", "a declined card"), type(exc).__name__)
        return _json(status, answer)

    @app.post("/notify_client")
    def notify_client() -> Response:
        _, body = _body_object()
        payment_id = body.get("transaction_id")
        if payment_id is None:
            raise BadRequest("missing field 'transaction_id'")
        if not isinstance(payment_id, str) or not payment_id.strip():
            raise BadRequest("field 'transaction_id' must be a non-empty string")
        stored = store.read_outcome(redis_client, payment_id)
        if stored is None:
            return _error(404, f"no outcome for transaction {_short(payment_id)} "
                               "(unknown, not finished, or expired)")
        try:
            outcome = outcome_from_stored(stored)
        except ValueError as exc:
            log.warning("outcome of %s cannot be notified: %s", _short(payment_id), exc)
            return _error(500, f"the outcome of this transaction cannot be read: {exc}")
        notification = notifications.notification_for(
            outcome, f"evt_resend_{uuid.uuid4().hex}", now_us())
        failure = deliver(producer, topics.notifications, outcome.payment_id,
                          encode(notification))
        if failure is not None:
            log.warning("notification for %s not sent: %s", outcome.payment_id, failure)
            return _error(503, f"notification not sent, Kafka is unavailable: {failure}")
        if outcome.callback_url:
            pipe = redis_client.pipeline(transaction=False)
            notifications.queue_webhook(pipe, outcome.callback_url, notification)
            pipe.execute()
        return _json(200, {"transaction_id": payment_id,
                           "outcome": store.outcome_view(stored)})

    @app.get("/payments/<payment_id>")
    def payment(payment_id: str) -> Response:
        stored = store.read_outcome(redis_client, payment_id)
        if stored is None:
            return _error(404, f"no outcome for payment {_short(payment_id)} "
                               "(unknown, not finished, or expired)")
        return _json(200, store.outcome_view(stored))

    @app.get("/healthz")
    def healthz() -> Response:
        try:
            redis_client.ping()
        except redis.RedisError:
            return _error(503, "Redis does not answer")
        return _json(200, {"status": "ok"})

    @app.errorhandler(BadRequest)
    def bad_request(exc: BadRequest) -> Response:
        return _error(exc.status, str(exc), **exc.fields)

    @app.errorhandler(HTTPException)
    def http_error(exc: HTTPException) -> Response:
        response = exc.get_response()  # keeps headers such as Allow on a 405
        status = exc.code or 500
        if status == 413:
            message = f"request body is larger than {MAX_BODY_BYTES // 1024} KiB"
        else:
            message = f"{exc.name}: {' '.join((exc.description or '').split())}".rstrip(": ")
        response.set_data(json.dumps({"error": message}))
        response.mimetype = "application/json"
        return response

    @app.errorhandler(redis.RedisError)
    def redis_down(exc: redis.RedisError) -> Response:
        log.warning("%s %s: Redis: %s", request.method, request.path, type(exc).__name__)
        return _error(503, "Redis is unavailable; try again")

    @app.errorhandler(Exception)
    def internal_error(exc: Exception) -> Response:
        # The type and where it happened, never the message: it could carry request data.
        where = "".join(traceback.format_tb(exc.__traceback__)).rstrip()
        log.error("%s %s failed: %s\n%s", request.method, request.path, type(exc).__name__,
                  where)
        return _error(500, "internal error")

    @app.after_request
    def count(response: Response) -> Response:
        counters.count()
        return response

    return app


# ---------------------------------------------------------------------------- serving


def _heartbeat(client: redis.Redis, counters: Counters, stop: threading.Event) -> None:
    while True:
        try:
            store.write_heartbeat(client, HTTP.name, 0, processed=counters.answered,
                                  dead_letters=0, aborted_batches=0,
                                  started_at=counters.started_at, lag=0)
        except redis.RedisError as exc:
            log.warning("heartbeat not written: %s", exc)
        if stop.wait(store.HEARTBEAT_EVERY_S):
            store.clear_heartbeat(client, HTTP.name, 0)
            return


def _socket_map(server: Any) -> dict[int, Any]:
    # One listen address gives a TcpWSGIServer (``_map``), several a MultiSocketServer (``map``).
    return server._map if hasattr(server, "_map") else server.map


def _busy(channel: Any) -> bool:
    """A connection with a request arriving or being answered, or a response not yet sent."""
    return bool(getattr(channel, "request", None) is not None
                or getattr(channel, "requests", None)
                or getattr(channel, "total_outbufs_len", 0))


def _run_until(server: Any, stop: threading.Event) -> None:
    """Waitress's event loop until ``stop`` is set, then a graceful close.

    The loop runs here in slices rather than through ``server.run()`` closed from another
    thread: ``server.close()`` closes the trigger pipe the worker threads write to when a
    response is ready, so closing it under a request in flight breaks that response (or writes
    into whatever file reuses the descriptor). Here everything is closed from the loop's own
    thread: first the listening sockets, then, once the answers in flight are sent (at most
    SHUTDOWN_GRACE_S), the worker threads and every connection.
    """
    socket_map = _socket_map(server)
    use_poll = server.adj.asyncore_use_poll
    listeners = [obj for obj in socket_map.values() if isinstance(obj, BaseWSGIServer)]
    while not stop.is_set() and socket_map:
        wasyncore.loop(timeout=LOOP_SLICE_S, map=socket_map, use_poll=use_poll, count=1)
    for listener in listeners:  # stop accepting; the trigger stays open for the answers
        wasyncore.dispatcher.close(listener)
    deadline = time.monotonic() + SHUTDOWN_GRACE_S
    # Read what clients sent before the stop (their requests get answered), then wait for
    # the answers in flight.
    wasyncore.loop(timeout=0, map=socket_map, use_poll=use_poll, count=1)
    while (any(_busy(obj) for obj in list(socket_map.values()))
           and time.monotonic() < deadline):
        wasyncore.loop(timeout=0.05, map=socket_map, use_poll=use_poll, count=1)
    server.task_dispatcher.shutdown(timeout=1)
    wasyncore.close_all(socket_map)


def serve(settings: Settings, stop: threading.Event) -> None:
    """Serve the HTTP API with waitress on settings.http.host:port until ``stop`` is set."""
    keys = load_keys(settings)
    ensure_topics(settings)
    host, port = settings.http.host, settings.http.port
    producer = Producer(client_config(settings, **{
        "enable.idempotence": True, "linger.ms": 2,
        # Give up on a record when the request gives up on it, so that a 503 does not leave
        # the payment queued to be delivered after all.
        "message.timeout.ms": int(DELIVERY_TIMEOUT_S * 1000), "logger": log,
    }))
    client = store.connect(settings)
    ended = threading.Event()
    heartbeat: threading.Thread | None = None
    app = create_app(settings, keys, producer, client)
    counters: Counters = app.extensions["paysim.counters"]
    try:
        try:
            server = waitress.create_server(app, host=host, port=port, threads=THREADS)
        except OSError as exc:
            raise PaysimError(f"the HTTP API cannot listen on {host}:{port}: "
                              f"{exc.strerror or exc}") from None
        heartbeat = threading.Thread(target=_heartbeat, args=(client, counters, ended),
                                     name="http-heartbeat", daemon=True)
        heartbeat.start()
        log.info("HTTP API listening on http://%s:%d", host, port)
        _run_until(server, stop)
        log.info("HTTP API stopped after %d requests", counters.answered)
    finally:
        ended.set()
        if heartbeat is not None:
            heartbeat.join(5)
        remaining = producer.flush(DELIVERY_TIMEOUT_S)
        if remaining:
            log.warning("%d records not delivered at shutdown", remaining)
        client.close()


def run_edge(settings: Settings) -> int:
    """The HTTP API as a service process (what `paysim service http` runs)."""
    return run_process(HTTP.name, lambda stop: serve(settings, stop))
