"""Whether this process traces, and the one call that opens its tracer.

Tracing is on only when the standard ``OTEL_EXPORTER_OTLP_ENDPOINT`` (or
``OTEL_EXPORTER_OTLP_TRACES_ENDPOINT``) is set and ``OTEL_SDK_DISABLED`` is not true. Off, it
costs nothing: this module imports no OpenTelemetry package, ``open_tracer`` answers None, and
the callers (the service loop, the edge, the Kafka ingress) keep their untraced path; the SDK
lives in paysim.infra.otel, imported only when tracing is on.
"""

from __future__ import annotations

import contextlib
import importlib.util
import os
import threading
from collections.abc import Iterator, Mapping
from typing import TYPE_CHECKING, Any

from paysim.infra.config import Settings
from paysim.infra.errors import ConfigError

if TYPE_CHECKING:
    from paysim.infra.otel import PaymentTracer, Sending, Unsampled

TRACEPARENT = "traceparent"  # W3C Trace Context's request (and record) header
TRACE_HEADERS = (TRACEPARENT, "tracestate")
# The W3C Trace Context (level 2) answer header naming the span a request's work started.
TRACERESPONSE = "traceresponse"
ENDPOINT_VARS = ("OTEL_EXPORTER_OTLP_TRACES_ENDPOINT", "OTEL_EXPORTER_OTLP_ENDPOINT")
SAMPLER_ARG = "OTEL_TRACES_SAMPLER_ARG"

_lock = threading.Lock()
_tracers: dict[tuple[str, int, float], PaymentTracer] = {}


def configured(env: Mapping[str, str] | None = None) -> bool:
    """An OTLP endpoint is set, and the SDK is not disabled."""
    env = os.environ if env is None else env
    if env.get("OTEL_SDK_DISABLED", "").strip().lower() == "true":
        return False
    return any(env.get(name, "").strip() for name in ENDPOINT_VARS)


def sample_ratio(settings: Settings, env: Mapping[str, str] | None = None) -> float:
    """tracing.sample_ratio; unset, the standard OTEL_TRACES_SAMPLER_ARG; else 1."""
    if settings.tracing.sample_ratio is not None:
        return settings.tracing.sample_ratio
    env = os.environ if env is None else env
    raw = env.get(SAMPLER_ARG, "").strip()
    if not raw:
        return 1.0
    try:
        ratio = float(raw)
    except ValueError:
        ratio = -1.0
    if not 0 <= ratio <= 1:  # nan fails this too
        raise ConfigError(f"{SAMPLER_ARG}: expected a ratio from 0 to 1, got {raw!r}")
    return ratio


# What tracing needs (the `traces` extra): looked for without importing it.
NEEDED = ("opentelemetry.sdk.trace", "opentelemetry.exporter.otlp.proto.http.trace_exporter")


def check(settings: Settings, env: Mapping[str, str] | None = None) -> None:
    """When tracing is on: its sample ratio readable and its packages installed, else one
    ConfigError line (run-all checks this before starting any service)."""
    if not configured(env):
        return
    sample_ratio(settings, env)
    require_installed()


def require_installed() -> None:
    """The `traces` extra's packages are there, else one ConfigError line."""
    for module in NEEDED:
        try:
            found = importlib.util.find_spec(module) is not None
        except ModuleNotFoundError:
            found = False
        if not found:
            raise ConfigError("tracing (OTEL_EXPORTER_OTLP_ENDPOINT) needs paysim's traces "
                              "extra: pip install 'paysim[traces]'")


def open_tracer(settings: Settings, service: str, instance: int = 0,
                env: Mapping[str, str] | None = None) -> PaymentTracer | None:
    """This process's tracer exporting over OTLP/HTTP, or None when tracing is off.

    One per process and service: the exporter's queue and its flush at exit are the process's
    (a benchmark opens many ingresses in one process)."""
    if not configured(env):
        return None
    check(settings, env)
    ratio = sample_ratio(settings, env)
    from paysim.infra import otel  # only now: the SDK is not imported when tracing is off

    with _lock:
        key = (service, instance, ratio)
        if key not in _tracers:
            _tracers[key] = otel.exporting(service, instance, ratio)
        return _tracers[key]


class NotSending:
    """Sending untraced: no headers, nothing to note, nothing to answer."""

    headers = None
    traceresponse = None

    def failed(self, reason: str | None) -> None:
        pass


_NOT_SENDING: Any = contextlib.nullcontext(NotSending())


def sending(tracer: PaymentTracer | None, topic: str, payment_id: str,
            parent: Mapping[str, str] | None = None, trace_id: str | None = None,
            ) -> contextlib.AbstractContextManager[Sending | Unsampled | NotSending]:
    """Where a payment (or an operation on one) enters: its trace's first span around sending
    it onto ``topic``, continuing ``parent``'s W3C ``traceparent`` when it holds a valid one
    (else the trace ``trace_id`` names, else a new trace); the record goes with ``.headers``,
    ``.failed(reason)`` notes a failed send, and ``.traceresponse`` names the span for the
    caller. Without a tracer, one shared context that does nothing."""
    if tracer is None:
        return _NOT_SENDING
    return tracer.sending(topic, payment_id, parent, trace_id)


def requesting(tracer: PaymentTracer | None, method: str, url: str, host: str, port: int,
               payment_id: str) -> contextlib.AbstractContextManager[
                   Sending | Unsampled | NotSending]:
    """A payment's trace's first span around its HTTP request to a system under test; the
    request goes with ``.headers`` (the W3C ``traceparent``). Without a tracer, nothing."""
    if tracer is None:
        return _NOT_SENDING
    return tracer.requesting(method, url, host, port, payment_id)


class RequestTrace:
    """An HTTP request's way into tracing: what it sends continues the request's own
    ``traceparent``, and ``response`` keeps the ``traceresponse`` to answer with (None when
    untraced, or nothing was sent)."""

    def __init__(self, tracer: PaymentTracer | None, headers: Mapping[str, str]) -> None:
        self.tracer, self.headers = tracer, headers
        self.response: str | None = None

    def sending(self, topic: str, payment_id: str, trace_id: str | None = None,
                ) -> contextlib.AbstractContextManager[Sending | Unsampled | NotSending]:
        if self.tracer is None:
            return _NOT_SENDING
        return self._sending(self.tracer, topic, payment_id, trace_id)

    @contextlib.contextmanager
    def _sending(self, tracer: PaymentTracer, topic: str, payment_id: str,
                 trace_id: str | None) -> Iterator[Sending | Unsampled]:
        with tracer.sending(topic, payment_id, self.headers, trace_id) as trace:
            self.response = trace.traceresponse
            yield trace
