"""What a pipeline service is: its decide step (Service), what a decision produces (Output,
Rejected), and how the registry describes it (ServiceSpec). The loop (loop.py) does the rest."""

from __future__ import annotations

import threading
from abc import ABC, abstractmethod
from collections.abc import Callable
from dataclasses import dataclass
from typing import Generic, TypeVar

import msgspec
import redis

from paysim.domain.messages import Codec
from paysim.infra.config import Settings
from paysim.pipeline.prometheus import PipelineMetrics

T = TypeVar("T", bound=msgspec.Struct)


@dataclass(frozen=True)
class Output:
    topic: str
    key: str | None
    value: bytes
    headers: list[tuple[str, bytes]] | None = None  # the trace context, when tracing


class Service(ABC, Generic[T]):  # Generic, not PEP 695: paysim supports Python 3.11
    """A service's decide step; the loop does everything else."""

    codec: Codec[T]
    # Whether dead letters may carry the original bytes (not on the edge topic: card data).
    dead_letters_keep_original = True
    # The record being decided's trace id while the loop traces it and its trace is
    # sampled (the loop sets it around decide); None otherwise.
    trace_id: str | None = None

    def __init__(self, spec: ServiceSpec, settings: Settings, redis_client: redis.Redis) -> None:
        self.name = spec.name
        self.input_topic = spec.topic(settings)
        self.settings = settings
        self.redis = redis_client

    def prepare(self, items: list[T]) -> None:
        """Batch-wide reads before the per-message decisions (one Redis round trip)."""

    @abstractmethod
    def decide(self, item: T, pipe: redis.client.Pipeline) -> list[Output]:
        """The outputs for one message; Redis writes go into ``pipe``."""

    def finish(self, pipe: redis.client.Pipeline) -> None:
        """Batch-wide Redis writes into ``pipe`` once every message of it was decided."""


class Rejected(Exception):
    """A message that decodes but cannot be taken (say, a card block that does not decrypt):
    it goes to the dead-letter topic with this reason."""


# (settings, Redis, instance, stop, the process's metrics or None) -> threads to start
Threads = Callable[[Settings, redis.Redis, int, threading.Event, PipelineMetrics | None],
                   list[threading.Thread]]


def group_name(service: str) -> str:
    """A service's consumer group (and its transactional ids' prefix)."""
    return f"paysim-{service}"


def no_threads(*_: object) -> list[threading.Thread]:
    return []


@dataclass(frozen=True)
class ServiceSpec:
    """One service as the registry lists it (see registry.py)."""

    name: str
    summary: str
    # The TopicSettings field naming the topic it consumes; None for the HTTP edge.
    input_topic: str | None = None
    stamps: str | None = None  # the stage time it adds to each message
    factory: Callable[[ServiceSpec, Settings, redis.Redis], Service] | None = None
    threads: Threads = no_threads  # started beside its loop, stopped with it
    scalable: bool = True  # `run-all --<name>s N` runs N instances in its consumer group

    @property
    def in_pipeline(self) -> bool:
        """A consumer of the pipeline's topics (not the HTTP edge)."""
        return self.factory is not None

    @property
    def group(self) -> str:
        """Its consumer group: an outside implementation (`run-all --external`) joins it."""
        return group_name(self.name)

    def topic(self, settings: Settings) -> str:
        if self.input_topic is None:
            raise ValueError(f"{self.name} consumes no topic")
        return getattr(settings.topics, self.input_topic)

    def build(self, settings: Settings, client: redis.Redis) -> Service:
        if self.factory is None:
            raise ValueError(f"{self.name} is not a pipeline service")
        return self.factory(self, settings, client)
