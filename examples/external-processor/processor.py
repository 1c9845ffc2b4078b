"""An issuer (paysim's "processor" service) written without paysim: confluent-kafka and redis.

It implements the contract of docs/conformance.md: it reads payments.authorized in the
consumer group paysim-processor (read_committed), decides each payment, and in one Kafka
transaction per batch writes the outcomes to payments.results, the records it cannot take to
payments.dlq and its consumed offsets; each decision is also `payment_result_<id>` in Redis.

Redelivery cannot spend twice: a batch's decisions and the cards' spend are written to Redis
in one MULTI/EXEC before its Kafka transaction commits, keyed by payment id; a record seen
again (the transaction aborted, the process killed before the commit) finds its decision
there and gets it again, spending nothing more.

Run: KAFKA_BOOTSTRAP=127.0.0.1:9092 REDIS_URL=redis://127.0.0.1:6379/0 python processor.py
BROKEN=no-dlq | no-transactions | double-spend makes it break the contract on purpose (the
conformance test checks that each breakage fails the case it should).
"""

from __future__ import annotations

import base64
import contextlib
import hashlib
import json
import logging
import os
import re
import signal
import sys
import time
from dataclasses import dataclass, field
from datetime import UTC, datetime

import redis
from confluent_kafka import Consumer, KafkaException, Producer, TopicPartition

log = logging.getLogger("external-processor")

BOOTSTRAP = os.environ.get("KAFKA_BOOTSTRAP", "127.0.0.1:9092")
REDIS_URL = os.environ.get("REDIS_URL", "redis://127.0.0.1:6379/0")
INPUT = os.environ.get("AUTHORIZED_TOPIC", "payments.authorized")
RESULTS = os.environ.get("RESULTS_TOPIC", "payments.results")
DEAD_LETTERS = os.environ.get("DLQ_TOPIC", "payments.dlq")
GROUP = os.environ.get("GROUP", "paysim-processor")
INSTANCE = os.environ.get("INSTANCE", "0")
OUTCOME_TTL = int(os.environ.get("OUTCOME_TTL", "3600"))
STATE_TTL = int(os.environ.get("STATE_TTL", str(8 * 86400)))
BROKEN = os.environ.get("BROKEN", "")

# The currencies this issuer takes: (minor-unit exponent, rough units per US dollar). Any
# other code is dead-lettered as unknown.
CURRENCIES: dict[str, tuple[int, float]] = {
    "USD": (2, 1.0), "EUR": (2, 0.92), "GBP": (2, 0.79), "JPY": (0, 150.0), "CHF": (2, 0.88),
    "CAD": (2, 1.36), "AUD": (2, 1.52), "SEK": (2, 10.5), "NOK": (2, 10.7), "DKK": (2, 6.9),
    "PLN": (2, 4.0), "CZK": (2, 23.0), "HUF": (2, 360.0), "BRL": (2, 5.0), "MXN": (2, 17.0),
    "INR": (2, 83.0), "CNY": (2, 7.2), "KRW": (0, 1340.0), "SGD": (2, 1.35), "HKD": (2, 7.8),
    "AED": (2, 3.67), "SAR": (2, 3.75), "BHD": (3, 0.376), "KWD": (3, 0.307),
    "OMR": (3, 0.385), "JOD": (3, 0.709), "TND": (3, 3.1), "ZAR": (2, 18.5), "TRY": (2, 32.0),
    "ISK": (0, 138.0), "CLP": (0, 940.0),
}
REASONS = {"00": "approved", "05": "do not honour", "10": "partial approval",
           "41": "lost card", "43": "stolen card", "51": "insufficient funds",
           "61": "exceeds amount limit", "91": "issuer unavailable", "96": "system malfunction"}
FORCED = {"05", "41", "43", "96"}  # test cards the issuer answers without looking further
UUID = re.compile(r"^[0-9a-f]{8}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{12}\Z")
MAX_ORIGINAL = 64 * 1024


class Poison(Exception):
    """A record this issuer cannot take: it goes to the dead-letter topic."""


def draw(*parts: object) -> float:
    """paysim's uniform draw in [0, 1): blake2b (8 bytes) of the parts joined by '|'."""
    digest = hashlib.blake2b("|".join(map(str, parts)).encode(), digest_size=8).digest()
    return int.from_bytes(digest, "big") / 2**64


def minor_units(usd: float, currency: str) -> int:
    exponent, rate = CURRENCIES[currency]
    return round(usd * rate * 10**exponent)


def limits(token: str, test_reason: str | None, currency: str) -> tuple[int, int]:
    """The card's credit and daily limits in the currency's minor units."""
    if test_reason == "51":
        credit, daily = 0.0, 1e9
    elif test_reason == "61":
        credit, daily = 1e9, 0.0
    else:
        credit = float(5_000 + round(draw("credit", token) * 45_000))
        daily = credit * 0.5
    return minor_units(credit, currency), minor_units(daily, currency)


def _need(record: dict, name: str, kind: type | tuple[type, ...]) -> object:
    value = record.get(name)
    if isinstance(value, bool) or not isinstance(value, kind):
        raise Poison(f"field {name!r} missing or not a {getattr(kind, '__name__', kind)}")
    return value


def parse(raw: bytes | None) -> dict:
    """The authorized payment, or Poison saying why not."""
    if raw is None:
        raise Poison("empty record")
    try:
        record = json.loads(raw)
    except (ValueError, UnicodeDecodeError) as exc:
        raise Poison(f"not valid JSON: {exc}") from None
    if not isinstance(record, dict):
        raise Poison("not a JSON object")
    if record.get("v", 1) != 1:
        raise Poison(f"unsupported schema version {record.get('v')!r}")
    if not UUID.match(str(_need(record, "payment_id", str))):
        raise Poison("payment_id is not a UUID")
    for name in ("run_id", "currency", "token", "masked_pan", "network"):
        _need(record, name, str)
    for name in ("amount", "exp_month", "exp_year"):
        _need(record, name, int)
    merchant = _need(record, "merchant", dict)
    for name in ("id", "name", "mcc", "country"):
        _need(merchant, name, str)  # type: ignore[arg-type]
    _need(record, "stages", dict)
    if record["currency"] not in CURRENCIES:
        raise Poison(f"unknown currency {record['currency']!r}")
    if record["amount"] <= 0:
        raise Poison(f"amount {record['amount']} is not positive")
    return record


@dataclass
class Issuer:
    """A run's issuer behaviour, as `paysim send` writes it to paysim:run:<run>:issuer."""

    decline_rate: float = 0.0
    fault_rate: float = 0.0
    outages: list[tuple[int, int]] = field(default_factory=list)

    @classmethod
    def read(cls, raw: bytes | None) -> Issuer:
        if not raw:
            return cls()
        try:
            data = json.loads(raw)
            return cls(float(data.get("decline_rate", 0)), float(data.get("fault_rate", 0)),
                       [(int(a), int(b)) for a, b in data.get("outages", [])])
        except (ValueError, TypeError, AttributeError):
            return cls()


def precheck(payment: dict, issuer: Issuer, now_us: int) -> str | None:
    reason = payment.get("test_reason")
    if reason in FORCED:
        return reason
    if any(start <= now_us < end for start, end in issuer.outages):
        return "91"
    identity = (payment["token"], payment["amount"], payment["currency"],
                payment["merchant"]["id"], payment.get("seq", 0))
    if issuer.fault_rate and draw("fault", *identity) < issuer.fault_rate:
        return "91"
    if issuer.decline_rate and draw("decline", *identity) < issuer.decline_rate:
        return "05"
    return None


class Batch:
    """One batch's decisions, made against the state in Redis and the batch's own changes."""

    def __init__(self, client: redis.Redis, payments: list[dict]) -> None:
        self.client = client
        self.now_us = time.time_ns() // 1000
        self.day = datetime.fromtimestamp(self.now_us / 1e6, UTC).strftime("%Y%m%d")
        ids = [p["payment_id"] for p in payments]
        runs = sorted({p["run_id"] for p in payments})
        cards = sorted({self._card(p) for p in payments})
        pipe = client.pipeline(transaction=False)
        pipe.mget([f"ext:decision:{pid}" for pid in ids] or ["-"])
        pipe.mget([f"paysim:run:{run}:issuer" for run in runs] or ["-"])
        pipe.mget([card for card in cards] or ["-"])
        decided, issuers, spent = pipe.execute()
        self.decided = {pid: json.loads(raw) for pid, raw in zip(ids, decided, strict=False)
                        if raw}
        self.issuers = {run: Issuer.read(raw) for run, raw in zip(runs, issuers, strict=False)}
        # Per card and currency: [credit used, spent today], as stored.
        self.cards = {card: json.loads(raw) if raw else {"used": 0, "days": {}}
                      for card, raw in zip(cards, spent, strict=False)}
        self.new: dict[str, dict] = {}

    @staticmethod
    def _card(payment: dict) -> str:
        return f"ext:card:{payment['run_id']}:{payment['token']}:{payment['currency']}"

    def decide(self, payment: dict) -> dict:
        """{"code", "approved_amount"}: stored, if decided before; else decided now."""
        pid = payment["payment_id"]
        if pid in self.decided and BROKEN != "double-spend":
            return self.decided[pid]
        code = precheck(payment, self.issuers.get(payment["run_id"], Issuer()), self.now_us)
        amount = payment["amount"]
        if code is None:
            card = self.cards[self._card(payment)]
            credit, daily = limits(payment["token"], payment.get("test_reason"),
                                   payment["currency"])
            available = credit - card["used"]
            today_left = daily - card["days"].get(self.day, 0)
            code = "00"
            if payment.get("partial_approval") and amount > min(available, today_left):
                amount = min(available, today_left)
                code = "10" if amount > 0 else ("51" if available <= 0 else "61")
            elif amount > today_left:
                code = "61"
            elif amount > available:
                code = "51"
            if code in ("00", "10"):
                card["used"] += amount
                card["days"] = {self.day: card["days"].get(self.day, 0) + amount}
        decision = {"code": code, "approved_amount": amount if code in ("00", "10") else None}
        self.decided[pid] = self.new[pid] = decision
        return decision

    def save(self) -> None:
        """Decisions, card state and the seed's keys, all or nothing (MULTI/EXEC)."""
        pipe = self.client.pipeline(transaction=True)
        for pid, decision in self.new.items():
            pipe.set(f"ext:decision:{pid}", json.dumps(decision), ex=STATE_TTL)
            status = "approved" if decision["approved_amount"] is not None else "declined"
            pipe.set(f"payment_result_{pid}", status, ex=OUTCOME_TTL)
        for card, state in self.cards.items():
            pipe.set(card, json.dumps(state), ex=STATE_TTL)
        pipe.execute()


def outcome(payment: dict, decision: dict) -> bytes:
    code = decision["code"]
    record = {name: payment.get(name) for name in (
        "payment_id", "run_id", "seq", "amount", "currency", "merchant", "callback_url",
        "capture", "partial_approval", "token", "masked_pan", "network")}
    record.update(
        v=1, seq=payment.get("seq", 0), capture=payment.get("capture", "automatic"),
        partial_approval=payment.get("partial_approval", False),
        stages={**payment["stages"], "processed": time.time_ns() // 1000},
        status="approved" if decision["approved_amount"] is not None else "declined",
        reason_code=code, reason_text=REASONS.get(code, "unknown reason"),
        approved_amount=decision["approved_amount"])
    return json.dumps(record).encode()


def dead_letter(message, reason: str) -> bytes:
    key, value = message.key(), message.value() or b""
    kept = value[:MAX_ORIGINAL]
    return json.dumps({
        "v": 1, "service": "processor", "source_topic": message.topic(),
        "partition": message.partition(), "offset": message.offset(), "reason": reason[:500],
        "key": base64.b64encode(key).decode() if key is not None else None,
        "original": base64.b64encode(kept).decode(), "original_size": len(value),
        "original_sha256": hashlib.sha256(value).hexdigest(),
        "truncated": len(value) > len(kept), "at": time.time_ns() // 1000,
    }).encode()


def starts(messages: list) -> dict[int, int]:
    """The batch's first offset in each partition."""
    found: dict[int, int] = {}
    for message in messages:
        found[message.partition()] = min(found.get(message.partition(), message.offset()),
                                         message.offset())
    return found


def ends(messages: list) -> dict[int, int]:
    """The batch's last offset in each partition."""
    found: dict[int, int] = {}
    for message in messages:
        found[message.partition()] = max(found.get(message.partition(), -1), message.offset())
    return found


def main() -> int:
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(message)s")
    stopping = []
    signal.signal(signal.SIGTERM, lambda *_: stopping.append(1))
    signal.signal(signal.SIGINT, lambda *_: stopping.append(1))
    transactional = BROKEN != "no-transactions"
    consumer = Consumer({
        "bootstrap.servers": BOOTSTRAP, "group.id": GROUP, "enable.auto.commit": False,
        "auto.offset.reset": "earliest", "isolation.level": "read_committed",
        "group.instance.id": f"external-processor-{INSTANCE}@{INPUT}",
        "session.timeout.ms": 6000})
    producer = Producer({"bootstrap.servers": BOOTSTRAP, "linger.ms": 0,
                         **({"transactional.id": f"external-processor-{INSTANCE}"}
                            if transactional else {})})
    if transactional:
        producer.init_transactions(60)
    client = redis.Redis.from_url(REDIS_URL, socket_timeout=10)
    consumer.subscribe([INPUT])
    log.info("deciding %s in group %s%s", INPUT, GROUP, f" (broken: {BROKEN})" if BROKEN else "")
    while not stopping:
        messages = [m for m in consumer.consume(500, 0.5) if m.error() is None]
        if not messages:
            continue
        outputs: list[tuple[str, str | None, bytes]] = []
        good: list[tuple[object, dict]] = []
        for message in messages:
            try:
                good.append((message, parse(message.value())))
            except Poison as exc:
                if BROKEN != "no-dlq":
                    outputs.append((DEAD_LETTERS, None, dead_letter(message, str(exc))))
        try:
            batch = Batch(client, [payment for _, payment in good])
            for _, payment in good:
                outputs.append((RESULTS, payment["token"],
                                outcome(payment, batch.decide(payment))))
            batch.save()
            if transactional:
                producer.begin_transaction()
            for topic, key, value in outputs:
                producer.produce(topic, key=key, value=value)
            if transactional:
                producer.send_offsets_to_transaction(
                    [TopicPartition(INPUT, p, last + 1) for p, last in ends(messages).items()],
                    consumer.consumer_group_metadata(), 30)
                producer.commit_transaction(30)
            else:
                producer.flush(30)
                consumer.commit(asynchronous=False)
        except (KafkaException, redis.RedisError) as exc:
            # Nothing is half done: the batch is read again and decided as stored.
            log.warning("batch failed, read again: %s", exc)
            if transactional:
                with contextlib.suppress(KafkaException):
                    producer.abort_transaction(30)
            for partition, first in starts(messages).items():
                consumer.seek(TopicPartition(INPUT, partition, first))
            time.sleep(0.5)  # a backoff before trying the batch again
    consumer.close()
    producer.flush(10)
    return 0


if __name__ == "__main__":
    sys.exit(main())
