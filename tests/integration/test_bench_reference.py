"""Kafka's own perf tools run against the session's broker with paysim payment messages."""

from __future__ import annotations

import os
import uuid

from paysim.bench.reference import run_consumer_perf, run_producer_perf
from paysim.domain import cards
from paysim.domain.messages import encode
from paysim.infra.config import Settings
from paysim.infra.kafka import admin_client
from paysim.load.generator import PaymentStream, build_population
from paysim.load.ingress import new_run_id, request_message
from paysim.stack.manager import LocalStack

RECORDS = 20_000


def payment_messages(count: int) -> list[bytes]:
    """Real payments.requested messages; the callback URL brings them to about 450 bytes."""
    cipher = cards.CardCipher(os.urandom(32))
    run_id = new_run_id()
    return [encode(request_message(payment, run_id, cipher, "http://127.0.0.1:8080/hook"))
            for payment in PaymentStream(build_population(11), seed=11).take(count)]


def test_the_perf_tools_send_and_read_paysim_messages(local_stack: LocalStack,
                                                      settings: Settings) -> None:
    payloads = payment_messages(500)
    assert 400 <= sum(map(len, payloads)) / len(payloads) <= 500
    topic = f"test.reference.{uuid.uuid4().hex[:8]}"

    produced = run_producer_perf(settings, topic, payloads, RECORDS, {"acks": "all"},
                                 timeout_s=45)
    consumed = run_consumer_perf(settings, topic, RECORDS, timeout_s=45)

    assert produced.records == RECORDS
    assert produced.records_per_s > 0
    assert produced.p50_ms <= produced.p999_ms <= produced.max_latency_ms
    partitions = admin_client(settings).list_topics(topic, timeout=10).topics[topic].partitions
    assert len(partitions) == settings.topics.partitions
    assert consumed.records == RECORDS
    assert consumed.records_per_s > 0
    # Every record is one of the payloads, so the megabytes read match their sizes.
    assert min(map(len, payloads)) * RECORDS / 2**20 <= consumed.mb
    assert consumed.mb <= max(map(len, payloads)) * RECORDS / 2**20
