"""Producing and reading back test records on the real broker."""

from __future__ import annotations

import time
import uuid

from confluent_kafka import Consumer, Producer

from paysim.infra.config import Settings
from paysim.infra.kafka import client_config


def produce_numbered(settings: Settings, topic: str, count: int, keys: int = 10) -> None:
    """Produce values 0..count-1 as text, keyed by value % keys; fail on any delivery error."""
    errors: list[str] = []

    def on_delivery(err, _msg) -> None:
        if err is not None:
            errors.append(err.str())

    producer = Producer(client_config(settings, **{"enable.idempotence": True}))
    for number in range(count):
        producer.produce(topic, key=str(number % keys), value=str(number), on_delivery=on_delivery)
        producer.poll(0)
    remaining = producer.flush(30)
    assert remaining == 0, f"{remaining} records not delivered in 30 s"
    assert not errors, errors[:3]


def consume_all(settings: Settings, topic: str, expected: int,
                timeout: float = 60) -> list[tuple[int, int]]:
    """Read the topic from the start until ``expected`` records came: (partition, value) pairs."""
    consumer = Consumer(client_config(settings, **{
        "group.id": f"test-{uuid.uuid4()}", "auto.offset.reset": "earliest",
        "enable.auto.commit": False,
    }))
    consumer.subscribe([topic])
    received: list[tuple[int, int]] = []
    deadline = time.monotonic() + timeout
    try:
        while len(received) < expected and time.monotonic() < deadline:
            for message in consumer.consume(num_messages=500, timeout=0.5):
                assert message.error() is None, message.error()
                received.append((message.partition(), int(message.value())))
    finally:
        consumer.close()
    return received
