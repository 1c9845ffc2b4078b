"""Records onto Kafka, each answered once the broker acknowledges it: the edge answers a
client only once what it promised is on the topic.

Many requests' records are in flight at once: each send is a future that the record's delivery
report completes, and the producer batches whatever is in flight (its linger.ms). One thread
polls the producer for every report (Deliveries.start, what the server runs); a request only
waits on its own future. Without that thread (the Flask test client, tools), the waiting
caller polls the producer itself.
"""

from __future__ import annotations

import threading
import time
from concurrent.futures import Future
from concurrent.futures import TimeoutError as FutureTimeout
from typing import Any

from confluent_kafka import KafkaError, KafkaException, Producer

from paysim.infra.kafka import error_text, produce

DELIVERY_TIMEOUT_S = 10.0  # the producer's message.timeout.ms (set in paysim.edge.server)
# The wait outlasts the producer's own message.timeout.ms, so the answer is final: a record
# reported as failed will not be delivered later.
WAIT_S = DELIVERY_TIMEOUT_S + 2
POLL_S = 0.1  # the poller's longest sleep: how soon it sees close()

# A send's result: None once acknowledged, otherwise one line saying why not.
Failure = str | None


class Deliveries:
    """The edge's sends onto Kafka through one (thread-safe) producer."""

    def __init__(self, producer: Producer) -> None:
        self.producer = producer
        self._stop = threading.Event()
        self._poller: threading.Thread | None = None

    def start(self) -> None:
        """Serve every delivery report from a thread of its own from now on."""
        if self._poller is None:
            self._poller = threading.Thread(target=self._poll, name="kafka-deliveries",
                                            daemon=True)
            self._poller.start()

    def _poll(self) -> None:
        while not self._stop.is_set():
            self.producer.poll(POLL_S)

    def close(self, timeout: float = DELIVERY_TIMEOUT_S) -> int:
        """Stop the poller, then wait for what is still in flight (at most ``timeout``):
        the records not delivered."""
        self._stop.set()
        if self._poller is not None:
            self._poller.join(POLL_S * 10)
        return self.producer.flush(timeout)

    def send(self, topic: str, key: str, value: bytes,
             deadline: float | None = None) -> Future[Failure]:
        """Produce one record; the future completes with its delivery report. ``deadline``
        (time.monotonic()) bounds the wait for room in a full producer queue."""
        future: Future[Failure] = Future()

        def on_delivery(err: KafkaError | None, _msg: Any) -> None:
            future.set_result(None if err is None else err.str())

        try:
            produce(self.producer, topic, value, key=key, on_delivery=on_delivery,
                    deadline=time.monotonic() + WAIT_S if deadline is None else deadline)
        except BufferError:
            future.set_result("the Kafka producer queue is full")
        except KafkaException as exc:
            future.set_result(error_text(exc))
        return future

    def deliver(self, topic: str, key: str, value: bytes, timeout: float = WAIT_S) -> Failure:
        """Produce one record and wait for the broker's acknowledgement: None when it was
        acknowledged, otherwise one line saying why not."""
        deadline = time.monotonic() + timeout
        future = self.send(topic, key, value, deadline)
        late = f"Kafka did not acknowledge within {timeout:g} s"
        if self._poller is not None:
            try:
                return future.result(max(0.0, deadline - time.monotonic()))
            except FutureTimeout:
                return late
        while not future.done():
            remaining = deadline - time.monotonic()
            if remaining <= 0:
                return late
            self.producer.poll(min(0.05, remaining))
        return future.result()
