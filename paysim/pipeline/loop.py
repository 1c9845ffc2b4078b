"""The one consume-decide-produce loop every service runs, inside Kafka transactions.

Per batch: decode each message (undecodable ones become dead letters), let the service decide
each one, then in one Kafka transaction add the consumed offsets and produce every output
(TransactionOpening), write Redis in one pipeline meanwhile, and commit. Any failure aborts
the transaction, rewinds the consumer to the start of the batch and tries again after a
backoff: nothing is lost and the process lives on.
Only a fatal Kafka error (this producer fenced by a newer instance) ends the process, for the
supervisor to restart it.

After a broker restart librdkafka can hang inside a transactional call past its own timeout
(confluentinc/librdkafka#5456, #5511). So transactional calls run on a worker thread the loop
can give up on; a call that hangs or overruns its timeout makes the loop renew its producer
in-process (see ServiceLoop._renew) instead of waiting for the supervisor's watchdog. When the
consumer reports every broker down, the producer is renewed before the next transaction,
without waiting for a call to hang. The consumer is a static group member (its instance's
group.instance.id), kept through all this; one fenced off its group is replaced in-process.
"""

from __future__ import annotations

import base64
import hashlib
import logging
import queue
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass, field, replace
from typing import TYPE_CHECKING, Any, Generic

import redis
from confluent_kafka import Consumer, KafkaError, KafkaException, Message, Producer, TopicPartition

from paysim.domain.messages import DeadLetter, SchemaError, encode, now_us
from paysim.infra.config import Settings
from paysim.infra.kafka import INTERNAL_COMPRESSION, client_config, error_text, produce
from paysim.infra.topics import ensure_topics
from paysim.pipeline import store
from paysim.pipeline.prometheus import ERROR, OK, REJECTED, UNDECODABLE, PipelineMetrics
from paysim.pipeline.service import Output, Rejected, Service, T, group_name

if TYPE_CHECKING:  # the SDK is imported only when tracing is on (paysim.infra.tracing)
    from paysim.infra.otel import BatchTrace, PaymentTracer

# Under the 3 s after which `ps` takes a silent service for gone.
MAX_BACKOFF_S = 2.0
# A dead letter keeps at most this much of the original (the record itself stays on its topic,
# at the partition and offset the letter names); more would not fit in one Kafka record.
DEAD_LETTER_MAX_ORIGINAL = 64 * 1024
# Transactional calls take milliseconds; one taking this long is waiting for a broker. Well
# under the watchdog's 30 s, so that the loop gives up on it and recovers first.
CALL_TIMEOUT_S = 3.0
# The first init_transactions of a process may wait for the broker to create its
# transaction-state topic.
START_TIMEOUT_S = 60.0
# A renewing producer's init_transactions is called again every second until the broker
# answers: librdkafka goes on acquiring the producer id between calls, and the loop writes its
# heartbeat between them (`ps` takes a service silent for 3 s for gone).
RENEW_CALL_TIMEOUT_S = 1.0
# How long past its own timeout a call may run before the loop gives up on it.
CALL_GRACE_S = 1.0
# The shortest batch cycle, unless a batch fills first: after a batch that was not full, the
# next fetch waits until this long after that batch began. With the offsets added first
# (TransactionOpening) nothing holds a stage back any more, and at 2,000 payments/s the
# stages cycled faster, each a smaller transaction, each costing the machine 2.5-3.3 ms of
# CPU: HTTP fell 9-30%. 8 ms kept the number of transactions where it was, with the 2,000/s
# p99 at 50 ms against 73-82 (docs/performance.md, "The offsets first, and a shortest cycle").
# 12 ms made about 30% fewer transactions than 8 at 2,000/s, for 2-5 ms more at the median:
# less CPU, HTTP 12-36% higher, the 5,000/s p99 lower in every run compared (docs/
# performance.md, "The shortest cycle's length"). 5 ms made more transactions than 8.
MIN_CYCLE_S = 0.012
# A consumer close that takes longer is left to finish (or not) on its own thread.
CLOSE_TIMEOUT_S = 5.0
# Batches in a row that Kafka failed before the clients are renewed even though no call hung:
# a producer can also stay stuck in a state where every call fails at once.
FAILURES_BEFORE_RENEWAL = 5
# Clients abandoned inside calls that never returned cost threads and sockets: past this
# many at once the process ends instead, for the supervisor to start a clean one.
MAX_ABANDONED = 3
# A consumer fenced again this soon after it was replaced for it has a twin (another process
# with its instance id): the process ends rather than fence the twin in turn.
FENCED_AGAIN_S = 30.0


@dataclass
class Counters:
    processed: int = 0
    dead_letters: int = 0
    aborted_batches: int = 0
    renewals: int = 0  # times the producer was replaced (see ServiceLoop._renew)
    started_at: float = field(default_factory=time.time)


class FatalServiceError(Exception):
    """The process cannot go on (for example: fenced by a newer instance)."""


class ClientStuck(Exception):
    """A Kafka call hung or overran its timeout: this client is not to be trusted again."""


class _Call:
    def __init__(self, function: Callable[..., Any], args: tuple[Any, ...]) -> None:
        self.function, self.args = function, args
        self.done = threading.Event()
        self.result: Any = None
        self.error: BaseException | None = None

    def run(self) -> None:
        try:
            self.result = self.function(*self.args)
        except BaseException as exc:  # handed to the caller, who decides
            self.error = exc
        finally:
            self.done.set()


class CallWorker:
    """One daemon thread running one client's blocking calls, one at a time, so that the
    loop can stop waiting for a call that does not return. A hung call keeps the thread (and
    its client) until it returns, if ever; a daemon thread does not keep the process alive."""

    def __init__(self, client: Any, name: str) -> None:
        self.client = client
        self.stuck = False  # a call was given up: the thread may never come back
        self._calls: queue.SimpleQueue[_Call | None] = queue.SimpleQueue()
        self.thread = threading.Thread(target=self._serve, name=name, daemon=True)
        self.thread.start()

    def _serve(self) -> None:
        while (call := self._calls.get()) is not None:
            call.run()
            del call
        # The client's last reference goes here, not on the loop's thread: destroying a
        # librdkafka handle can block.
        self.client = None

    def call(self, function: Callable[..., Any], *args: Any, wait: float) -> Any:
        """``function(*args)``, or ClientStuck when it has not returned after ``wait`` s."""
        return self.wait(self.submit(function, *args), wait)

    def submit(self, function: Callable[..., Any], *args: Any) -> _Call:
        """Queue ``function(*args)``; wait() for its result."""
        call = _Call(function, args)
        self._calls.put(call)
        return call

    def wait(self, call: _Call, wait: float) -> Any:
        """A submitted call's result, or ClientStuck when it has not returned after ``wait``
        s more."""
        if not call.done.wait(max(0.0, wait)):
            self.stuck = True
            raise ClientStuck(f"{getattr(call.function, '__name__', 'a call')} did not return "
                              f"within {wait:g} s")
        if call.error is not None:
            raise call.error
        return call.result

    def retire(self) -> None:
        """End the thread once its current call, if any, returns. The caller must hold no
        reference to the client any more."""
        self._calls.put(None)


def dead_letter(service: str, message: Message, reason: str, topic: str,
                keep_original: bool = True) -> Output:
    """A record the service could not take, why, and (within limits) its original bytes.

    ``keep_original`` is False for the edge topic: a malformed record there may hold a card
    number in clear, which must not travel further; its hash and size identify it."""
    key, value = message.key(), message.value() or b""
    kept = value[:DEAD_LETTER_MAX_ORIGINAL] if keep_original else b""
    letter = DeadLetter(
        service=service, source_topic=message.topic(), partition=message.partition(),
        offset=message.offset(), reason=reason[:500],
        key=base64.b64encode(key).decode() if key is not None and keep_original else None,
        original=base64.b64encode(kept).decode() if keep_original else None,
        original_size=len(value), original_sha256=hashlib.sha256(value).hexdigest(),
        truncated=keep_original and len(value) > len(kept), at=now_us(),
    )
    return Output(topic, None, encode(letter))


def first_offsets(messages: list[Message]) -> dict[tuple[str, int], int]:
    """The batch's first offset in each of its partitions (where to read it again)."""
    return _per_partition(messages, min, 0)


def next_offsets(messages: list[Message]) -> dict[tuple[str, int], int]:
    """The offset after the batch's last in each of its partitions (what to commit)."""
    return _per_partition(messages, max, 1)


def _per_partition(messages: list[Message], keep: Callable[[int, int], int],
                   past: int) -> dict[tuple[str, int], int]:
    """Per partition, ``keep`` over the batch's offsets, each plus ``past``."""
    found: dict[tuple[str, int], int] = {}
    for message in messages:
        key, offset = (message.topic(), message.partition()), message.offset() + past
        found[key] = keep(found.get(key, offset), offset)
    return found


class TransactionOpening:
    """A batch's transaction opened in one call on the worker thread: begin_transaction, its
    offsets (AddOffsetsToTxn and TxnOffsetCommit), then its records. One hand-off to the
    worker instead of one per step: at 2,000 payments/s each hand-off was two thread
    wake-ups on two busy cores. Called again after a retriable error
    (ServiceLoop._kafka_wait), it resumes at the step that failed.

    The offsets go first. The coordinator refuses a transaction's first request while it
    still writes the markers of the producer's last one; librdkafka retries a refused
    AddOffsetsToTxn after retry.backoff.ms (1 ms here), but a refused AddPartitionsToTxn,
    which the first record triggers, after a fixed 20 ms. Records produced once the offsets
    are in never meet the refusal. At 2,000/s, with the shortest cycle (MIN_CYCLE_S), each
    stage's p99 came down by 12-18 ms (docs/performance.md, "The offsets first, and a
    shortest cycle")."""

    def __init__(self, producer: Producer, outputs: list[Output], offsets: list[TopicPartition],
                 group_metadata: object, clock: Callable[[], float] = time.monotonic) -> None:
        self.producer, self.outputs, self.clock = producer, outputs, clock
        self.offsets, self.group_metadata = offsets, group_metadata
        self.begun = False
        self.offsets_added = False
        self.produced = 0  # outputs handed to the producer so far

    @property
    def __name__(self) -> str:
        """The step under way, for the loop's messages about a call that failed or hung."""
        if not self.begun:
            return "begin_transaction"
        return "send_offsets_to_transaction" if not self.offsets_added else "produce"

    def __call__(self, timeout: float) -> None:
        """The steps not done yet, within ``timeout`` s for them all (the loop's limit for
        the call)."""
        started = self.clock()
        if not self.begun:
            self.producer.begin_transaction()
            self.begun = True
        if not self.offsets_added:
            left = max(0.0, timeout - (self.clock() - started))
            self.producer.send_offsets_to_transaction(self.offsets, self.group_metadata, left)
            self.offsets_added = True
        while self.produced < len(self.outputs):
            output = self.outputs[self.produced]
            # Bounded: a queue that stays full (the broker gone) ends the call, which then
            # renews the producer, rather than keeping this thread polling it for ever.
            produce(self.producer, output.topic, output.value, key=output.key,
                    headers=output.headers, deadline=started + timeout, clock=self.clock)
            self.produced += 1


@dataclass
class PendingCall:
    """A producer call on its way on the worker thread (ServiceLoop._kafka_start)."""

    function: Callable[..., Any]
    args: tuple[Any, ...]  # with the timeout, when it takes one
    limit: float  # its timeout, or the call timeout for calls without one
    began: float  # the loop's clock when it was queued
    handle: _Call

    @property
    def name(self) -> str:
        """The call's name for the loop's messages; read when they are written, as a
        TransactionOpening names the step under way."""
        return getattr(self.function, "__name__", "call")


class ServiceLoop(Generic[T]):
    def __init__(self, service: Service[T], settings: Settings, instance: int = 0,
                 stop: threading.Event | None = None, *, consumer: Consumer | None = None,
                 producer: Producer | None = None,
                 new_consumer: Callable[[], Consumer] | None = None,
                 new_producer: Callable[[], Producer] | None = None,
                 metrics: PipelineMetrics | None = None,
                 tracer: PaymentTracer | None = None,
                 clock: Callable[[], float] = time.monotonic) -> None:
        """``consumer`` and ``producer`` replace the first Kafka clients built here, and
        ``new_consumer`` and ``new_producer`` build the ones that replace them (tests).
        ``metrics``, when given, are updated once per batch; ``tracer``, when given, traces
        each batch and each record carrying a trace context (see paysim.infra.otel).
        ``clock`` is what the loop's deadlines and cycles are timed by (tests give one whose
        time moves only when a fake call says it took some)."""
        self.service = service
        self.clock = clock
        self.metrics = metrics
        self.tracer = tracer
        self._outcomes: dict[str, int] = {}  # the batch's messages by outcome (metrics)
        self.settings = settings
        self.instance = instance
        self.stop = stop or threading.Event()
        self.counters = Counters()
        self.log = logging.getLogger(f"paysim.{service.name}")
        self.group = group_name(service.name)
        self.new_consumer = new_consumer or self._build_consumer
        self.new_producer = new_producer or self._build_producer
        self.consumer = consumer if consumer is not None else self.new_consumer()
        self.producer = producer if producer is not None else self.new_producer()
        self.worker = CallWorker(self.producer, f"{service.name}-producer")
        self.call_timeout, self.call_grace = CALL_TIMEOUT_S, CALL_GRACE_S  # tests shorten them
        self.min_cycle = MIN_CYCLE_S
        self._cycle_began: float | None = None  # when the last batch began, if it was not full
        self._consumer_open = False  # subscribed and not closed
        # The consumer's partitions, kept from its rebalance callbacks: asking the consumer
        # for them once per batch was up to 14% of the authorizer's samples at small batches.
        self._assigned: set[tuple[str, int]] = set()
        # The consumer's group metadata for send_offsets_to_transaction, kept from one batch
        # to the next (see _group_metadata).
        self._metadata: object | None = None
        self._unhealthy: str | None = None  # why the producer must be renewed before going on
        self._producer_spent = False  # the producer is the one to replace, not one to init
        # The first offset, per partition, of a batch whose transaction may or may not have
        # committed (a call given up, an abort that failed): the consumer resumes there from
        # the committed offsets once the renewal has settled it.
        self._in_doubt: dict[tuple[str, int], int] = {}
        self._brokers_lost = False  # the consumer saw every broker go (see on_kafka_error)
        self._producer_used = False  # a transaction committed since its init_transactions
        self._consumer_fenced: str | None = None  # the consumer's fatal error, if any
        self._last_fenced = -FENCED_AGAIN_S  # the clock's time of the last replacement
        self._kafka_failures = 0  # batches in a row that Kafka failed
        self._abandoned: list[threading.Thread] = []  # threads inside calls that never returned
        self._last_heartbeat = 0.0

    def _build_consumer(self) -> Consumer:
        return Consumer(client_config(self.settings, **{
            "group.id": self.group, "enable.auto.commit": False,
            "auto.offset.reset": "earliest",
            "isolation.level": "read_committed", "enable.partition.eof": False,
            # A killed instance's partitions move on after 6 s (the broker's minimum), not 45.
            "session.timeout.ms": 6000, "heartbeat.interval.ms": 1500,
            # Static membership (KIP-345): a member that comes back under its instance's id
            # takes its place at once. Without it, a restarted instance, or a consumer whose
            # session ran out while the broker was down (any outage over 6 s), joined as a
            # new member, and the group waited for the old one's session to expire: 6 s
            # more after every broker restart and every service restart (broker logs: "Loaded
            # classic group ... with 1 members", then 6 s later "Member ... has failed").
            # The price: a stopped instance does not leave; its partitions move on when its
            # session expires, as a killed one's do.
            # The topic is part of it: a static member that rejoins with another subscription
            # (the same group configured with other topics) is handed its old assignment
            # without a rebalance, and would read the old topic (seen in the suite).
            "group.instance.id": f"{self.service.name}-{self.instance}@"
                                 f"{self.service.input_topic}",
            # librdkafka prefetches up to 64 MB by default: with a backlog, each service's
            # memory grew by 140% (66 -> 208 MiB) over 200,000 payments. 1 MB queued (about
            # 2,300 payments, four batches ahead) and 1 MB per fetch keep a loaded service
            # within 10 MB of an idle one. A full queue pauses fetching for
            # fetch.queue.backoff.ms, 1 s by default: that pause cost a quarter of the
            # throughput (9,400 -> 7,300 payments/s) until it was cut to 5 ms.
            "queued.max.messages.kbytes": 1024, "fetch.max.bytes": 1024 * 1024,
            "fetch.queue.backoff.ms": 5,
            "logger": self.log, "error_cb": self.on_kafka_error,
        }))

    def _build_producer(self) -> Producer:
        # Stable per service instance, so a restart fences the dead process at once and
        # aborts its open transaction instead of leaving it to time out; the same holds for
        # the producer that replaces a stuck one in this process. No linger: a batch's
        # records are all produced at once and the commit right after sends them anyway;
        # lingering only delayed the commit (1,000/s open model: p50 112 -> 65 ms).
        return Producer(client_config(self.settings, **{
            "transactional.id": f"{self.group}-{self.instance}", "linger.ms": 0,
            # A refused AddOffsetsToTxn (the last transaction's markers still being written)
            # is asked again after 1 ms, doubling: see TransactionOpening.
            "retry.backoff.ms": 1, "retry.backoff.max.ms": 50,
            "compression.type": INTERNAL_COMPRESSION, "logger": self.log,
        }))

    def on_kafka_error(self, error: KafkaError) -> None:
        """The consumer's client-wide errors, served by its poll on the loop's thread.

        Every broker gone means a broker restart, or a network cut: the producer's cached
        coordinators will be stale when the broker is back, and its first
        send_offsets_to_transaction then hangs until given up (seen: 4 s; see _renew). Not
        for a producer that has committed nothing yet: the consumer is not polled while the
        loop renews its producer, and the news of the outage the new producer was made for
        arrives after it (a dozen times)."""
        if error.code() != KafkaError._ALL_BROKERS_DOWN:
            self.log.warning("consumer: %s", error.str())
        elif self._producer_used and not self._brokers_lost:
            self._brokers_lost = True
            self.log.warning("consumer: %s", error.str())

    def run(self) -> None:
        ensure_topics(self.settings)
        try:
            self._kafka_call(self.producer.init_transactions, timeout=START_TIMEOUT_S)
        except ClientStuck as exc:
            raise FatalServiceError(f"Kafka: {exc}") from None
        self._subscribe()
        self.log.info("started: group %s, instance %d", self.group, self.instance)
        backoff = 0.1
        try:
            while not self.stop.is_set():
                self._heartbeat()
                if self._brokers_lost:
                    self._brokers_lost = False
                    if self._unhealthy is None:
                        self._mark_unhealthy("every broker went down")
                if self._unhealthy is not None:
                    began = self.clock()
                    if not self._renew():
                        # From the start of the attempt: one that waited for the broker
                        # has waited already.
                        self.stop.wait(max(0.0, backoff - (self.clock() - began)))
                        backoff = min(backoff * 2, MAX_BACKOFF_S)
                        continue
                    backoff = 0.1
                messages = [m for m in self._next_batch() if self._usable(m)]
                if self._consumer_fenced is not None:  # these came from a dead consumer
                    self._replace_fenced_consumer()
                    continue
                if self._brokers_lost:  # said while fetching these: not with this producer
                    self._rewind(messages)
                    continue
                if not messages:
                    continue
                if self._process(messages):
                    backoff = 0.1
                else:
                    self.stop.wait(backoff)
                    backoff = min(backoff * 2, MAX_BACKOFF_S)
        finally:
            self._close()

    def _subscribe(self) -> None:
        self._assigned, self._metadata = set(), None
        self.consumer.subscribe([self.service.input_topic], on_assign=self._on_assign,
                                on_revoke=self._on_revoke)
        self._consumer_open = True

    def _on_assign(self, consumer: Consumer, partitions: list[TopicPartition]) -> None:
        """Partitions given to the consumer (all of them, or with the cooperative protocol
        the ones added). Served by its poll, on the loop's thread."""
        if consumer is self.consumer:  # not a replaced consumer's, closing late
            self._assigned |= {(tp.topic, tp.partition) for tp in partitions}
            self._metadata = None  # a new generation of the group

    def _on_revoke(self, consumer: Consumer, partitions: list[TopicPartition]) -> None:
        """Partitions taken from the consumer, or lost (librdkafka calls this for both)."""
        if consumer is self.consumer:
            self._assigned -= {(tp.topic, tp.partition) for tp in partitions}
            self._metadata = None

    def _next_batch(self) -> list[Message]:
        """What is waiting, up to a batch; else the first message to arrive within 0.2 s.

        Not consume(n, timeout) as a rule: that waits the whole timeout for n messages, which
        at low load adds the timeout to every stage's latency. Only after a batch that was not
        full and began less than MIN_CYCLE_S ago does it wait, for the rest of that time or a
        full batch, whichever comes first (see MIN_CYCLE_S)."""
        size = self.settings.services.batch_size
        began, self._cycle_began = self._cycle_began, None
        rest = 0.0 if began is None else began + self.min_cycle - self.clock()
        batch = self.consumer.consume(num_messages=size, timeout=max(0.0, rest))
        if not batch:
            first = self.consumer.poll(0.2)
            if first is None:
                return []
            batch = [first, *self.consumer.consume(num_messages=size - 1, timeout=0)]
        self._cycle_began = self.clock() if len(batch) < size else None
        return batch

    def _usable(self, message: Message) -> bool:
        error = message.error()
        if error is None:
            return True
        # A consumer's only fatal error is its fencing by a member with its group.instance.id
        # (see _replace_fenced_consumer). The binding hands it over as an error event with
        # the code _FATAL and the fatal flag unset: until 2026-11 the loop took it for a
        # passing error, and a fenced consumer polled on, empty, for good.
        if error.fatal() or error.code() == KafkaError._FATAL:
            self._consumer_fenced = error.str()
        self.log.warning("consumer: %s", error.str())
        return False

    def _process(self, messages: list[Message]) -> bool:
        """One transaction for the batch; False (and the batch rewound, or the clients marked
        for renewal) when it had to abort."""
        try:
            self._transact(messages)
            self._kafka_failures = 0
            return True
        except FatalServiceError:
            raise
        except ClientStuck as exc:
            # No abort: the producer's thread is still inside the call. The renewal fences
            # the producer, ending its transaction, and the consumer then resumes from the
            # committed offsets, so no rewind either.
            self._count_abort()
            self._metadata = None
            self.log.warning("batch of %d abandoned, will retry with a new producer: %s",
                             len(messages), exc)
            self._mark_unhealthy(str(exc))
            self._in_doubt = first_offsets(messages)
            return False
        except (KafkaException, redis.RedisError) as exc:
            self._count_abort()
            self._metadata = None  # in case the broker found it stale
            self.log.warning("batch of %d aborted, will retry: %s", len(messages),
                             error_text(exc))
            if not self._abort():
                self._in_doubt = first_offsets(messages)
            self._rewind(messages)
            if isinstance(exc, KafkaException):
                self._kafka_failures += 1
                if self._kafka_failures >= FAILURES_BEFORE_RENEWAL and self._unhealthy is None:
                    self._mark_unhealthy(f"{self._kafka_failures} batches in a row failed")
            return False

    def _count_abort(self) -> None:
        self.counters.aborted_batches += 1
        if self.metrics is not None:
            self.metrics.aborted()

    def _dead(self, message: Message, reason: str, outcome: str) -> Output:
        self._outcomes[outcome] += 1
        return dead_letter(self.service.name, message, reason, self.settings.topics.dlq,
                           self.service.dead_letters_keep_original)

    def _decide_all(self, decoded: list[tuple[Message, T]], outputs: list[Output],
                    trace: BatchTrace | None = None) -> redis.client.Pipeline:
        """Each record's outputs; a record that breaks the rules' code becomes a dead letter."""
        pipe = self.service.redis.pipeline(transaction=False)
        try:
            self._decide_groups(decoded, outputs, trace, pipe)
        finally:
            self.service.finish(pipe)
        return pipe

    def _decide_groups(self, decoded: list[tuple[Message, T]], outputs: list[Output],
                       trace: BatchTrace | None, pipe: redis.client.Pipeline) -> None:
        try:
            self.service.prepare([item for _, item in decoded])
            groups = [decoded]
        except (KafkaException, redis.RedisError):
            raise
        except Exception:  # one record broke the batch-wide step: take them one at a time
            self.log.exception("batch preparation failed; deciding record by record")
            groups = [[pair] for pair in decoded]
        for group in groups:
            if len(groups) > 1:
                try:
                    self.service.prepare([item for _, item in group])
                except (KafkaException, redis.RedisError):
                    raise
                except Exception as exc:
                    message = group[0][0]
                    outputs.append(self._dead(message, f"internal error: {type(exc).__name__}",
                                              ERROR))
                    continue
            for message, item in group:
                try:
                    if trace is None:
                        outputs.extend(self.service.decide(item, pipe))
                    else:
                        outputs.extend(self._decide_traced(trace, message, item, pipe))
                except (KafkaException, redis.RedisError):
                    raise
                except Rejected as exc:
                    outputs.append(self._dead(message, str(exc), REJECTED))
                except Exception as exc:
                    self.log.exception("cannot decide record %s/%d@%d", message.topic(),
                                       message.partition(), message.offset())
                    outputs.append(self._dead(message,
                                              f"internal error: {type(exc).__name__}: {exc}",
                                              ERROR))

    def _decide_traced(self, trace: BatchTrace, message: Message, item: T,
                       pipe: redis.client.Pipeline) -> list[Output]:
        """decide() inside the record's process span; each output carries the trace
        context for the next hop."""
        hop = trace.hop(message)
        if hop is None:  # the record came without a trace context
            return self.service.decide(item, pipe)
        self.service.trace_id = hop.trace_id
        error = None
        try:
            decided = self.service.decide(item, pipe)
            return [replace(output, headers=hop.headers(output.topic)) for output in decided]
        except Exception as exc:
            error = type(exc).__name__
            raise
        finally:
            self.service.trace_id = None
            hop.end(error)

    def _transact(self, messages: list[Message]) -> None:
        started = time.monotonic()  # the batch's duration in the metrics, on their clock
        # A rebalance between fetching and here may have taken partitions away: their records
        # belong to the new owner now, and processing them too would doubly produce.
        assigned = self._assigned
        messages = [m for m in messages if (m.topic(), m.partition()) in assigned]
        if not messages:
            return
        if self.tracer is None:
            self._commit_batch(messages, started, None)
            return
        with self.tracer.batch(self.service.input_topic, self.group,
                               f"{self.service.name}-{self.instance}", messages) as trace:
            self._commit_batch(messages, started, trace)

    def _commit_batch(self, messages: list[Message], started: float,
                      trace: BatchTrace | None) -> None:
        """Decide the batch, then produce, write Redis and commit in one transaction."""
        self._outcomes = dict.fromkeys((UNDECODABLE, REJECTED, ERROR), 0)
        outputs: list[Output] = []
        decoded: list[tuple[Message, T]] = []
        for message in messages:
            try:
                decoded.append((message, self.service.codec.decode(message.value())))
            except SchemaError as exc:
                outputs.append(self._dead(message, str(exc), UNDECODABLE))
        pipe = self._decide_all(decoded, outputs, trace)
        # The offsets to commit come from the batch itself, not from the consumer's position,
        # which a rebalance may have moved.
        offsets = next_offsets(messages)
        # The worker thread opens the transaction, adds the offsets (two round trips to the
        # broker) and produces, while this one writes Redis. Both are done before the commit.
        opening = self._kafka_start(
            TransactionOpening(self.producer, outputs,
                               [TopicPartition(t, p, o) for (t, p), o in offsets.items()],
                               self._group_metadata(), self.clock),
            timeout=self.call_timeout)
        try:
            pipe.execute()
        finally:  # also after a Redis error: the abort queues behind this call
            self._kafka_wait(opening)
        self._kafka_call(self.producer.commit_transaction, timeout=self.call_timeout)
        self._producer_used = True
        dead = sum(self._outcomes.values())
        self.counters.processed += len(messages) - dead
        self.counters.dead_letters += dead
        if self.metrics is not None:
            self._outcomes[OK] = len(messages) - dead
            self.metrics.batch(messages, self._outcomes, started)

    def _group_metadata(self) -> object:
        """The consumer's group metadata, asked of it once per generation of the group.

        librdkafka answers consumer_group_metadata() from its main thread, and the Python
        client waits for the answer holding the GIL: up to a millisecond a batch under load,
        about a tenth of the authorizer's and the notifier's samples at saturation. What it
        holds (the member and its generation) changes in a rebalance, which the rebalance
        callbacks report at the next fetch. librdkafka may change it on its own thread before
        that (a rejoin); the broker then refuses the stale one (an abortable error, not a
        fatal one), the batch aborts, and the retry asks again."""
        metadata = self._metadata
        if metadata is None:
            metadata = self._metadata = self.consumer.consumer_group_metadata()
        return metadata

    def _kafka_call(self, call: Callable[..., Any], *args: Any,
                    timeout: float | None = None) -> Any:
        """Run a producer call on its worker thread, retrying what Kafka says is retriable.

        ``timeout`` is passed to the call as its last argument. ClientStuck when the call
        overruns it (or the call timeout, for calls without one) by more than the grace, or
        fails after running longer than it: a client in that state does not recover by
        itself after a broker restart (librdkafka#5456, #5511)."""
        return self._kafka_wait(self._kafka_start(call, *args, timeout=timeout))

    def _kafka_start(self, call: Callable[..., Any], *args: Any,
                     timeout: float | None = None) -> PendingCall:
        """Queue a producer call on its worker thread; _kafka_wait() for its result."""
        limit = self.call_timeout if timeout is None else timeout
        full = args if timeout is None else (*args, timeout)
        return PendingCall(call, full, limit, self.clock(),
                           self.worker.submit(call, *full))

    def _kafka_wait(self, pending: PendingCall) -> Any:
        """The result of a call _kafka_start() queued, retried as _kafka_call() says."""
        limit = pending.limit
        for attempt in range(10):
            try:
                waited = self.clock() - pending.began
                return self.worker.wait(pending.handle, limit + self.call_grace - waited)
            except ClientStuck:
                raise ClientStuck(f"{pending.name} did not return within "
                                  f"{limit + self.call_grace:g} s") from None
            except BufferError:
                raise ClientStuck(f"{pending.name}: the producer's queue stayed full for "
                                  f"{limit:g} s") from None
            except KafkaException as exc:
                name = pending.name
                error: KafkaError = exc.args[0]
                if error.fatal():
                    raise FatalServiceError(f"{name}: {error.str()}") from None
                if self.clock() - pending.began >= limit:
                    raise ClientStuck(f"{name} failed after its {limit:g} s: "
                                      f"{error.str()}") from None
                if not error.retriable() or attempt == 9:
                    raise
                time.sleep(0.1 * (attempt + 1))
                pending = replace(pending, began=self.clock(),
                                  handle=self.worker.submit(pending.function, *pending.args))
        return None

    def _abort(self) -> bool:
        """Abort the open transaction; False when it may not have been aborted (the
        producer is then marked for renewal)."""
        try:
            self._kafka_call(self.producer.abort_transaction, timeout=self.call_timeout)
        except ClientStuck as exc:
            self._mark_unhealthy(str(exc))
            return False
        except KafkaException as exc:
            error: KafkaError = exc.args[0]
            # Nothing to abort (the failure came before begin_transaction) is fine; any other
            # failure leaves the producer in a state no one knows.
            if error.code() != KafkaError._STATE:
                self.log.warning("abort_transaction: %s", error.str())
                self._mark_unhealthy(f"abort_transaction: {error.str()}")
                return False
        return True

    def _mark_unhealthy(self, reason: str) -> None:
        self._unhealthy = reason
        self._producer_spent = True

    def _renew(self) -> bool:
        """Replace the producer; True once the new one is ready, False to try again.

        The new producer's init_transactions, under the same transactional.id, fences the
        old producer and completes its open transaction: aborted, or committed if its commit
        had reached the coordinator. Then the consumer resumes the batch in doubt, if any,
        from the committed offsets, which now tell which of the two happened: the batch is
        neither lost nor processed twice. The consumer is kept: a new one would rejoin the
        group, and wait out the old member's session when the old one could not leave (seen:
        9 s after a broker restart). A consumer that cannot say its committed offsets is
        replaced; the new one starts from them.

        A new producer whose init_transactions failed is kept for the next try: librdkafka
        goes on acquiring its producer id after the call gave up, and a producer dropped then
        would get an epoch newer than its successor's and fence it."""
        self.log.warning("renewing the Kafka producer: %s", self._unhealthy)
        if self._producer_spent:
            self._replace_producer()
        try:
            self.worker.call(self.producer.init_transactions, RENEW_CALL_TIMEOUT_S,
                             wait=RENEW_CALL_TIMEOUT_S + self.call_grace)
        except ClientStuck as exc:
            self.log.warning("new producer not ready, will try another: %s", exc)
            self._producer_spent = True
            return False
        except KafkaException as exc:
            error: KafkaError = exc.args[0]
            if error.fatal():
                raise FatalServiceError(f"init_transactions: {error.str()}") from None
            self.log.warning("new producer not ready, will try again: %s", error.str())
            self._producer_spent = not error.retriable()
            return False
        if self._in_doubt and not self._resume_from_commit():
            self._renew_consumer()
        self._in_doubt = {}
        self._producer_used = False
        self.counters.renewals += 1
        self._unhealthy = None
        self._kafka_failures = 0
        self.log.info("Kafka producer renewed")
        return True

    def _resume_from_commit(self) -> bool:
        """Seek each partition of the batch in doubt that is still assigned to its committed
        offset (the batch's first offset when none was ever committed: then the batch did
        not commit either); False when the consumer could not say them."""
        assigned = {(tp.topic, tp.partition) for tp in self.consumer.assignment()}
        partitions = [TopicPartition(t, p) for t, p in self._in_doubt if (t, p) in assigned]
        if not partitions:
            return True  # taken away meanwhile: their new owner starts from the commit
        asker = CallWorker(self.consumer, f"{self.service.name}-consumer-committed")
        try:
            committed = asker.call(self.consumer.committed, partitions, self.call_timeout,
                                   wait=self.call_timeout + self.call_grace)
            for tp in committed:
                if tp.error is not None:
                    raise KafkaException(tp.error)
                offset = tp.offset if tp.offset >= 0 else self._in_doubt[(tp.topic,
                                                                          tp.partition)]
                self.consumer.seek(TopicPartition(tp.topic, tp.partition, offset))
        except (ClientStuck, KafkaException) as exc:
            self.log.warning("committed offsets unknown, renewing the consumer: %s",
                             error_text(exc) if isinstance(exc, KafkaException) else exc)
            if asker.stuck:
                self._abandoned.append(asker.thread)
            return False
        finally:
            asker.retire()
        return True

    def _replace_fenced_consumer(self) -> None:
        """A new consumer for one fenced off by the group: it starts from the committed
        offsets, and joining under the instance's id it takes the place of the member that
        fenced this one.

        That member is most often this very consumer: librdkafka's static member whose
        session ran out while the broker was down rejoins, and is then fenced by its own
        new membership (confluentinc/librdkafka#3437; seen here after a broker restart)."""
        reason, self._consumer_fenced = self._consumer_fenced, None
        now = self.clock()
        if now - self._last_fenced < FENCED_AGAIN_S:
            raise FatalServiceError(f"consumer: {reason}, again within {FENCED_AGAIN_S:g} s")
        self._last_fenced = now
        self.log.warning("renewing the fenced consumer")
        self._renew_consumer()

    def _renew_consumer(self) -> None:
        """A new consumer, after the old one left: it starts from the committed offsets."""
        self._close_consumer()
        self.consumer = self.new_consumer()
        self._subscribe()

    def _replace_producer(self) -> None:
        """A new producer and worker; the old ones go, or stay behind in a call that hangs."""
        self._abandoned = [t for t in self._abandoned if t.is_alive()]
        retired = self.worker
        self.producer = self.new_producer()  # before retire(): see CallWorker._serve
        self.worker = CallWorker(self.producer, f"{self.service.name}-producer")
        self._producer_spent = False
        retired.retire()
        if retired.stuck:
            self._abandoned.append(retired.thread)
        if len(self._abandoned) > MAX_ABANDONED:
            raise FatalServiceError(f"{len(self._abandoned)} Kafka clients stuck in calls "
                                    "that never returned")

    def _close_consumer(self) -> None:
        """Close the consumer if it is open, within CLOSE_TIMEOUT_S: a close that hangs stays
        behind."""
        if not self._consumer_open:
            return
        self._consumer_open = False
        closer = CallWorker(self.consumer, f"{self.service.name}-consumer-close")
        try:
            closer.call(self.consumer.close, wait=CLOSE_TIMEOUT_S)
        except ClientStuck:
            self.log.warning("consumer close did not return within %g s; left behind",
                             CLOSE_TIMEOUT_S)
            self._abandoned.append(closer.thread)
        except (KafkaException, RuntimeError) as exc:
            self.log.warning("consumer close: %s", error_text(exc))
        closer.retire()

    def _rewind(self, messages: list[Message]) -> None:
        """Seek each partition back to the first offset of the batch, to read it again."""
        assigned = {(tp.topic, tp.partition) for tp in self.consumer.assignment()}
        for (topic, partition), offset in first_offsets(messages).items():
            if (topic, partition) in assigned:  # else the new owner reads it from the commit
                try:
                    self.consumer.seek(TopicPartition(topic, partition, offset))
                except KafkaException as exc:
                    # Going on would skip the batch at the next commit: restart instead, to
                    # resume from the committed offset.
                    raise FatalServiceError(f"seek {topic}/{partition}: "
                                            f"{error_text(exc)}") from None

    def lag(self) -> int:
        return sum(self.partition_lags().values())

    def partition_lags(self) -> dict[int, int]:
        """Records not yet consumed on each assigned partition whose offsets are known."""
        lags: dict[int, int] = {}
        if not self._consumer_open:
            return lags
        for tp in self.consumer.assignment():
            try:
                _, high = self.consumer.get_watermark_offsets(tp, cached=True)
                position = self.consumer.position([tp])[0].offset
            except KafkaException:
                continue
            if high >= 0 and position >= 0:
                lags[tp.partition] = max(0, high - position)
        return lags

    def _heartbeat(self) -> None:
        now = time.time()
        if now - self._last_heartbeat < store.HEARTBEAT_EVERY_S:
            return
        self._last_heartbeat = now
        lags = self.partition_lags()
        if self.metrics is not None:
            self.metrics.set_lag(lags)
        try:
            store.write_heartbeat(
                self.service.redis, self.service.name, self.instance,
                processed=self.counters.processed, dead_letters=self.counters.dead_letters,
                aborted_batches=self.counters.aborted_batches,
                started_at=self.counters.started_at, lag=sum(lags.values()),
                metrics_url=self.metrics.url if self.metrics is not None else "",
            )
        except redis.RedisError as exc:
            self.log.warning("heartbeat not written: %s", exc)

    def _close(self) -> None:
        self._close_consumer()
        if not self.worker.stuck:  # else a flush would only queue behind the hung call
            try:
                self.worker.call(self.producer.flush, 10, wait=10 + self.call_grace)
            except ClientStuck as exc:
                self.log.warning("producer: %s", exc)
        self.worker.retire()
        store.clear_heartbeat(self.service.redis, self.service.name, self.instance)
        self.log.info("stopped after %d messages (%d dead letters)", self.counters.processed,
                      self.counters.dead_letters)


