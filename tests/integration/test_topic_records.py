"""Every record of a small run, on every topic, against the AsyncAPI document: the value
against its record's JSON Schema, the key against the key's, no headers. The run goes through
both doors (Kafka and the HTTP API), has declines at the authorizer and at the issuer, a
notification sent again through POST /notify_client, and a bad record planted on each of the
first three topics, so the dead-letter topic has records of every source too."""

from __future__ import annotations

import hashlib
import json
import uuid
from collections.abc import Iterator
from typing import Any

import jsonschema
import pytest
from confluent_kafka import Producer

from paysim.domain.decisions import IssuerRates
from paysim.infra.config import Settings
from paysim.infra.kafka import Record, client_config, read_records, read_topic
from paysim.infra.waiting import wait_until
from paysim.pipeline import store
from paysim.pipeline.asyncapi import TOPICS, Topic, address, asyncapi_document, record_schema
from paysim.stack.manager import LocalStack
from tests.helpers import free_port, settings_for
from tests.integration.http_helpers import http_call
from tests.integration.pipeline_helpers import (
    paysim,
    run_done_entries,
    running_pipeline,
    send,
)


@pytest.fixture(scope="module")
def pipeline_on_own_topics(local_stack: LocalStack,
                           service_flags: dict[str, object]) -> Iterator[Settings]:
    """run-all on topics of this module's own: every record on them is this run's."""
    suffix = uuid.uuid4().hex[:8]
    topics = {f"topics.{topic.setting}": f"test.records.{topic.setting}.{suffix}"
              for topic in TOPICS}
    with running_pipeline(settings_for({**service_flags, **topics, "http.port": free_port(),
                                        "issuer.decline_rate": 0.1})) as settings:
        yield settings


def plant_bad_records(settings: Settings) -> dict[str, bytes]:
    """A record each of the consuming services cannot take, by topic."""
    marker = uuid.uuid4().hex
    planted = {
        settings.topics.requested: f"not json {marker}".encode(),
        settings.topics.authorized: json.dumps({"v": 1, "marker": marker}).encode(),
        settings.topics.results: json.dumps({"v": 1, "payment_id": marker}).encode(),
        settings.topics.operations: json.dumps({"v": 1, "op_id": marker}).encode(),
    }
    producer = Producer(client_config(settings))
    for topic, value in planted.items():
        producer.produce(topic, value=value)
    assert producer.flush(30) == 0
    return planted


def key_schema(document: dict[str, Any], topic: Topic) -> dict[str, Any]:
    return document["components"]["messages"][topic.record.__name__]["bindings"]["kafka"]["key"]


def key_value(record: Record) -> str | None:
    return None if record.key is None else record.key.decode()


def test_every_record_of_a_run_validates_against_its_topic_schema(
    pipeline_on_own_topics: Settings,
) -> None:
    settings = pipeline_on_own_topics
    by_kafka = send(settings, "--count", "150", "--seed", "13")
    by_http = send(settings, "--count", "10", "--seed", "14", "--via", "http")
    assert by_kafka["outcomes"]["completed"] == 150 and by_http["outcomes"]["completed"] == 10
    resent = run_done_entries(settings, by_http["run_id"])[0].payment_id
    status, answer = http_call(f"http://127.0.0.1:{settings.http.port}/notify_client",
                               {"transaction_id": resent})
    assert status == 200, answer
    # A payment's later life: a manual capture in two parts, a refund, then its settlement.
    base = f"http://127.0.0.1:{settings.http.port}"
    life_run = f"records-{uuid.uuid4().hex[:8]}"
    client = store.connect(settings)
    # This run's issuer declines nothing (the pipeline's declines one payment in ten).
    store.write_run_issuer(client, life_run, IssuerRates(), ttl=600)
    status, answer = http_call(f"{base}/authorize", {
        "card_number": "4242424242424242", "exp_month": 12, "exp_year": 2099, "cvv": "123",
        "amount": 5_000, "currency": "USD", "capture": "manual", "run_id": life_run})
    assert status == 200, answer
    held = answer["payment_id"]
    try:
        assert wait_until(lambda: store.read_outcome(client, held) is not None, timeout=60)
    finally:
        client.close()
    for path, body in (("capture", {"amount": 2_000}), ("capture", {}), ("refunds", {})):
        status, answer = http_call(f"{base}/payments/{held}/{path}", body)
        assert status == 200, answer
    settled = paysim(settings, "settle", "--run", life_run)
    assert settled.returncode == 0 and "1 batch(es)" in settled.stdout, settled.stderr
    planted = plant_bad_records(settings)
    planted_hashes = {hashlib.sha256(value).hexdigest() for value in planted.values()}

    def all_dead_lettered() -> bool:
        letters = [json.loads(value) for value in read_topic(settings, settings.topics.dlq)]
        return planted_hashes <= {letter["original_sha256"] for letter in letters}

    assert wait_until(all_dead_lettered, timeout=60, interval=0.5)

    document = asyncapi_document(settings)
    counts: dict[str, int] = {}
    for topic in TOPICS:
        name = address(settings, topic)
        values = jsonschema.Draft202012Validator(record_schema(settings, topic))
        keys = jsonschema.Draft7Validator(key_schema(document, topic))
        records = read_records(settings, name)
        for record in records:
            if record.value == planted.get(name):
                # The planted record is what the schema refuses, and it was dead-lettered.
                assert not values.is_valid(json.loads(record.value)
                                           if record.value.startswith(b"{") else record.value)
                continue
            errors = [error.message for error in values.iter_errors(json.loads(record.value))]
            assert errors == [], (name, record.value[:300])
            key_errors = [error.message for error in keys.iter_errors(key_value(record))]
            assert key_errors == [], (name, record.key)
            assert not record.headers, (name, record.headers)
        counts[topic.setting] = len(records)
    # Every topic had its records: both doors on requested (and the planted one), a
    # notification per payment and the one sent again, a dead letter per planted record.
    # (+ 1: the payment whose later life is above)
    assert counts["requested"] == 150 + 10 + 1 + 1
    assert counts["results"] == 150 + 10 + 1 + 1
    assert 0 < counts["authorized"] < 160 + 1 + 1
    assert counts["notifications"] == 160 + 1 + 1
    assert counts["dlq"] == len(planted)
    assert counts["operations"] == 3 + 1
    # Every approved payment's authorization captured at once (one event), and the manual
    # one's four steps.
    assert counts["events"] >= 100 + 4
    assert counts["settlements"] == 1
    print("records validated:", counts)
