"""`paysim send`: generate payments, push them into the pipeline, read every outcome back."""

from __future__ import annotations

import json
import secrets
import time
import urllib.error
import urllib.request
import uuid
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from datetime import UTC, datetime

import redis
from confluent_kafka import KafkaException, Producer

from paysim import cards, store
from paysim.config import Settings
from paysim.errors import PaysimError
from paysim.generator import GeneratedPayment, Mix, PaymentStream, build_population
from paysim.kafka_clients import client_config
from paysim.schema import REQUESTED, PaymentRequested, encode, now_us
from paysim.secrets import Keys, load_keys
from paysim.waiting import wait_until

READ_BATCH = 2000
HTTP_WORKERS = 16


@dataclass(frozen=True)
class SendOptions:
    count: int
    seed: int
    via: str = "kafka"  # or "http"
    timeout: float = 120.0
    mix: Mix = field(default_factory=Mix)
    callback_url: str | None = None


@dataclass
class SentPayment:
    payment_id: str
    seq: int
    expected: str | None
    amount: int
    currency: str


@dataclass
class RunResult:
    run_id: str
    sent: list[SentPayment]
    outcomes: dict[str, dict[str, str]]  # payment id -> done entry (see store.done_entry)
    started_us: int
    finished_us: int

    @property
    def missing(self) -> list[SentPayment]:
        return [p for p in self.sent if p.payment_id not in self.outcomes]


Progress = Callable[[str, int, int], None]  # (phase, done, total)


def new_run_id() -> str:
    return datetime.now(UTC).strftime("run-%Y%m%d-%H%M%S-") + secrets.token_hex(3)


def _request(payment: GeneratedPayment, run_id: str, keys: Keys, cipher: cards.CardCipher,
             callback_url: str | None) -> PaymentRequested:
    payment_id = str(uuid.uuid4())
    return PaymentRequested(
        payment_id=payment_id, run_id=run_id, seq=payment.seq, amount=payment.amount,
        currency=payment.currency, merchant=payment.merchant, callback_url=callback_url,
        stages={REQUESTED: now_us()}, card=cipher.encrypt(payment.card, payment_id.encode()),
    )


class KafkaIngress:
    """Sends straight onto the requested topic, as a payment gateway would."""

    def __init__(self, settings: Settings, keys: Keys) -> None:
        self.settings = settings
        self.keys = keys
        self.cipher = cards.CardCipher(keys.card_key)
        self.errors: list[str] = []
        self._idempotence_state = ""
        self.producer = Producer(client_config(settings, **{
            "enable.idempotence": True, "linger.ms": 5, "compression.type": "lz4",
            "statistics.interval.ms": 50, "stats_cb": self._on_stats,
        }))
        self._wait_until_ready()

    def _on_stats(self, stats_json: str) -> None:
        self._idempotence_state = json.loads(stats_json).get("eos", {}).get("idemp_state", "")

    def _wait_until_ready(self) -> None:
        """An idempotent producer sends nothing until the broker gave it a producer id (about
        0.5 s). Waiting here keeps that start-up out of the first payments' latency."""
        ready = wait_until(lambda: self.producer.poll(0.05) is not None and
                           self._idempotence_state == "Assigned", timeout=15, interval=0)
        if not ready:
            raise PaysimError(f"Kafka at {self.settings.kafka_bootstrap} gave the sender no "
                              f"producer id in 15 s (state {self._idempotence_state or 'none'})")

    def send(self, payment: GeneratedPayment, run_id: str, callback_url: str | None) -> str:
        message = _request(payment, run_id, self.keys, self.cipher, callback_url)
        # Keyed by card token: one card's payments stay in order end to end, so the same seed
        # settles against the ledger in the same order.
        key = cards.tokenize(payment.card.number, self.keys.token_key)
        while True:
            try:
                self.producer.produce(self.settings.topics.requested, key=key,
                                      value=encode(message), on_delivery=self._delivered)
                break
            except BufferError:
                self.producer.poll(0.05)
        self.producer.poll(0)
        return message.payment_id

    def _delivered(self, error, _message) -> None:
        if error is not None:
            self.errors.append(error.str())

    def finish(self) -> None:
        remaining = self.producer.flush(30)
        if remaining or self.errors:
            detail = self.errors[0] if self.errors else f"{remaining} not delivered in 30 s"
            raise PaysimError(f"Kafka did not take every payment: {detail}")


class HttpIngress:
    """Sends through the HTTP API (POST /authorize), as a shop's checkout would."""

    def __init__(self, settings: Settings) -> None:
        self.url = f"http://{settings.http.host}:{settings.http.port}/authorize"

    def send(self, payment: GeneratedPayment, run_id: str,
             callback_url: str | None) -> tuple[str, dict[str, str] | None]:
        """The payment id, and its outcome when the edge declined it at once."""
        body: dict[str, object] = {
            "card_number": payment.card.number, "exp_month": payment.card.exp_month,
            "exp_year": payment.card.exp_year, "cvv": payment.card.cvv,
            "amount": payment.amount, "currency": payment.currency,
            "merchant": {"id": payment.merchant.id, "name": payment.merchant.name,
                         "mcc": payment.merchant.mcc, "country": payment.merchant.country},
            "run_id": run_id, "seq": payment.seq,
        }
        if callback_url:
            body["callback_url"] = callback_url
        requested = now_us()
        request = urllib.request.Request(self.url, data=json.dumps(body).encode(),
                                         headers={"Content-Type": "application/json"})
        try:
            with urllib.request.urlopen(request, timeout=30) as response:
                return json.loads(response.read())["payment_id"], None
        except urllib.error.HTTPError as exc:
            answer = json.loads(exc.read() or b"{}")
            if exc.code == 400 and "reason_code" in answer:
                payment_id = str(uuid.uuid4())
                return payment_id, {"payment_id": payment_id, "status": "declined",
                                    "reason_code": answer["reason_code"],
                                    "t_requested": str(requested)}
            raise PaysimError(f"HTTP API at {self.url} answered {exc.code}: "
                              f"{answer.get('error', 'no error message')}") from None
        except (urllib.error.URLError, OSError) as exc:
            raise PaysimError(f"HTTP API at {self.url} cannot be reached: "
                              f"{getattr(exc, 'reason', exc)} (is `paysim run-all` running?)"
                              ) from None

    def finish(self) -> None:
        pass


def collect(client: redis.Redis, run_id: str, wanted: set[str],
            outcomes: dict[str, dict[str, str]], deadline: float,
            progress: Progress | None = None) -> None:
    """Read the run's stream of notified payments until every wanted one came or time is up."""
    key, last_id = store.run_stream_key(run_id), "0"
    while not wanted <= outcomes.keys() and time.monotonic() < deadline:
        block_ms = max(1, min(500, int((deadline - time.monotonic()) * 1000)))
        for _, entries in client.xread({key: last_id}, count=READ_BATCH, block=block_ms) or []:
            for entry_id, fields in entries:
                last_id = entry_id
                entry = {k.decode(): v.decode() for k, v in fields.items()}
                outcomes.setdefault(entry["payment_id"], entry)  # a replay adds nothing
        if progress:
            progress("outcomes", len(wanted & outcomes.keys()), len(wanted))


def run_send(settings: Settings, options: SendOptions, progress: Progress | None = None,
             run_id: str | None = None) -> RunResult:
    run_id = run_id or new_run_id()
    stream = PaymentStream(build_population(options.seed), options.seed, options.mix,
                           settings.issuer.max_amount_usd)
    client = store.connect(settings)
    outcomes: dict[str, dict[str, str]] = {}
    sent: list[SentPayment] = []
    started = now_us()
    try:
        if options.via == "http":
            ingress = HttpIngress(settings)
            with ThreadPoolExecutor(HTTP_WORKERS) as pool:
                payments = stream.take(options.count)
                answers = pool.map(lambda p: ingress.send(p, run_id, options.callback_url),
                                   payments)
                for payment, (payment_id, immediate) in zip(payments, answers, strict=True):
                    sent.append(SentPayment(payment_id, payment.seq, payment.expected,
                                            payment.amount, payment.currency))
                    if immediate:
                        outcomes[payment_id] = immediate
                    if progress:
                        progress("sent", len(sent), options.count)
        else:
            kafka = KafkaIngress(settings, load_keys(settings))
            for payment in stream.take(options.count):
                payment_id = kafka.send(payment, run_id, options.callback_url)
                sent.append(SentPayment(payment_id, payment.seq, payment.expected,
                                        payment.amount, payment.currency))
                if progress and len(sent) % 100 == 0:
                    progress("sent", len(sent), options.count)
            kafka.finish()
            if progress:
                progress("sent", len(sent), options.count)
        wanted = {p.payment_id for p in sent}
        collect(client, run_id, wanted, outcomes, time.monotonic() + options.timeout, progress)
    except KafkaException as exc:
        raise PaysimError(f"Kafka at {settings.kafka_bootstrap}: {exc.args[0].str()}") from None
    except redis.RedisError as exc:
        raise PaysimError(f"Redis at {settings.redis_url}: {exc}") from None
    finally:
        client.close()
    last_notified = max((int(o["t_notified"]) for o in outcomes.values() if "t_notified" in o),
                        default=None)
    return RunResult(run_id, sent, outcomes, started, last_notified or now_us())
