"""paysim's topics as an AsyncAPI 3.0 document (`paysim schema asyncapi`), and each topic's
record as a JSON Schema of its own (`paysim schema topic NAME`).

Built, not written: each record's schema is the JSON Schema of the message type the services
encode and decode (paysim.domain.messages), so the document cannot drift from the code. What is
written here is TOPICS: per topic the setting that names it, its record type, its key, and who
writes and reads it. A new topic is one entry there (tests/unit/test_contract.py fails when a
topic setting has none). Channel addresses, partitions and the server are the settings'.
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass
from typing import Any

import msgspec

from paysim import __version__
from paysim.domain.contract import schema_components
from paysim.domain.messages import (
    DeadLetter,
    Notification,
    OperationRequested,
    PaymentAuthorized,
    PaymentEvent,
    PaymentOutcome,
    PaymentRequested,
)
from paysim.domain.settlement import Batch
from paysim.infra.config import Settings, TopicSettings
from paysim.pipeline.registry import AUTHORIZER, HTTP, LEDGER, NOTIFIER, PIPELINE, PROCESSOR
from paysim.pipeline.service import ServiceSpec

KAFKA_BINDING = "0.5.0"  # the AsyncAPI Kafka bindings' version for AsyncAPI 3.0
JSON_SCHEMA_2020_12 = "https://json-schema.org/draft/2020-12/schema"
# The one record header paysim writes: the payment's (or the operation's) W3C trace context,
# only when tracing is on (paysim.infra.tracing); tracestate passes on when the sender gave one.
TRACE_HEADERS: dict[str, Any] = {
    "type": "object", "additionalProperties": False,
    "description": "Only when tracing is on (OTEL_EXPORTER_OTLP_ENDPOINT set): the W3C trace "
                   "context of the payment (of an operation on payments.operations: the "
                   "operation's, in its payment's trace), whose span the reader's spans "
                   "continue. Else none.",
    "properties": {
        "traceparent": {"type": "string",
                        "pattern": "^[0-9a-f]{2}-[0-9a-f]{32}-[0-9a-f]{16}-[0-9a-f]{2}$",
                        "description": "W3C Trace Context traceparent"},
        "tracestate": {"type": "string", "description": "W3C Trace Context tracestate"},
    },
}
CARD_TOKEN = "the card's token (HMAC of the card number): one card's payments stay in order"


@dataclass(frozen=True)
class Key:
    """A topic's record key: what it is, and its JSON Schema (a string, or null for none)."""

    description: str
    schema: dict[str, Any]


TOKEN_KEY = Key(CARD_TOKEN, {"type": "string"})


@dataclass(frozen=True)
class Topic:
    """One topic: the TopicSettings field naming it, its record, key, writers and readers."""

    setting: str
    record: type[msgspec.Struct]
    summary: str
    key: Key
    writers: tuple[ServiceSpec, ...]
    also_written_by: str = ""  # writers that are not services (the load tool)

    def readers(self) -> tuple[ServiceSpec, ...]:
        return tuple(spec for spec in PIPELINE if spec.input_topic == self.setting)


TOPICS: tuple[Topic, ...] = (
    Topic("requested", PaymentRequested,
          "Payments entering the pipeline; the card sealed with AES-GCM (no clear card data)",
          TOKEN_KEY, (HTTP,), "paysim send --via kafka"),
    Topic("authorized", PaymentAuthorized,
          "Payments that passed the card checks, tokenized, on their way to the issuer",
          TOKEN_KEY, (AUTHORIZER,)),
    Topic("results", PaymentOutcome, "Every payment's final answer: approved or declined",
          Key("the card's token (the issuer's answers), or the payment id (a decline of the "
              "authorizer's card checks)", {"type": "string"}),
          (AUTHORIZER, PROCESSOR)),
    Topic("notifications", Notification,
          "What each client was told (sent again by POST /notify_client)",
          Key("the payment id", {"type": "string"}), (NOTIFIER, HTTP)),
    Topic("operations", OperationRequested,
          "Operations on payments after their authorization (capture, increment, void, "
          "expire, reverse, refund, dispute, resolve), each applied once by its op_id",
          TOKEN_KEY, (HTTP, LEDGER), "paysim send (a scenario's [lifecycle] mix)"),
    Topic("events", PaymentEvent,
          "Every change in a payment's life on the ledger, with its ISO 8583 message type "
          "(an authorization captured at once is one change: captured, 0200/0210)",
          TOKEN_KEY, (PROCESSOR, LEDGER)),
    Topic("settlements", Batch,
          "Closed settlement batches: per merchant, currency and window, what is paid out",
          Key("the merchant id", {"type": "string"}), (LEDGER,), "paysim settle"),
    Topic("dlq", DeadLetter,
          "Records a service could not take: why, where from, and (except from the requested "
          "topic, which may hold clear card data) the original bytes in base64",
          Key("none", {"type": "null"}), PIPELINE),
)


def topic_fields() -> list[str]:
    """The TopicSettings fields that name a topic."""
    return [field.name for field in dataclasses.fields(TopicSettings) if field.type == "str"]


def find_topic(settings: Settings, name: str) -> Topic | None:
    """The topic called ``name``, by its setting ("requested") or its address."""
    for topic in TOPICS:
        if name in (topic.setting, address(settings, topic)):
            return topic
    return None


def known_names(settings: Settings) -> list[str]:
    return [f"{topic.setting} ({address(settings, topic)})" for topic in TOPICS]


def address(settings: Settings, topic: Topic) -> str:
    return getattr(settings.topics, topic.setting)


def record_schema(settings: Settings, topic: Topic) -> dict[str, Any]:
    """The topic's record value as a JSON Schema (draft 2020-12) standing on its own."""
    schemas, components = schema_components([topic.record], "#/$defs/")
    return {"$schema": JSON_SCHEMA_2020_12, "$id": f"paysim:topic:{address(settings, topic)}",
            "title": f"{topic.record.__name__} on {address(settings, topic)}",
            "description": topic.summary, **schemas[0], "$defs": components}


def _writers(topic: Topic) -> str:
    """Who writes the topic, and how to read it."""
    names = [f"the {spec.name} service" for spec in topic.writers]
    names += [topic.also_written_by] if topic.also_written_by else []
    text = f"Written by {', '.join(names)}." if names else "No paysim service writes it."
    if any(spec in PIPELINE for spec in topic.writers):
        text += " The pipeline services write in Kafka transactions: read with read_committed."
    return text


def _message(topic: Topic) -> dict[str, Any]:
    return {
        "name": topic.record.__name__, "title": topic.record.__name__, "summary": topic.summary,
        "contentType": "application/json",
        "payload": {"$ref": f"#/components/schemas/{topic.record.__name__}"},
        "headers": TRACE_HEADERS,
        "bindings": {"kafka": {"key": {**topic.key.schema, "description": topic.key.description},
                               "bindingVersion": KAFKA_BINDING}},
    }


def _operations(topic: Topic) -> dict[str, dict[str, Any]]:
    channel = {"$ref": f"#/channels/{topic.setting}"}
    messages = [{"$ref": f"#/channels/{topic.setting}/messages/{topic.record.__name__}"}]
    operations = {f"send_{topic.setting}": {
        "action": "send", "channel": channel, "messages": messages,
        "summary": _writers(topic)}}
    for spec in topic.readers():
        operations[f"{spec.name}_receives_{topic.setting}"] = {
            "action": "receive", "channel": channel, "messages": messages,
            "summary": f"The {spec.name} service: {spec.summary}"}
    return operations


def asyncapi_document(settings: Settings) -> dict[str, Any]:
    """The AsyncAPI 3.0 document of paysim's topics, as these settings name them."""
    _, components = schema_components([topic.record for topic in TOPICS],
                                      "#/components/schemas/")
    channels, operations = {}, {}
    for topic in TOPICS:
        channels[topic.setting] = {
            "address": address(settings, topic), "description": topic.summary,
            "messages": {topic.record.__name__: {
                "$ref": f"#/components/messages/{topic.record.__name__}"}},
            "bindings": {"kafka": {"topic": address(settings, topic),
                                   "partitions": settings.topics.partitions,
                                   "replicas": settings.replication_factor,
                                   "bindingVersion": KAFKA_BINDING}},
        }
        operations.update(_operations(topic))
    return {
        "asyncapi": "3.0.0",
        "info": {"title": "paysim topics", "version": __version__,
                 "description": "The records paysim's pipeline writes and reads: JSON, "
                                "versioned by their field `v`; amounts in integer minor units "
                                "of their ISO 4217 currency; times in Unix microseconds."},
        "defaultContentType": "application/json",
        "servers": {"kafka": {"host": settings.kafka_bootstrap, "protocol": "kafka",
                              "description": "the configured Kafka (bootstrap servers)"}},
        "channels": channels,
        "operations": operations,
        "components": {
            "messages": {topic.record.__name__: _message(topic) for topic in TOPICS},
            "schemas": components,
        },
    }
