"""Prometheus metrics on the real pipeline: every process `paysim ps --json` lists serves its
metrics at its metrics_url, and after a small `paysim send` the counters agree with what was
sent and processed; `paysim send` serves its own while it runs."""

from __future__ import annotations

import json
import re
import threading
import urllib.request
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

from prometheus_client.parser import text_string_to_metric_families

from paysim.edge.openapi import ENDPOINTS
from paysim.infra.config import Settings
from paysim.infra.waiting import wait_until
from paysim.pipeline import registry
from tests.helpers import free_port
from tests.integration.pipeline_helpers import paysim, send, start_send

Samples = dict[tuple[str, tuple[tuple[str, str], ...]], float]


def listed(settings: Settings) -> dict[str, dict]:
    result = paysim(settings, "ps", "--json")
    return {row["name"]: row for row in json.loads(result.stdout)["services"]}


def scrape(url: str) -> Samples:
    with urllib.request.urlopen(url, timeout=10) as answer:
        text = answer.read().decode()
    return {(s.name, tuple(sorted(s.labels.items()))): s.value
            for family in text_string_to_metric_families(text) for s in family.samples}


def total(samples: Samples, name: str, **labels: str) -> float:
    """The sum of ``name`` over the samples whose labels include ``labels``."""
    return sum(v for (n, got), v in samples.items()
               if n == name and set(labels.items()) <= set(got))


class _Hooks(BaseHTTPRequestHandler):
    def do_POST(self) -> None:
        self.rfile.read(int(self.headers["Content-Length"]))
        self.send_response(204)
        self.end_headers()

    def log_message(self, *_: object) -> None:
        pass


def test_every_process_serves_counters_that_agree_with_the_run(pipeline: Settings) -> None:
    rows = listed(pipeline)
    expected = registry.instance_names({})
    assert set(expected) <= rows.keys()
    urls = {name: rows[name]["metrics_url"] for name in expected}
    assert all(url and url.startswith("http://127.0.0.1:") for url in urls.values()), urls
    assert len(set(urls.values())) == len(urls)  # each process on its own port
    before = {name: scrape(url) for name, url in urls.items()}

    def grew(name: str, metric: str, **labels: str) -> float:
        return (total(scrape(urls[name]), metric, **labels)
                - total(before[name], metric, **labels))

    hooks = ThreadingHTTPServer(("127.0.0.1", free_port()), _Hooks)
    threading.Thread(target=hooks.serve_forever, daemon=True).start()
    try:
        hook = f"http://127.0.0.1:{hooks.server_address[1]}/hook"
        kafka_run = send(pipeline, "--count", "300", "--seed", "21", "--callback-url", hook)
        http_run = send(pipeline, "--count", "30", "--seed", "22", "--via", "http")
        assert kafka_run["outcomes"]["completed"] == 300
        assert http_run["outcomes"]["completed"] == 30
        # The edge answers a bad card with a 400 itself; the rest go on to the authorizer.
        edge_declined = grew("http-0", "paysim_http_requests_total", route="/authorize",
                             code="400")
        reached = 300 + 30 - edge_declined
        # Counted after each commit, which may come a moment after send saw the outcome.
        assert wait_until(lambda: grew("notifier-0", "paysim_messages_processed_total",
                                       outcome="ok") == reached, timeout=30)
        # One notification per payment, and each approved one (captured at once) its
        # payment.captured event too.
        approved = sum(row["count"] for row in kafka_run["outcomes"]["by_reason"]
                       if row["status"] == "approved")
        assert wait_until(lambda: grew("notifier-0", "paysim_webhook_deliveries_total",
                                       result="delivered") == 300 + approved, timeout=60)
    finally:
        hooks.shutdown()
        hooks.server_close()

    for spec in registry.PIPELINE:  # the heartbeats and the metrics count the same messages
        name = f"{spec.name}-0"
        assert wait_until(lambda n=name: listed(pipeline)[n]["processed"] == total(
            scrape(urls[n]), "paysim_messages_processed_total", outcome="ok"), timeout=10)
    after = {name: scrape(url) for name, url in urls.items()}

    def delta(name: str, metric: str, **labels: str) -> float:
        return total(after[name], metric, **labels) - total(before[name], metric, **labels)

    assert delta("authorizer-0", "paysim_messages_processed_total", outcome="ok") == reached
    assert 0 < delta("processor-0", "paysim_messages_processed_total", outcome="ok") < reached
    for spec in registry.PIPELINE:
        name = f"{spec.name}-0"
        ok = delta(name, "paysim_messages_processed_total", outcome="ok")
        assert delta(name, "paysim_dead_letters_total") == 0
        assert delta(name, "paysim_transactions_aborted_total") == 0
        assert delta(name, "paysim_batch_size_sum", service=spec.name) == ok
        assert delta(name, "paysim_stage_latency_seconds_count", stage=spec.name) == ok
        if ok:
            assert delta(name, "paysim_batch_seconds_count", service=spec.name) >= 1
            lags = {labels: v for (metric, labels), v in after[name].items()
                    if metric == "paysim_consumer_lag"}
            assert lags, f"{name} reports no consumer lag"
    # The HTTP API: one count per request, labelled by route template and status code.
    assert delta("http-0", "paysim_http_requests_total", route="/authorize") == 30
    assert delta("http-0", "paysim_http_request_seconds_count", route="/authorize") == 30
    templates = {re.sub(r"\{(\w+)\}", r"<\1>", e.path) for e in ENDPOINTS} | {"unmatched"}
    routes = {dict(labels)["route"] for (metric, labels) in after["http-0"]
              if metric == "paysim_http_requests_total"}
    assert routes <= templates, routes - templates


def test_send_serves_its_metrics_while_it_runs(pipeline: Settings) -> None:
    child, out, err = start_send(pipeline, "--rate", "40", "--duration", "8s", "--seed", "23")
    try:
        seen: dict[str, Samples] = {}

        def scraped_mid_run() -> bool:
            rows = [row for name, row in listed(pipeline).items()
                    if name.startswith(f"{registry.GENERATOR}-") and row["state"] == "up"]
            if not rows or not rows[0]["metrics_url"]:
                return False
            samples = scrape(rows[0]["metrics_url"])
            if total(samples, "paysim_load_sent_total") > 0 and child.poll() is None:
                seen["mid"] = samples
                return True
            return False

        assert wait_until(scraped_mid_run, timeout=30, interval=0.5), err.text()
        assert child.wait(120) == 0, err.text()
    finally:
        if child.poll() is None:
            child.kill()
            child.wait()
    report = json.loads(out.text())
    mid = seen["mid"]
    assert 0 < total(mid, "paysim_load_sent_total") <= report["load"]["sent"]
    assert total(mid, "paysim_load_dropped_total") == 0
    assert total(mid, "paysim_load_send_delay_seconds_count") == total(
        mid, "paysim_load_sent_total")
    stages = {dict(labels)["stage"] for (metric, labels) in mid
              if metric == "paysim_load_latency_seconds_count"}
    assert stages == {"end_to_end", *(spec.name for spec in registry.PIPELINE if spec.stamps)}
    # Gone from `ps` once it has ended.
    assert not [name for name in listed(pipeline) if name.startswith(f"{registry.GENERATOR}-")]
