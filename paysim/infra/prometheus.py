"""Prometheus metrics as each paysim process serves them: its own registry on its own port.

Every process (a service instance, the HTTP API, `paysim send`) has a registry of its own and
serves it on ``metrics.host``: on a free port the kernel picks (``metrics.port`` 0, the
default), or on the base port plus the process's offset (``metrics.port`` N; see
``registry.metrics_offset``). A fixed port that is taken (a second `send`, a port some other
program holds) falls back to a free one, with a warning: the port actually served is what the
heartbeat reports, so `paysim ps` always shows the right URL.

``BatchHistogram`` exists for the hot path: it counts a whole batch's values into buckets on
the caller's thread without any lock, then adds them under one lock, instead of one locked
``Histogram.observe`` per message.
"""

from __future__ import annotations

import bisect
import logging
import threading
from collections.abc import Iterable, Iterator, Sequence
from dataclasses import dataclass, replace
from wsgiref.simple_server import WSGIServer

from prometheus_client import CollectorRegistry, start_wsgi_server
from prometheus_client.core import HistogramMetricFamily
from prometheus_client.registry import Collector

from paysim.infra.config import Settings
from paysim.infra.errors import PaysimError

log = logging.getLogger("paysim.metrics")

# Seconds, from a few milliseconds (one idle hop) to a minute (a backlog after a fault).
LATENCY_BUCKETS_S: tuple[float, ...] = (0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5,
                                        1.0, 2.5, 5.0, 10.0, 30.0, 60.0)


@dataclass
class MetricsEndpoint:
    """A registry being served, and where."""

    url: str
    server: WSGIServer
    thread: threading.Thread

    def close(self) -> None:
        self.server.shutdown()
        self.server.server_close()
        self.thread.join(5)


def serve_metrics(settings: Settings, registry: CollectorRegistry,
                  offset: int) -> MetricsEndpoint | None:
    """Serve ``registry`` at /metrics; None when metrics are off.

    ``offset`` places the process in the fixed layout when ``metrics.port`` is set."""
    config = settings.metrics
    if not config.enabled:
        return None
    port = config.port + offset if config.port else 0
    if port > 65535:
        log.warning("metrics port %d is past 65535: serving on a free port instead", port)
        port = 0
    try:
        server, thread = _start(config.host, port, registry)
    except OSError as exc:
        if port == 0:
            raise PaysimError(f"metrics cannot listen on {config.host}: "
                              f"{exc.strerror or exc}") from None
        log.warning("metrics port %d is taken (%s): serving on a free port instead", port,
                    exc.strerror or exc)
        return serve_metrics(replace(settings, metrics=replace(config, port=0)), registry, 0)
    return MetricsEndpoint(_url(config.host, server.server_port), server, thread)


def _start(host: str, port: int, registry: CollectorRegistry) -> tuple[WSGIServer,
                                                                      threading.Thread]:
    server, thread = start_wsgi_server(port, addr=host, registry=registry)
    thread.name = "metrics"
    return server, thread


def _url(host: str, port: int) -> str:
    shown = f"[{host}]" if ":" in host else host
    return f"http://{shown}:{port}/metrics"


class BatchHistogram(Collector):
    """A histogram with fixed labels that takes a batch of values at a time.

    ``add_batch`` takes counts per bucket (bisect_left over ``bounds``) and their sum, made on
    the caller's thread without any lock, and adds them under one lock; a scrape reads them
    under the same lock. Values may be kept in a unit of their own (milliseconds, say: the
    unit Kafka's timestamps come in) with ``scale`` the number of them in one exposed unit;
    ``bounds`` are in that unit too."""

    def __init__(self, name: str, documentation: str, labels: dict[str, str],
                 buckets: Sequence[float] = LATENCY_BUCKETS_S, scale: float = 1.0) -> None:
        self.name, self.documentation = name, documentation
        self.labels = labels
        self.scale = scale
        self.exposed_bounds = tuple(sorted(buckets))
        self.bounds = tuple(bound * scale for bound in self.exposed_bounds)
        self._counts = [0] * (len(self.bounds) + 1)  # the last one: above every bound
        self._sum = 0.0
        self._lock = threading.Lock()

    def new_counts(self) -> list[int]:
        return [0] * len(self._counts)

    def observe_many(self, values: Iterable[float]) -> None:
        counts, total, bounds = self.new_counts(), 0.0, self.bounds
        for value in values:
            # bisect_left: a value equal to a bound belongs to that bound's bucket (le).
            counts[bisect.bisect_left(bounds, value)] += 1
            total += value
        self.add_batch(counts, total)

    def add_batch(self, counts: Sequence[int], total: float) -> None:
        with self._lock:
            for index, count in enumerate(counts):
                self._counts[index] += count
            self._sum += total

    def snapshot(self) -> tuple[list[int], float]:
        """The cumulative count at each bound and +Inf, and the sum, in exposed units."""
        with self._lock:
            counts, total = list(self._counts), self._sum
        return cumulative(counts), total / self.scale

    def collect(self) -> Iterator[HistogramMetricFamily]:
        cumulative_counts, total = self.snapshot()
        family = HistogramMetricFamily(self.name, self.documentation,
                                       labels=list(self.labels))
        family.add_metric(list(self.labels.values()),
                          bucket_pairs(self.exposed_bounds, cumulative_counts), total)
        yield family


def cumulative(counts: Sequence[int]) -> list[int]:
    out, running = [], 0
    for count in counts:
        running += count
        out.append(running)
    return out


def bucket_pairs(bounds: Sequence[float],
                 cumulative_counts: Sequence[int]) -> list[tuple[str, float]]:
    """Prometheus's (le, cumulative count) pairs, +Inf last."""
    names = [repr(float(bound)) for bound in bounds] + ["+Inf"]
    return list(zip(names, cumulative_counts, strict=True))
