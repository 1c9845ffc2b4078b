"""The dashboard's core without a stack: Prometheus samples to rates and percentiles, a
snapshot from heartbeats and scrapes, the WSGI app's routes, and the past runs."""

from __future__ import annotations

import json
import re
import threading
import time
import urllib.request
from collections.abc import Iterable
from pathlib import Path
from typing import Any

import pytest

from paysim.dashboard import app as app_module
from paysim.dashboard.app import DashboardApp, page_html
from paysim.dashboard.live import (
    LiveCollector,
    Percentiles,
    increase,
    latencies,
    parse_samples,
    quantile,
    throughput_of,
)
from paysim.dashboard.runs import PastRuns
from paysim.dashboard.serve import serve_dashboard
from paysim.infra.errors import PaysimError
from paysim.load.report_compare import keep_report
from paysim.pipeline import store
from tests.unit.fakes import pure_settings
from tests.unit.test_report_files import steady, synthetic_report

INF = float("inf")


def test_quantile_interpolates_inside_its_bucket_as_prometheus_does() -> None:
    buckets = {0.01: 50.0, 0.1: 90.0, 1.0: 100.0, INF: 100.0}
    assert quantile(0.5, buckets) == pytest.approx(0.01)
    assert quantile(0.7, buckets) == pytest.approx(0.01 + 0.09 * 20 / 40)
    assert quantile(0.99, buckets) == pytest.approx(0.1 + 0.9 * 9 / 10)
    assert quantile(0.5, {0.01: 0.0, INF: 0.0}) is None
    assert quantile(0.99, {0.01: 1.0, INF: 10.0}) == 0.01  # in +Inf: the last finite bound


def test_increase_counts_a_reset_counter_from_zero_and_skips_new_series() -> None:
    before = {("a_total", ()): 10.0, ("b_total", ()): 50.0}
    after = {("a_total", ()): 15.0, ("b_total", ()): 3.0, ("c_total", ()): 7.0}
    assert increase(after, before) == {("a_total", ()): 5.0, ("b_total", ()): 3.0}


SERVICE_TEXT = """# TYPE paysim_messages_processed_total counter
paysim_messages_processed_total{{service="processor",outcome="ok"}} {ok}
paysim_messages_processed_total{{service="processor",outcome="rejected"}} 1
# TYPE paysim_dead_letters_total counter
paysim_dead_letters_total{{service="processor"}} 1
# TYPE paysim_consumer_lag gauge
paysim_consumer_lag{{service="processor",partition="1"}} 4
paysim_consumer_lag{{service="processor",partition="0"}} 2
# TYPE paysim_stage_latency_seconds histogram
paysim_stage_latency_seconds_bucket{{stage="processor",le="0.01"}} {fast}
paysim_stage_latency_seconds_bucket{{stage="processor",le="0.1"}} {ok}
paysim_stage_latency_seconds_bucket{{stage="processor",le="+Inf"}} {ok}
paysim_stage_latency_seconds_count{{stage="processor"}} {ok}
paysim_stage_latency_seconds_sum{{stage="processor"}} 1
"""

HTTP_TEXT = """# TYPE paysim_http_requests counter
paysim_http_requests_total{{route="/authorize",code="200"}} {answered}
paysim_http_requests_total{{route="/authorize",code="400"}} 3
"""


def test_parse_samples_reads_the_text_format_and_drops_what_does_not_parse() -> None:
    samples = parse_samples(SERVICE_TEXT.format(ok=10, fast=5))
    assert samples[("paysim_messages_processed_total",
                    (("outcome", "ok"), ("service", "processor")))] == 10
    assert parse_samples("this is { not metrics") == {}


def test_rates_and_latency_come_from_what_grew_between_scrapes() -> None:
    before = parse_samples(SERVICE_TEXT.format(ok=100, fast=50) + HTTP_TEXT.format(answered=9))
    after = parse_samples(SERVICE_TEXT.format(ok=300, fast=250) + HTTP_TEXT.format(answered=29))
    grown = increase(after, before)
    assert throughput_of(grown) == {"processor": 200.0, "http": 20.0}
    figures = latencies(grown)
    assert set(figures) == {"processor"}
    assert figures["processor"].count == 200  # all 200 new ones were under 10 ms
    assert figures["processor"].p99_ms == pytest.approx(9.9)


def beat(name: str, pid: int, url: str, started: float) -> store.Heartbeat:
    service, instance = name.rsplit("-", 1)
    return store.Heartbeat(service=service, instance=int(instance), pid=pid, processed=10,
                           dead_letters=1, aborted_batches=0, started_at=started,
                           seen_at=time.time(), lag=6, metrics_url=url)


def progress(sent: int) -> store.RunProgress:
    now = time.time()
    return store.RunProgress(run_id="run-x", pid=1, scenario=None, started_at=now,
                             seen_at=now, elapsed_s=1.0, scheduled=100, sent=sent,
                             completed=sent, dropped=0, target_rate=50.0, current_rate=50.0,
                             rolling_p99_ms=12.0, rolling_p50_ms=4.0,
                             reasons={"approved/00": sent}, thresholds=["p99_ms < 250"])


class Sources:
    """Heartbeats and scrapes a test changes between snapshots."""

    def __init__(self) -> None:
        self.started = time.time() - 30
        self.pid = 100
        self.ok = 100
        self.answering = True
        self.fetched: list[str] = []

    def read(self) -> tuple[dict[str, store.Heartbeat], list[store.RunProgress]]:
        beats = [beat("processor-0", self.pid, "http://m/processor", self.started),
                 beat("http-0", 7, "", self.started),
                 beat("send-99", 99, "http://m/send", self.started)]
        return {b.name: b for b in beats}, [progress(self.ok)]

    def fetch(self, url: str) -> dict | None:
        self.fetched.append(url)
        if not self.answering:
            return None
        return parse_samples(SERVICE_TEXT.format(ok=self.ok, fast=self.ok))


def test_a_snapshot_joins_heartbeats_scrapes_and_the_run_under_way() -> None:
    sources = Sources()
    collector = LiveCollector(pure_settings(), min_interval_s=0, fetch=sources.fetch,
                              read=sources.read)
    first = collector.snapshot()
    assert first.interval_s is None
    # The run's rate and end to end come from its record: send is never scraped.
    assert first.throughput == {"sent": 50.0}
    assert first.latency == {"end_to_end": Percentiles(4.0, 12.0, None)}
    assert sources.fetched == ["http://m/processor"]
    assert [row.name for row in first.services] == ["http-0", "processor-0", "send-99"]
    assert first.dead_letters == {"processor": 1}
    assert first.outcomes == {"ok": 100, "rejected": 1}
    assert [(r.partition, r.lag) for r in first.lag] == [("0", 2), ("1", 4)]
    assert first.runs[0].sent == 100

    sources.ok = 160
    second = collector.snapshot()
    assert second.interval_s is not None and second.throughput["processor"] > 0
    assert second.latency["processor"].count == 60
    assert second.outcomes["ok"] == 160

    sources.pid, sources.answering = 101, False  # restarted, and not answering yet
    third = collector.snapshot()
    processor = next(row for row in third.services if row.name == "processor-0")
    assert processor.restarts_seen == 1
    assert third.errors == ["processor-0: no answer from http://m/processor"]


def test_snapshots_are_shared_within_the_interval() -> None:
    sources = Sources()
    collector = LiveCollector(pure_settings(), min_interval_s=60, fetch=sources.fetch,
                              read=sources.read)
    assert collector.snapshot() is collector.snapshot()


# ---------------------------------------------------------------------------- the WSGI app


class Answer:
    def __init__(self, app: Any, path: str, method: str = "GET", query: str = "",
                 script_name: str = "") -> None:
        self.status, self.headers = "", {}
        self.body_iter: Iterable[bytes] = app({"PATH_INFO": path, "REQUEST_METHOD": method,
                                               "QUERY_STRING": query,
                                               "SCRIPT_NAME": script_name}, self._start)

    def _start(self, status: str, headers: list[tuple[str, str]]) -> None:
        self.status, self.headers = status, dict(headers)

    @property
    def body(self) -> bytes:
        return b"".join(self.body_iter)


@pytest.fixture
def dashboard(tmp_path: Path) -> DashboardApp:
    sources = Sources()
    collector = LiveCollector(pure_settings(), min_interval_s=0, fetch=sources.fetch,
                              read=sources.read)
    return DashboardApp(collector, PastRuns(tmp_path), max_streams=1)


def test_the_page_needs_nothing_from_the_network() -> None:
    page = page_html()
    assert not re.search(r"""(src|href|action)\s*=\s*["']?(https?:)?//""", page, re.I)
    assert not re.search(r"url\(|@import|<link", page, re.I)
    assert "EventSource" in page


def test_the_app_answers_each_path(dashboard: DashboardApp) -> None:
    page = Answer(dashboard, "/")
    assert page.status == "200 OK" and b"paysim live" in page.body
    assert "connect-src 'self'" in page.headers["Content-Security-Policy"]
    moved = Answer(dashboard, "", script_name="/ui")
    assert moved.status.startswith("308") and moved.headers["Location"] == "/ui/"
    snapshot = json.loads(Answer(dashboard, "/snapshot").body)
    assert snapshot["runs"][0]["run_id"] == "run-x"
    assert json.loads(Answer(dashboard, "/runs").body) == []
    assert Answer(dashboard, "/runs/nope").status.startswith("404")
    assert Answer(dashboard, "/diff", query="a=x&b=y").status.startswith("404")
    assert Answer(dashboard, "/elsewhere").status.startswith("404")
    assert Answer(dashboard, "/", method="POST").status.startswith("405")


def test_event_streams_are_capped_and_end_on_stop(dashboard: DashboardApp,
                                                  monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(app_module, "EVERY_S", 0.01)
    first = Answer(dashboard, "/events")
    assert first.headers["Content-Type"] == "text/event-stream"
    stream = iter(first.body_iter)
    assert next(stream).startswith(b"retry: ")
    event = next(stream)
    assert event.startswith(b"event: snapshot\ndata: ") and event.endswith(b"\n\n")
    assert json.loads(event.split(b"data: ", 1)[1])["services"]
    assert Answer(dashboard, "/events").status.startswith("503")  # max_streams is 1
    dashboard.stop.set()
    assert list(stream) == []  # the stream ends; its place is free again
    dashboard.stop = threading.Event()
    assert Answer(dashboard, "/events").status == "200 OK"


# ------------------------------------------------------------------------------ past runs


def test_past_runs_are_listed_shown_and_compared(tmp_path: Path) -> None:
    settings = pure_settings({"lifecycle.runs_dir": str(tmp_path)})
    a = synthetic_report([4, 6], steady(20.0), run_id="run-a")
    b = synthetic_report([4, 6], steady(40.0), run_id="run-b")
    keep_report(settings, a)
    keep_report(settings, b)
    (tmp_path / "notes.json").write_text('{"not": "a report"}')
    runs = PastRuns(tmp_path)
    assert {entry.run_id for entry in runs.listing()} == {"run-a", "run-b"}
    page = runs.report_page("run-a")
    assert page is not None and "<svg" in page and "run-a" in page
    diff = runs.diff_page("run-a", "run-b")
    assert diff is not None and "end to end p99" in diff and 'class="worse"' in diff
    assert runs.report_page("../notes") is None


def test_a_taken_port_is_one_line_and_a_free_one_serves_the_page() -> None:
    settings = pure_settings()
    served = serve_dashboard(settings, "127.0.0.1", 0)
    try:
        port = int(served.url.rsplit(":", 1)[1].strip("/"))
        with pytest.raises(PaysimError, match=f"cannot listen on 127.0.0.1:{port}"):
            serve_dashboard(settings, "127.0.0.1", port)
        with urllib.request.urlopen(served.url, timeout=5) as answer:
            assert b"paysim live" in answer.read()
    finally:
        served.close()
