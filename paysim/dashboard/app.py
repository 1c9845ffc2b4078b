"""The dashboard as one WSGI application: the page, its server-sent events, the past runs.

The same app is served by `paysim dashboard` (its own small server) and mounted under /ui in
the HTTP API by run-all. Paths, under wherever it is mounted:

    /                the page (paysim/dashboard/page.html: inline CSS and JS, no network)
    /events          text/event-stream, one Snapshot a second
    /snapshot        one Snapshot as JSON (for scripts and curl)
    /targets         the processes serving metrics, for Prometheus's http_sd_configs
    /runs            the past runs as JSON
    /runs/<run_id>   that run's HTML report
    /diff?a=..&b=..  two runs compared

An event stream holds a server thread while it is open, so there is a cap on how many are
open at once (the HTTP API has few threads and they are for payments) and each stream ends
after STREAM_S; the browser's EventSource connects again by itself (``retry``).
"""

from __future__ import annotations

import threading
import time
from collections.abc import Callable, Iterable, Iterator
from importlib import resources
from typing import Any
from urllib.parse import parse_qs

import msgspec
import redis

from paysim.dashboard.live import LiveCollector, encode
from paysim.dashboard.runs import PastRuns, listing_json

STREAM_S = 30.0
EVERY_S = 1.0
RETRY_MS = 1000

StartResponse = Callable[[str, list[tuple[str, str]]], Any]
HTML = "text/html; charset=utf-8"
# The page talks to its own origin only; everything else it needs is inline.
PAGE_CSP = ("default-src 'none'; script-src 'unsafe-inline'; style-src 'unsafe-inline'; "
            "connect-src 'self'; frame-src 'self'; img-src data:")


def page_html() -> str:
    return resources.files("paysim.dashboard").joinpath("page.html").read_text("utf-8")


class DashboardApp:
    """WSGI app; ``max_streams`` event streams at once (more are answered 503)."""

    def __init__(self, collector: LiveCollector, runs: PastRuns, max_streams: int = 8,
                 stop: threading.Event | None = None) -> None:
        self.collector = collector
        self.runs = runs
        self.max_streams = max_streams
        self.stop = stop or threading.Event()
        self._streams = threading.BoundedSemaphore(max_streams)
        self._page = page_html().encode()

    def __call__(self, environ: dict[str, Any], start_response: StartResponse) -> Iterable[bytes]:
        path = environ.get("PATH_INFO", "")
        if path == "":  # mounted at /ui and asked for /ui: the page's links are relative
            return _answer(start_response, "308 Permanent Redirect", b"",
                           [("Location", environ.get("SCRIPT_NAME", "") + "/")])
        if environ.get("REQUEST_METHOD", "GET") not in ("GET", "HEAD"):
            return _answer(start_response, "405 Method Not Allowed", b"GET only\n",
                           [("Allow", "GET, HEAD")])
        if path == "/":
            return _answer(start_response, "200 OK", self._page, [
                ("Content-Type", HTML), ("Content-Security-Policy", PAGE_CSP)])
        if path == "/events":
            return self._events(start_response)
        if path == "/snapshot":
            return _answer(start_response, "200 OK", encode(self.collector.snapshot()),
                           [("Content-Type", "application/json")])
        if path == "/targets":
            try:
                targets = self.collector.targets()
            except redis.RedisError:
                return _answer(start_response, "503 Service Unavailable",
                               b"Redis is unavailable: no heartbeats to list\n")
            return _answer(start_response, "200 OK", msgspec.json.encode(targets),
                           [("Content-Type", "application/json")])
        if path == "/runs":
            return _answer(start_response, "200 OK", listing_json(self.runs.listing()),
                           [("Content-Type", "application/json")])
        if path.startswith("/runs/"):
            return _html(start_response, self.runs.report_page(path.removeprefix("/runs/")))
        if path == "/diff":
            query = parse_qs(environ.get("QUERY_STRING", ""))
            run_a, run_b = query.get("a", [""])[0], query.get("b", [""])[0]
            return _html(start_response, self.runs.diff_page(run_a, run_b))
        return _answer(start_response, "404 Not Found", b"not found\n")

    def _events(self, start_response: StartResponse) -> Iterable[bytes]:
        if not self._streams.acquire(blocking=False):
            return _answer(start_response, "503 Service Unavailable",
                           f"at most {self.max_streams} dashboards at once\n".encode(),
                           [("Retry-After", "5")])
        start_response("200 OK", [("Content-Type", "text/event-stream"),
                                  ("Cache-Control", "no-cache")])
        return self._stream()

    def _stream(self) -> Iterator[bytes]:
        try:
            yield f"retry: {RETRY_MS}\n\n".encode()
            ends = time.monotonic() + STREAM_S
            while time.monotonic() < ends:
                yield b"event: snapshot\ndata: " + encode(self.collector.snapshot()) + b"\n\n"
                if self.stop.wait(EVERY_S):
                    return
        finally:
            self._streams.release()


def _answer(start_response: StartResponse, status: str, body: bytes,
            headers: list[tuple[str, str]] | None = None) -> list[bytes]:
    headers = headers or [("Content-Type", "text/plain; charset=utf-8")]
    start_response(status, [*headers, ("Content-Length", str(len(body)))])
    return [body]


def _html(start_response: StartResponse, page: str | None) -> list[bytes]:
    if page is None:
        return _answer(start_response, "404 Not Found", b"no such run\n")
    return _answer(start_response, "200 OK", page.encode(), [("Content-Type", HTML)])
