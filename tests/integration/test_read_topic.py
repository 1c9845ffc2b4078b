"""Reading a whole topic (what the audit does) ends at the end each partition had when the read
started, within a deadline; a missing topic or a Kafka that does not answer is one line."""

from __future__ import annotations

import threading
import time
import uuid

import pytest
from confluent_kafka import Producer
from confluent_kafka.admin import NewTopic

from paysim.infra.config import Settings, settings_env
from paysim.infra.errors import PaysimError
from paysim.infra.kafka import admin_client, client_config, read_topic
from paysim.pipeline import registry, store
from tests.helpers import assert_one_line_error, run_paysim
from tests.integration.kafka_helpers import produce_numbered

PARTITIONS = 4
DEAD_KAFKA = "127.0.0.1:1"
SHORT_TIMEOUT_S = 2
SLACK_S = 10  # interpreter start and imports, beyond the Kafka timeout


def new_topic(settings: Settings, partitions: int = PARTITIONS) -> str:
    name = f"test.read.{uuid.uuid4().hex[:8]}"
    admin = admin_client(settings)  # kept: the future fails once the client is collected
    futures = admin.create_topics([NewTopic(name, num_partitions=partitions,
                                            replication_factor=1)])
    futures[name].result(timeout=30)
    return name


def transactional_producer(settings: Settings) -> Producer:
    producer = Producer(client_config(settings, **{
        "transactional.id": f"test-reader-{uuid.uuid4()}"}))
    producer.init_transactions(30)
    return producer


def produce_in_transaction(producer: Producer, topic: str, values: range,
                           commit: bool = True) -> None:
    producer.begin_transaction()
    for value in values:
        producer.produce(topic, key=str(value % 7), value=str(value))
    if commit:
        producer.commit_transaction(30)
    else:
        producer.flush(30)  # on the broker, the transaction still open


def test_every_partition_is_read_to_its_end(local_stack, settings: Settings) -> None:
    topic = new_topic(settings)
    produce_numbered(settings, topic, 300, keys=13)  # plain records
    producer = transactional_producer(settings)
    # Committed transactions: each partition ends in a commit marker, never returned.
    produce_in_transaction(producer, topic, range(300, 600))
    produce_in_transaction(producer, topic, range(600, 650))

    values = sorted(int(value) for value in read_topic(settings, topic, timeout=30))

    assert values == list(range(650))


def test_the_read_ends_at_an_open_transaction(local_stack, settings: Settings) -> None:
    """What an unfinished transaction wrote is not committed: the read stops before it
    (its last stable offset) rather than waiting for the transaction to end."""
    topic = new_topic(settings)
    producer = transactional_producer(settings)
    produce_in_transaction(producer, topic, range(100))
    produce_in_transaction(producer, topic, range(100, 200), commit=False)
    try:
        started = time.monotonic()
        values = sorted(int(value) for value in read_topic(settings, topic, timeout=30))
        took = time.monotonic() - started
    finally:
        producer.abort_transaction(30)

    assert values == list(range(100))
    assert took < 15, f"took {took:.1f} s"


def test_an_empty_topic_reads_as_nothing(local_stack, settings: Settings) -> None:
    assert read_topic(settings, new_topic(settings), timeout=30) == []


def test_a_missing_topic_is_named(local_stack, settings: Settings) -> None:
    with pytest.raises(PaysimError, match=r"^topic test\.nothing\.here does not exist on Kafka"):
        read_topic(settings, "test.nothing.here", timeout=10)


def test_audit_of_a_missing_topic_is_one_line(local_stack, settings: Settings) -> None:
    env = {**settings_env(settings), "PAYSIM_TOPICS_REQUESTED": f"test.gone.{uuid.uuid4().hex}"}
    result = run_paysim("audit", env=env, timeout=60)
    assert_one_line_error(result, 1, f"topic {env['PAYSIM_TOPICS_REQUESTED']} does not exist",
                          settings.kafka_bootstrap)


def dead_kafka_env(settings: Settings) -> dict[str, str]:
    """Redis live (the test stack), Kafka at a dead address, a short Kafka timeout."""
    return {**settings_env(settings), "PAYSIM_KAFKA_BOOTSTRAP": DEAD_KAFKA,
            "PAYSIM_KAFKA_TIMEOUT": str(SHORT_TIMEOUT_S)}


def test_audit_with_kafka_unreachable_is_one_line_in_bounded_time(
        local_stack, settings: Settings) -> None:
    started = time.monotonic()
    result = run_paysim("audit", env=dead_kafka_env(settings), timeout=60)
    took = time.monotonic() - started
    assert_one_line_error(result, 1, f"Kafka at {DEAD_KAFKA} did not answer in "
                          f"{SHORT_TIMEOUT_S} s")
    assert took < SHORT_TIMEOUT_S + SLACK_S, f"took {took:.1f} s"


def test_send_with_kafka_unreachable_is_one_line_in_bounded_time(
        local_stack, settings: Settings) -> None:
    # Heartbeats of every service, kept fresh (a loaded machine can take seconds to start
    # the command), so send gets past its check that the pipeline runs.
    client = store.connect(settings)
    done = threading.Event()

    def beat() -> None:
        while True:
            for spec in registry.ALL:
                store.write_heartbeat(client, spec.name, 0, processed=0, dead_letters=0,
                                      aborted_batches=0, started_at=time.time(), lag=0)
            if done.wait(0.5):
                return

    beating = threading.Thread(target=beat, daemon=True)
    beating.start()
    try:
        started = time.monotonic()
        result = run_paysim("send", "--count", "1", env=dead_kafka_env(settings), timeout=60)
        took = time.monotonic() - started
    finally:
        done.set()
        beating.join(5)
        for spec in registry.ALL:
            store.clear_heartbeat(client, spec.name, 0)
        client.close()
    assert_one_line_error(result, 1, f"Kafka at {DEAD_KAFKA}", f"in {SHORT_TIMEOUT_S} s")
    assert took < SHORT_TIMEOUT_S + SLACK_S, f"took {took:.1f} s"
