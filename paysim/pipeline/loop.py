"""The one consume-decide-produce loop every service runs, inside Kafka transactions.

Per batch: decode each message (undecodable ones become dead letters), let the service decide
each one, then in one Kafka transaction produce every output, write Redis in one pipeline and
commit the consumed offsets. Any failure aborts the transaction, rewinds the consumer to the
start of the batch and tries again after a backoff: nothing is lost and the process lives on.
Only a fatal Kafka error (this producer fenced by a newer instance) ends the process, for the
supervisor to restart it.
"""

from __future__ import annotations

import base64
import hashlib
import logging
import threading
import time
from dataclasses import dataclass, field
from typing import Any, Generic

import redis
from confluent_kafka import Consumer, KafkaError, KafkaException, Message, Producer, TopicPartition

from paysim.domain.messages import DeadLetter, SchemaError, encode, now_us
from paysim.infra.config import Settings
from paysim.infra.kafka import client_config, error_text, produce
from paysim.infra.topics import ensure_topics
from paysim.pipeline import store
from paysim.pipeline.service import Output, Rejected, Service, T

# Under the 3 s after which `ps` takes a silent service for gone.
MAX_BACKOFF_S = 2.0
# A dead letter keeps at most this much of the original (the record itself stays on its topic,
# at the partition and offset the letter names); more would not fit in one Kafka record.
DEAD_LETTER_MAX_ORIGINAL = 64 * 1024


@dataclass
class Counters:
    processed: int = 0
    dead_letters: int = 0
    aborted_batches: int = 0
    started_at: float = field(default_factory=time.time)


class FatalServiceError(Exception):
    """The process cannot go on (for example: fenced by a newer instance)."""


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


class ServiceLoop(Generic[T]):
    def __init__(self, service: Service[T], settings: Settings, instance: int = 0,
                 stop: threading.Event | None = None, *, consumer: Consumer | None = None,
                 producer: Producer | None = None) -> None:
        """``consumer`` and ``producer`` replace the Kafka clients built here (tests)."""
        self.service = service
        self.settings = settings
        self.instance = instance
        self.stop = stop or threading.Event()
        self.counters = Counters()
        self.log = logging.getLogger(f"paysim.{service.name}")
        group = f"paysim-{service.name}"
        self.consumer = consumer if consumer is not None else Consumer(client_config(settings, **{
            "group.id": group, "enable.auto.commit": False, "auto.offset.reset": "earliest",
            "isolation.level": "read_committed", "enable.partition.eof": False,
            # A killed instance's partitions move on after 6 s (the broker's minimum), not 45.
            "session.timeout.ms": 6000, "heartbeat.interval.ms": 1500,
            # librdkafka prefetches up to 64 MB by default: with a backlog, each service's
            # memory grew by 140% (66 -> 208 MiB) over 200,000 payments. 1 MB queued (about
            # 2,300 payments, four batches ahead) and 1 MB per fetch keep a loaded service
            # within 10 MB of an idle one. A full queue pauses fetching for
            # fetch.queue.backoff.ms, 1 s by default: that pause cost a quarter of the
            # throughput (9,400 -> 7,300 payments/s) until it was cut to 5 ms.
            "queued.max.messages.kbytes": 1024, "fetch.max.bytes": 1024 * 1024,
            "fetch.queue.backoff.ms": 5,
            "logger": self.log,
        }))
        # Stable per service instance, so a restart fences the dead process at once and
        # aborts its open transaction instead of leaving it to time out. No linger: a batch's
        # records are all produced at once and the commit right after sends them anyway;
        # lingering only delayed the commit (1,000/s open model: p50 112 -> 65 ms).
        self.producer = producer if producer is not None else Producer(client_config(settings, **{
            "transactional.id": f"{group}-{instance}", "linger.ms": 0,
            "retry.backoff.ms": 5, "retry.backoff.max.ms": 50,
            "compression.type": "lz4", "logger": self.log,
        }))
        self._last_heartbeat = 0.0

    def run(self) -> None:
        ensure_topics(self.settings)
        self._kafka_call(self.producer.init_transactions, 60)
        self.consumer.subscribe([self.service.input_topic])
        self.log.info("started: group paysim-%s, instance %d", self.service.name, self.instance)
        backoff = 0.1
        try:
            while not self.stop.is_set():
                self._heartbeat()
                messages = [m for m in self._next_batch() if self._usable(m)]
                if not messages:
                    continue
                if self._process(messages):
                    backoff = 0.1
                else:
                    self.stop.wait(backoff)
                    backoff = min(backoff * 2, MAX_BACKOFF_S)
        finally:
            self._close()

    def _next_batch(self) -> list[Message]:
        """What is waiting, up to a batch; else the first message to arrive within 0.2 s.

        Not consume(n, timeout): that waits the whole timeout for n messages, which at low
        load adds the timeout to every stage's latency."""
        size = self.settings.services.batch_size
        batch = self.consumer.consume(num_messages=size, timeout=0)
        if batch:
            return batch
        first = self.consumer.poll(0.2)
        if first is None:
            return []
        return [first, *self.consumer.consume(num_messages=size - 1, timeout=0)]

    def _usable(self, message: Message) -> bool:
        error = message.error()
        if error is None:
            return True
        if error.fatal():
            raise FatalServiceError(f"consumer: {error.str()}")
        self.log.warning("consumer: %s", error.str())
        return False

    def _process(self, messages: list[Message]) -> bool:
        """One transaction for the batch; False (and the batch rewound) when it had to abort."""
        try:
            self._transact(messages)
            return True
        except FatalServiceError:
            raise
        except (KafkaException, redis.RedisError) as exc:
            self.counters.aborted_batches += 1
            self.log.warning("batch of %d aborted, will retry: %s", len(messages),
                             error_text(exc))
            self._abort()
            self._rewind(messages)
            return False

    def _dead(self, message: Message, reason: str) -> Output:
        return dead_letter(self.service.name, message, reason, self.settings.topics.dlq,
                           self.service.dead_letters_keep_original)

    def _decide_all(self, decoded: list[tuple[Message, T]],
                    outputs: list[Output]) -> redis.client.Pipeline:
        """Each record's outputs; a record that breaks the rules' code becomes a dead letter."""
        pipe = self.service.redis.pipeline(transaction=False)
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
                    outputs.append(self._dead(message, f"internal error: {type(exc).__name__}"))
                    continue
            for message, item in group:
                try:
                    outputs.extend(self.service.decide(item, pipe))
                except (KafkaException, redis.RedisError):
                    raise
                except Rejected as exc:
                    outputs.append(self._dead(message, str(exc)))
                except Exception as exc:
                    self.log.exception("cannot decide record %s/%d@%d", message.topic(),
                                       message.partition(), message.offset())
                    outputs.append(self._dead(message,
                                              f"internal error: {type(exc).__name__}: {exc}"))
        return pipe

    def _transact(self, messages: list[Message]) -> None:
        # A rebalance between fetching and here may have taken partitions away: their records
        # belong to the new owner now, and processing them too would doubly produce.
        assigned = {(tp.topic, tp.partition) for tp in self.consumer.assignment()}
        messages = [m for m in messages if (m.topic(), m.partition()) in assigned]
        if not messages:
            return
        outputs: list[Output] = []
        decoded: list[tuple[Message, T]] = []
        for message in messages:
            try:
                decoded.append((message, self.service.codec.decode(message.value())))
            except SchemaError as exc:
                outputs.append(self._dead(message, str(exc)))
        pipe = self._decide_all(decoded, outputs)
        self._kafka_call(self.producer.begin_transaction)
        for output in outputs:
            produce(self.producer, output.topic, output.value, key=output.key)
        pipe.execute()
        # The offsets to commit come from the batch itself, not from the consumer's position,
        # which a rebalance may have moved.
        next_offsets: dict[tuple[str, int], int] = {}
        for message in messages:
            key = (message.topic(), message.partition())
            next_offsets[key] = max(next_offsets.get(key, 0), message.offset() + 1)
        self._kafka_call(self.producer.send_offsets_to_transaction,
                         [TopicPartition(t, p, o) for (t, p), o in next_offsets.items()],
                         self.consumer.consumer_group_metadata(), 30)
        self._kafka_call(self.producer.commit_transaction, 60)
        dead = sum(1 for o in outputs if o.topic == self.settings.topics.dlq)
        self.counters.processed += len(messages) - dead
        self.counters.dead_letters += dead

    def _kafka_call(self, call: Any, *args: Any) -> Any:
        """Run a transactional call, retrying what Kafka says is retriable."""
        for attempt in range(10):
            try:
                return call(*args)
            except KafkaException as exc:
                error: KafkaError = exc.args[0]
                if error.fatal():
                    raise FatalServiceError(f"{call.__name__}: {error.str()}") from None
                if not error.retriable() or attempt == 9:
                    raise
                time.sleep(0.1 * (attempt + 1))
        return None

    def _abort(self) -> None:
        try:
            self.producer.abort_transaction(30)
        except KafkaException as exc:
            error: KafkaError = exc.args[0]
            if error.fatal():
                raise FatalServiceError(f"abort_transaction: {error.str()}") from None
            # Nothing to abort (the failure came before begin_transaction) is fine.
            if error.code() != KafkaError._STATE:
                self.log.warning("abort_transaction: %s", error.str())

    def _rewind(self, messages: list[Message]) -> None:
        """Seek each partition back to the first offset of the batch, to read it again."""
        first: dict[tuple[str, int], int] = {}
        for message in messages:
            key = (message.topic(), message.partition())
            first[key] = min(first.get(key, message.offset()), message.offset())
        assigned = {(tp.topic, tp.partition) for tp in self.consumer.assignment()}
        for (topic, partition), offset in first.items():
            if (topic, partition) in assigned:  # else the new owner reads it from the commit
                try:
                    self.consumer.seek(TopicPartition(topic, partition, offset))
                except KafkaException as exc:
                    # Going on would skip the batch at the next commit: restart instead, to
                    # resume from the committed offset.
                    raise FatalServiceError(f"seek {topic}/{partition}: "
                                            f"{error_text(exc)}") from None

    def lag(self) -> int:
        total = 0
        for tp in self.consumer.assignment():
            try:
                _, high = self.consumer.get_watermark_offsets(tp, cached=True)
                position = self.consumer.position([tp])[0].offset
            except KafkaException:
                continue
            if high >= 0 and position >= 0:
                total += max(0, high - position)
        return total

    def _heartbeat(self) -> None:
        now = time.time()
        if now - self._last_heartbeat < store.HEARTBEAT_EVERY_S:
            return
        self._last_heartbeat = now
        try:
            store.write_heartbeat(
                self.service.redis, self.service.name, self.instance,
                processed=self.counters.processed, dead_letters=self.counters.dead_letters,
                aborted_batches=self.counters.aborted_batches,
                started_at=self.counters.started_at, lag=self.lag(),
            )
        except redis.RedisError as exc:
            self.log.warning("heartbeat not written: %s", exc)

    def _close(self) -> None:
        try:
            self.consumer.close()
        except (KafkaException, RuntimeError) as exc:
            self.log.warning("consumer close: %s", error_text(exc))
        self.producer.flush(10)
        store.clear_heartbeat(self.service.redis, self.service.name, self.instance)
        self.log.info("stopped after %d messages (%d dead letters)", self.counters.processed,
                      self.counters.dead_letters)


