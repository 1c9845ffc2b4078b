"""Holds past their TTL become expiry operations: a thread beside the ledger service reads the
sorted sets of open holds (one per bucket: ledger_store.holds_key) once a second and puts an
``expire`` operation for each due one on payments.operations, so that expiries travel and
apply exactly like every other operation.

The operation id is fixed per payment (``expire-<payment id>``): two instances, or one that
sends again after a crash, cannot expire a hold twice. The hold leaves the set when the
ledger applies the expiry (or anything else that releases it).
"""

from __future__ import annotations

import logging
import threading
import time

import redis
from confluent_kafka import KafkaException, Producer

from paysim.domain.messages import OperationKind, OperationRequested, encode, now_us
from paysim.infra.config import Settings
from paysim.infra.kafka import client_config, produce
from paysim.pipeline import ledger_store, shard_store

EVERY_S = 1.0
BATCH = 500
RESEND_AFTER_S = 30.0  # an expiry sent but not yet applied is sent again after this


def expiry_operation(run_id: str, token: str, payment_id: str) -> OperationRequested:
    return OperationRequested(op_id=f"expire-{payment_id}", kind=OperationKind.EXPIRE,
                              payment_id=payment_id, run_id=run_id, token=token,
                              requested_at=now_us())


class HoldExpirer(threading.Thread):
    def __init__(self, settings: Settings, client: redis.Redis, stop: threading.Event) -> None:
        super().__init__(name="hold-expiry", daemon=True)
        self.settings = settings
        self.redis = client
        self.stop_event = stop
        self.sent: dict[str, float] = {}  # member -> when its expiry was sent
        self.log = logging.getLogger("paysim.expiry")

    def run(self) -> None:
        producer = Producer(client_config(self.settings, **{"enable.idempotence": True,
                                                             "linger.ms": 5}))
        try:
            while not self.stop_event.wait(EVERY_S):
                try:
                    self.expire_due(producer)
                except (redis.RedisError, KafkaException, BufferError) as exc:
                    self.log.warning("hold expiry skipped a round: %s", exc)
        finally:
            producer.flush(5)

    def expire_due(self, producer: Producer) -> int:
        """Send an expiry for each hold due now (not sent lately); how many were sent."""
        now = time.monotonic()
        due = due_holds(self.redis, now_us())
        self.sent = {member: at for member, at in self.sent.items()
                     if now - at < RESEND_AFTER_S}
        count = 0
        for bucket, raw in due:
            member = raw.decode(errors="replace")
            where = ledger_store.parse_hold_member(member)
            if where is None:
                self.redis.zrem(ledger_store.holds_key(bucket), raw)  # not paysim's: drop it
                continue
            if member in self.sent:
                continue
            run_id, token, payment_id = where
            produce(producer, self.settings.topics.operations,
                    encode(expiry_operation(run_id, token, payment_id)), key=token)
            self.sent[member] = now
            count += 1
        if count:
            producer.flush(10)
        return count


def due_holds(client: redis.Redis, now: int) -> list[tuple[int, bytes]]:
    """(bucket, member) of the holds due by ``now`` (Unix µs), at most BATCH per bucket: one
    pipeline over every bucket's set (on a cluster, one round per primary)."""
    pipe = client.pipeline(transaction=False)
    for bucket in range(shard_store.BUCKETS):
        pipe.zrangebyscore(ledger_store.holds_key(bucket), "-inf", now, start=0, num=BATCH)
    return [(bucket, raw) for bucket, members in enumerate(pipe.execute()) for raw in members]
