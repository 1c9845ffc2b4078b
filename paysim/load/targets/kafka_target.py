"""A pair of Kafka topics as the target: payments produced into the user's topic in their
format (a RecordTemplate), outcomes read from their outcome topic and matched to the payments
by a JSON pointer, as Gatling's Kafka plugin matches requests and replies.

The outcome consumer is assigned every partition of the outcome topic at its end before the
first payment is sent: nothing older is read, nothing newer is missed. Latency runs from the
intended send time to the moment paysim reads the matching outcome. A payment whose outcome
has not come by the run's timeout is lost (the report lists it); an outcome that is not JSON,
has nothing at the pointer, or has no decision is an error of its kind. Records on the outcome
topic that match no payment of the run (other traffic, a repeated answer) are passed over.
"""

from __future__ import annotations

import json
import threading
from dataclasses import dataclass
from typing import TYPE_CHECKING

from confluent_kafka import Consumer, KafkaError, KafkaException, Producer, TopicPartition

from paysim.domain.decisions import Status
from paysim.domain.messages import NOTIFIED, REQUESTED, CaptureMode, now_us
from paysim.infra.config import Settings
from paysim.infra.errors import ConfigError, PaysimError
from paysim.infra.kafka import client_config, no_answer, quiet_logger
from paysim.infra.tracing import TRACE_HEADERS, open_tracer, sending
from paysim.infra.waiting import wait_until
from paysim.load.generator import GeneratedPayment
from paysim.load.ingress import Failure, Sent
from paysim.load.report import TargetInfo
from paysim.load.targets.pointer import MISSING
from paysim.load.targets.template import (
    FIELDS,
    NoDecision,
    RecordTemplate,
    load_record_template,
    new_fields,
)
from paysim.pipeline.registry import GENERATOR
from paysim.pipeline.store import DoneEntry

if TYPE_CHECKING:
    from paysim.infra.otel import PaymentTracer

READ_BATCH = 2000


@dataclass(frozen=True)
class Pending:
    """A payment produced and not yet matched: what its outcome entry needs."""

    payment_id: str
    amount: int
    currency: str
    seq: int
    requested_us: int


class Correlation:
    """The payments awaiting an outcome, by the value the outcome carries back; shared by
    the producing side and the reading side, and the delivery failures between them."""

    def __init__(self) -> None:
        self.lock = threading.Lock()
        self.pending: dict[str, Pending] = {}
        self.failures: list[Failure] = []

    def expect(self, value: str, pending: Pending) -> None:
        with self.lock:
            self.pending[value] = pending

    def take(self, value: str) -> Pending | None:
        with self.lock:
            return self.pending.pop(value, None)

    def fail(self, failure: Failure) -> None:
        with self.lock:
            self.failures.append(failure)

    def drain_failures(self) -> list[Failure]:
        with self.lock:
            failures, self.failures = self.failures, []
            return failures


def correlation_text(value: object) -> str:
    """A correlation value as the key it is matched by (a string as itself, else JSON)."""
    return value if isinstance(value, str) else json.dumps(value)


class KafkaTargetIngress:
    """Produces each payment as the template's record onto the user's topic."""

    senders = 1  # produce() only queues: one thread keeps up

    def __init__(self, producer: Producer, topic: str, template: RecordTemplate,
                 correlation: Correlation, tracer: PaymentTracer | None = None) -> None:
        self.producer = producer
        self.tracer = tracer  # None unless an OTLP endpoint is set
        self.topic = topic
        self.template = template
        self.correlation = correlation
        self.match = FIELDS[template.match][1]

    def send(self, payment: GeneratedPayment, run_id: str, callback_url: str | None,
             capture: CaptureMode = CaptureMode.AUTOMATIC) -> Sent:
        fields = new_fields(payment, run_id)
        template = self.template
        value = json.dumps(template.value(fields)).encode()
        key = None if template.key is None else str(template.key(fields))
        headers = [(name, str(text).encode()) for name, text in template.headers(fields).items()]
        payment_id = fields.payment_id
        self.correlation.expect(correlation_text(self.match(fields)), Pending(
            payment_id, payment.amount, payment.currency, payment.seq, now_us()))

        def delivered(error: KafkaError | None, _message: object) -> None:
            if error is not None:
                self.correlation.fail(Failure("delivery", f"{self.topic}: {error.str()}",
                                              payment_id))

        with sending(self.tracer, self.topic, payment_id) as trace:
            if trace.headers:  # the consumer's spans may join the payment's trace
                headers = [*(h for h in headers if h[0].lower() not in TRACE_HEADERS),
                           *trace.headers]
            while True:
                try:
                    self.producer.produce(self.topic, value, key, headers=headers,
                                          on_delivery=delivered)
                    break
                except BufferError:  # the local queue is full: wait for room
                    self.producer.poll(0.05)
        self.producer.poll(0)
        return Sent(payment_id)

    def finish(self) -> None:
        remaining = self.producer.flush(30)
        if self.tracer is not None:
            self.tracer.flush()
        if remaining:
            raise PaysimError(f"Kafka did not take every payment for {self.topic}: "
                              f"{remaining} not delivered in 30 s")


class OutcomeReader:
    """Reads the outcome topic and turns the records that match a payment into outcomes."""

    def __init__(self, consumer: Consumer, topic: str, template: RecordTemplate,
                 correlation: Correlation) -> None:
        self.consumer = consumer
        self.topic = topic
        self.template = template
        self.correlation = correlation
        self.ended = False  # a fatal Kafka error: the consumer can read no more

    def read(self) -> tuple[list[DoneEntry], list[Failure]]:
        entries: list[DoneEntry] = []
        failures = self.correlation.drain_failures()
        if self.ended:
            return entries, failures
        # poll() returns with the first record; consume() with a timeout would wait for a
        # whole batch (or the timeout) and add that wait to every outcome's latency.
        first = self.consumer.poll(0.2)
        if first is None:
            return entries, failures
        for message in [first, *self.consumer.consume(num_messages=READ_BATCH, timeout=0)]:
            error = message.error()
            if error is not None:
                if error.fatal():
                    # The consumer is unusable: one line, counted as an error; the payments
                    # still awaiting an outcome are reported lost.
                    self.ended = True
                    failures.append(Failure("outcome topic unreadable", (
                        f"reading {self.topic} stopped at a fatal Kafka error: "
                        f"{error.str()}")))
                    break
                continue  # transient (a broker reconnecting): the run's timeout bounds it
            outcome = self.outcome(message.value() or b"", now_us(), message.partition(),
                                   message.offset())
            if isinstance(outcome, DoneEntry):
                entries.append(outcome)
            elif outcome is not None:
                failures.append(outcome)
        return entries, failures

    def outcome(self, value: bytes, read_us: int, partition: int = 0,
                offset: int = 0) -> DoneEntry | Failure | None:
        """One outcome record: the payment's entry, the failure it is, or None when it
        matches no payment awaiting one. Never quotes the record: it may hold card data."""
        where = f"a record on {self.topic} (partition {partition}, offset {offset})"
        try:
            document = json.loads(value)
        except (ValueError, UnicodeDecodeError):
            return Failure("unparsable outcome", f"{where} is not JSON ({len(value)} bytes)")
        pointer = self.template.correlate
        carried = MISSING if pointer is None else pointer.read(document)
        if carried is MISSING:
            return Failure("uncorrelated outcome",
                           f"{where} has nothing at {pointer.text if pointer else '-'}")
        pending = self.correlation.take(correlation_text(carried))
        if pending is None:
            return None
        try:
            decision = self.template.rule.read(document)
        except NoDecision as exc:
            return Failure("no decision", f"{where}: {exc}", pending.payment_id)
        return DoneEntry(pending.payment_id,
                         Status.APPROVED if decision.approved else Status.DECLINED,
                         decision.reason, pending.amount, pending.currency, pending.seq,
                         {REQUESTED: pending.requested_us, NOTIFIED: read_us})

    def close(self) -> None:
        self.consumer.close()


class KafkaTarget:
    """``paysim send --to-topic T --record-template FILE --outcome-topic R --correlate P``."""

    def __init__(self, topic: str, template_path: str, outcome_topic: str,
                 correlate: str | None = None) -> None:
        for flag, name in (("--to-topic", topic), ("--outcome-topic", outcome_topic)):
            if not name.strip():
                raise ConfigError(f"{flag}: a topic name")
        if topic == outcome_topic:
            raise ConfigError("--to-topic and --outcome-topic name the same topic: the "
                              "payments would be read back as their own outcomes")
        self.topic = topic
        self.outcome_topic = outcome_topic
        self.template = load_record_template(template_path, correlate)
        pointer = self.template.correlate.text if self.template.correlate else "-"
        self.info = TargetInfo(kind="kafka", address=topic, outcome_topic=outcome_topic,
                               correlate=f"{pointer} = {{{self.template.match}}}")

    def open(self, settings: Settings,
             run_id: str) -> tuple[KafkaTargetIngress, OutcomeReader]:
        correlation = Correlation()
        consumer = Consumer(client_config(settings, **{
            "group.id": f"paysim-send-{run_id}", "enable.auto.commit": False,
            "logger": quiet_logger}))
        try:
            self._assign_at_end(settings, consumer)
            producer = Producer(client_config(settings, **{
                "linger.ms": 5, "logger": quiet_logger}))
        except BaseException:
            consumer.close()
            raise
        return (KafkaTargetIngress(producer, self.topic, self.template, correlation,
                                   open_tracer(settings, GENERATOR)),
                OutcomeReader(consumer, self.outcome_topic, self.template, correlation))

    def _assign_at_end(self, settings: Settings, consumer: Consumer) -> None:
        """Both topics exist; the consumer reads the outcome topic from its end now. A
        partition without a leader yet (a topic just created) is asked again until the
        kafka.timeout setting has passed."""
        timeout = settings.kafka.timeout
        ends: list[TopicPartition] = []
        failed: list[KafkaException] = []

        def ask() -> bool:
            try:
                ends[:] = self._ends(settings, consumer, timeout)
                return True
            except KafkaException as exc:  # "not leader for partition" is not "retriable"
                failed[:] = [exc]
                return False

        if not wait_until(ask, timeout=timeout, interval=0.2):
            raise no_answer(settings, timeout, failed[0] if failed else None)
        consumer.assign(ends)

    def _ends(self, settings: Settings, consumer: Consumer,
              timeout: float) -> list[TopicPartition]:
        topics = consumer.list_topics(timeout=timeout).topics
        for name in (self.topic, self.outcome_topic):
            found = topics.get(name)
            if found is None or found.error is not None or not found.partitions:
                raise PaysimError(f"topic {name} does not exist on Kafka at "
                                  f"{settings.kafka_bootstrap}")
        return [TopicPartition(self.outcome_topic, partition, consumer.get_watermark_offsets(
            TopicPartition(self.outcome_topic, partition), timeout=timeout)[1])
            for partition in sorted(topics[self.outcome_topic].partitions)]
