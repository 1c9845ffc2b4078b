"""A pipeline service's Prometheus metrics, updated by the loop once per batch.

Every label value comes from a fixed set: the service's name (the registry's), the outcome
words below, the webhook results below, a partition number of the service's own topic. Nothing
a client sends (a merchant, a URL) ever becomes a label, so the number of series stays small
whatever the traffic.
"""

from __future__ import annotations

import time
from bisect import bisect_left
from collections.abc import Mapping, Sequence
from typing import Any

from confluent_kafka import TIMESTAMP_NOT_AVAILABLE, Message
from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram

from paysim.infra.prometheus import LATENCY_BUCKETS_S, BatchHistogram

# What became of each consumed message: its outputs produced, or a dead letter because it
# did not decode, a service rejected it, or deciding it raised.
OK, UNDECODABLE, REJECTED, ERROR = "ok", "undecodable", "rejected", "error"
OUTCOMES: tuple[str, ...] = (OK, UNDECODABLE, REJECTED, ERROR)
DEAD_LETTER_OUTCOMES = frozenset(OUTCOMES) - {OK}

# A queued webhook's end: delivered (2xx), failed after its attempts, refused by the callback
# policy before any attempt, or a malformed queue entry.
DELIVERED, FAILED, REFUSED, MALFORMED = "delivered", "failed", "refused", "malformed"
WEBHOOK_RESULTS: tuple[str, ...] = (DELIVERED, FAILED, REFUSED, MALFORMED)

BATCH_SIZE_BUCKETS = (1, 5, 10, 25, 50, 100, 250, 500, 1000, 2500, 5000)
BATCH_SECONDS_BUCKETS = (0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0)


class PipelineMetrics:
    """One service process's metrics, in a registry of its own."""

    def __init__(self, service: str) -> None:
        self.service = service
        self.registry = CollectorRegistry()
        self.url = ""  # where they are served, once they are (the heartbeat reports it)
        r = self.registry
        processed = Counter("paysim_messages_processed", "Messages consumed and committed, "
                            "by what became of them", ["service", "outcome"], registry=r)
        self._processed = {outcome: processed.labels(service, outcome) for outcome in OUTCOMES}
        self._dead_letters = Counter("paysim_dead_letters", "Messages sent to the dead-letter "
                                     "topic", ["service"], registry=r).labels(service)
        self._aborted = Counter("paysim_transactions_aborted", "Batches whose transaction was "
                                "aborted or abandoned (each is retried)", ["service"],
                                registry=r).labels(service)
        self._batch_size = Histogram("paysim_batch_size", "Messages per committed batch",
                                     ["service"], buckets=BATCH_SIZE_BUCKETS,
                                     registry=r).labels(service)
        self._batch_seconds = Histogram("paysim_batch_seconds", "Time from fetching a batch to "
                                        "its commit", ["service"],
                                        buckets=BATCH_SECONDS_BUCKETS,
                                        registry=r).labels(service)
        self._stage = BatchHistogram(
            "paysim_stage_latency_seconds", "Time from a record's write to the input topic to "
            "the commit of the batch that took it (the stage, with its queueing)",
            {"stage": service}, LATENCY_BUCKETS_S, scale=1000.0)  # kept in ms
        r.register(self._stage)
        self._lag = Gauge("paysim_consumer_lag", "Records on the input topic not yet consumed, "
                          "per assigned partition", ["service", "partition"], registry=r)
        self._lag_partitions: set[int] = set()
        self._webhooks: dict[str, Any] = {}  # only where webhooks are delivered

    def batch(self, messages: Sequence[Message], outcomes: Mapping[str, int],
              started: float) -> None:
        """A committed batch: its size, its time since ``started`` (monotonic), each message's
        outcome count and its stage latency (from the record's Kafka timestamp)."""
        self._batch_size.observe(len(messages))
        self._batch_seconds.observe(time.monotonic() - started)
        for outcome, count in outcomes.items():
            if count:
                self._processed[outcome].inc(count)
        dead = sum(count for outcome, count in outcomes.items()
                   if outcome in DEAD_LETTER_OUTCOMES)
        if dead:
            self._dead_letters.inc(dead)
        counts, total = stage_latency_counts(self._stage, messages, time.time())
        self._stage.add_batch(counts, total)

    def aborted(self) -> None:
        self._aborted.inc()

    def set_lag(self, lags: Mapping[int, int]) -> None:
        """The lag of each assigned partition; partitions no longer assigned are dropped."""
        for partition, lag in lags.items():
            self._lag.labels(self.service, str(partition)).set(lag)
        for gone in self._lag_partitions - lags.keys():
            self._lag.remove(self.service, str(gone))
        self._lag_partitions = set(lags)

    def track_webhooks(self) -> None:
        """Add the webhook counter (by the process that delivers them, once)."""
        if not self._webhooks:
            webhooks = Counter("paysim_webhook_deliveries", "Webhooks finished, by result",
                               ["result"], registry=self.registry)
            self._webhooks = {result: webhooks.labels(result) for result in WEBHOOK_RESULTS}

    def webhook(self, result: str) -> None:
        self._webhooks[result].inc()


def stage_latency_counts(histogram: BatchHistogram, messages: Sequence[Message],
                         now_s: float) -> tuple[list[int], float]:
    """Each record's time from its Kafka timestamp to ``now_s``, in milliseconds, counted into
    ``histogram``'s buckets: the counts and their sum. Records without a timestamp are left
    out; a clock step that makes one negative counts as 0.

    One pass, in Kafka's own unit: this runs for every message (see docs/performance.md)."""
    counts, total = histogram.new_counts(), 0
    now_ms = int(now_s * 1000)
    bounds = histogram.bounds
    for message in messages:
        kind, at_ms = message.timestamp()
        if kind == TIMESTAMP_NOT_AVAILABLE or at_ms <= 0:
            continue
        waited = now_ms - at_ms
        if waited < 0:
            waited = 0
        counts[bisect_left(bounds, waited)] += 1
        total += waited
    return counts, total
