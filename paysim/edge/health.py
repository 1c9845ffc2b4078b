"""The HTTP API's health, checked in the background: ``GET /healthz`` answers from the last
check and never waits on Kafka or Redis itself.

Every CHECK_EVERY_S a thread checks that Kafka answers metadata for the requested topic (each
partition with a leader), that Redis takes a write (PING answers while Redis refuses writes at
maxmemory), and which pipeline services have a fresh heartbeat. The answer:

- 503 ``{"error", "status": "unavailable", ...}`` when Kafka or Redis fails, or the last check
  is older than STALE_AFTER_S (the checker itself is stuck): the API cannot take payments;
- 200 ``{"status": "degraded", ...}`` when both answer but a pipeline service has no fresh
  heartbeat: payments are accepted and wait on Kafka until the service is back, so a load
  balancer should keep sending them;
- 200 ``{"status": "ok", "kafka": "ok", "redis": "ok", "services": {...}, ...}``.
"""

from __future__ import annotations

import threading
import time
from dataclasses import dataclass, field
from typing import Any, Literal

import msgspec
import redis
from confluent_kafka import KafkaException, Producer
from msgspec import UNSET, UnsetType

from paysim.infra.config import Settings
from paysim.infra.kafka import error_text
from paysim.pipeline import store
from paysim.pipeline.registry import PIPELINE

CHECK_EVERY_S = 0.5
PROBE_TIMEOUT_S = 0.5
STALE_AFTER_S = 5.0
OK = "ok"
HEALTH_PATH = "/healthz"


@dataclass(frozen=True)
class Health:
    """One check: "ok" or what is wrong, for Kafka and Redis; each pipeline service "up",
    "down" or "unknown" (Redis, which holds the heartbeats, failed)."""

    kafka: str
    redis: str
    services: dict[str, str] = field(default_factory=dict)
    checked_at: float = 0.0  # time.monotonic()


class HealthAnswer(msgspec.Struct, frozen=True, kw_only=True):
    """The body of GET /healthz: ``error`` only when unavailable; the checks' results once a
    check has finished."""

    error: str | UnsetType = UNSET
    status: Literal["ok", "degraded", "unavailable"]
    kafka: str | UnsetType = UNSET
    redis: str | UnsetType = UNSET
    services: dict[str, str] | UnsetType = UNSET  # "up", "down" or "unknown" by service
    checked_s_ago: float | UnsetType = UNSET


def answer(health: Health | None, now: float) -> tuple[int, dict[str, Any]]:
    """The /healthz status and body for the last check (None: none finished yet)."""
    if health is None:
        return 503, msgspec.to_builtins(HealthAnswer(error="health not checked yet",
                                                     status="unavailable"))
    age = round(now - health.checked_at, 3)
    problems = [f"{name}: {state}" for name, state in (("Kafka", health.kafka),
                                                       ("Redis", health.redis)) if state != OK]
    if age > STALE_AFTER_S:
        problems.append(f"the last health check is {age:.1f} s old")
    checks = {"kafka": health.kafka, "redis": health.redis, "services": health.services,
              "checked_s_ago": age}
    if problems:
        return 503, msgspec.to_builtins(HealthAnswer(error="; ".join(problems),
                                                     status="unavailable", **checks))
    down = any(state != "up" for state in health.services.values())
    return 200, msgspec.to_builtins(HealthAnswer(status="degraded" if down else OK, **checks))


class HealthChecker(threading.Thread):
    """Checks Kafka (through ``producer``), Redis (a client of its own, with short timeouts)
    and the services' heartbeats until ``stop`` is set; ``answer()`` reads the last result."""

    def __init__(self, settings: Settings, producer: Producer, stop: threading.Event) -> None:
        super().__init__(name="http-health", daemon=True)
        self.topic = settings.topics.requested
        self.producer = producer
        self.redis = store.connect(settings, timeout=PROBE_TIMEOUT_S)
        self.stop_event = stop
        self.last: Health | None = None  # replaced whole: readers need no lock

    def run(self) -> None:
        try:
            while not self.stop_event.is_set():
                self.check()
                self.stop_event.wait(CHECK_EVERY_S)
        finally:
            self.redis.close()

    def check(self) -> Health:
        redis_state, services = self._redis()
        self.last = Health(self._kafka(), redis_state, services, time.monotonic())
        return self.last

    def answer(self) -> tuple[int, dict[str, Any]]:
        return answer(self.last, time.monotonic())

    def _kafka(self) -> str:
        try:
            metadata = self.producer.list_topics(self.topic, timeout=PROBE_TIMEOUT_S)
        except KafkaException as exc:
            return f"does not answer ({error_text(exc)})"
        topic = metadata.topics.get(self.topic)
        if topic is None or topic.error is not None:
            why = topic.error.str() if topic is not None and topic.error else "not found"
            return f"topic {self.topic}: {why}"
        leaderless = sum(1 for partition in topic.partitions.values() if partition.leader < 0)
        if leaderless or not topic.partitions:
            return f"topic {self.topic}: {leaderless} partitions without a leader"
        return OK

    def _redis(self) -> tuple[str, dict[str, str]]:
        unknown = {spec.name: "unknown" for spec in PIPELINE}
        try:
            store.probe_write(self.redis)
        except redis.ResponseError as exc:
            # OOM, READONLY, MISCONF: redis-py's class (OutOfMemoryError, ReadOnlyError) or
            # Redis's own words say which.
            reason = (str(exc).splitlines() or [""])[0][:120]
            return f"refuses writes ({type(exc).__name__}: {reason})", unknown
        except redis.RedisError as exc:
            return f"does not answer ({type(exc).__name__})", unknown
        try:
            running = store.running_services(self.redis)
        except redis.RedisError as exc:
            return f"heartbeats unreadable ({type(exc).__name__})", unknown
        return OK, {spec.name: "up" if spec.name in running else "down" for spec in PIPELINE}
