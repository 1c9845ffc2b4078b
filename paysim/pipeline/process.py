"""One service as a process until SIGTERM or SIGINT: what `paysim service NAME` runs."""

from __future__ import annotations

import logging
import signal
import sys
import threading
from collections.abc import Callable

from confluent_kafka import KafkaException

from paysim.infra.collector import tune_for_batches
from paysim.infra.config import Settings
from paysim.infra.errors import PaysimError
from paysim.infra.prometheus import serve_metrics
from paysim.infra.tracing import open_tracer
from paysim.pipeline import store
from paysim.pipeline.loop import FatalServiceError, ServiceLoop
from paysim.pipeline.prometheus import PipelineMetrics
from paysim.pipeline.registry import ServiceSpec, metrics_offset


def configure_logging() -> None:
    logging.basicConfig(stream=sys.stderr, level=logging.INFO,
                        format="%(asctime)s %(name)s %(levelname)s %(message)s")


def run_process(name: str, body: Callable[[threading.Event], None]) -> int:
    """Run ``body(stop)`` with ``stop`` set by SIGTERM or SIGINT. The exit code tells the
    supervisor whether to restart: 1 when the service had to stop, 0 when asked to."""
    configure_logging()
    stop = threading.Event()
    for sig in (signal.SIGTERM, signal.SIGINT):
        signal.signal(sig, lambda *_: stop.set())
    try:
        body(stop)
    except (FatalServiceError, PaysimError, KafkaException) as exc:
        logging.getLogger(f"paysim.{name}").error("stopping: %s", exc)
        return 1
    return 0


def run_pipeline_service(spec: ServiceSpec, settings: Settings, instance: int) -> int:
    """A pipeline service's loop, and its extra threads, until asked to stop."""

    def body(stop: threading.Event) -> None:
        client = store.connect(settings)
        service = spec.build(settings, client)
        metrics = PipelineMetrics(spec.name) if settings.metrics.enabled else None
        endpoint = None
        if metrics is not None:
            endpoint = serve_metrics(settings, metrics.registry,
                                     metrics_offset(spec.name, instance))
            metrics.url = endpoint.url if endpoint else ""
        try:
            for thread in spec.threads(settings, client, instance, stop, metrics):
                thread.start()
            loop = ServiceLoop(service, settings, instance, stop, metrics=metrics,
                               tracer=open_tracer(settings, spec.name, instance))
            tune_for_batches()
            loop.run()
        finally:
            if endpoint is not None:
                endpoint.close()

    return run_process(spec.name, body)
