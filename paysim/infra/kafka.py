"""Kafka clients built from paysim's settings, with client properties passed through."""

from __future__ import annotations

import logging
import time
import uuid
from collections.abc import Mapping
from typing import Any

from confluent_kafka import Consumer, KafkaError, KafkaException, Producer
from confluent_kafka.admin import AdminClient, ClusterMetadata

from paysim.infra.config import Settings
from paysim.infra.errors import ConfigError

# librdkafka reports every refused connection; while a broker starts that is expected noise.
quiet_logger = logging.getLogger("paysim.kafka.quiet")
quiet_logger.addHandler(logging.NullHandler())
quiet_logger.propagate = False


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
            on_delivery: Any = None, deadline: float | None = None) -> None:
    """Produce, waiting for room when the local queue is full instead of failing.

    BufferError still escapes once ``deadline`` (a time.monotonic() value) has passed."""
    while True:
        try:
            producer.produce(topic, key=key, value=value, on_delivery=on_delivery)
            return
        except BufferError:
            if deadline is not None and time.monotonic() >= deadline:
                raise
            producer.poll(0.05)


def error_text(exc: BaseException) -> str:
    """One line for a Kafka (or any) exception."""
    if isinstance(exc, KafkaException) and exc.args and isinstance(exc.args[0], KafkaError):
        return exc.args[0].str()
    return f"{type(exc).__name__}: {exc}"


def read_topic(settings: Settings, topic: str, quiet_polls: int = 3) -> list[bytes]:
    """Every record value on a topic, from the start until it goes quiet.

    Not to the end offsets: on a transactional topic the last offsets are commit markers that
    a read_committed consumer steps over without ever reporting. Callers read what was
    committed before they called, so a few empty polls in a row mean the end."""
    consumer = Consumer(client_config(settings, **{
        "group.id": f"paysim-reader-{uuid.uuid4()}", "auto.offset.reset": "earliest",
        "enable.auto.commit": False, "logger": quiet_logger,
    }))
    try:
        consumer.subscribe([topic])
        values: list[bytes] = []
        empty = 0
        while empty < quiet_polls:
            batch = consumer.consume(num_messages=5000, timeout=0.5)
            if not batch and consumer.assignment():
                empty += 1
                continue
            empty = 0
            values.extend(m.value() or b"" for m in batch if m.error() is None)
        return values
    finally:
        consumer.close()
