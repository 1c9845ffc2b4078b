"""Reading partitions to fixed ends: done at each end, never past it, and bounded when nothing
comes (the real broker's side is in tests/integration/test_read_topic.py)."""

from __future__ import annotations

import time

import pytest
from confluent_kafka import KafkaError, KafkaException, TopicPartition

from paysim.infra.kafka import _end_offset, _read_to
from tests.unit.fakes import FakeMessage

TOPIC = "t"


class ScriptedConsumer:
    """Hands out one scripted batch per consume() call, then nothing (once the timeout has
    passed on its clock, which its calls alone move: no test waits for real time)."""

    def __init__(self, batches: list[list[FakeMessage]], batch_takes_s: float = 0.0) -> None:
        self.batches = list(batches)
        self.batch_takes_s = batch_takes_s  # how long a batch takes to come
        self.assigned: list[int] = []
        self.now = 0.0

    def clock(self) -> float:
        return self.now

    def assign(self, partitions) -> None:
        self.assigned = sorted(p.partition for p in partitions)

    def consume(self, num_messages: int = 1, timeout: float = -1) -> list[FakeMessage]:
        if self.batches:
            self.now += self.batch_takes_s
            return self.batches.pop(0)
        self.now += timeout  # the broker's silence, for the whole timeout
        return []


def record(partition: int, offset: int) -> FakeMessage:
    return FakeMessage(TOPIC, partition, offset, f"{partition}:{offset}".encode())


def eof(partition: int, offset: int) -> FakeMessage:
    return FakeMessage(TOPIC, partition, offset, None,
                       error=KafkaError(KafkaError._PARTITION_EOF))


def test_each_partition_is_read_to_its_end_and_no_further() -> None:
    consumer = ScriptedConsumer([
        [record(0, 0), record(0, 1), record(1, 0)],
        # Partition 1 ends in a transaction marker at offset 2: only the EOF says it is done.
        [eof(1, 3), record(0, 2), record(0, 3)],  # 0:3 came after the read started
    ])

    records, unread = _read_to(consumer, TOPIC, {0: 3, 1: 3, 2: 0}, idle_timeout=5,
                               clock=consumer.clock)

    assert unread == 0
    assert consumer.assigned == [0, 1]  # the empty partition is not read at all
    assert sorted(record.value for record in records) == [b"0:0", b"0:1", b"0:2", b"1:0"]


def test_silence_ends_the_read_after_the_idle_timeout() -> None:
    transient = FakeMessage(TOPIC, -1, -1001, None, error=KafkaError(KafkaError._TRANSPORT))
    consumer = ScriptedConsumer([[record(0, 0)], [transient], [transient]])

    started = consumer.clock()
    records, unread = _read_to(consumer, TOPIC, {0: 5, 1: 2}, idle_timeout=0.3,
                               clock=consumer.clock)
    took = consumer.clock() - started

    # Transport errors are no progress.
    assert ([record.value for record in records], unread) == ([b"0:0"], 2)
    assert 0.3 <= took < 2


def test_a_read_that_keeps_progressing_may_outlast_the_idle_timeout() -> None:
    consumer = ScriptedConsumer([[record(0, offset)] for offset in range(5)],
                                batch_takes_s=0.1)

    started = consumer.clock()
    records, unread = _read_to(consumer, TOPIC, {0: 5}, idle_timeout=0.25,
                               clock=consumer.clock)

    assert unread == 0 and len(records) == 5
    assert consumer.clock() - started > 0.25


class ElectingConsumer:
    """Answers a partition's watermarks with ``error`` ``failures`` times, then (0, 7)."""

    def __init__(self, failures: int, error: int) -> None:
        self.failures, self.error, self.asked = failures, error, 0

    def get_watermark_offsets(self, partition, timeout: float = -1) -> tuple[int, int]:
        self.asked += 1
        if self.asked <= self.failures:
            raise KafkaException(KafkaError(self.error))
        return 0, 7


def test_a_partition_whose_leader_is_being_elected_is_asked_again() -> None:
    consumer = ElectingConsumer(3, KafkaError.NOT_LEADER_FOR_PARTITION)
    assert _end_offset(consumer, TopicPartition(TOPIC, 0), time.monotonic() + 10) == 7
    assert consumer.asked == 4


def test_other_errors_and_a_passed_deadline_are_raised_at_once() -> None:
    consumer = ElectingConsumer(1, KafkaError._TIMED_OUT)
    with pytest.raises(KafkaException):
        _end_offset(consumer, TopicPartition(TOPIC, 0), time.monotonic() + 10)
    consumer = ElectingConsumer(5, KafkaError.LEADER_NOT_AVAILABLE)
    with pytest.raises(KafkaException):
        _end_offset(consumer, TopicPartition(TOPIC, 0), time.monotonic())
    assert consumer.asked == 1
