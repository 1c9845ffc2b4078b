"""The edge's sends onto Kafka: futures completed by delivery reports, one poller for all."""

from __future__ import annotations

import threading
from collections.abc import Callable
from typing import Any

from confluent_kafka import KafkaError

from paysim.edge.delivery import Deliveries
from paysim.infra.waiting import wait_until
from tests.unit.fakes import AckingProducer


class PollRecorder(AckingProducer):
    """Acknowledges at the next poll, and notes which threads polled and what was flushed."""

    def __init__(self, error: KafkaError | None = None) -> None:
        super().__init__(error)
        self.lock = threading.Lock()
        self.pollers: set[str] = set()
        self.flushed = False

    def produce(self, topic: str, value: bytes | None = None, key: str | None = None,
                on_delivery: Callable[..., Any] | None = None) -> None:
        with self.lock:
            super().produce(topic, value, key, on_delivery)

    def poll(self, timeout: float | None = None) -> int:
        with self.lock:
            self.pollers.add(threading.current_thread().name)
            return super().poll(timeout)

    def flush(self, timeout: float | None = None) -> int:
        self.flushed = True
        self.poll(0)
        return 0


class NeverAcks(PollRecorder):
    def poll(self, timeout: float | None = None) -> int:
        return 0

    def flush(self, timeout: float | None = None) -> int:
        return len(self._unacknowledged)


class Full(PollRecorder):
    def produce(self, *_: Any, **__: Any) -> None:
        raise BufferError("queue full")


def test_without_the_poller_the_waiting_caller_polls_and_gets_the_report() -> None:
    producer = PollRecorder()
    assert Deliveries(producer).deliver("t", "k", b"v") is None  # type: ignore[arg-type]
    assert [(r.topic, r.key, r.value) for r in producer.records] == [("t", "k", b"v")]
    assert producer.pollers == {threading.current_thread().name}

    failing = PollRecorder(KafkaError(KafkaError._MSG_TIMED_OUT, "Local: Message timed out"))
    assert Deliveries(failing).deliver("t", "k", b"v") == "Local: Message timed out"  # type: ignore[arg-type]


def test_with_the_poller_many_sends_are_in_flight_and_only_it_polls() -> None:
    producer = PollRecorder()
    deliveries = Deliveries(producer)  # type: ignore[arg-type]
    deliveries.start()
    results: list[str | None] = []
    start = threading.Barrier(20)

    def send(n: int) -> None:
        start.wait(5)
        results.append(deliveries.deliver("t", str(n), b"v", timeout=5))

    senders = [threading.Thread(target=send, args=(n,)) for n in range(20)]
    for sender in senders:
        sender.start()
    for sender in senders:
        sender.join(10)
    assert results == [None] * 20
    assert producer.pollers == {"kafka-deliveries"}  # no request thread polled
    assert deliveries.close(1) == 0 and producer.flushed


def test_a_send_is_a_future_completed_by_its_report() -> None:
    producer = PollRecorder()
    deliveries = Deliveries(producer)  # type: ignore[arg-type]
    future = deliveries.send("t", "k", b"v")
    assert not future.done()  # in flight until the broker's report
    producer.poll(0)
    assert future.done() and future.result() is None


def test_no_report_in_time_is_one_line_and_a_full_queue_too() -> None:
    deliveries = Deliveries(NeverAcks())  # type: ignore[arg-type]
    deliveries.start()
    assert deliveries.deliver("t", "k", b"v", timeout=0.2) == \
        "Kafka did not acknowledge within 0.2 s"
    assert deliveries.close(0) == 1  # still undelivered: the server logs it
    unpolled = Deliveries(NeverAcks())  # type: ignore[arg-type]
    assert unpolled.deliver("t", "k", b"v", timeout=0.1) == \
        "Kafka did not acknowledge within 0.1 s"
    assert Deliveries(Full()).deliver("t", "k", b"v", timeout=0.1) == \
        "the Kafka producer queue is full"  # type: ignore[arg-type]


def test_close_stops_the_poller() -> None:
    producer = PollRecorder()
    deliveries = Deliveries(producer)  # type: ignore[arg-type]
    deliveries.start()
    assert wait_until(lambda: "kafka-deliveries" in producer.pollers, 5)
    deliveries.close(1)
    assert not any(t.name == "kafka-deliveries" for t in threading.enumerate())
