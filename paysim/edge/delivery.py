"""Records onto Kafka, each answered once the broker acknowledges it: the edge answers a
client only once what it promised is on the topic.

Many requests' records are in flight at once: each send is a future that the record's delivery
report completes, and the producer batches whatever is in flight (its linger.ms). One thread
polls the producer for every report (Deliveries.start, what the server runs); a request only
waits on its own future. Without that thread (the Flask test client, tools), the waiting
caller polls the producer itself.

A send from the server's event loop (``send_to_loop``) has no thread waiting on it: the
poller hands the reports of one poll to the loop together, one wake-up for all of them.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import threading
import time
from collections.abc import Callable
from concurrent.futures import Future
from concurrent.futures import TimeoutError as FutureTimeout
from typing import Any

from confluent_kafka import KafkaError, KafkaException, Producer

from paysim.infra.kafka import error_text, produce

log = logging.getLogger("paysim.http")

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
        # Reports for sends from an event loop, served by a poll and not yet handed over.
        self._reports: list[tuple[asyncio.AbstractEventLoop, Callable[[Failure], None],
                                  Failure]] = []
        self._reports_lock = threading.Lock()

    def start(self) -> None:
        """Serve every delivery report from a thread of its own from now on."""
        if self._poller is None:
            self._poller = threading.Thread(target=self._poll, name="kafka-deliveries",
                                            daemon=True)
            self._poller.start()

    def _poll(self) -> None:
        while not self._stop.is_set():
            self.poll_once(POLL_S)

    def poll_once(self, timeout: float) -> None:
        """Serve the delivery reports ready within ``timeout``: the futures' at once, the
        loops' in one hand-over a loop (what the poller does, over and over)."""
        self.producer.poll(timeout)
        self._hand_over()

    def _hand_over(self) -> None:
        """The reports of the last poll to their loops: one call_soon_threadsafe a loop."""
        with self._reports_lock:
            if not self._reports:
                return
            reports, self._reports = self._reports, []
        for loop in {loop for loop, _done, _failure in reports}:
            mine = [(done, failure) for at, done, failure in reports if at is loop]
            # A closed loop (RuntimeError): nobody waits for these any more.
            with contextlib.suppress(RuntimeError):
                loop.call_soon_threadsafe(_report_all, mine)

    def close(self, timeout: float = DELIVERY_TIMEOUT_S) -> int:
        """Stop the poller, then wait for what is still in flight (at most ``timeout``):
        the records not delivered."""
        self._stop.set()
        if self._poller is not None:
            self._poller.join(POLL_S * 10)
        remaining = self.producer.flush(timeout)
        self._hand_over()
        return remaining

    def send(self, topic: str, key: str, value: bytes, deadline: float | None = None,
             headers: list[tuple[str, bytes]] | None = None) -> Future[Failure]:
        """Produce one record; the future completes with its delivery report. ``deadline``
        (time.monotonic()) bounds the wait for room in a full producer queue; ``headers``
        are the record's (the trace context, when tracing)."""
        future: Future[Failure] = Future()

        def on_delivery(err: KafkaError | None, _msg: Any) -> None:
            future.set_result(None if err is None else err.str())

        try:
            produce(self.producer, topic, value, key=key, on_delivery=on_delivery,
                    deadline=time.monotonic() + WAIT_S if deadline is None else deadline,
                    headers=headers)
        except BufferError:
            future.set_result("the Kafka producer queue is full")
        except KafkaException as exc:
            future.set_result(error_text(exc))
        return future

    def send_to_loop(self, loop: asyncio.AbstractEventLoop, topic: str, key: str,
                     value: bytes, headers: list[tuple[str, bytes]] | None,
                     done: Callable[[Failure], None]) -> None:
        """On ``loop`` (running): produce one record; ``done`` gets its delivery's result on
        the loop, handed over by the poller (``start`` it first). A full producer queue is a
        failure at once: the loop does not wait for room."""
        def on_delivery(err: KafkaError | None, _msg: Any) -> None:
            with self._reports_lock:
                self._reports.append((loop, done, None if err is None else err.str()))

        try:
            produce(self.producer, topic, value, key=key, on_delivery=on_delivery,
                    deadline=time.monotonic(), headers=headers)
        except BufferError:
            loop.call_soon(done, "the Kafka producer queue is full")
        except KafkaException as exc:
            loop.call_soon(done, error_text(exc))

    def deliver(self, topic: str, key: str, value: bytes, timeout: float = WAIT_S,
                headers: list[tuple[str, bytes]] | None = None) -> Failure:
        """Produce one record and wait for the broker's acknowledgement: None when it was
        acknowledged, otherwise one line saying why not."""
        deadline = time.monotonic() + timeout
        future = self.send(topic, key, value, deadline, headers)
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


def _report_all(reports: list[tuple[Callable[[Failure], None], Failure]]) -> None:
    for done, failure in reports:
        try:
            done(failure)
        except Exception:  # one request's failure is not the others'
            log.exception("a delivery report's request failed")
