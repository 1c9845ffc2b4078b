"""Prometheus metrics without a broker: the batch histogram against prometheus_client's own,
HdrHistogram to buckets, the outcome and webhook words, the loop's counts on fakes, the HTTP
API's route labels, the settings, and the endpoint (served on 127.0.0.1 and scraped)."""

from __future__ import annotations

import random
import socket
import urllib.request
from collections.abc import Iterator

import pytest
from hdrh.histogram import HdrHistogram
from prometheus_client import CollectorRegistry, Histogram, generate_latest
from prometheus_client.parser import text_string_to_metric_families

from paysim.infra.config import load_settings
from paysim.infra.errors import ConfigError
from paysim.infra.prometheus import LATENCY_BUCKETS_S, BatchHistogram, serve_metrics
from paysim.load import hdr
from paysim.load.metrics import MAX_LATENCY_US, RunMetrics, new_histogram
from paysim.load.prometheus import (
    SEND_DELAY_BUCKETS_S,
    LoadCollector,
    counts_copy,
    hdr_buckets,
)
from paysim.pipeline import registry
from paysim.pipeline.prometheus import PipelineMetrics, stage_latency_counts
from paysim.pipeline.registry import metrics_offset
from paysim.pipeline.store import DoneEntry
from paysim.pipeline.webhook_dispatch import Attempt, delivery_result
from tests.unit.fakes import FakeMessage, pure_settings
from tests.unit.test_fuzz_http import CheckedHealth


def samples(registry_: CollectorRegistry) -> dict[tuple[str, tuple[tuple[str, str], ...]],
                                                   float]:
    """Every sample of a registry's exposition, parsed back as a scraper reads it."""
    text = generate_latest(registry_).decode()
    return {(s.name, tuple(sorted(s.labels.items()))): s.value
            for family in text_string_to_metric_families(text) for s in family.samples}


def value(registry_: CollectorRegistry, name: str, **labels: str) -> float:
    return samples(registry_).get((name, tuple(sorted(labels.items()))), 0.0)


# ------------------------------------------------------------------------ histograms


def test_a_batch_histogram_exposes_what_prometheus_clients_histogram_would() -> None:
    values = [0.0005, 0.001, 0.004, 0.2, 0.2, 3.0, 120.0, 0.0]
    bounds = (0.001, 0.01, 0.25, 5.0)
    ours = CollectorRegistry()
    batch = BatchHistogram("lat_seconds", "latency", {"stage": "x"}, bounds)
    ours.register(batch)
    batch.observe_many(values[:3])
    batch.observe_many(values[3:])
    theirs = CollectorRegistry()
    reference = Histogram("lat_seconds", "latency", ["stage"], buckets=bounds, registry=theirs)
    for v in values:
        reference.labels("x").observe(v)
    wanted = {key: v for key, v in samples(theirs).items() if not key[0].endswith("_created")}
    assert samples(ours) == wanted
    assert value(ours, "lat_seconds_bucket", stage="x", le="0.001") == 3  # le is inclusive


def test_hdr_buckets_count_each_value_at_or_under_its_bound() -> None:
    histogram = HdrHistogram(1, 3_600_000_000, 3)
    for us in (500, 1000, 1000, 20_000, 7_000_000):
        histogram.record_value(us)
    counts, total = hdr_buckets(histogram, counts_copy(histogram), (0.001, 0.01, 5.0))
    assert counts == [3, 3, 4, 5]  # <= 1 ms, <= 10 ms, <= 5 s, +Inf
    assert total == pytest.approx(7.0225, rel=1e-3)
    assert total == pytest.approx(histogram.get_mean_value() * 5 / 1e6)
    empty = HdrHistogram(1, 3_600_000_000, 3)
    assert hdr_buckets(empty, counts_copy(empty), (0.001,)) == ([0, 0], 0.0)


def walked_buckets(histogram: HdrHistogram,
                   bounds_s: tuple[float, ...]) -> tuple[list[int], float]:
    """hdr_buckets the slow and obvious way (as it was once done): HdrHistogram's own
    iterator over the buckets recorded into, each value at its bucket's middle."""
    ends = [histogram.get_counts_array_index(int(bound * 1e6)) for bound in bounds_s]
    cumulative = [0] * (len(bounds_s) + 1)
    total_us = 0.0
    for item in histogram.get_recorded_iterator():
        value = item.value_iterated_to
        index = histogram.get_counts_array_index(value)
        for position, end in enumerate(ends):
            if index <= end:
                cumulative[position] += item.count_at_value_iterated_to
        cumulative[-1] += item.count_at_value_iterated_to
        total_us += item.count_at_value_iterated_to * (
            histogram.get_lowest_equivalent_value(value)
            + histogram.get_highest_equivalent_value(value)) / 2
    return cumulative, total_us / 1e6


@pytest.mark.parametrize("seed", [1, 2, 3])
def test_hdr_buckets_give_exactly_what_walking_the_histogram_gives(seed: int) -> None:
    """The same counts and the same float sum (to the last bit) as the walk, on values spread
    from a microsecond to the histogram's hour, so every bound and bucket width is crossed."""
    rng = random.Random(seed)
    histogram = HdrHistogram(1, 3_600_000_000, 3)
    for _ in range(3000):
        histogram.record_value(min(3_600_000_000, max(1, int(rng.lognormvariate(8, 3)))),
                               rng.choice((1, 1, 2, 7)))
    bounds = tuple(sorted(rng.sample(LATENCY_BUCKETS_S + SEND_DELAY_BUCKETS_S, 12)))
    assert hdr_buckets(histogram, counts_copy(histogram), bounds) == walked_buckets(histogram,
                                                                                    bounds)


@pytest.mark.parametrize("seed", [1, 2])
def test_hdr_figures_are_hdrhs_own_to_the_last_bit(seed: int) -> None:
    """load/hdr.py's mean and percentiles (which latency_block and the live verdicts read)
    against hdrh's walks: the same numbers, including the edges (0th, 100th, one value)."""
    rng = random.Random(seed)
    histogram = HdrHistogram(1, 3_600_000_000, 3)
    for _ in range(2000):
        histogram.record_value(min(3_600_000_000, max(1, int(rng.lognormvariate(8, 3)))),
                               rng.choice((1, 3)))
    percentiles = (0.0, 50.0, 90.0, 99.0, 99.9, 100.0)
    assert hdr.values_at_percentiles(histogram, percentiles) == [
        histogram.get_value_at_percentile(p) for p in percentiles]
    assert hdr.mean(histogram) == histogram.get_mean_value()
    one = HdrHistogram(1, 3_600_000_000, 3)
    one.record_value(123_456)
    assert hdr.values_at_percentiles(one, (0.0, 99.0)) == [
        one.get_value_at_percentile(0.0), one.get_value_at_percentile(99.0)]
    assert hdr.mean(one) == one.get_mean_value()
    empty = HdrHistogram(1, 3_600_000_000, 3)
    assert hdr.mean(empty) == 0.0 and hdr.values_at_percentiles(empty, (50.0,)) == [0]


def test_the_load_collector_reads_the_runs_counts_and_latencies() -> None:
    started = 1_000_000_000
    metrics = RunMetrics(started)
    metrics.record_send(started, started + 300)
    metrics.record_send(started, started + 100)
    metrics.record_drop()
    stages = {"requested": started, "authorized": started + 2000,
              "processed": started + 5000, "notified": started + 9000}
    metrics.record_outcome(DoneEntry("p1", "approved", "00", 100, "USD", 1, stages), started)
    registry_ = CollectorRegistry()
    registry_.register(LoadCollector(lambda: metrics))
    assert value(registry_, "paysim_load_sent_total") == 2
    assert value(registry_, "paysim_load_dropped_total") == 1
    assert value(registry_, "paysim_load_send_delay_seconds_count") == 2
    assert value(registry_, "paysim_load_send_delay_seconds_bucket", le="0.00025") == 1
    assert value(registry_, "paysim_load_latency_seconds_count", stage="end_to_end") == 1
    assert value(registry_, "paysim_load_latency_seconds_bucket", stage="end_to_end",
                 le="0.01") == 1
    for name in registry.PIPELINE_NAMES:
        if registry.by_name(name).stamps:
            assert value(registry_, "paysim_load_latency_seconds_count", stage=name) == 1
    empty = CollectorRegistry()
    empty.register(LoadCollector(lambda: None))
    assert samples(empty) == {}


def test_the_rolling_percentiles_are_hdrhs_walk_over_the_windows_seconds() -> None:
    """rolling_ms (the live display's, each tick) against hdrh's get_value_at_percentile on
    the window's seconds merged by hand: the same values; None before any outcome."""
    started = 1_000_000_000
    metrics = RunMetrics(started)
    assert metrics.rolling_ms(started + 3_000_000, (50.0, 99.0)) == [None, None]
    rng = random.Random(5)
    for n in range(3000):
        notified = started + rng.randrange(8_000_000)
        latency = int(rng.lognormvariate(9, 1.5)) + 1
        stages = {"requested": notified - latency, "notified": notified}
        metrics.record_outcome(DoneEntry(f"p{n}", "approved", "00", 1, "USD", n, stages),
                               notified - latency)
    now = started + 7_500_000
    window = new_histogram()
    for second in range(2, 8):  # the last five whole seconds and the current one
        if second in metrics.seconds and second > 7 - 5:
            window.add(metrics.seconds[second].latency)
    percentiles = (0.0, 50.0, 99.0, 100.0)
    assert window.get_total_count() > 1000
    assert metrics.rolling_ms(now, percentiles) == [
        window.get_value_at_percentile(p) / 1000 for p in percentiles]


# ------------------------------------------------------------------------ words and labels


def test_each_webhook_end_counts_under_its_word() -> None:
    assert delivery_result("p", Attempt(True, 200, None)) == "delivered"
    assert delivery_result("p", Attempt(False, 500, "HTTP 500")) == "failed"
    assert delivery_result("p", Attempt(False, None, "no", refused=True)) == "refused"
    assert delivery_result(None, Attempt(False, None, "malformed entry")) == "malformed"


def test_stage_latency_runs_from_the_records_timestamp_and_skips_records_without_one() -> None:
    records = [FakeMessage("t", 0, 0, b"", at_ms=1_000), FakeMessage("t", 0, 1, b""),
               FakeMessage("t", 0, 2, b"", at_ms=3_000)]
    metrics = PipelineMetrics("notifier")
    histogram = metrics._stage
    counts, total = stage_latency_counts(histogram, records, 2.5)
    assert total == 1500  # ms; the record from "the future" counts 0
    histogram.add_batch(counts, total)
    r = metrics.registry
    assert value(r, "paysim_stage_latency_seconds_sum", stage="notifier") == 1.5
    assert value(r, "paysim_stage_latency_seconds_count", stage="notifier") == 2
    assert value(r, "paysim_stage_latency_seconds_bucket", stage="notifier", le="0.001") == 1
    assert value(r, "paysim_stage_latency_seconds_bucket", stage="notifier", le="1.0") == 1
    assert value(r, "paysim_stage_latency_seconds_bucket", stage="notifier", le="2.5") == 2


def test_consumer_lag_follows_the_assigned_partitions() -> None:
    metrics = PipelineMetrics("processor")
    metrics.set_lag({0: 5, 3: 0})
    assert value(metrics.registry, "paysim_consumer_lag", service="processor",
                 partition="0") == 5
    metrics.set_lag({3: 7})
    assert ("paysim_consumer_lag", (("partition", "0"), ("service", "processor"))) not in \
        samples(metrics.registry)
    assert value(metrics.registry, "paysim_consumer_lag", service="processor",
                 partition="3") == 7


@pytest.fixture
def http_app() -> Iterator[tuple[object, CollectorRegistry]]:
    from paysim.edge.app import create_app
    from paysim.edge.prometheus import HttpMetrics
    from tests.unit.fakes import KEYS, AckingProducer, FakeRedis

    metrics = HttpMetrics()
    app = create_app(pure_settings(), KEYS, AckingProducer(None), FakeRedis(),  # type: ignore[arg-type]
                     CheckedHealth(), metrics)  # type: ignore[arg-type]
    yield app.test_client(), metrics.registry


def test_http_requests_are_labelled_by_route_template_never_by_path(http_app) -> None:  # type: ignore[no-untyped-def]
    client, r = http_app
    for payment in ("a", "b", "c"):
        client.get(f"/payments/{payment}")
    client.get("/no/such/path/4242")
    client.get("/healthz")
    counted = {labels: v for (name, labels), v in samples(r).items()
               if name == "paysim_http_requests_total"}
    assert counted == {
        (("code", "404"), ("route", "/payments/<payment_id>")): 3,
        (("code", "404"), ("route", "unmatched")): 1,
        (("code", "200"), ("route", "/healthz")): 1,
    }
    assert value(r, "paysim_http_request_seconds_count", route="/payments/<payment_id>") == 3


# ------------------------------------------------------------------------ settings, serving


def test_metrics_settings_parse_and_refuse() -> None:
    defaults = load_settings(env={}).metrics
    assert (defaults.enabled, defaults.host, defaults.port) == (True, "127.0.0.1", 0)
    off = load_settings(env={"PAYSIM_METRICS_ENABLED": "false", "PAYSIM_METRICS_PORT": "9400"})
    assert (off.metrics.enabled, off.metrics.port) == (False, 9400)
    with pytest.raises(ConfigError, match="PAYSIM_METRICS_ENABLED: expected true or false"):
        load_settings(env={"PAYSIM_METRICS_ENABLED": "maybe"})


def test_each_process_has_its_own_place_in_the_fixed_layout() -> None:
    offsets = [metrics_offset(name, 0) for name in registry.METRICS_PLACES]
    assert len(set(offsets)) == len(offsets)
    assert metrics_offset(registry.PROCESSOR.name, 2) == metrics_offset(
        registry.PROCESSOR.name, 0) + 2


def scrape(url: str) -> str:
    with urllib.request.urlopen(url, timeout=5) as answer:
        return answer.read().decode()


def test_metrics_are_served_on_a_free_port_or_not_at_all() -> None:
    metrics = PipelineMetrics("processor")
    assert serve_metrics(pure_settings({"metrics.enabled": False}), metrics.registry, 0) is None
    endpoint = serve_metrics(pure_settings(), metrics.registry, 0)
    assert endpoint is not None
    try:
        assert endpoint.url.startswith("http://127.0.0.1:") and endpoint.url.endswith("/metrics")
        text = scrape(endpoint.url)
        assert 'paysim_messages_processed_total{outcome="ok",service="processor"} 0.0' in text
        assert "paysim_webhook_deliveries" not in text  # the notifier's alone
    finally:
        endpoint.close()


def test_a_taken_fixed_port_falls_back_to_a_free_one() -> None:
    with socket.socket() as holder:
        holder.bind(("127.0.0.1", 0))
        holder.listen()
        taken = holder.getsockname()[1]
        metrics = PipelineMetrics("notifier")
        metrics.track_webhooks()
        endpoint = serve_metrics(pure_settings({"metrics.port": taken}), metrics.registry, 0)
        assert endpoint is not None
        try:
            assert not endpoint.url.endswith(f":{taken}/metrics")
            assert "paysim_webhook_deliveries_total" in scrape(endpoint.url)
        finally:
            endpoint.close()


def test_the_recorder_records_what_hdrh_records_to_the_last_bit() -> None:
    """Recorder.record against HdrHistogram.record_value: the same counts, total, min and
    max, so the same percentiles and the same encoded histogram in report.json."""
    rng = random.Random(16)
    edges = [0, 1, 2, 2047, 2048, 2049, 4095, 4096, 65_535, 65_536, 1 << 31,
             MAX_LATENCY_US - 1, MAX_LATENCY_US, MAX_LATENCY_US * 4]  # the last: out of range
    values = edges + [int(rng.lognormvariate(9, 2.5)) for _ in range(20_000)]
    theirs, ours, twin = new_histogram(), new_histogram(), new_histogram()
    recorder = hdr.Recorder(new_histogram())
    for value in values:
        theirs.record_value(value)
        recorder.record(value, ours, twin)
    for histogram in (ours, twin):
        assert list(histogram.counts) == list(theirs.counts)
        assert (histogram.total_count, histogram.min_value, histogram.max_value) == (
            theirs.total_count, theirs.min_value, theirs.max_value)
        assert histogram.encode() == theirs.encode()
    assert theirs.total_count == len(values) - 1  # the value past the range was left out
