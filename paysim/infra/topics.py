"""paysim's Kafka topics, created on first use; topics that already exist are left alone."""

from __future__ import annotations

from dataclasses import dataclass, field

from confluent_kafka import KafkaError, KafkaException
from confluent_kafka.admin import NewTopic

from paysim.infra.config import Settings
from paysim.infra.errors import PaysimError
from paysim.infra.kafka import admin_client, no_answer


@dataclass(frozen=True)
class TopicsReport:
    created: list[str]
    existing: list[str]
    partitions: dict[str, int] = field(default_factory=dict)  # each wanted topic's count


def ensure_topics(settings: Settings, names: list[str] | None = None) -> TopicsReport:
    """Create each missing topic with the configured partitions and replication factor."""
    wanted = names if names is not None else settings.topics.names()
    admin = admin_client(settings)
    timeout = settings.kafka.timeout
    try:
        present = {name: len(topic.partitions)
                   for name, topic in admin.list_topics(timeout=timeout).topics.items()}
    except KafkaException as exc:
        raise no_answer(settings, timeout, exc) from None
    missing = [name for name in wanted if name not in present]
    created = []
    if missing:
        futures = admin.create_topics(
            [NewTopic(name, num_partitions=settings.topics.partitions,
                      replication_factor=settings.replication_factor)
             for name in missing],
            operation_timeout=timeout, request_timeout=timeout,
        )
        for name, future in futures.items():
            try:
                future.result()
                created.append(name)
            except KafkaException as exc:
                error: KafkaError = exc.args[0]
                # Another process may have created it between our list and create.
                if error.code() != KafkaError.TOPIC_ALREADY_EXISTS:
                    raise PaysimError(f"cannot create topic {name}: {error.str()}") from None
    existing = [name for name in wanted if name not in created]
    # A topic created here, or by whoever won the race to create it, has the configured count
    # as far as this process knows.
    partitions = {name: present.get(name) or settings.topics.partitions for name in wanted}
    return TopicsReport(created=created, existing=existing, partitions=partitions)
