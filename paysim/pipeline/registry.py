"""Every service paysim runs, in one place: its name, what it consumes, the stage time it
stamps, how it is built, its extra threads, and whether `run-all --<name>s N` scales it.

Every other list of services (run-all's children and flags, `ps`, `send`'s readiness check,
the per-stage latency spans, the benchmark) is read from here.
"""

from __future__ import annotations

import threading

import redis

from paysim.domain.messages import AUTHORIZED, NOTIFIED, PROCESSED
from paysim.infra.config import Settings
from paysim.infra.secrets import load_keys
from paysim.pipeline.authorizer import Authorizer
from paysim.pipeline.expiry import HoldExpirer
from paysim.pipeline.ledger_service import LedgerService
from paysim.pipeline.notifier import Notifier
from paysim.pipeline.processor import Processor
from paysim.pipeline.prometheus import PipelineMetrics
from paysim.pipeline.service import ServiceSpec
from paysim.pipeline.settlement_store import SettlementCloser
from paysim.pipeline.webhook_dispatch import WebhookDispatcher


def _webhook_dispatcher(settings: Settings, client: redis.Redis, instance: int,
                        stop: threading.Event,
                        metrics: PipelineMetrics | None) -> list[threading.Thread]:
    return [WebhookDispatcher(settings, client, load_keys(settings).webhook_secret,
                              f"{NOTIFIER.name}-{instance}", stop, metrics)]


def _expiry_and_settlement(settings: Settings, client: redis.Redis, _instance: int,
                           stop: threading.Event,
                           _metrics: PipelineMetrics | None) -> list[threading.Thread]:
    return [HoldExpirer(settings, client, stop), SettlementCloser(settings, client, stop)]


AUTHORIZER = ServiceSpec(
    "authorizer", "checks the card, tokenizes it, passes the payment on or declines it",
    input_topic="requested", stamps=AUTHORIZED,
    factory=lambda spec, settings, client: Authorizer(spec, settings, client,
                                                      load_keys(settings)))
PROCESSOR = ServiceSpec(
    "processor", "the issuer: settles each authorized payment against its card's ledger",
    input_topic="authorized", stamps=PROCESSED, factory=Processor)
NOTIFIER = ServiceSpec(
    "notifier", "confirms each outcome in Redis, notifies the client, queues webhooks",
    input_topic="results", stamps=NOTIFIED, factory=Notifier, threads=_webhook_dispatcher)
LEDGER = ServiceSpec(
    "ledger", "applies captures, increments, voids, expiries, reversals, refunds and "
    "disputes; closes settlement windows",
    input_topic="operations", factory=LedgerService, threads=_expiry_and_settlement)
HTTP = ServiceSpec("http", "the HTTP API (the seed's endpoints and the payments' operations)",
                   scalable=False)

PIPELINE: tuple[ServiceSpec, ...] = (AUTHORIZER, PROCESSOR, NOTIFIER, LEDGER)
ALL: tuple[ServiceSpec, ...] = (*PIPELINE, HTTP)
NAMES: tuple[str, ...] = tuple(spec.name for spec in ALL)
PIPELINE_NAMES: tuple[str, ...] = tuple(spec.name for spec in PIPELINE)


# `paysim send`: no service, but it writes a heartbeat and serves metrics as services do.
GENERATOR = "send"
# With `metrics.port` N, each process listens on N + 100 x its place here + its instance.
METRICS_PLACES: tuple[str, ...] = (*NAMES, GENERATOR)


def metrics_offset(name: str, instance: int) -> int:
    """Where a process's metrics port lies from the base `metrics.port`."""
    return 100 * METRICS_PLACES.index(name) + instance


def by_name(name: str) -> ServiceSpec:
    for spec in ALL:
        if spec.name == name:
            return spec
    raise ValueError(f"unknown service {name!r}; known: {', '.join(NAMES)}")


def instance_names(counts: dict[str, int], external: tuple[str, ...] = (),
                   first: int = 0) -> list[str]:
    """Every instance a run-all with these counts runs ("processor-0", ...); one by default,
    numbered from ``first``, none of the services left to an outside implementation
    (``external``)."""
    return [f"{spec.name}-{i}" for spec in ALL if spec.name not in external
            for i in range(first, first + counts.get(spec.name, 1))]


# What `run-all --external` may leave to an outside implementation: the consumers of a topic.
EXTERNAL_NAMES: tuple[str, ...] = PIPELINE_NAMES
