"""What the live dashboard shows each second, gathered from what paysim already publishes.

Sources, all read-only: the heartbeats in Redis (what `paysim ps` reads: the processes up,
their counts, their metrics URL), each service's Prometheus endpoint (scraped), and the runs
under way (``store.read_run_progress``, written by `paysim send`). `send` itself is not
scraped: its progress record has all the page shows of it (its rate, end-to-end percentiles
and threshold verdicts; a distributed run's merged). Rates and latency
percentiles come from the change between two scrapes of the same endpoint, as Prometheus's
``rate()`` and ``histogram_quantile()`` would compute them; a counter that went down (the
process restarted) counts from zero.
"""

from __future__ import annotations

import math
import threading
import time
import urllib.parse
import urllib.request
from collections import defaultdict
from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass, field

import msgspec
import redis
from prometheus_client.parser import text_string_to_metric_families

from paysim.infra.config import Settings
from paysim.pipeline import store
from paysim.pipeline.registry import GENERATOR

SCRAPE_TIMEOUT_S = 0.5
END_TO_END = "end_to_end"
SENT = "sent"

# A sample: (metric name as exposed, its labels sorted) -> value.
SampleKey = tuple[str, tuple[tuple[str, str], ...]]
Samples = dict[SampleKey, float]


def parse_samples(text: str) -> Samples:
    """Prometheus's text format to samples; what does not parse is left out."""
    samples: Samples = {}
    try:
        for family in text_string_to_metric_families(text):
            for sample in family.samples:
                samples[(sample.name, tuple(sorted(sample.labels.items())))] = sample.value
    except ValueError:
        return samples
    return samples


def scrape(url: str, timeout: float = SCRAPE_TIMEOUT_S) -> Samples | None:
    """One endpoint's samples; None when it does not answer (the process may be stopping)."""
    try:
        with urllib.request.urlopen(url, timeout=timeout) as answer:
            return parse_samples(answer.read().decode("utf-8", "replace"))
    except (OSError, ValueError):
        return None


def increase(current: Samples, previous: Samples) -> Samples:
    """Each sample's increase since ``previous``; a value that went down counts from 0."""
    out: Samples = {}
    for key, value in current.items():
        before = previous.get(key)
        if before is None:
            continue
        out[key] = value - before if value >= before else value
    return out


def quantile(q: float, buckets: Mapping[float, float]) -> float | None:
    """``histogram_quantile``: the q-quantile of cumulative counts by upper bound (inf last),
    interpolated linearly inside its bucket; None with no observations. A quantile in the
    +Inf bucket is the highest finite bound."""
    bounds = sorted(buckets)
    if not bounds:
        return None
    total = buckets[bounds[-1]]
    if total <= 0:
        return None
    rank = q * total
    lower, below = 0.0, 0.0
    for bound in bounds:
        count = buckets[bound]
        if count >= rank:
            if math.isinf(bound):
                return lower
            inside = count - below
            return lower + (bound - lower) * ((rank - below) / inside if inside else 1.0)
        lower, below = bound, count
    return lower


def label(key: SampleKey, name: str) -> str:
    return dict(key[1]).get(name, "")


def histograms(samples: Samples, metric: str, by: str) -> dict[str, dict[float, float]]:
    """A histogram's cumulative buckets, summed by the label ``by``: {value: {le: count}}."""
    out: dict[str, dict[float, float]] = defaultdict(lambda: defaultdict(float))
    for key, value in samples.items():
        if key[0] == f"{metric}_bucket":
            out[label(key, by)][float(label(key, "le"))] += value
    return out


def totals(samples: Samples, metric: str, by: str) -> dict[str, float]:
    """A counter or gauge summed by the label ``by``."""
    out: dict[str, float] = defaultdict(float)
    for key, value in samples.items():
        if key[0] == metric:
            out[label(key, by)] += value
    return out


class Percentiles(msgspec.Struct, frozen=True):
    p50_ms: float | None
    p99_ms: float | None
    count: int | None  # observations in the interval; None when not known (a run's record)


def percentiles(buckets: Mapping[float, float]) -> Percentiles:
    def ms(q: float) -> float | None:
        value = quantile(q, buckets)
        return None if value is None else round(value * 1000, 3)
    count = int(max(buckets.values(), default=0))
    return Percentiles(ms(0.5), ms(0.99), count)


class ServiceRow(msgspec.Struct, frozen=True):
    name: str
    pid: int
    processed: int
    dead_letters: int
    lag: int
    uptime_s: float
    restarts_seen: int  # pid changes seen since the dashboard started watching
    last_seen_s: float
    metrics_url: str


class LagRow(msgspec.Struct, frozen=True):
    service: str
    partition: str
    lag: int


class Snapshot(msgspec.Struct, frozen=True):
    """One second of the dashboard (what the page gets as one server-sent event)."""

    at: float
    interval_s: float | None  # since the previous snapshot; None on the first one
    services: list[ServiceRow]
    throughput: dict[str, float]  # messages or requests per second, by process kind
    latency: dict[str, Percentiles]  # over the last interval, by stage and end_to_end
    outcomes: dict[str, int]  # pipeline messages by outcome, since each process started
    dead_letters: dict[str, int]  # by service, since each process started
    lag: list[LagRow]
    runs: list[store.RunProgress]
    errors: list[str]


@dataclass
class _Endpoint:
    samples: Samples
    at: float


@dataclass
class LiveCollector:
    """Builds a Snapshot on demand, at most one per ``min_interval_s`` (every open page shares
    it); keeps the previous scrape of each endpoint for rates."""

    settings: Settings
    min_interval_s: float = 0.9
    fetch: Callable[[str], Samples | None] = scrape
    # The heartbeats and the runs under way; None: read from the settings' Redis.
    read: Callable[[], tuple[dict[str, store.Heartbeat], list[store.RunProgress]]] | None = None
    _client: redis.Redis | None = None
    _endpoints: dict[str, _Endpoint] = field(default_factory=dict)
    _pids: dict[str, int] = field(default_factory=dict)
    _restarts: dict[str, int] = field(default_factory=lambda: defaultdict(int))
    _last: Snapshot | None = None
    _lock: threading.Lock = field(default_factory=threading.Lock)

    def snapshot(self) -> Snapshot:
        with self._lock:
            if self._last is not None and time.time() - self._last.at < self.min_interval_s:
                return self._last
            self._last = self._collect()
            return self._last

    def close(self) -> None:
        if self._client is not None:
            self._client.close()

    def _redis(self) -> redis.Redis:
        if self._client is None:
            self._client = store.connect(self.settings, timeout=2.0)
        return self._client

    def targets(self) -> list[ScrapeTarget]:
        """Every process serving metrics, in Prometheus's HTTP service discovery format."""
        beats, _ = self.read() if self.read else self._read_redis()
        return scrape_targets(beats.values())

    def _read_redis(self) -> tuple[dict[str, store.Heartbeat], list[store.RunProgress]]:
        client = self._redis()
        return store.read_heartbeats(client), store.read_run_progress(client)

    def _collect(self) -> Snapshot:
        now = time.time()
        errors: list[str] = []
        try:
            beats, runs = self.read() if self.read else self._read_redis()
        except redis.RedisError as exc:
            beats, runs = {}, []
            errors.append(f"Redis at {self.settings.redis_url}: {type(exc).__name__}")
        services = [self._service_row(beat, now) for beat in beats.values()]
        current: Samples = {}
        increases: Samples = {}
        rates: dict[str, float] = defaultdict(float)
        for beat in beats.values():
            if not beat.metrics_url or beat.service == GENERATOR:
                continue
            samples = self.fetch(beat.metrics_url)
            if samples is None:
                errors.append(f"{beat.name}: no answer from {beat.metrics_url}")
                continue
            before = self._endpoints.get(beat.metrics_url)
            self._endpoints[beat.metrics_url] = _Endpoint(samples, now)
            for key, value in samples.items():
                current[key] = current.get(key, 0.0) + value
            if before is None or now <= before.at:
                continue
            grown = increase(samples, before.samples)
            for key, value in grown.items():
                increases[key] = increases.get(key, 0.0) + value
            for kind, amount in throughput_of(grown).items():
                rates[kind] += amount / (now - before.at)
        serving = {beat.metrics_url for beat in beats.values()}
        for url in list(self._endpoints):
            if url not in serving:
                del self._endpoints[url]
        previous = self._last
        return Snapshot(
            at=now, interval_s=round(now - previous.at, 3) if previous else None,
            services=sorted(services, key=lambda row: row.name),
            throughput={kind: round(rate, 1) for kind, rate in
                        sorted({**rates, **run_rates(runs)}.items())},
            latency={**latencies(increases), **run_latency(runs)},
            outcomes={k: int(v) for k, v in sorted(
                totals(current, "paysim_messages_processed_total", "outcome").items())},
            dead_letters={k: int(v) for k, v in sorted(
                totals(current, "paysim_dead_letters_total", "service").items())},
            lag=lag_rows(current), runs=runs, errors=errors)

    def _service_row(self, beat: store.Heartbeat, now: float) -> ServiceRow:
        seen = self._pids.get(beat.name)
        if seen is not None and seen != beat.pid:
            self._restarts[beat.name] += 1
        self._pids[beat.name] = beat.pid
        return ServiceRow(beat.name, beat.pid, beat.processed, beat.dead_letters, beat.lag,
                          round(now - beat.started_at, 1), self._restarts[beat.name],
                          round(now - beat.seen_at, 1), beat.metrics_url)


class ScrapeTarget(msgspec.Struct, frozen=True):
    """One entry of Prometheus's http_sd_configs answer."""

    targets: list[str]
    labels: dict[str, str]


def scrape_targets(beats: Iterable[store.Heartbeat]) -> list[ScrapeTarget]:
    """host:port of each heartbeat's metrics URL (all serve /metrics, Prometheus's default
    path), labelled with the process (``paysim_process``) and its service."""
    out = []
    for beat in sorted(beats, key=lambda b: b.name):
        url = urllib.parse.urlsplit(beat.metrics_url)
        if url.scheme == "http" and url.netloc and url.path == "/metrics":
            out.append(ScrapeTarget([url.netloc], {"paysim_process": beat.name,
                                                   "paysim_service": beat.service}))
    return out


def run_rates(runs: list[store.RunProgress]) -> dict[str, float]:
    """Payments sent per second by the runs still sending (their last whole second)."""
    sending = [run for run in runs if not run.finished]
    return {SENT: sum(run.current_rate for run in sending)} if sending else {}


def run_latency(runs: list[store.RunProgress]) -> dict[str, Percentiles]:
    """End to end over the last 5 s, from the latest run still under way."""
    for run in runs:
        if not run.finished:
            return {END_TO_END: Percentiles(run.rolling_p50_ms, run.rolling_p99_ms, None)}
    return {}


def throughput_of(grown: Samples) -> dict[str, float]:
    """What an endpoint's counters grew by: messages per service, requests answered."""
    out = dict(totals(grown, "paysim_messages_processed_total", "service"))
    http = sum(totals(grown, "paysim_http_requests_total", "route").values())
    if any(key[0] == "paysim_http_requests_total" for key in grown):
        out["http"] = http
    return out


def latencies(grown: Samples) -> dict[str, Percentiles]:
    """p50 and p99 of what each stage's histogram took in since the last scrape."""
    stages = histograms(grown, "paysim_stage_latency_seconds", "stage")
    return {stage: percentiles(buckets) for stage, buckets in sorted(stages.items())}


def lag_rows(samples: Samples) -> list[LagRow]:
    rows = [LagRow(label(key, "service"), label(key, "partition"), int(value))
            for key, value in samples.items() if key[0] == "paysim_consumer_lag"]
    return sorted(rows, key=lambda row: (row.service, int(row.partition or 0)))


def encode(snapshot: Snapshot) -> bytes:
    return msgspec.json.encode(snapshot)
