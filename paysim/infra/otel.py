"""Traces with the OpenTelemetry SDK: one trace per payment across the Kafka hops.

Imported only when tracing is on (paysim.infra.tracing). The spans follow OpenTelemetry's
messaging conventions for Kafka (``messaging.system`` kafka, ``messaging.destination.name``,
``messaging.operation.type`` and ``.name``, span names ``<operation> <topic>``):

- where a payment enters (the HTTP API, or ``send`` straight onto Kafka): ``send
  payments.requested`` (PRODUCER), the trace's root; its context goes into the record's
  headers as the W3C ``traceparent``;
- in each service, per batch: ``consume <topic>`` (CONSUMER, ``messaging.batch.message_count``),
  linked to each traced record it holds;
- per record carrying a sampled trace context: ``process <topic>`` (CONSUMER), a child of the
  record's context and linked to its batch's span; per record the decision writes, ``send
  <topic>`` (PRODUCER), a child of the process span, ended when the batch's transaction
  commits; its context goes into that record's headers for the next hop.

Sampling is decided once, where the payment enters (a ratio of trace ids), and honoured
downstream (parent-based): an unsampled payment's records still carry its ``traceparent``, with
the sampled flag off, passed on unchanged, and the services record nothing for it. A batch's
span is recorded when it holds a sampled payment, else by the same ratio.

The services' spans (batch, process, send) are recorded without the SDK's ``Span``: each is a
``Recording`` that, at its end, hands one finished ``ReadableSpan`` to the provider's span
processor, which batches and exports it as it would the SDK's own. The SDK's span costs about
23 us to start and end (a lock, bounded lists and attributes, the sampler, the processor's
start hook), the ``Recording`` about 3; a hop's spans carry only paysim's own attributes and
links, so the SDK's limits have nothing to bound.
"""

from __future__ import annotations

import contextlib
import re
import threading
import time
from collections.abc import Callable, Iterator, Mapping, Sequence
from typing import Any

from confluent_kafka import Message
from opentelemetry import trace
from opentelemetry.context import Context
from opentelemetry.propagators.textmap import Getter, Setter
from opentelemetry.sdk.resources import Resource
from opentelemetry.sdk.trace import ReadableSpan, SpanProcessor, TracerProvider
from opentelemetry.sdk.trace.export import BatchSpanProcessor, SimpleSpanProcessor, SpanExporter
from opentelemetry.sdk.trace.id_generator import RandomIdGenerator
from opentelemetry.sdk.trace.sampling import (
    Decision,
    ParentBased,
    Sampler,
    SamplingResult,
    TraceIdRatioBased,
)
from opentelemetry.sdk.util.instrumentation import InstrumentationScope
from opentelemetry.trace import Link, Span, SpanContext, SpanKind, Status, StatusCode, TraceFlags
from opentelemetry.trace.propagation.tracecontext import TraceContextTextMapPropagator
from opentelemetry.util.types import Attributes

Headers = list[tuple[str, bytes]]

# The W3C trace context, whatever OTEL_PROPAGATORS says: the AsyncAPI document promises
# `traceparent` (and `tracestate` when the sender had one) and nothing else.
PROPAGATOR = TraceContextTextMapPropagator()
TRACEPARENT = "traceparent"
TRACE_HEADER_NAMES = (TRACEPARENT, "tracestate")
# A batch's span links to at most this many records (the SDK's default link limit).
MAX_LINKS = 128
KAFKA = "kafka"


class KafkaHeaders(Getter[Headers], Setter[Headers]):
    """Kafka record headers (a list of (name, bytes)) as a carrier of the trace context."""

    def get(self, carrier: Headers, key: str) -> list[str] | None:
        # Header values are bytes from whoever wrote the record: a bad one is no context.
        found = [value.decode("latin-1") for name, value in carrier
                 if name == key and isinstance(value, bytes)]
        return found or None

    def keys(self, carrier: Headers) -> list[str]:
        return [name for name, _ in carrier]

    def set(self, carrier: Headers, key: str, value: str) -> None:
        carrier.append((key, value.encode("latin-1")))


HEADERS = KafkaHeaders()


class LinkedOrRatio(Sampler):
    """For spans without a parent: recorded when linked to a sampled span (a batch holding a
    sampled payment), else for ``ratio`` of trace ids (a payment's first span)."""

    def __init__(self, ratio: float) -> None:
        self.ratio = TraceIdRatioBased(ratio)

    def should_sample(self, parent_context: Context | None, trace_id: int, name: str,
                      kind: SpanKind | None = None, attributes: Attributes = None,
                      links: Sequence[Link] | None = None,
                      trace_state: trace.TraceState | None = None) -> SamplingResult:
        if links and any(link.context.trace_flags.sampled for link in links):
            return SamplingResult(Decision.RECORD_AND_SAMPLE, attributes)
        return self.ratio.should_sample(parent_context, trace_id, name, kind, attributes,
                                        links, trace_state)

    def get_description(self) -> str:
        return f"LinkedOrRatio{{{self.ratio.rate}}}"


def sampler(ratio: float) -> Sampler:
    return ParentBased(root=LinkedOrRatio(ratio))


def _attributes(topic: str, operation_type: str, operation: str,
                **more: Any) -> dict[str, Any]:
    return {"messaging.system": KAFKA, "messaging.destination.name": topic,
            "messaging.operation.type": operation_type, "messaging.operation.name": operation,
            **more}


def _failed(span: Span, error: str, description: str | None = None) -> None:
    span.set_attribute("error.type", error)
    span.set_status(Status(StatusCode.ERROR, description))


class Sending:
    """A payment's first span, around its record's send; ``headers`` go with the record."""

    def __init__(self, span: Span) -> None:
        self.span = span
        self.headers: Headers = []
        PROPAGATOR.inject(self.headers, trace.set_span_in_context(span), HEADERS)
        self.traceresponse = traceresponse(span.get_span_context())

    def failed(self, reason: str | None) -> None:
        """The send failed for ``reason`` (None: it did not)."""
        if reason is not None:
            _failed(self.span, "delivery_failed", reason)


class Hop:
    """One record's way through a service: its process span when its context is sampled (the
    caller ends it), the trace id the decision may store (None when not recorded), and the
    headers of each record the decision writes."""

    def __init__(self, batch: BatchTrace, span: Recording | None = None,
                 forwarded: Headers | None = None) -> None:
        self.batch, self.span, self.forwarded = batch, span, forwarded
        self.trace_id = None if span is None else f"{span.context.trace_id:032x}"

    def headers(self, topic: str) -> Headers:
        if self.span is None:  # unsampled: its context passes on as it came
            return self.forwarded or []
        return self.batch.send_headers(self.span, topic)

    def end(self, error: str | None = None) -> None:
        """The decision is made (``error``: the exception's type, when it raised one)."""
        if self.span is not None:
            if error is not None:
                self.span.failed(error)
            self.span.end()


# A W3C traceparent (version 00's form) whose trace and parent ids are not all zeros.
_TRACEPARENT = re.compile(rb"[0-9a-f]{2}-(?!0{32})[0-9a-f]{32}-(?!0{16})[0-9a-f]{16}-[0-9a-f]{2}")
_EVEN_DIGITS = (b"0", b"2", b"4", b"6", b"8", b"a", b"c", b"e")


def unsampled(headers: Headers) -> Headers | None:
    """A record's trace headers when they hold a well-formed traceparent whose sampled flag
    is off (they pass on unchanged, at the cost of this check); else None."""
    for name, value in headers:
        if name == TRACEPARENT:
            # The flags' lowest bit is the last hex digit's: an even digit, not sampled.
            if (isinstance(value, bytes) and value[-1:] in _EVEN_DIGITS
                    and _TRACEPARENT.fullmatch(value) is not None):
                return [(n, v) for n, v in headers if n in TRACE_HEADER_NAMES]
            return None
    return None


def traceresponse(context: SpanContext) -> str:
    """W3C Trace Context's ``traceresponse`` value naming ``context``: what an HTTP answer
    tells its caller of the trace its request joined or started."""
    return f"00-{context.trace_id:032x}-{context.span_id:016x}-{context.trace_flags:02x}"


class Unsampled:
    """A payment left out of the sample where it entered: only its context, flag off."""

    def __init__(self, trace_id: int, span_id: int) -> None:
        self.traceresponse = f"00-{trace_id:032x}-{span_id:016x}-00"
        self.headers: Headers = [(TRACEPARENT, self.traceresponse.encode())]

    def failed(self, reason: str | None) -> None:
        pass


_SAMPLED = TraceFlags(TraceFlags.SAMPLED)
_UNSET = Status(StatusCode.UNSET)


class Recorder:
    """Where a service's spans go: the provider's span processor, with the provider's resource
    and paysim's instrumentation scope, the ids drawn as the SDK draws them."""

    def __init__(self, processor: SpanProcessor, provider: TracerProvider, ids: DrawnIds,
                 bound: int) -> None:
        self.processor, self.resource, self.ids, self.bound = (
            processor, provider.resource, ids, bound)
        self.scope = InstrumentationScope("paysim")

    def sampled_root(self) -> SpanContext | None:
        """A new trace's context when the ratio takes its trace id, else None."""
        trace_id = self.ids.generate_trace_id()
        if trace_id & TraceIdRatioBased.TRACE_ID_LIMIT >= self.bound:
            return None
        return SpanContext(trace_id, self.ids.generate_span_id(), False, _SAMPLED)

    def child(self, parent: SpanContext) -> SpanContext:
        """A sampled child's context: the parent's trace id and trace state, an id of its own."""
        return SpanContext(parent.trace_id, self.ids.generate_span_id(), False, _SAMPLED,
                           parent.trace_state)


class Recording:
    """A sampled span being recorded (see the module's docstring): started at creation, handed
    to the span processor as a ReadableSpan at ``end()``."""

    __slots__ = ("attributes", "context", "kind", "links", "name", "parent", "recorder", "start",
                 "status")

    def __init__(self, recorder: Recorder, name: str, kind: SpanKind, context: SpanContext,
                 parent: SpanContext | None, attributes: dict[str, Any],
                 links: Sequence[Link] = ()) -> None:
        self.recorder, self.name, self.kind, self.context, self.parent = (
            recorder, name, kind, context, parent)
        self.attributes, self.links, self.status = attributes, links, _UNSET
        self.start = time.time_ns()

    def failed(self, error: str, description: str | None = None) -> None:
        self.attributes["error.type"] = error
        self.status = Status(StatusCode.ERROR, description)

    def headers(self) -> Headers:
        """The W3C trace context naming this span as the parent, as the propagator writes it."""
        carrier: Headers = [(TRACEPARENT, f"00-{self.context.trace_id:032x}-"
                                          f"{self.context.span_id:016x}-01".encode())]
        if self.context.trace_state:
            carrier.append(("tracestate", self.context.trace_state.to_header().encode("latin-1")))
        return carrier

    def end(self) -> None:
        recorder = self.recorder
        recorder.processor.on_end(ReadableSpan(
            self.name, self.context, self.parent, recorder.resource, self.attributes,
            links=self.links, kind=self.kind, status=self.status, start_time=self.start,
            end_time=time.time_ns(), instrumentation_scope=recorder.scope))


class BatchTrace:
    """One consumed batch's spans: ``consume <topic>`` for the batch, ``process <topic>`` per
    record carrying a sampled context, ``send <topic>`` per record its decision writes.

    A record whose context is not sampled gets no span: its trace headers pass on unchanged
    to what its decision writes, so the next hop honours the decision too. (Through the SDK,
    spans that record nothing cost each hop about as much as recorded ones.)"""

    def __init__(self, recorder: Recorder, topic: str, group: str, client_id: str,
                 messages: Sequence[Message]) -> None:
        self.recorder, self.topic, self.group, self.client_id = recorder, topic, group, client_id
        self.contexts: dict[int, SpanContext] = {}  # by id() of the batch's records
        self.forwarded: dict[int, Headers] = {}
        links: list[Link] = []
        for message in messages:
            headers = message.headers()
            if not headers:
                continue
            passing = unsampled(headers)
            if passing is not None:
                self.forwarded[id(message)] = passing
                continue
            context = PROPAGATOR.extract(headers, getter=HEADERS)
            span_context = trace.get_current_span(context).get_span_context()
            if not span_context.is_valid:
                continue
            self.contexts[id(message)] = span_context
            if len(links) < MAX_LINKS:
                links.append(Link(span_context))
        # Recorded when linked to a sampled record (the extracted contexts here are), else
        # for the ratio of its own trace ids, as LinkedOrRatio decides for the SDK's spans.
        root = (recorder.sampled_root() if not links
                else SpanContext(recorder.ids.generate_trace_id(),
                                 recorder.ids.generate_span_id(), False, _SAMPLED))
        self.span = None if root is None else Recording(
            recorder, f"consume {topic}", SpanKind.CONSUMER, root, None,
            _attributes(topic, "receive", "consume", **{
                "messaging.batch.message_count": len(messages),
                "messaging.consumer.group.name": group, "messaging.client.id": client_id}),
            links)
        self._batch_link = () if root is None else (Link(root),)
        self._process = _attributes(topic, "process", "process")
        self._sends: list[Recording] = []

    def __enter__(self) -> BatchTrace:
        return self

    def __exit__(self, kind: type[BaseException] | None, error: BaseException | None,
                 _tb: Any) -> None:
        self.end(None if kind is None else kind.__name__)

    def hop(self, message: Message) -> Hop | None:
        """The record's hop: with its process span (started here) when its context is
        sampled, its headers passed on when not; None for a record without a context."""
        parent = self.contexts.get(id(message))
        if parent is None:
            forwarded = self.forwarded.get(id(message))
            return None if forwarded is None else Hop(self, forwarded=forwarded)
        # The batch's span holds the consumer group and client id; each record's, its place.
        return Hop(self, Recording(
            self.recorder, f"process {self.topic}", SpanKind.CONSUMER,
            self.recorder.child(parent), parent, {
                **self._process, "messaging.destination.partition.id": str(message.partition()),
                "messaging.kafka.offset": message.offset()}, self._batch_link))

    def send_headers(self, parent: Recording, topic: str) -> Headers:
        """A send span for one record the decision writes, and that record's headers."""
        span = Recording(self.recorder, f"send {topic}", SpanKind.PRODUCER,
                         self.recorder.child(parent.context), parent.context,
                         _attributes(topic, "send", "send"))
        self._sends.append(span)
        return span.headers()

    def end(self, error: str | None = None) -> None:
        """The batch committed (``error`` None) or aborted: its open spans end."""
        spans = self._sends if self.span is None else [*self._sends, self.span]
        for span in spans:
            if error is not None:
                span.failed(error)
            span.end()
        self._sends = []


def _trace_id(text: str | None) -> int:
    """A stored trace id (32 hex digits, not all zeros) as a number; 0 for anything else."""
    if text is None or len(text) != 32:
        return 0
    try:
        return int(text, 16)
    except ValueError:
        return 0


class DrawnIds(RandomIdGenerator):
    """Random ids, except a trace id drawn beforehand on this thread (see PaymentTracer)."""

    def __init__(self) -> None:
        self.drawn = threading.local()

    def generate_trace_id(self) -> int:
        trace_id = getattr(self.drawn, "trace_id", None)
        if trace_id is None:
            return super().generate_trace_id()
        self.drawn.trace_id = None
        return trace_id


class PaymentTracer:
    """A process's tracer (one service, or a payment's way in) and its provider."""

    def __init__(self, provider: TracerProvider, processor: SpanProcessor, service: str,
                 ids: DrawnIds, ratio: float) -> None:
        self.provider = provider
        self.service = service
        self.tracer = provider.get_tracer("paysim")
        self.ids = ids
        self.bound = TraceIdRatioBased.get_bound_for_rate(ratio)
        self.recorder = Recorder(processor, provider, ids, self.bound)

    def sending(self, topic: str, payment_id: str, parent: Mapping[str, str] | None = None,
                trace_id: str | None = None) -> contextlib.AbstractContextManager[
                    Sending | Unsampled]:
        """The first span of what enters on ``topic``: a child of ``parent`` (a carrier of
        the W3C headers, such as an HTTP request's) when it holds a valid ``traceparent``,
        sampled as the parent says; else the root of a trace whose id is ``trace_id`` (32 hex
        digits: an operation joins its payment's trace) or a new one, sampled by the ratio."""
        return self._entry(f"send {topic}", SpanKind.PRODUCER, lambda: _attributes(
            topic, "send", "send", **{"paysim.payment_id": payment_id,
                                      "messaging.client.id": self.service}), parent, trace_id)

    def requesting(self, method: str, url: str, host: str, port: int,
                   payment_id: str) -> contextlib.AbstractContextManager[Sending | Unsampled]:
        """A payment's first span around its HTTP request to a system under test (``send
        --target``), OpenTelemetry's HTTP client conventions; ``.headers`` go with it."""
        return self._entry(method, SpanKind.CLIENT, lambda: {
            "http.request.method": method, "url.full": url, "server.address": host,
            "server.port": port, "paysim.payment_id": payment_id}, None, None)

    @contextlib.contextmanager
    def _entry(self, name: str, kind: SpanKind, attributes: Callable[[], dict[str, Any]],
               parent: Mapping[str, str] | None,
               trace_id: str | None) -> Iterator[Sending | Unsampled]:
        """The first span (``attributes`` made only for a sampled one), or an unsampled
        context without the SDK."""
        context = None if parent is None else PROPAGATOR.extract(parent)
        span_context = None if context is None else (
            trace.get_current_span(context).get_span_context())
        if span_context is not None and span_context.is_valid:
            if not span_context.trace_flags.sampled:
                yield Unsampled(span_context.trace_id, self.ids.generate_span_id())
                return
        else:
            context = None
            # The trace id is drawn and tested against the ratio as the SDK's sampler would
            # test it: a payment left out gets its traceparent (sampled flag off) without the
            # SDK, whose non-recording span cost 8 us; a sampled one's span takes the same id.
            drawn = _trace_id(trace_id) or self.ids.generate_trace_id()
            if drawn & TraceIdRatioBased.TRACE_ID_LIMIT >= self.bound:
                yield Unsampled(drawn, self.ids.generate_span_id())
                return
            self.ids.drawn.trace_id = drawn
        span = self.tracer.start_span(name, context=context, kind=kind, attributes=attributes())
        try:
            yield Sending(span)
        except Exception as exc:
            _failed(span, type(exc).__name__)
            raise
        finally:
            span.end()

    def batch(self, topic: str, group: str, client_id: str,
              messages: Sequence[Message]) -> BatchTrace:
        return BatchTrace(self.recorder, topic, group, client_id, messages)

    def flush(self, timeout_s: float = 5.0) -> None:
        self.provider.force_flush(int(timeout_s * 1000))


def tracer_with(processor: SpanProcessor, service: str, instance: int = 0,
                ratio: float = 1.0) -> PaymentTracer:
    """A tracer whose spans go to ``processor``, sampled at ``ratio``."""
    resource = Resource.create({"service.name": f"paysim-{service}",
                                "service.namespace": "paysim",
                                "service.instance.id": f"{service}-{instance}"})
    # Not the global provider: paysim's spans are its own, and tests build several.
    ids = DrawnIds()
    provider = TracerProvider(sampler=sampler(ratio), resource=resource, id_generator=ids)
    provider.add_span_processor(processor)
    return PaymentTracer(provider, processor, service, ids, ratio)


def exporting(service: str, instance: int, ratio: float) -> PaymentTracer:
    """Spans exported in batches over OTLP/HTTP to the endpoint the standard variables name
    (OTEL_EXPORTER_OTLP_ENDPOINT and friends, OTEL_BSP_* for the batching)."""
    from opentelemetry.exporter.otlp.proto.http.trace_exporter import OTLPSpanExporter

    return tracer_with(BatchSpanProcessor(OTLPSpanExporter()), service, instance, ratio)


def in_memory(exporter: SpanExporter, service: str, ratio: float = 1.0) -> PaymentTracer:
    """Spans handed to ``exporter`` as each ends (tests, with the SDK's InMemorySpanExporter)."""
    return tracer_with(SimpleSpanProcessor(exporter), service, ratio=ratio)
