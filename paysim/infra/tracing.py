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
from collections.abc import Mapping
from typing import TYPE_CHECKING, Any

from paysim.infra.config import Settings
from paysim.infra.errors import ConfigError

if TYPE_CHECKING:
    from paysim.infra.otel import PaymentTracer, Sending, Unsampled

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
    """Sending untraced: no headers, nothing to note."""

    headers = None

    def failed(self, reason: str | None) -> None:
        pass


_NOT_SENDING: Any = contextlib.nullcontext(NotSending())


def sending(tracer: PaymentTracer | None, topic: str,
            payment_id: str) -> contextlib.AbstractContextManager[Sending | Unsampled | NotSending]:
    """Where a payment enters: its trace's first span around sending it onto ``topic``;
    the record goes with ``.headers``, and ``.failed(reason)`` notes a failed send. Without a
    tracer, one shared context that does nothing."""
    if tracer is None:
        return _NOT_SENDING
    return tracer.sending(topic, payment_id)
