"""Serving the HTTP API: waitress with a graceful stop, the heartbeat, the service process."""

from __future__ import annotations

import logging
import threading
import time
from collections import deque
from collections.abc import Callable
from typing import Any

import redis
import waitress
from confluent_kafka import Producer
from waitress import wasyncore
from waitress.server import BaseWSGIServer
from waitress.task import ThreadedTaskDispatcher

from paysim.edge.app import Counters, create_app
from paysim.edge.delivery import DELIVERY_TIMEOUT_S
from paysim.edge.health import HEALTH_PATH, HealthChecker
from paysim.edge.prometheus import HttpMetrics
from paysim.infra.config import Settings
from paysim.infra.errors import PaysimError
from paysim.infra.kafka import client_config
from paysim.infra.prometheus import MetricsEndpoint, serve_metrics
from paysim.infra.secrets import load_keys
from paysim.infra.topics import ensure_topics
from paysim.pipeline import store
from paysim.pipeline.process import run_process
from paysim.pipeline.registry import HTTP, metrics_offset

log = logging.getLogger("paysim.http")

THREADS = 8
UiFactory = Callable[[threading.Event], Any]  # the stop event -> a WSGI app
SHUTDOWN_GRACE_S = DELIVERY_TIMEOUT_S + 2  # an answer waiting on Kafka may finish
LOOP_SLICE_S = 0.2


def _heartbeat(client: redis.Redis, counters: Counters, stop: threading.Event,
               metrics_url: str) -> None:
    while True:
        try:
            store.write_heartbeat(client, HTTP.name, 0, processed=counters.answered,
                                  dead_letters=0, aborted_batches=0,
                                  started_at=counters.started_at, lag=0,
                                  metrics_url=metrics_url)
        except redis.RedisError as exc:
            log.warning("heartbeat not written: %s", exc)
        if stop.wait(store.HEARTBEAT_EVERY_S):
            store.clear_heartbeat(client, HTTP.name, 0)
            return


class HealthOnLoop(ThreadedTaskDispatcher):
    """Waitress's worker threads, except for ``GET /healthz``: that runs on the event loop's
    thread (``run_on_loop``), so it never queues behind the workers.

    Waitress parses requests on its event loop and runs each on a worker thread; a payment
    holds its thread while it waits on Kafka (up to DELIVERY_TIMEOUT_S + 2), so with Kafka
    gone eight payments held all eight threads and /healthz waited 18 s behind them. /healthz
    does no I/O (it answers from the health checker's last check), so the loop can run it in
    microseconds. Only a connection's sole pending request goes there; a pipelined one
    behind others stays on the workers, which keep the answers in order.
    """

    def __init__(self) -> None:
        super().__init__()
        self.set_thread_count(THREADS)
        self.on_loop: deque[Any] = deque()

    def add_task(self, task: Any) -> None:
        # ``task`` is a channel: waitress adds one when its first request is complete, from
        # the loop's thread, or from a worker that finished the request before it.
        if _is_health_check(task):
            self.on_loop.append(task)
            task.server.pull_trigger()  # wakes the loop when a worker thread added it
        else:
            super().add_task(task)

    def run_on_loop(self) -> None:
        """Answer the health checks added since the last call (the loop's thread only)."""
        while self.on_loop:
            self.on_loop.popleft().service()


def _is_health_check(channel: Any) -> bool:
    requests = getattr(channel, "requests", None)
    if not requests or len(requests) != 1 or getattr(channel, "total_outbufs_len", 1):
        return False
    request = requests[0]
    return (not request.error and request.command in ("GET", "HEAD")
            and request.path == HEALTH_PATH)


def _socket_map(server: Any) -> dict[int, Any]:
    # One listen address gives a TcpWSGIServer (``_map``), several a MultiSocketServer (``map``).
    return server._map if hasattr(server, "_map") else server.map


def _busy(channel: Any) -> bool:
    """A connection with a request arriving or being answered, or a response not yet sent."""
    return bool(getattr(channel, "request", None) is not None
                or getattr(channel, "requests", None)
                or getattr(channel, "total_outbufs_len", 0))


def _run_until(server: Any, dispatcher: HealthOnLoop, stop: threading.Event) -> None:
    """Waitress's event loop until ``stop`` is set, then a graceful close.

    The loop runs here in slices rather than through ``server.run()`` closed from another
    thread: ``server.close()`` closes the trigger pipe the worker threads write to when a
    response is ready, so closing it under a request in flight breaks that response (or writes
    into whatever file reuses the descriptor). Here everything is closed from the loop's own
    thread: first the listening sockets, then, once the answers in flight are sent (at most
    SHUTDOWN_GRACE_S), the worker threads and every connection.
    """
    socket_map = _socket_map(server)
    use_poll = server.adj.asyncore_use_poll
    listeners = [obj for obj in socket_map.values() if isinstance(obj, BaseWSGIServer)]
    while not stop.is_set() and socket_map:
        wasyncore.loop(timeout=LOOP_SLICE_S, map=socket_map, use_poll=use_poll, count=1)
        dispatcher.run_on_loop()
    for listener in listeners:  # stop accepting; the trigger stays open for the answers
        wasyncore.dispatcher.close(listener)
    deadline = time.monotonic() + SHUTDOWN_GRACE_S
    # Read what clients sent before the stop (their requests get answered), then wait for
    # the answers in flight.
    wasyncore.loop(timeout=0, map=socket_map, use_poll=use_poll, count=1)
    dispatcher.run_on_loop()
    while (any(_busy(obj) for obj in list(socket_map.values()))
           and time.monotonic() < deadline):
        wasyncore.loop(timeout=0.05, map=socket_map, use_poll=use_poll, count=1)
        dispatcher.run_on_loop()
    dispatcher.shutdown(timeout=1)
    wasyncore.close_all(socket_map)


def serve(settings: Settings, stop: threading.Event, ui: UiFactory | None = None) -> None:
    """Serve the HTTP API with waitress on settings.http.host:port until ``stop`` is set;
    ``ui`` makes the WSGI app served under /ui, given ``stop``."""
    keys = load_keys(settings)
    ensure_topics(settings)
    host, port = settings.http.host, settings.http.port
    producer = Producer(client_config(settings, **{
        "enable.idempotence": True, "linger.ms": 2,
        # Give up on a record when the request gives up on it, so that a 503 does not leave
        # the payment queued to be delivered after all.
        "message.timeout.ms": int(DELIVERY_TIMEOUT_S * 1000), "logger": log,
    }))
    client = store.connect(settings)
    ended = threading.Event()
    health = HealthChecker(settings, producer, ended)
    heartbeat: threading.Thread | None = None
    metrics = HttpMetrics() if settings.metrics.enabled else None
    app = create_app(settings, keys, producer, client, health, metrics,
                     ui(stop) if ui is not None else None)
    counters: Counters = app.extensions["paysim.counters"]
    endpoint: MetricsEndpoint | None = None
    try:
        health.check()  # the first answer is a real one
        health.start()
        dispatcher = HealthOnLoop()
        try:
            server = waitress.create_server(app, host=host, port=port, threads=THREADS,
                                            _dispatcher=dispatcher)
        except OSError as exc:
            dispatcher.shutdown(timeout=1)
            raise PaysimError(f"the HTTP API cannot listen on {host}:{port}: "
                              f"{exc.strerror or exc}") from None
        if metrics is not None:
            endpoint = serve_metrics(settings, metrics.registry, metrics_offset(HTTP.name, 0))
        heartbeat = threading.Thread(target=_heartbeat, args=(
            client, counters, ended, endpoint.url if endpoint else ""),
            name="http-heartbeat", daemon=True)
        heartbeat.start()
        log.info("HTTP API listening on http://%s:%d", host, port)
        _run_until(server, dispatcher, stop)
        log.info("HTTP API stopped after %d requests", counters.answered)
    finally:
        ended.set()
        if heartbeat is not None:
            heartbeat.join(5)
        if endpoint is not None:
            endpoint.close()
        if health.is_alive():
            health.join(5)
        else:
            health.redis.close()
        remaining = producer.flush(DELIVERY_TIMEOUT_S)
        if remaining:
            log.warning("%d records not delivered at shutdown", remaining)
        client.close()


def run_edge(settings: Settings, ui: UiFactory | None = None) -> int:
    """The HTTP API as a service process (what `paysim service http` runs)."""
    return run_process(HTTP.name, lambda stop: serve(settings, stop, ui))
