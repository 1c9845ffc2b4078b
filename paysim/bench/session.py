"""One benchmark from start to end: a private local stack, the pipeline, every phase, results.

The benchmark brings up a stack of its own (a temporary folder, free ports) so that it starts
from empty topics and an empty Redis, and never touches the stack a user is running.
"""

from __future__ import annotations

import os
import tempfile
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import asdict, dataclass, field
from datetime import UTC, datetime
from pathlib import Path
from typing import TYPE_CHECKING, Any

from paysim.bench import DEFAULT_PROCESSORS, reference
from paysim.bench.capacity import BROKER, GENERATOR, REDIS, Projected
from paysim.bench.http import CONNECTIONS, http_phase
from paysim.bench.machine import machine_facts
from paysim.bench.phases import PhaseFigures, lifecycle_saturation, open_model, saturation
from paysim.bench.resources import Sampler, total_rss
from paysim.bench.results import build_results
from paysim.bench.warmup import (
    WARM_UP_PAYMENTS,
    WARM_UP_RATE,
    WarmUp,
    WarmUpPlan,
    compiled_since,
    compiler_threads,
    warm_open_model,
)
from paysim.domain import cards
from paysim.domain.messages import encode
from paysim.infra import tracing
from paysim.infra.config import Settings, load_settings
from paysim.infra.errors import PaysimError
from paysim.infra.kafka import INTERNAL_COMPRESSION
from paysim.infra.secrets import load_keys
from paysim.infra.waiting import wait_until
from paysim.load.generator import Mix, PaymentStream, build_population
from paysim.load.ingress import new_run_id, request_message
from paysim.load.runner import Tick
from paysim.ops.run_all import start_in_background, stop_background
from paysim.pipeline import registry, store
from paysim.stack.manager import LocalStack
from paysim.stack.ports import free_port, private_stack_flags
from paysim.stack.prerequisites import find_java, find_redis_server

if TYPE_CHECKING:  # imported when tracing: it brings opentelemetry's protobuf types
    from paysim.bench.otlp import OtlpReceiver

Announce = Callable[[str], None]
REFERENCE_TOPIC = "bench.reference"
PAYLOAD_SAMPLES = 1000
PROGRESS_EVERY_S = 5.0


@dataclass(frozen=True)
class BenchOptions:
    count: int = 200_000  # payments at saturation, and records for Kafka's perf tools
    rates: tuple[float, ...] = (1000.0, 2000.0, 5000.0)
    duration_s: float = 60.0  # of each open-model rate
    seed: int = 7
    quick: bool = False
    metrics: bool = True  # Prometheus metrics served by the services and the generator
    http_duration_s: float = 30.0  # of wrk against POST /authorize
    # The warm-up's open model at WARM_UP_RATE runs at least this long, and on until the
    # broker's JIT settled (warmup.py), at most warm_up_most_s.
    warm_up_open_s: float = 20.0
    warm_up_most_s: float = 60.0
    # Traced at this sample ratio, exported to a local OTLP receiver; None: not traced.
    trace_ratio: float | None = None
    projected: Projected = field(default_factory=Projected)  # what the capacity model projects
    processors: int = DEFAULT_PROCESSORS  # processor instances, as `run-all --processors`
    partitions: int | None = None  # per topic; None: one per processor (see topic_partitions)

    @property
    def lifecycle_count(self) -> int:
        """Payments of the lifecycle mix: a quarter of the saturation run's (each brings
        about half an operation more, and the phase is there to compare rates, not to soak)."""
        return max(1000, self.count // 4)

    @property
    def topic_partitions(self) -> int:
        """Partitions per topic on the benchmark's stack: as asked, else one per processor.

        librdkafka sends a produce request per partition (confluentinc/librdkafka#1700), so
        below saturation every partition a batch touches costs the broker a request, a marker
        and a fetch; partitions no instance needs are CPU spent for nothing on two cores."""
        return self.partitions or self.processors

    @classmethod
    def quick_run(cls) -> BenchOptions:
        return cls(count=20_000, duration_s=10.0, quick=True, http_duration_s=10.0,
                   warm_up_open_s=5.0, warm_up_most_s=20.0)


def run_benchmark(options: BenchOptions, announce: Announce = print) -> dict[str, Any]:
    """Every phase on a fresh private stack; the results as bench/results.json holds them."""
    started = datetime.now(UTC)
    with tempfile.TemporaryDirectory(prefix="paysim-bench-") as scratch:
        settings = load_settings({
            **private_stack_flags(str(Path(scratch) / "stack")),
            "secrets.file": str(Path(scratch) / "secrets.json"),
            "services.dir": str(Path(scratch) / "services"),
            "topics.partitions": options.topic_partitions,
            "http.port": free_port(),
            "metrics.enabled": options.metrics,
            "tracing.sample_ratio": options.trace_ratio,
        }, env={})
        facts = machine_facts(find_java()[0], find_redis_server()[0])
        announce(f"python {facts['python']}, {facts['compiled']}")
        stack = LocalStack(settings.stack, announce=lambda line: announce(f"stack: {line}"))
        try:
            stack.up()
            payloads = sample_payloads(settings, options.seed)
            announce(f"reference: Kafka's perf tools, {options.count:,} records of "
                     f"{mean_size(payloads)} bytes (the producer tool twice: the first run "
                     "warms the broker)")
            kafka_reference = reference_figures(settings, payloads, options.count, announce)
            with traced(options.trace_ratio) as receiver:
                counts = instance_counts(options.processors)
                processors, partitions = options.processors, options.topic_partitions
                announce(f"services: {processors} processor{'s' if processors > 1 else ''}, "
                         f"one of each other; topics of {partitions} "
                         f"partition{'s' if partitions > 1 else ''}")
                if processors > partitions:  # their CPU and memory still count in its row
                    announce(f"  {processors - partitions} of the processors will get no "
                             "partition: --partitions sets how many there are")
                with running_services(settings, counts) as pids:
                    pids = {**pids, **stack_pids(stack), GENERATOR: (os.getpid(),)}
                    at_start = {name: total_rss(each) for name, each in pids.items()}
                    plan = WarmUpPlan(min(WARM_UP_PAYMENTS, options.count), WARM_UP_RATE,
                                      options.warm_up_open_s,
                                      max(options.warm_up_open_s, options.warm_up_most_s))
                    announce(f"warm-up: {plan.payments:,} payments as fast as they go, then "
                             f"{plan.rate:,.0f}/s for {plan.least_s:g} s, and on until the "
                             f"broker's JIT settles (at most {plan.most_s:g} s; not measured)")
                    saturation(settings, plan.payments, options.seed + 1)
                    broker_pid = pids[BROKER][0]
                    warm_up = warm_open_model(
                        plan, lambda length, index: open_model(
                            settings, plan.rate, length, options.seed + 3 + 1000 * index),
                        lambda: compiler_threads(broker_pid))
                    announce(warm_up_summary(warm_up))
                    fresh_redis(settings, counts)
                    announce(f"saturation: {options.count:,} payments as fast as they go")
                    compiling = compiler_threads(broker_pid)
                    with Sampler(pids) as sampler:
                        burst = saturation(settings, options.count, options.seed,
                                           progress(announce, "saturation"))
                    compiled = compiler_threads(broker_pid)
                    fresh_redis(settings, counts)
                    mix_count = options.lifecycle_count
                    announce(f"lifecycle mix: {mix_count:,} payments of the marketplace mix as "
                             "fast as they go, each follow-up sent at once")
                    mix = lifecycle_saturation(settings, mix_count, options.seed + 2,
                                               progress(announce, "lifecycle mix"))
                    rates: list[PhaseFigures] = []
                    for rate in options.rates:
                        fresh_redis(settings, counts)
                        announce(f"open model: {rate:,.0f}/s for {options.duration_s:g} s")
                        rates.append(open_model(settings, rate, options.duration_s,
                                                options.seed + int(rate),
                                                progress(announce, f"{rate:,.0f}/s")))
                    fresh_redis(settings, counts)
                    announce(f"HTTP: wrk POSTs /authorize over {CONNECTIONS} connections for "
                             f"{options.http_duration_s:g} s")
                    edge = http_phase(settings, options.http_duration_s)
                # Counted once the services stopped: each exports what it has left.
                spans = receiver_figures(receiver, options.trace_ratio)
        finally:
            stack.down()
    return build_results(
        started=started, quick=options.quick, machine=facts, reference=kafka_reference,
        saturation=burst, open_model=rates, usage=list(sampler.usage.values()),
        rss_at_start=at_start, lifecycle=mix, metrics=options.metrics, http=edge,
        tracing=spans, projected=options.projected, partitions=settings.topics.partitions,
        processors=options.processors,
        warm_up=warm_up,
        broker_compiler_s=(None if compiling is None or compiled is None
                           else round(compiled_since(compiling, compiled), 2)),
    )


@contextmanager
def traced(ratio: float | None) -> Iterator[OtlpReceiver | None]:
    """With a ratio: an OTLP receiver on 127.0.0.1 and OTEL_EXPORTER_OTLP_ENDPOINT naming it,
    for the generator (this process) and the services (its children); without, no endpoint
    at all, whatever the caller's environment says. The environment is restored after."""
    saved = {name: os.environ.pop(name) for name in tracing.ENDPOINT_VARS
             if name in os.environ}
    try:
        if ratio is None:
            yield None
            return
        tracing.require_installed()
        from paysim.bench.otlp import OtlpReceiver

        with OtlpReceiver(keep=False) as receiver:
            os.environ["OTEL_EXPORTER_OTLP_ENDPOINT"] = receiver.endpoint
            try:
                yield receiver
            finally:
                os.environ.pop("OTEL_EXPORTER_OTLP_ENDPOINT", None)
    finally:
        os.environ.update(saved)


def receiver_figures(receiver: OtlpReceiver | None,
                     ratio: float | None) -> dict[str, Any] | None:
    """What the traced run exported (the services export what is left as they stop)."""
    if receiver is None:
        return None
    return {"sample_ratio": ratio, "spans": receiver.span_count, "exports": receiver.exports,
            "bytes": receiver.bytes}


def fresh_redis(settings: Settings, counts: dict[str, int]) -> None:
    """Each phase starts from an empty Redis with a compacted append-only file, as a run of
    its own would. Otherwise the earlier phases' outcomes (over a GB by the last one) make
    Redis rewrite its append-only file during a later phase, and that rewrite, not the
    pipeline, sets the phase's tail latency. The services' heartbeats go with the flush; they
    are back within a second."""
    client = store.connect(settings)
    try:
        client.flushdb()
        client.bgrewriteaof()
        compacted = wait_until(
            lambda: not any(client.info("persistence")[flag] for flag in
                            ("aof_rewrite_in_progress", "aof_rewrite_scheduled")),
            timeout=60, interval=0.1)
    finally:
        client.close()
    if not compacted:
        raise PaysimError("Redis did not finish rewriting its append-only file in 60 s")
    service_pids(settings, counts)


def sample_payloads(settings: Settings, seed: int) -> list[bytes]:
    """Real payments.requested messages (sealed card and all), for Kafka's producer tool."""
    cipher = cards.CardCipher(load_keys(settings).card_key)
    stream = PaymentStream(build_population(seed), seed, Mix(), settings.issuer.max_amount_usd)
    run_id = new_run_id()
    return [encode(request_message(payment, run_id, cipher, None))
            for payment in stream.take(PAYLOAD_SAMPLES)]


def mean_size(payloads: list[bytes]) -> int:
    return round(sum(map(len, payloads)) / len(payloads))


def reference_figures(settings: Settings, payloads: list[bytes], count: int,
                      announce: Announce = print) -> dict[str, Any]:
    """Kafka's own producer and consumer perf tools, with the settings paysim's sender uses.

    The producer tool runs twice, and the second run is the reference: on a broker just
    started its JIT compiles the produce path while the tool runs (74,460 records/s on one
    private stack, 97,800 and 98,474 the next two times), and paysim's phases run on a warmed
    broker (warmup.py). The first run's figure is kept as ``producer_cold``."""
    props = {"acks": "all", "enable.idempotence": "true", "linger.ms": "5",
             "compression.type": INTERNAL_COMPRESSION}
    cold = reference.run_producer_perf(settings, f"{REFERENCE_TOPIC}.cold", payloads, count,
                                       props, announce=announce)
    producer = reference.run_producer_perf(settings, REFERENCE_TOPIC, payloads, count, props,
                                           announce=announce)
    consumer = reference.run_consumer_perf(settings, REFERENCE_TOPIC, count, announce=announce)
    return {"records": count, "record_bytes": mean_size(payloads),
            "producer": asdict(producer), "producer_cold": asdict(cold),
            "consumer": asdict(consumer)}


def instance_counts(processors: int) -> dict[str, int]:
    """Each pipeline service's instances: one, and ``processors`` processors."""
    return {name: processors if name == registry.PROCESSOR.name else 1
            for name in registry.PIPELINE_NAMES}


@contextmanager
def running_services(settings: Settings,
                     counts: dict[str, int]) -> Iterator[dict[str, tuple[int, ...]]]:
    """The services as `paysim run-all --detach` starts them (the same core), ``counts``
    instances each; each one's instances' pids. Stopped on the way out."""
    start_in_background(settings, counts, [
        "run-all", "--no-live", *(f"--{name}s={n}" for name, n in counts.items())])
    try:
        yield service_pids(settings, counts)
    finally:
        stop_background(settings)


def service_pids(settings: Settings, counts: dict[str, int]) -> dict[str, tuple[int, ...]]:
    """Each service's instances' pids, once every instance reports."""
    instances = [f"{name}-{i}" for name, n in counts.items() for i in range(n)]
    client = store.connect(settings)
    try:
        beats: dict[str, store.Heartbeat] = {}

        def all_reporting() -> bool:
            beats.update(store.read_heartbeats(client))
            return all(name in beats for name in instances)

        if not wait_until(all_reporting, timeout=60, interval=0.2):
            raise PaysimError(f"services not reporting after 60 s: "
                              f"{sorted(set(instances) - set(beats))}")
        pids: dict[str, tuple[int, ...]] = {}
        for name in instances:
            pids[beats[name].service] = (*pids.get(beats[name].service, ()), beats[name].pid)
        return pids
    finally:
        client.close()


def stack_pids(stack: LocalStack) -> dict[str, tuple[int, ...]]:
    names = {"kafka": BROKER, "redis": REDIS}
    return {names.get(status.name, status.name): (status.pid,) for status in stack.status()
            if status.pid is not None}


def warm_up_summary(warm_up: WarmUp) -> str:
    """The warm-up's line once it ran: how long the open model ran, and why it stopped."""
    line = f"  {warm_up.open_model_rate:,.0f}/s ran {warm_up.open_model_s:g} s"
    if warm_up.compiler_s is None:
        return f"{line} (the broker's JIT threads could not be read)"
    state = "settled" if warm_up.jit_settled else "still compiling at the end"
    return (f"{line}: the broker's JIT compiler threads took {warm_up.compiler_s:.1f} s of CPU, "
            f"{state}")


def progress(announce: Announce, label: str) -> Callable[[Tick], None]:
    """A line every few seconds while a phase runs."""
    last = [time.monotonic()]

    def on_tick(tick: Tick) -> None:
        if time.monotonic() - last[0] < PROGRESS_EVERY_S:
            return
        last[0] = time.monotonic()
        announce(f"  {label}: {tick.elapsed_s:5.1f} s  sent {tick.sent:,}  "
                 f"completed {tick.completed:,}")

    return on_tick
