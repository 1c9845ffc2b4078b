"""The seed's HTTP endpoints, over the same decision functions as the Kafka services.

``POST /authorize`` runs the authorizer's card checks at the edge (``decisions.check_card``, the
one the authorizer service runs), answers 400 with the reason code when a check fails, and
otherwise seals the card block and puts the payment on the requested topic, answering 200 only
once Kafka has acknowledged it. ``POST /notify_client`` sends a payment's notification again,
``GET /payments/<id>`` reads an outcome, ``GET /healthz`` answers from the health checker's
last check of Kafka, Redis and the pipeline services (paysim.edge.health), without I/O: the
server runs it on its event loop, not on the worker threads.

Every answer is JSON; errors are ``{"error": "<one line>"}``. Card numbers and CVVs are never
logged, echoed back in an error, or kept anywhere but inside the sealed card block.
"""

from __future__ import annotations

import json
import logging
import threading
import time
import traceback
import uuid
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Any, NamedTuple, TypeVar

import redis
from confluent_kafka import Producer
from flask import Flask, Response, g, request
from werkzeug.exceptions import HTTPException
from werkzeug.http import HTTP_STATUS_CODES
from werkzeug.middleware.dispatcher import DispatcherMiddleware

from paysim.domain import cards, decisions
from paysim.domain.messages import PaymentRequested, encode, new_payment_request, now_us
from paysim.domain.requests import AuthorizeRequest
from paysim.domain.webhooks import refused_callback
from paysim.edge import http_server, idempotency
from paysim.edge.answers import Accepted, Declined, Error, Resent, body
from paysim.edge.delivery import Deliveries
from paysim.edge.health import HEALTH_PATH, HealthChecker
from paysim.edge.idempotency import Answer, Idempotency, Write
from paysim.edge.loop_redis import pipes_for
from paysim.edge.openapi import OPENAPI_PATH, openapi_document
from paysim.edge.operations import ROUTES, Operations, Route, operation_id, route_note
from paysim.edge.prometheus import HttpMetrics
from paysim.edge.steps import LoopRunner, Send, Steps, returning, run_blocking
from paysim.edge.validation import (
    MAX_BODY_BYTES,
    BadRequest,
    authorize_raw,
    notify_body,
    operation_body,
    short,
)
from paysim.infra.config import Settings
from paysim.infra.secrets import Keys
from paysim.infra.tracing import TRACE_HEADERS, TRACERESPONSE, RequestTrace, open_tracer
from paysim.pipeline import ledger_store, notifications, store
from paysim.pipeline.registry import HTTP
from paysim.pipeline.webhook_dispatch import callback_policy

log = logging.getLogger("paysim.http")

UI_PATH = "/ui"  # where run-all's HTTP API serves the dashboard
AUTHORIZE_PATH = "/authorize"
TOO_LARGE = f"request body is larger than {MAX_BODY_BYTES // 1024} KiB"
JSON_TYPE = "application/json"

# The server's direct path: (method, path) -> a handler answering without Flask, on a worker
# thread; and the same routes' handlers on the event loop.
DirectRoutes = dict[tuple[str, str], http_server.Direct]
LoopRoutes = dict[tuple[str, str], http_server.LoopDirect]
T = TypeVar("T")


class Counters:
    """Requests answered, for the heartbeat; shared by the server's threads."""

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self.answered = 0
        self.started_at = time.time()

    def count(self) -> None:
        with self._lock:
            self.answered += 1


class Reply(NamedTuple):
    """A route's answer, whether it replays an earlier one (paysim.edge.idempotency), and
    the W3C traceresponse naming the span its record was sent in (when tracing)."""

    answer: Answer
    replayed: bool = False
    traceresponse: str | None = None

    def headers(self) -> list[tuple[str, str]]:
        headers = [(idempotency.REPLAY_HEADER, "true")] if self.replayed else []
        if self.traceresponse is not None:
            headers.append((TRACERESPONSE, self.traceresponse))
        return headers


def trace_parent(header: Callable[[str], str | None]) -> dict[str, str]:
    """A request's W3C trace headers (``header`` reads one by name), as tracing takes them."""
    found = {name: header(name) for name in TRACE_HEADERS}
    return {name: value for name, value in found.items() if value is not None}


@dataclass(frozen=True)
class Checked:
    """A payment that passed the card checks: sealed, its card tokenized, its route note."""

    message: PaymentRequested
    token: str
    note: Write


# Built once: json.dumps with separators builds an encoder a call (7 of its 9 µs). The json
# module, not msgspec: msgspec writes non-ASCII as UTF-8, and the answers' bytes (the seed's
# Cyrillic message as \u escapes) are what clients have read since the seed.
_ENCODER = json.JSONEncoder(separators=(",", ":"))


def _encoded(answer_body: dict[str, Any]) -> bytes:
    return _ENCODER.encode(answer_body).encode()


def _server_answer(reply: Reply) -> http_server.Answer:
    """A reply as the server writes it (the direct paths, without Flask)."""
    status = reply.answer.status
    return http_server.Answer(f"{status} {HTTP_STATUS_CODES.get(status, '').upper()}",
                              [("Content-Type", JSON_TYPE), *reply.headers()],
                              _encoded(reply.answer.body))


def _json(status: int, body: dict[str, Any], headers: dict[str, str] | None = None) -> Response:
    response = Response(_encoded(body), status=status, mimetype=JSON_TYPE)
    for name, value in (headers or {}).items():
        response.headers[name] = value
    return response


def _reply(reply: Reply) -> Response:
    return _json(*reply.answer, dict(reply.headers()))


def _error(status: int, message: str, **fields: Any) -> Response:
    return _json(status, {**body(Error(error=message)), **fields})


def error_answer(exc: Exception, method: str, path: str) -> Answer:
    """What a route answers when it raised ``exc``: a BadRequest's 4xx, 503 while Redis is
    away, 500 for anything else (logged with its type and where, never its message: it
    could carry request data)."""
    if isinstance(exc, BadRequest):
        return Answer(exc.status, {**body(Error(error=str(exc))), **exc.fields})
    if isinstance(exc, redis.RedisError):
        log.warning("%s %s: Redis: %s", method, path, type(exc).__name__)
        return Answer(503, body(Error(error="Redis is unavailable; try again")))
    where = "".join(traceback.format_tb(exc.__traceback__)).rstrip()
    log.error("%s %s failed: %s\n%s", method, path, type(exc).__name__, where)
    return Answer(500, body(Error(error="internal error")))


def create_app(settings: Settings, keys: Keys, producer: Producer,
               redis_client: redis.Redis, health: HealthChecker,
               metrics: HttpMetrics | None = None, ui: Any = None) -> Flask:
    """The HTTP API as a WSGI app; ``producer`` and ``redis_client`` are shared by all threads;
    ``health`` answers /healthz (checking runs in its own thread, started by the caller);
    ``metrics``, when given, count every answer; ``ui``, when given, is a WSGI app served
    under UI_PATH (the dashboard, which the CLI hands in: the edge does not import it). The
    app's sends onto Kafka (``app.extensions["paysim.deliveries"]``) wait on their own
    delivery reports once the caller starts their poller, and poll the producer themselves
    until then. ``app.extensions["paysim.direct"]`` holds the routes a server may answer
    without Flask (POST /authorize: the route's own core, errors and metrics included)."""
    app = Flask("paysim.http_api")
    app.config["MAX_CONTENT_LENGTH"] = MAX_BODY_BYTES
    # Werkzeug answers a path with "//" (a payment id holding %2F decodes to one) with an HTML
    # 308 to the merged path; every answer here is JSON, so such a path is simply not found.
    app.url_map.merge_slashes = False
    counters = Counters()
    app.extensions["paysim.counters"] = counters
    deliveries = Deliveries(producer)
    app.extensions["paysim.deliveries"] = deliveries
    cipher = cards.CardCipher(keys.card_key)
    topics = settings.topics
    # The URL as written, no DNS here: the dispatcher checks the addresses when it connects.
    policy = callback_policy(settings)
    operations = Operations(settings, deliveries, redis_client)

    def blocking(steps: Steps[T]) -> T:
        return run_blocking(steps, redis_client, deliveries)
    tracer = open_tracer(settings, HTTP.name)  # None unless an OTLP endpoint is set

    def checked(fields: AuthorizeRequest) -> Answer | Checked:
        """The card checks' 400, or the payment sealed and ready to send."""
        exp_month, exp_year = fields.card_expiry()
        card = cards.CardBlock(number=fields.card_number, exp_month=exp_month,
                               exp_year=exp_year, cvv=fields.cvv)
        at = now_us()
        check = decisions.check_card(card, fields.amount, fields.currency,
                                     datetime.fromtimestamp(at / 1e6, UTC),
                                     settings.issuer.max_amount_usd)
        if not check.accepted:
            return Answer(400, body(Declined(error=decisions.reason_text(check.reason),
                                             reason_code=check.reason)))
        message = new_payment_request(
            card, cipher, run_id=fields.run_id, seq=fields.seq, amount=fields.amount,
            currency=fields.currency, merchant=fields.merchant,
            callback_url=fields.callback_url, requested_at=at, capture=fields.capture,
            partial_approval=fields.partial_approval)
        token = cards.tokenize(card.number, keys.token_key)
        # Noted before it is sent (with the Idempotency-Key's reservation): a reversal may
        # come before the payment's outcome.
        return Checked(message, token, route_note(message.payment_id, fields.run_id, token,
                                                  settings.redis.ledger_ttl))

    def send(payment: Checked, traced: RequestTrace) -> Steps[Answer]:
        message = payment.message
        # The payment's trace starts here (when tracing), or continues the caller's: its
        # context goes in the headers. (Traced requests run on a worker thread, never
        # interleaved on the loop: the span is the thread's current one while it waits.)
        with traced.sending(topics.requested, message.payment_id) as trace:
            failure = yield Send(topics.requested, payment.token, encode(message),
                                 trace.headers)
            trace.failed(failure)
        if failure is not None:
            log.warning("payment %s not accepted: %s", message.payment_id, failure)
            return Answer(503, body(Error(error=f"payment not accepted, Kafka is unavailable: "
                                                f"{failure}")))
        return Answer(200, body(Accepted(payment_id=message.payment_id)))

    def idempotent(key: str | None, fingerprint: bytes,
                   work: Callable[[str | None], Steps[Answer]],
                   also: Sequence[Write] = ()) -> Steps[Reply]:
        """``work`` once per Idempotency-Key (``key``; None without one): a retry with the
        same key and body gets the first answer again. ``also``: the work's first writes,
        made in the key's reservation's round trip."""
        if key is None:
            yield from idempotency.write_all(also)
            return Reply((yield from work(None)))
        idem = Idempotency(key, fingerprint, keys.token_key)
        earlier = yield from idem.reserving(also)
        if earlier is not None:
            return Reply(earlier, replayed=True)
        try:
            answer = yield from work(key)
        except GeneratorExit:  # abandoned by its runner: nothing more can be done
            raise
        except BaseException:
            yield from idem.releasing()
            raise
        if answer.status >= 500 or answer.status == 202:
            # Nothing was accepted, or not yet applied: the client may retry with this key
            # (an operation's id comes from the key, so the retry cannot apply it twice).
            yield from idem.releasing()
            return Reply(answer)
        yield from idem.finishing(answer)  # not waited for: the work is done, say so
        return Reply(answer)

    def authorize_reply(raw: bytes, key_header: str | None,
                        traced: RequestTrace) -> Steps[Reply]:
        """POST /authorize, given its body, its Idempotency-Key header and its way into
        tracing: what the Flask route and the server's direct paths
        (``app.extensions["paysim.direct"]``, ``["paysim.direct_on_loop"]``) answer."""
        fields = authorize_raw(raw)
        if fields.callback_url is not None:
            refusal = refused_callback(fields.callback_url, policy)
            if refusal is not None:
                raise BadRequest(f"field 'callback_url' is refused: {refusal}")
        key = idempotency.key_from(key_header)
        payment = checked(fields)
        if isinstance(payment, Answer):
            return (yield from idempotent(key, raw, lambda _key: returning(payment)))
        reply = yield from idempotent(key, raw, lambda _key: send(payment, traced),
                                      also=(payment.note,))
        return reply._replace(traceresponse=traced.response)

    def traced_by(header: Callable[[str], str | None]) -> RequestTrace:
        """A request's way into tracing, continuing its traceparent (``header`` reads one of
        its headers by name)."""
        return RequestTrace(tracer, trace_parent(header) if tracer else {})

    def request_trace() -> RequestTrace:
        """A Flask request's way into tracing."""
        return traced_by(request.headers.get)

    @app.post(AUTHORIZE_PATH)
    def authorize() -> Response:
        raw = request.get_data(cache=True)  # raises 413 past MAX_CONTENT_LENGTH
        return _reply(blocking(authorize_reply(raw, request.headers.get(idempotency.HEADER),
                                               request_trace())))

    def operation_view(route: Route) -> Callable[[str], Response]:
        def view(payment_id: str) -> Response:
            raw, fields = operation_body(request, route.body)
            key = idempotency.key_from(request.headers.get(idempotency.HEADER))
            traced = request_trace()
            reply = blocking(idempotent(
                key, request.path.encode() + b"\n" + raw,
                lambda key: returning(operations.apply(route, payment_id, fields,
                                                       operation_id(key, request.path),
                                                       traced))))
            return _reply(reply._replace(traceresponse=traced.response))
        return view

    for route in ROUTES:
        app.add_url_rule(route.path, f"operation_{route.kind}", operation_view(route),
                         methods=["POST"])

    @app.post("/notify_client")
    def notify_client() -> Response:
        payment_id = notify_body(request)
        stored = store.read_outcome(redis_client, payment_id)
        if stored is None:
            return _error(404, f"no outcome for transaction {short(payment_id)} "
                               "(unknown, not finished, or expired)")
        outcome = stored.outcome
        notification = notifications.notification_for(
            outcome, f"evt_resend_{uuid.uuid4().hex}", now_us())
        failure = deliveries.deliver(topics.notifications, outcome.payment_id,
                                     encode(notification))
        if failure is not None:
            log.warning("notification for %s not sent: %s", outcome.payment_id, failure)
            return _error(503, f"notification not sent, Kafka is unavailable: {failure}")
        if outcome.callback_url:
            pipe = redis_client.pipeline(transaction=False)
            notifications.queue_webhook(pipe, outcome.callback_url, notification)
            pipe.execute()
        return _json(200, body(Resent(transaction_id=payment_id,
                                      outcome=store.outcome_view(stored))))

    @app.get("/payments/<payment_id>")
    def payment(payment_id: str) -> Response:
        stored = store.read_outcome(redis_client, payment_id)
        if stored is None:
            return _error(404, f"no outcome for payment {short(payment_id)} "
                               "(unknown, not finished, or expired)")
        return _json(200, body(ledger_store.payment_view(redis_client, stored)))

    @app.get(HEALTH_PATH)
    def healthz() -> Response:
        return _json(*health.answer())

    @app.get(OPENAPI_PATH)
    def openapi() -> Response:
        return _json(200, openapi_document())

    @app.errorhandler(BadRequest)
    def bad_request(exc: BadRequest) -> Response:
        return _json(*error_answer(exc, request.method, request.path))

    @app.errorhandler(HTTPException)
    def http_error(exc: HTTPException) -> Response:
        response = exc.get_response()  # keeps headers such as Allow on a 405
        status = exc.code or 500
        if status == 413:
            message = TOO_LARGE
        else:
            message = f"{exc.name}: {' '.join((exc.description or '').split())}".rstrip(": ")
        response.set_data(json.dumps(body(Error(error=message))))
        response.mimetype = "application/json"
        return response

    @app.errorhandler(redis.RedisError)
    def redis_down(exc: redis.RedisError) -> Response:
        return _json(*error_answer(exc, request.method, request.path))

    @app.errorhandler(Exception)
    def internal_error(exc: Exception) -> Response:
        return _json(*error_answer(exc, request.method, request.path))

    def direct_authorize(incoming: http_server.Request) -> Steps[http_server.Answer]:
        """POST /authorize without Flask (its per-request cost was a third of the edge's
        Python time): the route's own core, answers, errors, counters and metrics, with the
        body size Flask would allow."""
        started = time.perf_counter()
        raw = incoming.payload()
        try:
            if len(raw) > MAX_BODY_BYTES:
                reply = Reply(Answer(413, body(Error(error=TOO_LARGE))))
            else:
                traced = traced_by(incoming.header)
                reply = yield from authorize_reply(raw, incoming.header(idempotency.HEADER),
                                                   traced)
        except Exception as exc:
            reply = Reply(error_answer(exc, incoming.method, AUTHORIZE_PATH))
        status = reply.answer.status
        counters.count()
        if metrics is not None:
            metrics.answered(AUTHORIZE_PATH, status, time.perf_counter() - started)
        return _server_answer(reply)

    direct: DirectRoutes = {
        ("POST", AUTHORIZE_PATH): lambda incoming: blocking(direct_authorize(incoming))}
    app.extensions["paysim.direct"] = direct
    # The same on the server's event loop, many requests at once and no worker thread each
    # (their Redis calls in pipelines from the loop itself, paysim.edge.loop_redis). Not when
    # tracing: a span is the current one of the thread that waits inside it.
    runner = LoopRunner(redis_client, deliveries, pipes_for(redis_client))
    app.extensions["paysim.runner"] = runner

    def authorize_on_loop(incoming: http_server.Request,
                          answered: Callable[[http_server.Answer], None]) -> None:
        def failed(exc: Exception) -> None:  # direct_authorize answers its own errors
            answered(_server_answer(Reply(error_answer(exc, incoming.method,
                                                       AUTHORIZE_PATH))))

        runner.start(direct_authorize(incoming), answered, failed)

    on_loop: LoopRoutes = {} if tracer is not None else {
        ("POST", AUTHORIZE_PATH): authorize_on_loop}
    app.extensions["paysim.direct_on_loop"] = on_loop

    @app.before_request
    def start_clock() -> None:
        g.started = time.perf_counter()

    @app.after_request
    def count(response: Response) -> Response:
        counters.count()
        if metrics is not None:
            rule = request.url_rule.rule if request.url_rule is not None else None
            started = g.get("started")
            metrics.answered(rule, response.status_code,
                             time.perf_counter() - started if started is not None else 0.0)
        return response

    if ui is not None:
        # Beside Flask, not through it: the API's JSON error handlers and its request
        # metrics are for the API.
        app.wsgi_app = DispatcherMiddleware(app.wsgi_app, {UI_PATH: ui})  # type: ignore[method-assign]
    return app
