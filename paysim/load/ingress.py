"""The two ways payments enter the pipeline: straight onto Kafka, or the HTTP API.

Both implement ``Ingress``, so the runner sends through either the same way.
"""

from __future__ import annotations

import json
import secrets
import urllib.error
import urllib.request
import uuid
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Protocol

from confluent_kafka import Producer

from paysim.domain import cards
from paysim.domain.decisions import Status
from paysim.domain.messages import (
    NOTIFIED,
    REQUESTED,
    CaptureMode,
    PaymentRequested,
    encode,
    new_payment_request,
    now_us,
)
from paysim.infra.config import Settings
from paysim.infra.errors import PaysimError
from paysim.infra.kafka import INTERNAL_COMPRESSION, client_config, produce, quiet_logger
from paysim.infra.secrets import Keys, load_keys
from paysim.infra.tracing import TRACERESPONSE, open_tracer
from paysim.infra.waiting import wait_until
from paysim.load.generator import GeneratedPayment
from paysim.pipeline.registry import GENERATOR
from paysim.pipeline.store import DoneEntry


@dataclass(frozen=True)
class Failure:
    """A payment a target system did not answer usably (refused, timed out, an answer with
    no decision in it), or an outcome record that could not be read: counted in the report
    as an error of its ``kind``; ``line`` says what happened (never card data)."""

    kind: str
    line: str
    payment_id: str | None = None  # None: a record that names no payment of the run


@dataclass(frozen=True)
class Sent:
    """A payment handed to the pipeline: its id, and its outcome when the ingress already
    knows it (the HTTP API declines a bad card at once: the answer is the outcome), or the
    failure that ended it."""

    payment_id: str
    outcome: DoneEntry | None = None
    token: str | None = None  # the card's token, when the sender made it
    failure: Failure | None = None
    traceparent: str | None = None  # the trace's first span, when traced (W3C traceparent)


class Ingress(Protocol):
    """Where the runner hands payments over."""

    # How many payments it wants sent at once: 1 sends on the scheduler's own thread, more
    # through a pool of that many threads (each send then waits for its answer).
    senders: int

    def send(self, payment: GeneratedPayment, run_id: str, callback_url: str | None,
             capture: CaptureMode = CaptureMode.AUTOMATIC,
             partial_approval: bool = False) -> Sent: ...

    def finish(self) -> None:
        """Once every send returned: make sure the pipeline has every payment."""


def new_run_id() -> str:
    return datetime.now(UTC).strftime("run-%Y%m%d-%H%M%S-") + secrets.token_hex(3)


def request_message(payment: GeneratedPayment, run_id: str, cipher: cards.CardCipher,
                    callback_url: str | None,
                    capture: CaptureMode = CaptureMode.AUTOMATIC,
                    partial_approval: bool = False) -> PaymentRequested:
    """The payments.requested message for a generated payment: its card sealed for the
    authorizer, under a new payment id."""
    return new_payment_request(
        payment.card, cipher, run_id=run_id, seq=payment.seq, amount=payment.amount,
        currency=payment.currency, merchant=payment.merchant, callback_url=callback_url,
        capture=capture, partial_approval=partial_approval)


TOKEN_CACHE_SIZE = 100_000  # card numbers whose token KafkaIngress keeps


class KafkaIngress:
    """Sends straight onto the requested topic, as a payment gateway would."""

    senders = 1  # produce() only queues: one thread keeps up

    def __init__(self, settings: Settings, keys: Keys) -> None:
        self.settings = settings
        self.keys = keys
        self.cipher = cards.CardCipher(keys.card_key)
        self.errors: list[str] = []
        self.tracer = open_tracer(settings, GENERATOR)  # None unless an OTLP endpoint is set
        self._tokens: dict[str, str] = {}  # card number -> token: see token()
        self._idempotence_state = ""
        self.producer = Producer(client_config(settings, **{
            "enable.idempotence": True, "linger.ms": 5, "compression.type": INTERNAL_COMPRESSION,
            "statistics.interval.ms": 50, "stats_cb": self._on_stats, "logger": quiet_logger,
            # Only failed deliveries are reported: a Python callback for every payment
            # delivered was a fifth of produce's cost (0.5 µs of 2.5 a record).
            "on_delivery": self._delivered, "delivery.report.only.error": True,
        }))
        self._wait_until_ready()

    def _on_stats(self, stats_json: str) -> None:
        # Only the wait for the producer id reads them; the interval cannot be changed once
        # the producer exists, and parsing every 50 ms for the whole run took about 3% of
        # the sender's time holding the GIL.
        if self._idempotence_state != "Assigned":
            self._idempotence_state = (json.loads(stats_json).get("eos", {})
                                       .get("idemp_state", ""))

    def _wait_until_ready(self) -> None:
        """An idempotent producer sends nothing until the broker gave it a producer id (about
        0.5 s). Waiting here keeps that start-up out of the first payments' latency."""
        timeout = self.settings.kafka.timeout
        ready = wait_until(lambda: self.producer.poll(0.05) is not None and
                           self._idempotence_state == "Assigned", timeout=timeout, interval=0)
        if not ready:
            raise PaysimError(f"Kafka at {self.settings.kafka_bootstrap} gave the sender no "
                              f"producer id in {timeout:g} s (state "
                              f"{self._idempotence_state or 'none'})")

    def send(self, payment: GeneratedPayment, run_id: str, callback_url: str | None,
             capture: CaptureMode = CaptureMode.AUTOMATIC,
             partial_approval: bool = False) -> Sent:
        message = request_message(payment, run_id, self.cipher, callback_url, capture,
                                  partial_approval)
        # Keyed by card token: one card's payments stay in order end to end, so the same seed
        # settles against the ledger in the same order.
        key = self.token(payment.card.number)
        topic = self.settings.topics.requested
        traceparent = None
        if self.tracer is None:
            produce(self.producer, topic, encode(message), key=key)
        else:  # the payment's trace starts here: its context goes in the headers
            with self.tracer.sending(topic, message.payment_id) as trace:
                produce(self.producer, topic, encode(message), key=key,
                        headers=trace.headers)
            traceparent = trace.traceresponse
        self.producer.poll(0)
        return Sent(message.payment_id, token=key, traceparent=traceparent)

    def token(self, number: str) -> str:
        """The card's token, remembered: a run draws its payments from a few thousand cards,
        and the token's HMAC was a tenth of the sender's Python time per payment."""
        token = self._tokens.get(number)
        if token is None:
            if len(self._tokens) >= TOKEN_CACHE_SIZE:  # spoiled numbers are new each time
                self._tokens.clear()
            token = self._tokens[number] = cards.tokenize(number, self.keys.token_key)
        return token

    def _delivered(self, error, _message) -> None:
        if error is not None:
            self.errors.append(error.str())

    def finish(self) -> None:
        remaining = self.producer.flush(30)
        if self.tracer is not None:
            self.tracer.flush()
        if remaining or self.errors:
            detail = self.errors[0] if self.errors else f"{remaining} not delivered in 30 s"
            raise PaysimError(f"Kafka did not take every payment: {detail}")


class HttpIngress:
    """Sends through the HTTP API (POST /authorize), as a shop's checkout would."""

    senders = 32  # each request waits for its answer

    def __init__(self, settings: Settings) -> None:
        self.url = f"http://{settings.http.host}:{settings.http.port}/authorize"

    def send(self, payment: GeneratedPayment, run_id: str, callback_url: str | None,
             capture: CaptureMode = CaptureMode.AUTOMATIC,
             partial_approval: bool = False) -> Sent:
        body: dict[str, object] = {
            "card_number": payment.card.number, "exp_month": payment.card.exp_month,
            "exp_year": payment.card.exp_year, "cvv": payment.card.cvv,
            "amount": payment.amount, "currency": payment.currency,
            "merchant": {"id": payment.merchant.id, "name": payment.merchant.name,
                         "mcc": payment.merchant.mcc, "country": payment.merchant.country},
            "run_id": run_id, "seq": payment.seq,
        }
        if capture != CaptureMode.AUTOMATIC:
            body["capture"] = capture.value
        if partial_approval:
            body["partial_approval"] = True
        if callback_url:
            body["callback_url"] = callback_url
        requested = now_us()
        request = urllib.request.Request(self.url, data=json.dumps(body).encode(),
                                         headers={"Content-Type": "application/json"})
        try:
            with urllib.request.urlopen(request, timeout=30) as response:
                # The API's traceresponse (when it traces) names the payment's first span.
                return Sent(json.loads(response.read())["payment_id"],
                            traceparent=response.headers.get(TRACERESPONSE))
        except urllib.error.HTTPError as exc:
            answer = json.loads(exc.read() or b"{}")
            if exc.code == 400 and "reason_code" in answer:
                payment_id = str(uuid.uuid4())
                return Sent(payment_id, DoneEntry(
                    payment_id, Status.DECLINED, answer["reason_code"], payment.amount,
                    payment.currency, payment.seq, {REQUESTED: requested, NOTIFIED: now_us()}))
            raise PaysimError(f"HTTP API at {self.url} answered {exc.code}: "
                              f"{answer.get('error', 'no error message')}") from None
        except (urllib.error.URLError, OSError) as exc:
            raise PaysimError(f"HTTP API at {self.url} cannot be reached: "
                              f"{getattr(exc, 'reason', exc)} (is `paysim run-all` running?)"
                              ) from None

    def finish(self) -> None:
        pass


def open_ingress(settings: Settings, via: str) -> Ingress:
    """The ingress ``via`` names: ``kafka`` or ``http``."""
    if via == "http":
        return HttpIngress(settings)
    return KafkaIngress(settings, load_keys(settings))
