"""One record onto Kafka, and the broker's acknowledgement waited for: the edge answers a
client only once what it promised is on the topic."""

from __future__ import annotations

import threading
import time
from typing import Any

from confluent_kafka import KafkaError, KafkaException, Producer

from paysim.infra.kafka import error_text, produce

DELIVERY_TIMEOUT_S = 10.0  # the producer's message.timeout.ms (set in paysim.edge.server)


def deliver(producer: Producer, topic: str, key: str, value: bytes,
            timeout: float = DELIVERY_TIMEOUT_S + 2,
            headers: list[tuple[str, bytes]] | None = None) -> str | None:
    """Produce one record and wait for the broker's acknowledgement.

    The wait outlasts the producer's own message.timeout.ms (DELIVERY_TIMEOUT_S), so the
    answer is final: a record reported as failed will not be delivered later.

    None when it was acknowledged, otherwise one line saying why not. ``headers``: the
    record's (the trace context, when tracing). Safe from many threads:
    whichever thread polls serves every delivery report, each report sets its own event.
    """
    done = threading.Event()
    outcome: list[KafkaError | None] = []

    def on_delivery(err: KafkaError | None, _msg: Any) -> None:
        outcome.append(err)
        done.set()

    deadline = time.monotonic() + timeout
    try:
        produce(producer, topic, value, key=key, on_delivery=on_delivery, deadline=deadline,
                headers=headers)
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
