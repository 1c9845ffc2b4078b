"""Serving the HTTP API: the server (paysim.edge.http_server) with a graceful stop, the Kafka
deliveries' poller, the heartbeat, the service process."""

from __future__ import annotations

import logging
import threading
from collections.abc import Callable
from typing import Any

import redis
from confluent_kafka import Producer

from paysim.edge.app import Counters, DirectRoutes, LoopRoutes, create_app
from paysim.edge.delivery import DELIVERY_TIMEOUT_S, Deliveries
from paysim.edge.health import HEALTH_PATH, HealthChecker
from paysim.edge.http_server import HttpServer
from paysim.edge.prometheus import HttpMetrics
from paysim.edge.steps import LoopRunner
from paysim.infra.collector import tune_for_batches
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

UiFactory = Callable[[threading.Event], Any]  # the stop event -> a WSGI app
SHUTDOWN_GRACE_S = DELIVERY_TIMEOUT_S + 2  # an answer waiting on Kafka may finish


def _heartbeat(client: redis.Redis, counters: Counters, stop: threading.Event,
               metrics_url: str, instance: int) -> None:
    while True:
        try:
            store.write_heartbeat(client, HTTP.name, instance, processed=counters.answered,
                                  dead_letters=0, aborted_batches=0,
                                  started_at=counters.started_at, lag=0,
                                  metrics_url=metrics_url)
        except redis.RedisError as exc:
            log.warning("heartbeat not written: %s", exc)
        if stop.wait(store.HEARTBEAT_EVERY_S):
            store.clear_heartbeat(client, HTTP.name, instance)
            return


def answers_on_loop(method: str, path: str) -> bool:
    """Whether a request runs on the event loop's thread rather than a worker: ``GET /healthz``
    does no I/O (it answers from the health checker's last check), so it never waits behind
    the payments that hold the workers while Kafka is slow or gone."""
    return method in ("GET", "HEAD") and path == HEALTH_PATH


def serve(settings: Settings, stop: threading.Event, ui: UiFactory | None = None,
          instance: int = 0) -> None:
    """Serve the HTTP API on settings.http.host:port until ``stop`` is set; ``ui`` makes the
    WSGI app served under /ui, given ``stop``; ``instance`` names its heartbeat."""
    keys = load_keys(settings)
    ensure_topics(settings)
    host, port = settings.http.host, settings.http.port
    producer = Producer(client_config(settings, **{
        # Many requests' records are in flight at once (paysim.edge.delivery) and the
        # producer batches them. 1 ms, not `paysim send`'s 5: each request waits out its
        # record's linger, and with 5 ms a record took 7 ms from send to delivery report at
        # the median under wrk, with 1 ms 3.5 ms, for no more broker CPU (session 9).
        "enable.idempotence": True, "linger.ms": 1,
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
    deliveries: Deliveries = app.extensions["paysim.deliveries"]
    deliveries.start()
    runner: LoopRunner = app.extensions["paysim.runner"]
    endpoint: MetricsEndpoint | None = None
    try:
        health.check()  # the first answer is a real one
        health.start()
        direct: DirectRoutes = app.extensions["paysim.direct"]
        on_loop: LoopRoutes = app.extensions["paysim.direct_on_loop"]
        server = HttpServer(app, host, port, answers_on_loop,
                            direct=lambda method, path: direct.get((method, path)),
                            direct_on_loop=lambda method, path: on_loop.get((method, path)))
        try:
            server.listen()
        except OSError as exc:
            server.close()
            raise PaysimError(f"the HTTP API cannot listen on {host}:{port}: "
                              f"{exc.strerror or exc}") from None
        if metrics is not None:
            endpoint = serve_metrics(settings, metrics.registry,
                                     metrics_offset(HTTP.name, instance))
        heartbeat = threading.Thread(target=_heartbeat, args=(
            client, counters, ended, endpoint.url if endpoint else "", instance),
            name="http-heartbeat", daemon=True)
        heartbeat.start()
        log.info("HTTP API listening on http://%s:%d", host, port)
        # As the pipeline services: a request's objects (its steps, waiting on Redis and
        # Kafka for milliseconds) outlived the default young collections and brought on
        # full ones that walked the whole process (17 of 72 µs a request in-process).
        tune_for_batches()
        server.serve_until(stop, SHUTDOWN_GRACE_S)
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
        runner.close()
        remaining = deliveries.close(DELIVERY_TIMEOUT_S)
        if remaining:
            log.warning("%d records not delivered at shutdown", remaining)
        client.close()


def run_edge(settings: Settings, ui: UiFactory | None = None, instance: int = 0) -> int:
    """The HTTP API as a service process (what `paysim service http` runs)."""
    return run_process(HTTP.name, lambda stop: serve(settings, stop, ui, instance))
