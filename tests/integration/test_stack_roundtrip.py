"""The shared local stack carries real Kafka records and Redis keys."""

from __future__ import annotations

import uuid
from collections import defaultdict

import redis
from confluent_kafka.admin import NewTopic

from paysim.infra.config import Settings
from paysim.infra.kafka import admin_client
from paysim.infra.topics import ensure_topics
from paysim.stack.manager import LocalStack
from tests.integration.kafka_helpers import consume_all, produce_numbered


def test_thousand_records_come_back_in_order_per_partition(
    local_stack: LocalStack, settings: Settings
) -> None:
    topic = f"test.roundtrip.{uuid.uuid4().hex[:8]}"
    ensure_topics(settings, [topic])
    produce_numbered(settings, topic, 1000)

    received = consume_all(settings, topic, expected=1000)

    assert sorted(value for _, value in received) == list(range(1000))
    by_partition: dict[int, list[int]] = defaultdict(list)
    for partition, value in received:
        by_partition[partition].append(value)
    assert len(by_partition) > 1, "keys should spread over several partitions"
    for values in by_partition.values():
        assert values == sorted(values)


def test_redis_set_get_round_trip(local_stack: LocalStack, settings: Settings) -> None:
    client = redis.Redis.from_url(settings.redis_url)
    client.set("paysim:test:roundtrip", "approved", ex=60)
    assert client.get("paysim:test:roundtrip") == b"approved"
    assert 0 < client.ttl("paysim:test:roundtrip") <= 60


def test_second_up_starts_nothing(local_stack: LocalStack) -> None:
    pids_before = local_stack.pids()

    results = local_stack.up()

    assert [r.started for r in results] == [False, False]
    assert [r.pid for r in results] == pids_before
    assert local_stack.pids() == pids_before


def test_ensure_topics_is_idempotent_and_leaves_existing_topics_alone(
    local_stack: LocalStack, settings: Settings
) -> None:
    preexisting = f"test.existing.{uuid.uuid4().hex[:8]}"
    admin = admin_client(settings)
    admin.create_topics([NewTopic(preexisting, num_partitions=1)])[preexisting].result(30)

    first = ensure_topics(settings)
    second = ensure_topics(settings, [*settings.topics.names(), preexisting])

    assert second.created == []
    assert set(second.existing) == set(settings.topics.names()) | {preexisting}
    assert set(first.created) | set(first.existing) == set(settings.topics.names())
    topics = admin.list_topics(timeout=30).topics
    assert len(topics[preexisting].partitions) == 1
    for name in settings.topics.names():
        assert len(topics[name].partitions) == settings.topics.partitions
    # Each topic's partitions as Kafka has them, the one made elsewhere included.
    assert second.partitions == {**dict.fromkeys(settings.topics.names(),
                                                 settings.topics.partitions), preexisting: 1}
