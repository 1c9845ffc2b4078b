"""A toy Kafka authorizer for trying `paysim send --to-topic` (confluent-kafka only).

It reads the records kafka-authorize.toml writes from one topic and answers each on another:
approved up to 100.00 in minor units (10000), else declined with code 51. It never looks at
the card and logs nothing.

    python examples/targets/toy_kafka_authorizer.py 127.0.0.1:9092 auth.requests auth.results
"""

from __future__ import annotations

import json
import signal
import sys
import uuid

from confluent_kafka import Consumer, Producer

LIMIT = 10_000


def main(bootstrap: str, requests: str, results: str) -> None:
    consumer = Consumer({"bootstrap.servers": bootstrap, "group.id": f"toy-{uuid.uuid4()}",
                         "auto.offset.reset": "latest", "enable.auto.commit": False})
    producer = Producer({"bootstrap.servers": bootstrap, "linger.ms": 1})
    consumer.subscribe([requests])
    running = True

    def stop(*_: object) -> None:
        nonlocal running
        running = False

    signal.signal(signal.SIGTERM, stop)
    signal.signal(signal.SIGINT, stop)
    try:
        while running:
            first = consumer.poll(0.2)  # consume(n, timeout) would wait for n records
            if first is None:
                continue
            for message in [first, *consumer.consume(num_messages=500, timeout=0)]:
                if message.error() is not None:
                    continue
                record = json.loads(message.value())
                approved = record["amount_minor"] <= LIMIT
                producer.produce(results, key=message.key(), value=json.dumps({
                    "request_id": record["request_id"], "approved": approved,
                    "code": "00" if approved else "51"}).encode())
            producer.poll(0)
    finally:
        producer.flush(10)
        consumer.close()


if __name__ == "__main__":
    main(*sys.argv[1:4])
