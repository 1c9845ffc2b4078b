"""The HTTP API's Prometheus metrics: requests by route template and status code, and their
latency by route template.

The route label is the template Flask matched (``/payments/<payment_id>``), never the path a
client sent, and ``unmatched`` for a path no route takes: a client cannot add series by
inventing paths or payment ids. Codes are the statuses the API answers with, a short list.
"""

from __future__ import annotations

from prometheus_client import CollectorRegistry, Counter, Histogram

from paysim.infra.prometheus import LATENCY_BUCKETS_S

UNMATCHED = "unmatched"


class HttpMetrics:
    def __init__(self) -> None:
        self.registry = CollectorRegistry()
        self._requests = Counter("paysim_http_requests", "Requests answered, by route template "
                                 "and status code", ["route", "code"], registry=self.registry)
        self._seconds = Histogram("paysim_http_request_seconds", "Time to answer a request, "
                                  "by route template", ["route"], buckets=LATENCY_BUCKETS_S,
                                  registry=self.registry)

    def answered(self, rule: str | None, status: int, seconds: float) -> None:
        """One answer; ``rule`` is the matched route's template, None when none matched."""
        route = rule if rule is not None else UNMATCHED
        self._requests.labels(route, str(status)).inc()
        self._seconds.labels(route).observe(seconds)
