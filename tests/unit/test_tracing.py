"""Traces across the three hops (paysim.infra.otel), on the real ServiceLoop with fake Kafka
clients and a fake Redis, the spans caught by the SDK's InMemorySpanExporter: one trace per
payment from where it enters to the notifier, each process span a child of the record's
context and linked to its batch's span; sampling decided where the payment enters and
honoured downstream; and with no OTLP endpoint, nothing traced and nothing imported."""

from __future__ import annotations

import itertools
import os
import subprocess
import sys
from pathlib import Path
from unittest import mock

import pytest
from opentelemetry.sdk.trace import ReadableSpan
from opentelemetry.sdk.trace.export.in_memory_span_exporter import InMemorySpanExporter
from opentelemetry.trace import SpanKind, format_trace_id

from paysim.domain.messages import encode
from paysim.infra import otel, tracing
from paysim.infra.config import Settings, load_settings
from paysim.infra.errors import ConfigError
from paysim.pipeline import loop as loop_module
from paysim.pipeline import store
from paysim.pipeline.loop import ServiceLoop
from paysim.pipeline.registry import AUTHORIZER, NOTIFIER, PROCESSOR, ServiceSpec
from tests.helpers import assert_one_line_error, run_paysim
from tests.unit import fakes
from tests.unit.fakes import FakeMessage, FakeRedis, Produced
from tests.unit.test_services import SETTINGS, requested

TOPICS = SETTINGS.topics
HOPS = ((AUTHORIZER, TOPICS.requested, TOPICS.authorized),
        (PROCESSOR, TOPICS.authorized, TOPICS.results),
        (NOTIFIER, TOPICS.results, TOPICS.notifications))


def run_hop(spec: ServiceSpec, records: list[FakeMessage], redis: FakeRedis,
            tracer: otel.PaymentTracer | None, settings: Settings = SETTINGS) -> list[Produced]:
    """One service's loop over ``records`` until they are used up; what it committed."""
    stop = fakes.Stop()
    cluster = fakes.FakeCluster()
    producer = fakes.FakeProducer(cluster)
    loop = ServiceLoop(spec.build(settings, redis), settings, stop=stop,  # type: ignore[arg-type]
                       consumer=fakes.FakeConsumer(stop, records, cluster.committed),  # type: ignore[arg-type]
                       producer=producer, tracer=tracer)  # type: ignore[arg-type]
    with mock.patch.object(loop_module, "ensure_topics"):  # no broker here
        loop.run()
    return producer.records


def as_records(produced: list[Produced], topic: str) -> list[FakeMessage]:
    """The committed records of ``topic`` as the next hop consumes them."""
    return [FakeMessage(topic, 0, offset, record.value, (record.key or "").encode(),
                        headers=None if record.headers is None else list(record.headers))
            for offset, record in enumerate(r for r in produced if r.topic == topic)]


def send_payments(count: int, entry: otel.PaymentTracer | None) -> list[FakeMessage]:
    """Payments entering as the HTTP API or `send` enter them, traced by ``entry``."""
    messages = []
    for offset in range(count):
        item = requested()
        with tracing.sending(entry, TOPICS.requested, item.payment_id) as trace:
            messages.append(FakeMessage(TOPICS.requested, 0, offset, encode(item),
                                        item.payment_id.encode(), headers=trace.headers))
    return messages


def through_the_pipeline(records: list[FakeMessage], redis: FakeRedis,
                         tracers: dict[str, otel.PaymentTracer | None]) -> list[Produced]:
    produced: list[Produced] = []
    for spec, _, out in HOPS:
        produced = run_hop(spec, records, redis, tracers[spec.name])
        records = as_records(produced, out)
    return produced


def stored(redis: FakeRedis, payment_id: str) -> store.StoredOutcome | None:
    """The outcome as read back from the hash the notifier's HSET wrote (the fake Redis
    logs pipelined commands; it keeps only what its own hset() sets)."""
    key = store.outcome_key(payment_id)
    for command in redis.commands("HSET", key):
        fields = command[2:]
        redis.hashes[key] = {str(name).encode(): value if isinstance(value, bytes)
                             else str(value).encode()
                             for name, value in zip(fields[::2], fields[1::2], strict=True)}
    return store.read_outcome(redis, payment_id)  # type: ignore[arg-type]


def sampled(headers: object) -> bool:
    """The W3C traceparent's sampled flag (the flags' lowest bit)."""
    [(name, value)] = list(headers)  # type: ignore[call-overload]
    assert name == "traceparent"
    return bool(int(value[-2:], 16) & 1)


@pytest.fixture
def exporter() -> InMemorySpanExporter:
    return InMemorySpanExporter()


def tracers_for(exporter: InMemorySpanExporter, ratio: float) -> dict[str, otel.PaymentTracer]:
    return {spec.name: otel.in_memory(exporter, spec.name, ratio) for spec, _, _ in HOPS}


def by_trace(spans: tuple[ReadableSpan, ...]) -> dict[int, list[ReadableSpan]]:
    traces: dict[int, list[ReadableSpan]] = {}
    for span in spans:
        assert span.context is not None
        traces.setdefault(span.context.trace_id, []).append(span)
    return traces


def test_each_payment_is_one_trace_from_where_it_entered_to_the_notifier(
        exporter: InMemorySpanExporter) -> None:
    entry = otel.in_memory(exporter, "http")
    redis = FakeRedis()
    sent = send_payments(3, entry)
    notifications = through_the_pipeline(sent, redis, tracers_for(exporter, 1.0))
    assert len(notifications) == 3
    assert all(record.headers for record in notifications)  # ready for a next hop

    spans = exporter.get_finished_spans()
    batches = {span.context.span_id: span for span in spans if span.name.startswith("consume ")}
    assert sorted(span.name for span in batches.values()) == sorted(
        f"consume {topic}" for _, topic, _ in HOPS)
    payments = [spans for spans in by_trace(spans).values()
                if any(span.parent is None and span.name.startswith("send ") for span in spans)]
    assert len(payments) == 3
    for trace in payments:
        named = {span.name: span for span in trace}
        # The chain: entry send -> process -> send -> process -> send -> process -> send.
        chain = [f"send {TOPICS.requested}"]
        for _, topic, out in HOPS:
            chain += [f"process {topic}", f"send {out}"]
        # Beside the chain, the processor's ledger event (the authorization captured at once).
        events = [span for span in trace if span.name == f"send {TOPICS.events}"]
        assert sorted(named) == sorted([*chain, f"send {TOPICS.events}"])
        assert len(trace) == len(chain) + len(events) and events
        assert {span.parent.span_id for span in events} == {named[chain[3]].context.span_id}
        for parent, child in itertools.pairwise(chain):
            assert named[child].parent is not None
            assert named[child].parent.span_id == named[parent].context.span_id, child
        assert named[chain[0]].kind == SpanKind.PRODUCER
        assert named[chain[0]].attributes["paysim.payment_id"]
        for _, topic, out in HOPS:
            process, send = named[f"process {topic}"], named[f"send {out}"]
            assert process.kind == SpanKind.CONSUMER and send.kind == SpanKind.PRODUCER
            assert process.attributes["messaging.system"] == "kafka"
            assert process.attributes["messaging.destination.name"] == topic
            assert process.attributes["messaging.operation.type"] == "process"
            assert send.attributes["messaging.destination.name"] == out
            # Linked to its batch's span, which links back to the record's context.
            [link] = process.links
            batch = batches[link.context.span_id]
            assert batch.name == f"consume {topic}"
            assert batch.attributes["messaging.batch.message_count"] == 3
            assert process.parent.span_id in {lk.context.span_id for lk in batch.links}
        # The notifier stored the trace id with the outcome: `paysim status` shows it.
        outcome = stored(redis, named[chain[0]].attributes["paysim.payment_id"])
        assert outcome is not None
        assert outcome.trace_id == format_trace_id(named[chain[0]].context.trace_id)
        assert store.outcome_view(outcome).trace_id == outcome.trace_id


def test_the_entry_decides_sampling_and_every_hop_honours_it(
        exporter: InMemorySpanExporter) -> None:
    redis = FakeRedis()
    # Not sampled where it entered: the services (at ratio 1) record nothing of the payment,
    # yet pass its context on, the sampled flag off.
    skipped = send_payments(2, otel.in_memory(exporter, "http", ratio=0.0))
    assert [sampled(m.headers()) for m in skipped] == [False, False]
    notifications = through_the_pipeline(skipped, redis, tracers_for(exporter, 1.0))
    assert [sampled(record.headers) for record in notifications] == [False, False]
    # ... unchanged, at no more cost than a look at the flags.
    assert sorted(r.headers for r in notifications) == sorted(tuple(m.headers()) for m in skipped)
    assert not [s for s in exporter.get_finished_spans() if not s.name.startswith("consume ")]
    outcomes = [stored(redis, record.key or "") for record in notifications]
    assert [o.trace_id for o in outcomes if o is not None] == [None, None]
    exporter.clear()
    # Sampled where it entered: recorded at every hop, though the services' ratio is 0.
    kept = send_payments(2, otel.in_memory(exporter, "http", ratio=1.0))
    through_the_pipeline(kept, redis, tracers_for(exporter, 0.0))
    traces = by_trace(exporter.get_finished_spans())
    # 3 batches, and per payment the chain of 7 and its event's send span (captured at once)
    assert sorted(len(spans) for spans in traces.values()) == [1, 1, 1, 8, 8]


def test_a_record_without_a_usable_context_is_decided_untraced(
        exporter: InMemorySpanExporter) -> None:
    [good] = send_payments(1, None)
    bad = FakeMessage(TOPICS.requested, 0, 1, encode(requested()), b"k",
                      headers=[("traceparent", b"\xff\x00 not a context")])
    produced = run_hop(AUTHORIZER, [good, bad], FakeRedis(),
                       otel.in_memory(exporter, AUTHORIZER.name))
    assert [record.headers for record in produced] == [None, None]
    [batch] = exporter.get_finished_spans()  # the batch's span only
    assert batch.name == f"consume {TOPICS.requested}" and not batch.links


def test_no_endpoint_no_tracer_and_no_headers() -> None:
    assert tracing.open_tracer(SETTINGS, AUTHORIZER.name, env={}) is None
    assert tracing.open_tracer(SETTINGS, AUTHORIZER.name, env={
        "OTEL_EXPORTER_OTLP_ENDPOINT": "http://127.0.0.1:4318",
        "OTEL_SDK_DISABLED": "true"}) is None
    produced = run_hop(AUTHORIZER, send_payments(2, None), FakeRedis(), None)
    assert [record.headers for record in produced] == [None, None]


def test_without_an_endpoint_no_process_imports_opentelemetry() -> None:
    """The edge, the Kafka ingress and a service's loop, built and asked for their tracer
    with no endpoint set: not one OpenTelemetry module loaded (redis-py imports the SDK's
    metrics when it is installed, so redis is kept from seeing it)."""
    code = (
        "import sys\n"
        "sys.modules['opentelemetry'] = None  # only redis-py's optional import meets this\n"
        "from paysim.infra.config import load_settings\n"
        "from paysim.infra import tracing\n"
        "import paysim.edge.app, paysim.load.ingress, paysim.pipeline.process\n"
        "assert tracing.open_tracer(load_settings(env={}), 'x') is None\n"
        "assert tracing.sending(None, 't', 'p').__enter__().headers is None\n"
        "loaded = [m for m in sys.modules if m.startswith('opentelemetry.')]\n"
        "assert loaded == [], loaded\n"
    )
    env = {k: v for k, v in os.environ.items() if not k.startswith("OTEL_")}
    result = subprocess.run([sys.executable, "-c", code], env=env, capture_output=True,
                            text=True, timeout=60, cwd=Path(__file__).parents[2])
    assert result.returncode == 0, result.stderr[-2000:]


def test_the_sample_ratio_comes_from_the_setting_then_the_standard_variable() -> None:
    assert tracing.sample_ratio(SETTINGS, env={}) == 1.0
    assert tracing.sample_ratio(SETTINGS, env={"OTEL_TRACES_SAMPLER_ARG": "0.25"}) == 0.25
    ten = fakes.pure_settings({"tracing.sample_ratio": 0.1})
    assert tracing.sample_ratio(ten, env={"OTEL_TRACES_SAMPLER_ARG": "0.25"}) == 0.1
    for bad in ("lots", "1.5", "nan"):
        with pytest.raises(ConfigError, match=r"^OTEL_TRACES_SAMPLER_ARG: expected a ratio"):
            tracing.sample_ratio(SETTINGS, env={"OTEL_TRACES_SAMPLER_ARG": bad})
    with pytest.raises(ConfigError, match=r"^PAYSIM_TRACING_SAMPLE_RATIO: expected a ratio"):
        load_settings(env={"PAYSIM_TRACING_SAMPLE_RATIO": "2"})


def test_a_bad_sampler_arg_stops_run_all_in_one_line(tmp_path: Path) -> None:
    """Before any service starts (each would fail, and be restarted, for it)."""
    result = run_paysim("run-all", "--no-live", env={
        "OTEL_EXPORTER_OTLP_ENDPOINT": "http://127.0.0.1:9", "OTEL_TRACES_SAMPLER_ARG": "lots",
        "PAYSIM_SERVICES_DIR": str(tmp_path / "services"),
        "PAYSIM_STACK_DIR": str(tmp_path / "stack")})
    assert_one_line_error(result, 2, "OTEL_TRACES_SAMPLER_ARG", "'lots'")


def test_tracing_without_its_packages_is_one_line(monkeypatch: pytest.MonkeyPatch) -> None:
    """The `traces` extra not installed: what needs it says so, and which extra to install."""
    monkeypatch.setattr(tracing.importlib.util, "find_spec", lambda _name: None)
    on = {"OTEL_EXPORTER_OTLP_ENDPOINT": "http://127.0.0.1:4318"}
    with pytest.raises(ConfigError, match=r"pip install 'paysim\[traces\]'"):
        tracing.open_tracer(SETTINGS, AUTHORIZER.name, env=on)
    tracing.check(SETTINGS, env={})  # not tracing: nothing needed


def test_the_entry_records_exactly_the_payments_its_traceparent_says_are_sampled(
        exporter: InMemorySpanExporter) -> None:
    """The entry draws the trace id and tests it before the SDK (a payment left out never
    meets it): the spans recorded are those of the sampled headers, under their trace ids."""
    entry = otel.in_memory(exporter, "http", ratio=0.5)
    headers = [message.headers() for message in send_payments(200, entry)]
    kept = {value[3:35].decode() for [(_, value)] in headers if sampled([(_, value)])}
    recorded = {format_trace_id(span.context.trace_id) for span in exporter.get_finished_spans()}
    assert recorded == kept and 50 < len(kept) < 150


def test_the_bench_receiver_counts_what_the_test_receiver_decodes(
        exporter: InMemorySpanExporter) -> None:
    """The traced bench's receiver only counts (it runs in the process the bench measures);
    its count is the decoded spans' count."""
    from opentelemetry.exporter.otlp.proto.common.trace_encoder import encode_spans

    from paysim.bench.otlp import count_spans, decode_spans

    through_the_pipeline(send_payments(3, otel.in_memory(exporter, "http")), FakeRedis(),
                         tracers_for(exporter, 1.0))
    body = encode_spans(exporter.get_finished_spans()).SerializeToString()
    assert count_spans(body) == len(decode_spans(body)) == len(exporter.get_finished_spans())
    assert count_spans(b"") == 0
