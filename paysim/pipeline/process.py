"""Run one service in this process until SIGTERM or SIGINT: `paysim service NAME`."""

from __future__ import annotations

import logging
import signal
import sys
import threading

from confluent_kafka import KafkaException

from paysim.infra.config import Settings
from paysim.infra.errors import PaysimError
from paysim.infra.secrets import load_keys
from paysim.pipeline import store
from paysim.pipeline.authorizer import Authorizer
from paysim.pipeline.loop import FatalServiceError, Service, ServiceLoop
from paysim.pipeline.notifier import Notifier
from paysim.pipeline.processor import Processor
from paysim.pipeline.webhook_dispatch import WebhookDispatcher

SERVICE_NAMES = ("authorizer", "processor", "notifier", "http")


def configure_logging() -> None:
    logging.basicConfig(stream=sys.stderr, level=logging.INFO,
                        format="%(asctime)s %(name)s %(levelname)s %(message)s")


def build(name: str, settings: Settings) -> Service:
    client = store.connect(settings)
    if name == "authorizer":
        return Authorizer(settings, client, load_keys(settings))
    if name == "processor":
        return Processor(settings, client)
    if name == "notifier":
        return Notifier(settings, client)
    raise ValueError(f"unknown service {name!r}; known: {', '.join(SERVICE_NAMES)}")


def run_service(name: str, settings: Settings, instance: int) -> int:
    """Run until asked to stop; the exit code tells the supervisor whether to restart."""
    configure_logging()
    stop = threading.Event()
    for sig in (signal.SIGTERM, signal.SIGINT):
        signal.signal(sig, lambda *_: stop.set())
    log = logging.getLogger(f"paysim.{name}")
    if name == "http":
        from paysim.edge.app import serve  # Flask and waitress load only where served

        try:
            serve(settings, stop)
        except (PaysimError, KafkaException) as exc:
            log.error("stopping: %s", exc)
            return 1
        return 0
    service = build(name, settings)
    if name == "notifier":
        WebhookDispatcher(settings, service.redis, load_keys(settings).webhook_secret,
                          f"notifier-{instance}", stop).start()
    try:
        ServiceLoop(service, settings, instance, stop).run()
    except (FatalServiceError, KafkaException) as exc:
        log.error("stopping: %s", exc)
        return 1
    return 0
