"""Before run-all starts services: Kafka and Redis answer (the local stack is started when none is
configured and none answers), and the topics exist."""

from __future__ import annotations

from collections.abc import Callable, Iterable, Mapping

import redis

from paysim.infra.config import Settings
from paysim.infra.errors import PaysimError
from paysim.infra.kafka import cluster_metadata
from paysim.infra.topics import ensure_topics
from paysim.pipeline import registry, store
from paysim.stack.manager import LocalStack

Announce = Callable[[str], None]
# How long the probe waits for Kafka's metadata; never longer than the kafka.timeout setting.
PROBE_TIMEOUT_S = 3.0


def answering(settings: Settings) -> tuple[bool, bool]:
    """(Kafka answers, Redis answers) at the configured addresses."""
    kafka = cluster_metadata({"bootstrap.servers": settings.kafka_bootstrap,
                              **settings.kafka.client},
                             timeout=min(PROBE_TIMEOUT_S, settings.kafka.timeout)) is not None
    try:
        client = store.connect(settings, timeout=3.0)
    except PaysimError:  # a Redis Cluster's client asks for its slots at once
        return kafka, False
    try:
        redis_ok = bool(client.ping())
    except redis.RedisError:
        redis_ok = False
    finally:
        client.close()
    return kafka, redis_ok


def ensure_services_reachable(settings: Settings, announce: Announce) -> None:
    """Kafka and Redis must answer; start the local stack for whatever is not configured."""
    kafka_ok, redis_ok = answering(settings)
    if kafka_ok and redis_ok:
        return
    local_needed = (not kafka_ok and settings.kafka.bootstrap is None) or (
        not redis_ok and settings.redis.url is None)
    if local_needed:
        announce("no Kafka or Redis answers on the defaults: starting the local stack")
        for result in LocalStack(settings.stack, announce).up():
            announce(f"  {result.name} {'started' if result.started else 'already running'} "
                     f"on {result.address}")
        kafka_ok, redis_ok = answering(settings)
    if not kafka_ok:
        raise PaysimError(f"Kafka at {settings.kafka_bootstrap} does not answer")
    if not redis_ok:
        raise PaysimError(f"Redis at {settings.redis_url} does not answer")


def prepare_run(settings: Settings, announce: Announce, counts: Mapping[str, int]) -> None:
    """Kafka and Redis answer, the topics exist; ``counts``: the instances this run starts of
    each service, said when they are more than its topic's partitions."""
    ensure_services_reachable(settings, announce)
    report = ensure_topics(settings)
    if report.created:
        announce(f"created topics: {', '.join(report.created)}")
    for line in beyond_partitions(counts, input_topics(settings, counts), report.partitions,
                                  set(report.created)):
        announce(line)


def input_topics(settings: Settings, names: Iterable[str]) -> dict[str, str]:
    """Each named service's input topic; the services that consume none are left out."""
    specs = [registry.by_name(name) for name in names]
    return {spec.name: spec.topic(settings) for spec in specs if spec.input_topic is not None}


def beyond_partitions(counts: Mapping[str, int], inputs: Mapping[str, str],
                      partitions: Mapping[str, int], created: set[str]) -> list[str]:
    """A line for each service with more instances than its input topic (``inputs``) has
    partitions: a consumer group gives the members beyond them nothing to do. ``created``:
    the topics this run made (the others were there, and keep their partitions)."""
    lines = []
    for name, count in counts.items():
        topic = inputs.get(name)
        held = partitions.get(topic) if topic is not None else None
        if held is None or count <= held:
            continue
        remedy = ("topics.partitions sets a new topic's partitions" if topic in created else
                  "the topic was there already: add partitions to it on the broker")
        lines.append(f"{name}: {count} instances on the {held} partitions of {topic}: "
                     f"{count - held} of them will get no partition ({remedy}; see "
                     "docs/deployment.md)")
    return lines
