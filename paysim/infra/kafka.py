"""Kafka clients built from paysim's settings, with client properties passed through."""

from __future__ import annotations

import logging
import time
import uuid
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from typing import Any

from confluent_kafka import (
    OFFSET_BEGINNING,
    Consumer,
    KafkaError,
    KafkaException,
    Producer,
    TopicPartition,
)
from confluent_kafka.admin import AdminClient, ClusterMetadata

from paysim.infra.config import Settings
from paysim.infra.errors import ConfigError, PaysimError

# librdkafka reports every refused connection; while a broker starts that is expected noise.
quiet_logger = logging.getLogger("paysim.kafka.quiet")
quiet_logger.addHandler(logging.NullHandler())
quiet_logger.propagate = False

# Compression of what paysim's own producers (the sender, the services) write, and of Kafka's
# producer perf tool in `paysim bench`, so that the ratio to it compares like with like. lz4
# kept: none saved the broker no CPU the runs could resolve (its validation of lz4 batches,
# LogValidator, was 2-5% of its Java samples) and made the perf tool twice as fast on two busy
# cores, which no payment gains from (docs/performance.md, "The broker's CPU per payment").
INTERNAL_COMPRESSION = "lz4"


def client_config(settings: Settings, **overrides: Any) -> dict[str, Any]:
    """Pass-through properties (SASL, SSL, ...), then ``overrides``; bootstrap servers last,
    so --bootstrap beats a bootstrap.servers that came through the pass-through."""
    # librdkafka backs off reconnecting to a lost broker up to 10 s: a client could stay
    # blind to a restarted broker that long. 1 s is the Java client's default.
    config: dict[str, Any] = {"reconnect.backoff.max.ms": 1000}
    config.update(settings.kafka.client)
    config.update(overrides)
    config["bootstrap.servers"] = settings.kafka_bootstrap
    return config


def admin_client(settings: Settings, **overrides: Any) -> AdminClient:
    """An admin client that keeps librdkafka's connection chatter out of the terminal."""
    try:
        return AdminClient(client_config(settings, logger=quiet_logger, **overrides))
    except KafkaException as exc:
        raise ConfigError(f"Kafka client settings: {exc.args[0].str()}") from None


def cluster_metadata(config: Mapping[str, Any], timeout: float) -> ClusterMetadata | None:
    """The cluster's metadata, or None when no broker answers within ``timeout`` seconds."""
    try:
        admin = AdminClient({**config, "logger": quiet_logger})
    except KafkaException as exc:
        raise ConfigError(f"Kafka client settings: {exc.args[0].str()}") from None
    try:
        metadata = admin.list_topics(timeout=timeout)
    except KafkaException:
        return None
    return metadata if metadata.brokers else None


def produce(producer: Producer, topic: str, value: bytes, key: str | None = None,
            on_delivery: Any = None, deadline: float | None = None,
            headers: list[tuple[str, bytes]] | None = None,
            clock: Callable[[], float] = time.monotonic) -> None:
    """Produce, waiting for room when the local queue is full instead of failing.

    BufferError still escapes once ``deadline`` (a value of ``clock``) has passed.
    ``headers``: the record's headers (the trace context, when tracing)."""
    while True:
        try:
            producer.produce(topic, key=key, value=value, on_delivery=on_delivery,
                             headers=headers)
            return
        except BufferError:
            if deadline is not None and clock() >= deadline:
                raise
            producer.poll(0.05)


def error_text(exc: BaseException) -> str:
    """One line for a Kafka (or any) exception."""
    if isinstance(exc, KafkaException) and exc.args and isinstance(exc.args[0], KafkaError):
        return exc.args[0].str()
    return f"{type(exc).__name__}: {exc}"


def no_answer(settings: Settings, timeout: float, exc: BaseException | None = None) -> PaysimError:
    """The one line for Kafka not answering within ``timeout`` seconds."""
    detail = f": {error_text(exc)}" if exc is not None else ""
    return PaysimError(f"Kafka at {settings.kafka_bootstrap} did not answer in {timeout:g} s"
                       f"{detail}")


@dataclass(frozen=True)
class Record:
    """One record as read back: its key, value and headers (None when it has none)."""

    key: bytes | None
    value: bytes
    headers: list[tuple[str, bytes]] | None


def read_topic(settings: Settings, topic: str, timeout: float | None = None) -> list[bytes]:
    """Every committed record value on a topic (read_records' values)."""
    return [record.value for record in read_records(settings, topic, timeout)]


def read_records(settings: Settings, topic: str,
                 timeout: float | None = None) -> list[Record]:
    """Every committed record on a topic, up to the end it had when the read started.

    The end of each partition is its last stable offset (what a read_committed consumer may
    read), taken at the start; the fetcher reports reaching it (partition EOF) even when the
    last offsets are transaction markers it steps over without returning. Raises PaysimError
    when the topic does not exist, when Kafka does not answer within ``timeout`` seconds
    (default: the kafka.timeout setting), or when the read then goes that long without
    getting nearer the ends (a large topic may take longer as a whole; the ends are fixed, so
    the read is bounded)."""
    timeout = settings.kafka.timeout if timeout is None else timeout
    deadline = time.monotonic() + timeout

    def remaining() -> float:
        return max(deadline - time.monotonic(), 0.001)

    consumer = Consumer(client_config(settings, **{
        "group.id": f"paysim-reader-{uuid.uuid4()}", "enable.auto.commit": False,
        "isolation.level": "read_committed", "enable.partition.eof": True,
        "logger": quiet_logger,
    }))
    try:
        try:
            found = consumer.list_topics(topic, timeout=remaining()).topics.get(topic)
            if found is None or found.error is not None or not found.partitions:
                raise PaysimError(f"topic {topic} does not exist on Kafka at "
                                  f"{settings.kafka_bootstrap}")
            ends = {partition: _end_offset(consumer, TopicPartition(topic, partition),
                                           deadline)
                    for partition in found.partitions}
        except KafkaException as exc:
            raise no_answer(settings, timeout, exc) from None
        records, unread = _read_to(consumer, topic, ends, timeout)
    finally:
        consumer.close()
    if unread:
        raise PaysimError(f"reading {topic} from Kafka at {settings.kafka_bootstrap}: nothing "
                          f"came for {timeout:g} s (the kafka.timeout setting) with {unread} of "
                          f"{len(ends)} partitions not read to their end")
    return records


# A topic created a moment ago may have no leader known yet for a partition; such answers
# are retried until the deadline rather than taken for Kafka not answering.
_NO_LEADER_YET = (KafkaError.NOT_LEADER_FOR_PARTITION, KafkaError.LEADER_NOT_AVAILABLE,
                  KafkaError.UNKNOWN_TOPIC_OR_PART)


def _end_offset(consumer: Consumer, partition: TopicPartition, deadline: float) -> int:
    """The partition's high watermark (its last stable offset, read_committed), asked again
    while the partition's leader is still being elected."""
    while True:
        try:
            return consumer.get_watermark_offsets(
                partition, timeout=max(deadline - time.monotonic(), 0.001))[1]
        except KafkaException as exc:
            error = exc.args[0] if exc.args and isinstance(exc.args[0], KafkaError) else None
            if (error is None or error.code() not in _NO_LEADER_YET
                    or time.monotonic() + 0.1 >= deadline):
                raise
            time.sleep(0.1)  # the metadata refresh the next ask needs takes this long or more


def _read_to(consumer: Consumer, topic: str, ends: dict[int, int], idle_timeout: float,
             clock: Callable[[], float] = time.monotonic) -> tuple[list[Record], int]:
    """The records of each partition from its start to ``ends[partition]``, and how many
    partitions were not read to their end when nothing came for ``idle_timeout`` seconds
    (by ``clock``)."""
    pending = {partition for partition, end in ends.items() if end > 0}
    consumer.assign([TopicPartition(topic, partition, OFFSET_BEGINNING) for partition in pending])
    records: list[Record] = []
    deadline = clock() + idle_timeout
    while pending:
        left = deadline - clock()
        if left <= 0:
            break
        before = (len(records), len(pending))
        for message in consumer.consume(num_messages=5000, timeout=min(left, 0.5)):
            partition, offset, error = message.partition(), message.offset(), message.error()
            if error is not None:
                if error.fatal():
                    raise KafkaException(error)
                if (error.code() == KafkaError._PARTITION_EOF and partition in pending
                        and offset >= ends[partition]):
                    pending.discard(partition)
                continue  # others are transient (a broker reconnecting): the deadline bounds
            if partition not in pending:
                continue
            if offset < ends[partition]:
                records.append(Record(message.key(), message.value() or b"",
                                      message.headers()))
            if offset >= ends[partition] - 1:
                pending.discard(partition)
        if (len(records), len(pending)) != before:  # nearer the ends: errors alone are not
            deadline = clock() + idle_timeout
    return records, len(pending)


def group_lag(settings: Settings, group: str, topic: str, timeout: float) -> int | None:
    """How far a consumer group is behind on a topic: per partition, the high watermark
    minus where the group's next record is, summed. None when Kafka does not answer within
    ``timeout`` seconds or the topic does not exist. Reads the group's offsets without
    joining it.

    Not the high watermark minus the committed offset alone: a transactional consumer
    commits up to its last record, and the commit marker after it is an offset more that
    no consumer will ever read (an idle group would show a lag of one per partition). So a
    partition behind by that count is read from the committed offset (read_committed), and
    its lag runs from the first record there, 0 when there is none."""
    deadline = time.monotonic() + timeout

    def remaining() -> float:
        return max(deadline - time.monotonic(), 0.001)

    consumer = Consumer(client_config(settings, **{
        "group.id": group, "enable.auto.commit": False, "isolation.level": "read_committed",
        "enable.partition.eof": True, "logger": quiet_logger}))
    try:
        found = consumer.list_topics(topic, timeout=remaining()).topics.get(topic)
        if found is None or found.error is not None or not found.partitions:
            return None
        partitions = [TopicPartition(topic, p) for p in sorted(found.partitions)]
        behind: dict[int, tuple[int, int]] = {}  # partition -> (next offset, high watermark)
        for tp in consumer.committed(partitions, timeout=remaining()):
            low, high = consumer.get_watermark_offsets(TopicPartition(topic, tp.partition),
                                                       timeout=remaining())
            start = tp.offset if tp.offset >= 0 else low
            if high > start:
                behind[tp.partition] = (start, high)
        return sum(high - first for first, high in _first_records(consumer, topic, behind,
                                                                  deadline).values())
    except KafkaException:
        return None
    finally:
        consumer.close()


def _first_records(consumer: Consumer, topic: str, behind: dict[int, tuple[int, int]],
                   deadline: float) -> dict[int, tuple[int, int]]:
    """Of partitions read from their given offsets, each one's first record's offset and its
    high watermark (none for a partition with only markers left); a partition still unread
    at ``deadline`` counts from its given offset."""
    if not behind:
        return {}
    consumer.assign([TopicPartition(topic, p, start) for p, (start, _) in behind.items()])
    first: dict[int, tuple[int, int]] = {}
    pending = set(behind)
    while pending and time.monotonic() < deadline:
        message = consumer.poll(min(0.2, max(deadline - time.monotonic(), 0.001)))
        if message is None or message.partition() not in pending:
            continue
        pending.discard(message.partition())
        if message.error() is None:
            first[message.partition()] = (message.offset(), behind[message.partition()][1])
        elif message.error().code() != KafkaError._PARTITION_EOF:
            first[message.partition()] = behind[message.partition()]
    first.update({p: behind[p] for p in pending})
    return first
