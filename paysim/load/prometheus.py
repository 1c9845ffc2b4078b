"""`paysim send`'s Prometheus metrics, served while the run lasts.

Nothing is added to the sending path: the run already counts what it sends and drops and keeps
every latency in HdrHistograms (load/metrics.py), and a scrape reads those, turning each
HdrHistogram into Prometheus buckets (to HdrHistogram's 3 significant digits). The run is
listed like a service, with a heartbeat (`send-<pid>`) naming its metrics URL, so that
`paysim ps` shows where to scrape it.
"""

from __future__ import annotations

import contextlib
import os
import threading
import time
from collections.abc import Callable, Iterator, Sequence
from contextlib import contextmanager

import redis
from hdrh.histogram import HdrHistogram
from prometheus_client import CollectorRegistry
from prometheus_client.core import CounterMetricFamily, HistogramMetricFamily
from prometheus_client.registry import Collector

from paysim.infra.config import Settings
from paysim.infra.prometheus import LATENCY_BUCKETS_S, bucket_pairs, serve_metrics
from paysim.load import hdr
from paysim.load.hdr import counts_copy
from paysim.load.metrics import RunMetrics
from paysim.pipeline import store
from paysim.pipeline.registry import GENERATOR, metrics_offset

END_TO_END = "end_to_end"
# How late the scheduler sent payments: from a fraction of a millisecond to the 5 s after
# which a payment is dropped.
SEND_DELAY_BUCKETS_S: tuple[float, ...] = (0.0001, 0.00025, 0.0005, 0.001, 0.0025, 0.005, 0.01,
                                           0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0)


def hdr_buckets(histogram: HdrHistogram, counts: Sequence[int],
                bounds_s: Sequence[float]) -> tuple[list[int], float]:
    """The cumulative count at each bound (seconds) and +Inf, and the sum in seconds, of
    ``counts`` (a copy of ``histogram``'s, in microseconds; ``histogram`` only maps values to
    indexes). A bucket of HdrHistogram counts at or under a bound when its lowest value is,
    so a bound splits HdrHistogram's buckets within their 0.1% width. Each value is taken at
    its bucket's middle, as HdrHistogram's mean does. A millisecond or two per histogram
    (load/hdr.py), not a walk over its 23,552 buckets in Python."""
    counts_at, total_us = hdr.buckets(histogram, counts, bounds_s, 1e6)
    return counts_at, total_us / 1e6


class LoadCollector(Collector):
    """Reads a run's RunMetrics at each scrape; nothing before the run has started."""

    def __init__(self, source: Callable[[], RunMetrics | None]) -> None:
        self.source = source

    def collect(self) -> Iterator[CounterMetricFamily | HistogramMetricFamily]:
        metrics = self.source()
        if metrics is None:
            return
        # Only copies under the lock: the sender records into these histograms.
        with metrics.lock:
            sent, dropped = metrics.sent, metrics.dropped
            histograms = {END_TO_END: metrics.end_to_end, **metrics.stages}
            copies = {stage: counts_copy(h) for stage, h in histograms.items()}
            delay_copy = counts_copy(metrics.send_delay)
        delay = hdr_buckets(metrics.send_delay, delay_copy, SEND_DELAY_BUCKETS_S)
        latencies = {stage: hdr_buckets(histograms[stage], copy, LATENCY_BUCKETS_S)
                     for stage, copy in copies.items()}
        yield CounterMetricFamily("paysim_load_sent", "Payments sent", value=sent)
        yield CounterMetricFamily("paysim_load_dropped", "Payments dropped: more than the "
                                  "allowed send delay late", value=dropped)
        family = HistogramMetricFamily("paysim_load_send_delay_seconds", "How much later than "
                                       "intended each payment was sent")
        family.add_metric([], bucket_pairs(SEND_DELAY_BUCKETS_S, delay[0]), delay[1])
        yield family
        family = HistogramMetricFamily(
            "paysim_load_latency_seconds", "Latency of the run's completed payments: end to "
            "end from the intended send time, and per pipeline stage", labels=["stage"])
        for stage, (counts, total) in latencies.items():
            family.add_metric([stage], bucket_pairs(LATENCY_BUCKETS_S, counts), total)
        yield family


@contextmanager
def exposed(settings: Settings, source: Callable[[], RunMetrics | None]) -> Iterator[str]:
    """Serve the run's metrics and list it by a heartbeat while the body runs; yields the
    metrics URL ("" when metrics are off)."""
    registry = CollectorRegistry()
    registry.register(LoadCollector(source))
    endpoint = serve_metrics(settings, registry, metrics_offset(GENERATOR, 0))
    if endpoint is None:
        yield ""
        return
    stop = threading.Event()
    beat = threading.Thread(target=_heartbeat, args=(settings, source, endpoint.url, stop),
                            name="send-heartbeat", daemon=True)
    beat.start()
    try:
        yield endpoint.url
    finally:
        stop.set()
        beat.join(5)
        endpoint.close()


def _heartbeat(settings: Settings, source: Callable[[], RunMetrics | None], url: str,
               stop: threading.Event) -> None:
    client = store.connect(settings)
    started = time.time()
    try:
        while True:
            metrics = source()
            with contextlib.suppress(redis.RedisError):  # the run reports Redis failing
                store.write_heartbeat(client, GENERATOR, os.getpid(),
                                      processed=metrics.sent if metrics else 0, dead_letters=0,
                                      aborted_batches=0, started_at=started, lag=0,
                                      metrics_url=url)
            if stop.wait(store.HEARTBEAT_EVERY_S):
                break
    finally:
        store.clear_heartbeat(client, GENERATOR, os.getpid())
        client.close()
