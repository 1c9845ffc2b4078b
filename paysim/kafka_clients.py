"""Kafka clients built from paysim's settings, with client properties passed through."""

from __future__ import annotations

import logging
from collections.abc import Mapping
from typing import Any

from confluent_kafka import KafkaException
from confluent_kafka.admin import AdminClient, ClusterMetadata

from paysim.config import Settings

# librdkafka reports every refused connection; while a broker starts that is expected noise.
_quiet = logging.getLogger("paysim.kafka.quiet")
_quiet.addHandler(logging.NullHandler())
_quiet.propagate = False


def client_config(settings: Settings, **overrides: Any) -> dict[str, Any]:
    """Bootstrap servers plus pass-through properties (SASL, SSL, ...), then ``overrides``."""
    config: dict[str, Any] = {"bootstrap.servers": settings.kafka_bootstrap}
    config.update(settings.kafka_client)
    config.update(overrides)
    return config


def admin_client(settings: Settings, **overrides: Any) -> AdminClient:
    return AdminClient(client_config(settings, **overrides))


def cluster_metadata(config: Mapping[str, Any], timeout: float) -> ClusterMetadata | None:
    """The cluster's metadata, or None when no broker answers within ``timeout`` seconds."""
    admin = AdminClient({**config, "logger": _quiet})
    try:
        metadata = admin.list_topics(timeout=timeout)
    except KafkaException:
        return None
    return metadata if metadata.brokers else None
