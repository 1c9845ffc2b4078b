"""Traces on the real pipeline: run-all and `paysim send` with OTEL_EXPORTER_OTLP_ENDPOINT
pointing at a small OTLP/HTTP receiver (paysim.bench.otlp, protobuf decoded with
opentelemetry-proto). Every payment, sent straight onto Kafka or through the HTTP API, is one
trace across all hops, whose spans chain parent to child; its records carry the traceparent
the AsyncAPI document declares; `paysim status` shows the trace id. A caller's traceparent is
continued, and an operation on the payment joins its trace through the ledger service."""

from __future__ import annotations

import itertools
import json
import urllib.request
import uuid
from collections.abc import Iterator
from email.message import Message
from typing import Any

import jsonschema
import pytest

from paysim.bench.otlp import OtlpReceiver, ReceivedSpan
from paysim.infra.config import Settings, settings_env
from paysim.infra.kafka import read_records
from paysim.infra.waiting import wait_until
from paysim.pipeline import store
from paysim.pipeline.asyncapi import TOPICS, TRACE_HEADERS
from paysim.pipeline.registry import AUTHORIZER, GENERATOR, HTTP, NOTIFIER, PROCESSOR
from tests.helpers import free_port, run_paysim, settings_for
from tests.integration.pipeline_helpers import run_done_entries, running_pipeline

PRODUCER, CONSUMER = 4, 5  # OTLP's span kinds


@pytest.fixture(scope="module")
def receiver() -> Iterator[OtlpReceiver]:
    with OtlpReceiver() as receiver:
        yield receiver


@pytest.fixture(scope="module")
def otel_env(receiver: OtlpReceiver) -> dict[str, str]:
    # Exported every 0.2 s rather than every 5 s, so the test waits less.
    return {"OTEL_EXPORTER_OTLP_ENDPOINT": receiver.endpoint, "OTEL_BSP_SCHEDULE_DELAY": "200"}


@pytest.fixture(scope="module")
def traced_pipeline(local_stack: object, service_flags: dict[str, object],
                    otel_env: dict[str, str]) -> Iterator[Settings]:
    """run-all tracing every payment, on topics of this module's own."""
    suffix = uuid.uuid4().hex[:8]
    topics = {f"topics.{topic.setting}": f"test.traces.{topic.setting}.{suffix}"
              for topic in TOPICS}
    settings = settings_for({**service_flags, **topics, "http.port": free_port(),
                             "issuer.decline_rate": 0, "issuer.fault_rate": 0})
    with running_pipeline(settings, env=otel_env):
        yield settings


def send(settings: Settings, env: dict[str, str], *args: str) -> dict:
    result = run_paysim("send", "--json", *args, env={**settings_env(settings), **env})
    assert result.returncode == 0, result.stdout + result.stderr
    return json.loads(result.stdout)


def chain_of(spans: list[ReceivedSpan], topics: list[str]) -> list[ReceivedSpan] | None:
    """The trace's spans in hop order (entry send, then process and send per hop), or None
    while some have not arrived."""
    by_name = {}
    for span in spans:
        by_name.setdefault((span.name, span.kind), span)
    wanted = [(f"send {topics[0]}", PRODUCER)]
    for topic, out in itertools.pairwise(topics):
        wanted += [(f"process {topic}", CONSUMER), (f"send {out}", PRODUCER)]
    if not all(key in by_name for key in wanted):
        return None
    return [by_name[key] for key in wanted]


def incomplete(spans: list[ReceivedSpan], missing: set[str]) -> str:
    """What arrived of the payments whose traces are not complete."""
    lines = []
    for payment_id in sorted(missing):
        roots = [s for s in spans if s.attributes.get("paysim.payment_id") == payment_id]
        trace_ids = {s.trace_id for s in roots}
        lines.append(f"{payment_id}: roots {len(roots)}, spans " + ", ".join(
            f"{s.service}:{s.name}" for s in spans if s.trace_id in trace_ids))
    return "; ".join(lines)


def test_every_payment_is_one_trace_across_all_hops(traced_pipeline: Settings,
                                                    receiver: OtlpReceiver,
                                                    otel_env: dict[str, str]) -> None:
    settings = traced_pipeline
    by_kafka = send(settings, otel_env, "--count", "20", "--seed", "21")
    by_http = send(settings, otel_env, "--count", "5", "--seed", "22", "--via", "http")
    assert by_kafka["outcomes"]["completed"] == 20 and by_http["outcomes"]["completed"] == 5
    entered_by = {entry.payment_id: GENERATOR
                  for entry in run_done_entries(settings, by_kafka["run_id"])}
    entered_by |= {entry.payment_id: HTTP.name
                   for entry in run_done_entries(settings, by_http["run_id"])}
    assert len(entered_by) == 25
    topics = settings.topics
    # A payment the authorizer declines goes from it straight to the results.
    paths = ([topics.requested, topics.authorized, topics.results, topics.notifications],
             [topics.requested, topics.results, topics.notifications])

    def chain(trace: list[ReceivedSpan]) -> list[ReceivedSpan] | None:
        return chain_of(trace, paths[0]) or chain_of(trace, paths[1])

    def traces() -> dict[str, list[ReceivedSpan]]:
        """Each payment's trace (by the entry span's payment id), once complete."""
        spans = receiver.received()
        ids = {s.attributes.get("paysim.payment_id"): s.trace_id for s in spans
               if s.name == f"send {topics.requested}" and not s.parent_span_id}
        found = {}
        for payment_id, trace_id in ids.items():
            trace = [s for s in spans if s.trace_id == trace_id]
            if payment_id in entered_by and chain(trace) is not None:
                found[payment_id] = trace
        return found

    assert wait_until(lambda: len(traces()) == 25, timeout=60, interval=0.5), \
        incomplete(receiver.received(), set(entered_by) - set(traces()))
    received = traces()

    def batch_spans() -> dict[str, ReceivedSpan]:
        return {s.span_id: s for s in receiver.received() if s.name.startswith("consume ")}

    # A batch's span ends after its payments' spans, so it may come in a later export.
    linked = {span_id for trace in received.values() for s in trace for _, span_id in s.links}
    assert wait_until(lambda: linked <= batch_spans().keys(), timeout=30, interval=0.2)
    batches = batch_spans()
    services = [f"paysim-{spec.name}" for spec in (AUTHORIZER, PROCESSOR, NOTIFIER)]
    trace_ids, lengths = set(), set()
    for payment_id, trace in received.items():
        spans = chain(trace)
        assert spans is not None
        trace_ids.add(spans[0].trace_id)
        lengths.add(len(spans))
        assert spans[0].service == f"paysim-{entered_by[payment_id]}"
        expected = services if len(spans) == 7 else [services[0], services[2]]
        assert [span.service for span in spans[1::2]] == expected
        for parent, child in itertools.pairwise(spans):
            assert child.parent_span_id == parent.span_id, (child.name, payment_id)
        for process in spans[1::2]:
            assert process.attributes["messaging.system"] == "kafka"
            [(link_trace, link_span)] = process.links  # its batch's span
            assert batches[link_span].trace_id == link_trace
            assert batches[link_span].name == process.name.replace("process", "consume")
    assert len(trace_ids) == 25  # one trace per payment
    assert lengths == {7, 5}  # the seeds' payments take both paths

    # The records carry the header the AsyncAPI document declares.
    headers = jsonschema.Draft202012Validator(TRACE_HEADERS)
    requested = read_records(settings, topics.requested)
    assert len(requested) == 25
    for record in requested:
        carried = {name: value.decode() for name, value in record.headers or []}
        assert list(carried) == ["traceparent"]
        assert list(headers.iter_errors(carried)) == []

    # `paysim status` shows the payment's trace id.
    payment_id = next(iter(received))
    status = run_paysim("status", payment_id, env=settings_env(settings))
    assert status.returncode == 0, status.stderr
    assert f"trace    {received[payment_id][0].trace_id}" in status.stdout


def post(settings: Settings, path: str, body: dict[str, Any],
         headers: dict[str, str]) -> tuple[int, dict[str, Any], Message]:
    request = urllib.request.Request(
        f"http://{settings.http.host}:{settings.http.port}{path}", method="POST",
        data=json.dumps(body).encode(), headers={"Content-Type": "application/json", **headers})
    with urllib.request.urlopen(request, timeout=30) as answer:
        return answer.status, json.loads(answer.read()), answer.headers


def test_a_callers_trace_goes_on_through_the_payment_and_its_capture(
        traced_pipeline: Settings, receiver: OtlpReceiver) -> None:
    """POST /authorize with the caller's traceparent, then a capture: one trace, the caller's,
    from the HTTP API through the three hops and on through the ledger service."""
    settings = traced_pipeline
    caller_trace, caller_span = uuid.uuid4().hex, uuid.uuid4().hex[:16]
    status, body, headers = post(settings, "/authorize", {
        "card_number": "4242424242424242", "exp_month": 12, "exp_year": 2099, "cvv": "123",
        "amount": 5_000, "currency": "USD", "capture": "manual",
        "merchant": {"id": "m-t", "name": "Hotel", "mcc": "7011", "country": "US"}},
        {"traceparent": f"00-{caller_trace}-{caller_span}-01"})
    assert status == 200, body
    payment_id = body["payment_id"]
    assert headers["traceresponse"].startswith(f"00-{caller_trace}-")
    client = store.connect(settings)
    try:
        assert wait_until(lambda: store.read_outcome(client, payment_id) is not None, timeout=60)
    finally:
        client.close()
    status, body, headers = post(settings, f"/payments/{payment_id}/capture", {}, {})
    assert status == 200, body
    # Without a traceparent of its own, the capture joins its payment's trace.
    assert headers["traceresponse"].startswith(f"00-{caller_trace}-")
    capture_span = headers["traceresponse"].split("-")[2]
    topics = settings.topics

    def spans() -> dict[tuple[str, str], ReceivedSpan]:
        return {(s.service, s.name): s for s in receiver.received() if s.trace_id == caller_trace}

    wanted = ("paysim-ledger", f"process {topics.operations}")
    # Each service exports on its own schedule: wait for every span the checks below read.
    needed = {wanted, ("paysim-http", f"send {topics.requested}"),
              ("paysim-authorizer", f"process {topics.requested}"),
              ("paysim-http", f"send {topics.operations}")}
    assert wait_until(lambda: needed <= spans().keys(), timeout=30, interval=0.2), \
        sorted(spans())
    found = spans()
    entry = found[("paysim-http", f"send {topics.requested}")]
    assert entry.parent_span_id == caller_span
    assert found[("paysim-authorizer", f"process {topics.requested}")].parent_span_id == \
        entry.span_id
    operation = found[("paysim-http", f"send {topics.operations}")]
    assert operation.span_id == capture_span
    ledger = found[wanted]
    assert ledger.parent_span_id == operation.span_id
    [(link_trace, link_span)] = ledger.links  # its batch's span

    def batches() -> dict[str, ReceivedSpan]:
        return {s.span_id: s for s in receiver.received()
                if s.name == f"consume {topics.operations}"}

    assert wait_until(lambda: link_span in batches(), timeout=30, interval=0.2)
    assert batches()[link_span].trace_id == link_trace
