"""Kafka clients built from paysim's settings, with client properties passed through."""

from __future__ import annotations

import logging
from collections.abc import Mapping
from typing import Any

from confluent_kafka import KafkaException
from confluent_kafka.admin import AdminClient, ClusterMetadata

from paysim.config import Settings
from paysim.errors import ConfigError

# librdkafka reports every refused connection; while a broker starts that is expected noise.
_quiet = logging.getLogger("paysim.kafka.quiet")
_quiet.addHandler(logging.NullHandler())
_quiet.propagate = False


def client_config(settings: Settings, **overrides: Any) -> dict[str, Any]:
    """Pass-through properties (SASL, SSL, ...), then ``overrides``; bootstrap servers last,
    so --bootstrap beats a bootstrap.servers that came through the pass-through."""
    config: dict[str, Any] = dict(settings.kafka.client)
    config.update(overrides)
    config["bootstrap.servers"] = settings.kafka_bootstrap
    return config


def admin_client(settings: Settings, **overrides: Any) -> AdminClient:
    """An admin client that keeps librdkafka's connection chatter out of the terminal."""
    try:
        return AdminClient(client_config(settings, logger=_quiet, **overrides))
    except KafkaException as exc:
        raise ConfigError(f"Kafka client settings: {exc.args[0].str()}") from None


def cluster_metadata(config: Mapping[str, Any], timeout: float) -> ClusterMetadata | None:
    """The cluster's metadata, or None when no broker answers within ``timeout`` seconds."""
    try:
        admin = AdminClient({**config, "logger": _quiet})
    except KafkaException as exc:
        raise ConfigError(f"Kafka client settings: {exc.args[0].str()}") from None
    try:
        metadata = admin.list_topics(timeout=timeout)
    except KafkaException:
        return None
    return metadata if metadata.brokers else None
