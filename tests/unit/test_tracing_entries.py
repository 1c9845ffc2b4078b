"""Where traces enter besides a payment's first send (paysim.infra.tracing, .otel), with the
SDK's InMemorySpanExporter: the HTTP API continues a request's W3C traceparent and answers
with traceresponse; an operation on a payment (over HTTP, or from `send`'s lifecycle mix)
gets a span in its payment's trace, which the ledger service's spans continue; and `send
--target` puts the payment's traceparent on each request or record it sends."""

from __future__ import annotations

import functools
import http.server
import json
import threading
from collections.abc import Iterator
from typing import Any, ClassVar
from unittest import mock

import pytest
from flask.testing import FlaskClient
from opentelemetry.sdk.trace import ReadableSpan
from opentelemetry.sdk.trace.export.in_memory_span_exporter import InMemorySpanExporter
from opentelemetry.trace import SpanKind, format_span_id, format_trace_id

from paysim.domain.messages import Merchant, OperationKind, PaymentOutcome, encode
from paysim.edge import app as app_module
from paysim.edge import http_server
from paysim.edge import operations as edge_operations
from paysim.infra import otel
from paysim.load.generator import GeneratedPayment, PaymentStream, build_population
from paysim.load.lifecycle import PlannedOp
from paysim.load.operations import OperationLoad
from paysim.load.targets.http_target import HttpTargetIngress, parse_target_url
from paysim.load.targets.kafka_target import Correlation, KafkaTargetIngress
from paysim.load.targets.template import load_record_template, load_request_template
from paysim.pipeline import store
from paysim.pipeline.registry import LEDGER
from tests.unit.fakes import KEYS, AckingProducer, FakeMessage, FakeRedis
from tests.unit.test_fuzz_http import VALID_BODY, CheckedHealth
from tests.unit.test_services import SETTINGS
from tests.unit.test_targets import EXAMPLES
from tests.unit.test_tracing import run_hop

TOPICS = SETTINGS.topics
CALLER_TRACE = "4bf92f3577b34da6a3ce929d0e0e4736"
CALLER_SPAN = "00f067aa0ba902b7"
PAYMENT_ID = "0b8f5a52-5c1e-4d8e-9c2b-6f0f8a0e7a11"
PAYMENT_TRACE = "a3ce929d0e0e47364bf92f3577b34da6"


@pytest.fixture
def exporter() -> InMemorySpanExporter:
    return InMemorySpanExporter()


def api(exporter: InMemorySpanExporter, redis: FakeRedis,
        producer: AckingProducer) -> FlaskClient:
    """The HTTP API on fakes, tracing every payment into ``exporter``."""
    tracer = otel.in_memory(exporter, "http")
    with mock.patch.object(app_module, "open_tracer", lambda *_args: tracer):
        app = app_module.create_app(SETTINGS, KEYS, producer, redis,  # type: ignore[arg-type]
                                    CheckedHealth())  # type: ignore[arg-type]
    return app.test_client()


def only(spans: tuple[ReadableSpan, ...], name: str) -> ReadableSpan:
    [span] = [s for s in spans if s.name == name]
    return span


def traceparent_of(headers: object) -> str:
    found = [value for name, value in headers or ()  # type: ignore[attr-defined]
             if name == "traceparent"]
    assert len(found) == 1, headers
    return found[0].decode() if isinstance(found[0], bytes) else found[0]


def names(span: ReadableSpan) -> str:
    """A span as a W3C traceparent would name it."""
    assert span.context is not None
    return (f"00-{format_trace_id(span.context.trace_id)}-"
            f"{format_span_id(span.context.span_id)}-{span.context.trace_flags:02x}")


def test_an_incoming_traceparent_is_the_parent_and_the_answer_names_the_span(
        exporter: InMemorySpanExporter) -> None:
    producer = AckingProducer()
    client = api(exporter, FakeRedis(), producer)
    answer = client.post("/authorize", json=VALID_BODY,
                         headers={"traceparent": f"00-{CALLER_TRACE}-{CALLER_SPAN}-01"})
    assert answer.status_code == 200, answer.json
    send = only(exporter.get_finished_spans(), f"send {TOPICS.requested}")
    assert format_trace_id(send.context.trace_id) == CALLER_TRACE
    assert send.parent is not None and format_span_id(send.parent.span_id) == CALLER_SPAN
    # The caller learns the span; the record carries it on to the authorizer.
    assert answer.headers["traceresponse"] == names(send)
    [record] = producer.records
    assert traceparent_of(record.headers) == names(send)


def test_the_servers_direct_path_continues_it_too(exporter: InMemorySpanExporter) -> None:
    """POST /authorize as the edge's server answers it without Flask."""
    tracer = otel.in_memory(exporter, "http")
    with mock.patch.object(app_module, "open_tracer", lambda *_args: tracer):
        app = app_module.create_app(SETTINGS, KEYS, AckingProducer(),  # type: ignore[arg-type]
                                    FakeRedis(), CheckedHealth())  # type: ignore[arg-type]
    direct = app.extensions["paysim.direct"][("POST", "/authorize")]
    answer = direct(http_server.Request(
        "POST", b"/authorize", "HTTP/1.1",
        [(b"Content-Type", b"application/json"),
         (b"TraceParent", f"00-{CALLER_TRACE}-{CALLER_SPAN}-01".encode())],
        [json.dumps(VALID_BODY).encode()]))
    assert answer.status.startswith("200"), answer.body
    send = only(exporter.get_finished_spans(), f"send {TOPICS.requested}")
    assert send.parent is not None and format_span_id(send.parent.span_id) == CALLER_SPAN
    assert ("traceresponse", names(send)) in answer.headers


@pytest.mark.parametrize("bad", [
    "nonsense", f"00-{'0' * 32}-{CALLER_SPAN}-01", f"00-{CALLER_TRACE}-{'0' * 16}-01",
    f"ff-{CALLER_TRACE}-{CALLER_SPAN}-01", f"00-{CALLER_TRACE.upper()}-{CALLER_SPAN}-01",
    f"00-{CALLER_TRACE}-{CALLER_SPAN}-01-extra", "00-\u00e9\u00e9-zz-01", ""])
def test_a_malformed_traceparent_starts_a_new_trace(exporter: InMemorySpanExporter,
                                                    bad: str) -> None:
    client = api(exporter, FakeRedis(), AckingProducer())
    answer = client.post("/authorize", json=VALID_BODY, headers={"traceparent": bad})
    assert answer.status_code == 200, answer.json
    send = only(exporter.get_finished_spans(), f"send {TOPICS.requested}")
    assert send.parent is None and format_trace_id(send.context.trace_id) != CALLER_TRACE
    assert answer.headers["traceresponse"] == names(send)


def test_an_unsampled_caller_is_honoured(exporter: InMemorySpanExporter) -> None:
    producer = AckingProducer()
    client = api(exporter, FakeRedis(), producer)
    answer = client.post("/authorize", json=VALID_BODY,
                         headers={"traceparent": f"00-{CALLER_TRACE}-{CALLER_SPAN}-00"})
    assert answer.status_code == 200
    assert not exporter.get_finished_spans()  # left out of the sample, as the caller said
    response = answer.headers["traceresponse"]
    assert response.startswith(f"00-{CALLER_TRACE}-") and response.endswith("-00")
    assert traceparent_of(producer.records[0].headers) == response


def test_without_tracing_no_traceresponse() -> None:
    app = app_module.create_app(SETTINGS, KEYS, AckingProducer(), FakeRedis(),  # type: ignore[arg-type]
                                CheckedHealth())  # type: ignore[arg-type]
    caller = {"traceparent": f"00-{CALLER_TRACE}-{CALLER_SPAN}-01"}
    answer = app.test_client().post("/authorize", json=VALID_BODY, headers=caller)
    assert answer.status_code == 200 and "traceresponse" not in answer.headers


def stored_payment(redis: FakeRedis, trace_id: str | None) -> None:
    """A finished payment as the notifier stores it (with its trace id when sampled)."""
    outcome = PaymentOutcome(
        payment_id=PAYMENT_ID, run_id="run-t", amount=1250, currency="USD",
        merchant=Merchant(id="m", name="Shop", mcc="5411", country="US"),
        stages={"requested": 1}, status="approved", reason_code="00", reason_text="Approved",
        masked_pan="424242******4242", token="tok-1")
    fields = {b"status": b"approved", b"doc": encode(outcome)}
    if trace_id is not None:
        fields[b"trace_id"] = trace_id.encode()
    redis.hashes[store.outcome_key(PAYMENT_ID)] = fields


def reverse(exporter: InMemorySpanExporter, headers: dict[str, str],
            trace_id: str | None = PAYMENT_TRACE) -> tuple[Any, AckingProducer, FakeRedis]:
    redis, producer = FakeRedis(), AckingProducer()
    stored_payment(redis, trace_id)
    client = api(exporter, redis, producer)
    with mock.patch.object(edge_operations, "ANSWER_WAIT_S", 0):  # no ledger here to answer
        answer = client.post(f"/payments/{PAYMENT_ID}/reverse", headers=headers)
    assert answer.status_code == 202, answer.json
    return answer, producer, redis


def test_an_operation_joins_its_payments_trace_and_the_ledger_continues_it(
        exporter: InMemorySpanExporter) -> None:
    answer, producer, redis = reverse(exporter, {})
    send = only(exporter.get_finished_spans(), f"send {TOPICS.operations}")
    assert format_trace_id(send.context.trace_id) == PAYMENT_TRACE  # the payment's trace
    assert send.kind == SpanKind.PRODUCER and send.attributes["paysim.payment_id"] == PAYMENT_ID
    assert answer.headers["traceresponse"] == names(send)
    [record] = producer.records
    assert record.topic == TOPICS.operations
    assert traceparent_of(record.headers) == names(send)

    # The ledger service: its process span a child of the operation's, linked to its batch.
    exporter.clear()
    message = FakeMessage(TOPICS.operations, 0, 0, record.value, (record.key or "").encode(),
                          headers=list(record.headers or ()))
    run_hop(LEDGER, [message], redis, otel.in_memory(exporter, LEDGER.name))
    spans = exporter.get_finished_spans()
    process = only(spans, f"process {TOPICS.operations}")
    batch = only(spans, f"consume {TOPICS.operations}")
    assert process.parent is not None and process.parent.span_id == send.context.span_id
    assert process.context.trace_id == send.context.trace_id
    assert [link.context.span_id for link in process.links] == [batch.context.span_id]
    assert process.attributes["messaging.operation.type"] == "process"


def test_an_operation_continues_the_requests_traceparent_first(
        exporter: InMemorySpanExporter) -> None:
    reverse(exporter, {"traceparent": f"00-{CALLER_TRACE}-{CALLER_SPAN}-01"})
    send = only(exporter.get_finished_spans(), f"send {TOPICS.operations}")
    assert format_trace_id(send.context.trace_id) == CALLER_TRACE
    assert send.parent is not None and format_span_id(send.parent.span_id) == CALLER_SPAN


def test_an_operation_on_an_untraced_payment_starts_its_own_trace(
        exporter: InMemorySpanExporter) -> None:
    answer, _, _ = reverse(exporter, {}, trace_id=None)
    send = only(exporter.get_finished_spans(), f"send {TOPICS.operations}")
    assert send.parent is None and format_trace_id(send.context.trace_id) != PAYMENT_TRACE
    assert answer.headers["traceresponse"] == names(send)


def test_the_lifecycle_mix_sends_each_operation_in_its_payments_trace(
        exporter: InMemorySpanExporter) -> None:
    entry = otel.in_memory(exporter, "send")
    with entry.sending(TOPICS.requested, PAYMENT_ID) as trace:
        first = trace.traceresponse
    load = OperationLoad.__new__(OperationLoad)  # no Kafka: only its sending is under test
    load.settings, load.run_id, load.tracer = SETTINGS, "run-t", entry
    load.producer = AckingProducer()  # type: ignore[assignment]
    load.errors = []
    op = PlannedOp("op-1", OperationKind.CAPTURE, PAYMENT_ID, "tok-1", "USD", 0, amount=100,
                   traceparent=first)
    load._produce(op)
    [record] = load.producer.records  # type: ignore[attr-defined]
    spans = {span.name: span for span in exporter.get_finished_spans()}
    payment, operation = spans[f"send {TOPICS.requested}"], spans[f"send {TOPICS.operations}"]
    assert operation.parent is not None and operation.parent.span_id == payment.context.span_id
    assert traceparent_of(record.headers) == names(operation)


class Recorder(http.server.BaseHTTPRequestHandler):
    """A system under test that approves everything and keeps each request's headers."""

    seen: ClassVar[list[dict[str, str]]] = []

    def do_POST(self) -> None:
        self.rfile.read(int(self.headers.get("Content-Length") or 0))
        Recorder.seen.append(dict(self.headers.items()))
        body = b'{"result": "authorised"}'
        self.send_response(200)
        self.send_header("Content-Type", "application/json")
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        self.wfile.write(body)

    def log_message(self, *_: object) -> None:
        pass


@pytest.fixture
def target() -> Iterator[str]:
    Recorder.seen = []
    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), Recorder)
    thread = threading.Thread(target=server.serve_forever, args=(0.05,), daemon=True)
    thread.start()
    try:
        yield f"http://127.0.0.1:{server.server_address[1]}/pay"
    finally:
        server.shutdown()
        server.server_close()


@functools.cache
def payments(count: int) -> list[GeneratedPayment]:
    """Generated payments (their population takes a second to build: once)."""
    return PaymentStream(build_population(7), 7).take(count)


def test_a_target_runs_requests_carry_the_payments_traceparent(
        exporter: InMemorySpanExporter, target: str) -> None:
    template = load_request_template(EXAMPLES / "http-authorize.toml")
    tracer = otel.in_memory(exporter, "send")
    ingress = HttpTargetIngress(parse_target_url(target), template, 1, 5.0, tracer)
    sent = [ingress.send(payment, "run-t", None) for payment in payments(3)]
    ingress.finish()
    assert all(s.failure is None for s in sent), sent
    spans = [s for s in exporter.get_finished_spans() if s.kind == SpanKind.CLIENT]
    assert len(spans) == 3 and {s.name for s in spans} == {"POST"}
    assert [seen["traceparent"] for seen in Recorder.seen] == [names(s) for s in spans]
    assert spans[0].attributes["url.full"] == target


def test_a_kafka_target_runs_records_carry_the_payments_traceparent(
        exporter: InMemorySpanExporter) -> None:
    template = load_record_template(EXAMPLES / "kafka-authorize.toml")
    first, second = payments(3)[:2]
    producer = AckingProducer()
    ingress = KafkaTargetIngress(producer, "their.topic", template,  # type: ignore[arg-type]
                                 Correlation(), otel.in_memory(exporter, "send"))
    ingress.send(first, "run-t", None)
    [record] = producer.records
    [span] = exporter.get_finished_spans()
    assert span.name == "send their.topic"
    assert traceparent_of(record.headers) == names(span)
    # Untraced (no endpoint): the template's headers only, as before.
    plain = KafkaTargetIngress(AckingProducer(), "their.topic", template,  # type: ignore[arg-type]
                               Correlation())
    plain.send(second, "run-t", None)
    assert not [h for h in plain.producer.records[0].headers or ()  # type: ignore[attr-defined]
                if h[0] == "traceparent"]
