"""The consume-decide-produce loop (paysim.pipeline.loop.ServiceLoop) with fake Kafka clients
and a fake Redis: one transaction per batch, abort and rewind on failure, dead letters, fatal
errors, records of partitions taken away by a rebalance, and a new producer when a call hangs
or overruns its timeout, or when every broker went down."""

from __future__ import annotations

import base64
import hashlib
import threading
import time
import uuid
from collections.abc import Callable, Iterator

import msgspec
import pytest
import redis
from confluent_kafka import KafkaError

from paysim.domain.cards import CardBlock, CardCipher
from paysim.domain.messages import Codec, DeadLetter, Merchant, PaymentRequested, encode
from paysim.infra.config import Settings
from paysim.pipeline import loop, store
from paysim.pipeline.loop import DEAD_LETTER_MAX_ORIGINAL, FatalServiceError, ServiceLoop
from paysim.pipeline.prometheus import PipelineMetrics
from paysim.pipeline.registry import AUTHORIZER
from paysim.pipeline.service import Output, Rejected, Service, ServiceSpec
from tests.unit.fakes import (
    KEYS,
    FakeClock,
    FakeCluster,
    FakeConsumer,
    FakeMessage,
    FakeProducer,
    FakeRedis,
    Produced,
    Stop,
    kafka_error,
    pure_settings,
)
from tests.unit.test_metrics import value

SETTINGS = pure_settings({"services.batch_size": 10})
IN = SETTINGS.topics.authorized  # the test service's input topic
OUT = "pongs"
DLQ = SETTINGS.topics.dlq


class Ping(msgspec.Struct, frozen=True):
    id: str
    fail: str = ""  # "reject", "crash" or "prepare": how deciding this record goes wrong


class PingService(Service[Ping]):
    """Answers each ping with a pong and a Redis write; fails as the ping asks."""

    codec = Codec(Ping)

    def prepare(self, items: list[Ping]) -> None:
        if any(item.fail == "prepare" for item in items):
            raise ValueError("cannot prepare")

    def decide(self, item: Ping, pipe: redis.client.Pipeline) -> list[Output]:
        if item.fail == "reject":
            raise Rejected(f"{item.id} is not welcome")
        if item.fail == "crash":
            raise RuntimeError(f"{item.id} broke the rules")
        pipe.execute_command("SET", f"seen:{item.id}", "1")
        self.decided = getattr(self, "decided", 0) + 1
        return [Output(OUT, item.id, b"pong " + item.id.encode())]

    def finish(self, pipe: redis.client.Pipeline) -> None:
        """The batch's count of pongs, after them."""
        pipe.execute_command("INCRBY", "pongs", getattr(self, "decided", 0))
        self.decided = 0


PINGER = ServiceSpec("pinger", "answers pings", input_topic="authorized", factory=PingService)


def ping(partition: int, offset: int, fail: str = "", topic: str = IN) -> FakeMessage:
    name = f"p{partition}-{offset}"
    return FakeMessage(topic, partition, offset, encode(Ping(name, fail)), key=name.encode())


def name_of(message: FakeMessage) -> str:
    return (message.key() or b"").decode()


def pong(message: FakeMessage) -> Produced:
    return Produced(OUT, name_of(message), b"pong " + name_of(message).encode())


class Harness:
    """A ServiceLoop on fakes; run() returns once the consumer has nothing left. The first
    clients are ``consumer`` and ``producer``; the loop's replacements are appended to
    ``consumers`` and ``producers``, and built by ``producer_factory`` when it is set."""

    def __init__(self, records: list[FakeMessage], spec: ServiceSpec = PINGER,
                 settings: Settings = SETTINGS, clock: FakeClock | None = None) -> None:
        """``clock``, when given, is the loop's and its producers' (for ``slow_on``)."""
        self.stop = Stop()
        self.redis = FakeRedis()
        self.cluster = FakeCluster()
        self.records = records
        self.consumer = FakeConsumer(self.stop, records, self.cluster.committed)
        self.producer = FakeProducer(self.cluster, clock)
        self.consumers, self.producers = [self.consumer], [self.producer]
        self.service = spec.build(settings, self.redis)  # type: ignore[arg-type]
        self.loop = ServiceLoop(
            self.service, settings, stop=self.stop,
            consumer=self.consumer, producer=self.producer,  # type: ignore[arg-type]
            new_consumer=self._new_consumer, new_producer=self._new_producer,  # type: ignore[arg-type]
            clock=clock or time.monotonic)
        self.producer_factory = lambda: FakeProducer(self.cluster, clock)
        self.consumer.error_cb = self.loop.on_kafka_error  # as _build_consumer configures it

    def _new_consumer(self) -> FakeConsumer:
        consumer = FakeConsumer(self.stop, self.records, self.cluster.committed)
        consumer.error_cb = self.loop.on_kafka_error
        self.consumers.append(consumer)
        return consumer

    def _new_producer(self) -> FakeProducer:
        self.producers.append(self.producer_factory())
        return self.producers[-1]

    def run(self) -> None:
        self.loop.run()

    def run_releasing(self, *releases: threading.Event) -> None:
        """run(), then release the fake calls held by ``releases`` whatever happened."""
        try:
            self.run()
        finally:
            for release in releases:
                release.set()

    def seen(self) -> list[str]:
        """The ids whose Redis write reached Redis, in order."""
        return [c[1].removeprefix("seen:") for c in self.redis.commands("SET")
                if c[1].startswith("seen:")]

    def letters(self) -> list[DeadLetter]:
        return [msgspec.json.decode(r.value, type=DeadLetter) for r in self.producer.records
                if r.topic == DLQ]


@pytest.fixture(autouse=True)
def no_topic_admin(monkeypatch: pytest.MonkeyPatch) -> Iterator[None]:
    """run() creates the topics with an admin client first: there is no broker here."""
    created: list[Settings] = []
    monkeypatch.setattr(loop, "ensure_topics", created.append)
    yield
    assert created, "run() should have ensured its topics"


# ------------------------------------------------------------------------ one transaction


def test_a_batch_is_one_transaction_with_its_outputs_and_its_own_offsets() -> None:
    p0 = [ping(0, offset) for offset in range(10, 17)]  # 7 records, batches of up to 4
    p1 = [ping(1, offset) for offset in (40, 41)]
    harness = Harness([*p0, *p1], settings=pure_settings({"services.batch_size": 4}))
    harness.run()

    assert harness.producer.initialized
    assert harness.consumer.subscribed == [IN]
    first, second, third = harness.producer.committed
    assert first.records == [pong(m) for m in p0[:4]]
    assert first.offsets == [(IN, 0, 14)]  # the next offset after the batch, not further
    assert second.records == [pong(m) for m in [*p0[4:], p1[0]]]
    assert second.offsets == [(IN, 0, 17), (IN, 1, 41)]
    assert third.records == [pong(p1[1])]
    assert third.offsets == [(IN, 1, 42)]
    assert {t.group_metadata for t in harness.producer.committed} == {
        harness.consumer.group_metadata}
    assert harness.seen() == [name_of(m) for m in [*p0, *p1]]
    assert harness.loop.counters.processed == 9
    assert harness.loop.counters.dead_letters == 0
    assert harness.loop.counters.aborted_batches == 0
    assert harness.producer.aborted == [] and harness.consumer.seeks == []
    assert harness.consumer.closed and harness.producer.flushed


def test_the_redis_writes_of_a_batch_go_in_one_pipeline() -> None:
    harness = Harness([ping(0, 0), ping(1, 5), ping(0, 1)])
    harness.run()
    batch_pipelines = [commands for commands in harness.redis.executions
                       if any(c[0] == "SET" for c in commands)]
    assert batch_pipelines == [[("SET", "seen:p0-0", "1"), ("SET", "seen:p0-1", "1"),
                                ("SET", "seen:p1-5", "1"), ("INCRBY", "pongs", 3)]]


def test_the_batch_wide_writes_come_once_per_batch_also_when_records_are_taken_alone(
) -> None:
    harness = Harness([ping(0, 0), ping(0, 1, fail="prepare"), ping(0, 2), ping(0, 3,
                                                                               "crash")])
    harness.run()
    # prepare failed for the batch: its records were decided one by one, then finished once
    assert harness.redis.commands("INCRBY") == [("INCRBY", "pongs", 2)]


def test_the_offsets_are_added_while_redis_is_written_and_both_before_the_commit() -> None:
    harness = Harness([ping(0, 0), ping(0, 1)])
    offsets_in_flight = threading.Event()
    send_offsets = harness.producer.send_offsets_to_transaction

    def in_flight(*args: object) -> None:
        offsets_in_flight.set()
        send_offsets(*args)  # type: ignore[arg-type]

    overlapped: list[bool] = []

    def written(commands: list[tuple[object, ...]]) -> None:
        if any(c[0] == "SET" and str(c[1]).startswith("seen:") for c in commands):
            # One after the other, the offsets would only be sent once this returned.
            overlapped.append(offsets_in_flight.wait(2.0))

    harness.producer.send_offsets_to_transaction = in_flight  # type: ignore[method-assign]
    harness.redis.after_execute = written
    harness.run()
    assert overlapped == [True]
    [transaction] = harness.producer.committed
    assert transaction.offsets == [(IN, 0, 2)]
    assert harness.seen() == ["p0-0", "p0-1"]
    assert harness.loop.counters.aborted_batches == 0


def test_the_partitions_come_from_the_rebalance_callbacks_not_a_call_per_batch() -> None:
    records = [ping(0, offset) for offset in range(6)]
    harness = Harness(records, settings=pure_settings({"services.batch_size": 1}))
    asked: list[int] = []
    assignment = harness.consumer.assignment

    def counted() -> list[object]:
        asked.append(1)
        return assignment()

    harness.consumer.assignment = counted  # type: ignore[method-assign]
    harness.run()
    assert len(harness.producer.committed) == 6
    assert len(asked) <= 2  # the fake's on_assign and the first heartbeat's lags; no batch's


def count_metadata_asks(consumer: FakeConsumer) -> list[object]:
    """Each group metadata the consumer hands out (a new object each time, as a new
    generation's would be)."""
    given: list[object] = []

    def fresh() -> object:
        given.append(object())
        return given[-1]

    consumer.consumer_group_metadata = fresh  # type: ignore[method-assign]
    return given


def test_the_group_metadata_is_asked_once_per_assignment_not_per_batch() -> None:
    harness = Harness([ping(0, offset) for offset in range(6)],
                      settings=pure_settings({"services.batch_size": 1}))
    given = count_metadata_asks(harness.consumer)
    harness.run()
    assert len(harness.producer.committed) == 6
    assert len(given) == 1
    assert {t.group_metadata for t in harness.producer.committed} == {given[0]}


def test_a_rebalance_or_an_abort_makes_the_next_batch_ask_for_the_group_metadata_again() -> None:
    harness = Harness([ping(0, offset) for offset in range(3)],
                      settings=pure_settings({"services.batch_size": 1}))
    consumer = harness.consumer
    given = count_metadata_asks(consumer)
    fetch = consumer.consume

    def rebalanced_before_the_second_fetch(num_messages: int = 1,
                                           timeout: float = -1) -> list[FakeMessage]:
        if consumer.calls == 1 and consumer.on_revoke and consumer.on_assign:
            consumer.on_revoke(consumer, consumer.assignment())
            consumer.on_assign(consumer, consumer.assignment())
        return fetch(num_messages, timeout)

    consumer.consume = rebalanced_before_the_second_fetch  # type: ignore[method-assign]
    # The third batch's offsets are refused as a stale generation's: it aborts.
    harness.producer.fail_on("send_offsets_to_transaction",
                             kafka_error(KafkaError.ILLEGAL_GENERATION, "stale generation"), 3)
    harness.run()
    assert [t.group_metadata for t in harness.producer.committed] == given
    assert len(given) == 3  # the first batch, after the rebalance, the abort's retry


# ------------------------------------------------------------------------ abort and retry


REDIS_DOWN = redis.ConnectionError("Connection refused")


@pytest.mark.parametrize(("method", "call", "error"), [
    ("begin_transaction", 1, kafka_error(KafkaError._TRANSPORT)),
    ("produce", 3, kafka_error(KafkaError._MSG_TIMED_OUT)),  # two records already produced
    ("send_offsets_to_transaction", 1, kafka_error(KafkaError._TIMED_OUT)),
    ("commit_transaction", 1, kafka_error(KafkaError.COORDINATOR_NOT_AVAILABLE)),
    ("redis", 1, REDIS_DOWN),
])
def test_a_failure_aborts_rewinds_each_partition_and_the_retry_produces_once(
        method: str, call: int, error: Exception) -> None:
    records = [ping(0, 10), ping(0, 11), ping(1, 40), ping(1, 41), ping(2, 7)]
    harness = Harness(records)
    if method == "redis":
        harness.redis.execute_failures.append(("seen:", error))
    else:
        harness.producer.fail_on(method, error, call)
    harness.run()

    assert harness.loop.counters.aborted_batches == 1
    assert harness.producer.abort_calls == 1
    assert sorted(harness.consumer.seeks) == [(IN, 0, 10), (IN, 1, 40), (IN, 2, 7)]
    assert harness.stop.waits == [0.1]  # the backoff before the retry
    [transaction] = harness.producer.committed
    assert transaction.records == [pong(m) for m in records]  # each output once
    assert transaction.offsets == [(IN, 0, 12), (IN, 1, 42), (IN, 2, 8)]
    assert harness.loop.counters.processed == 5


def test_the_aborted_transaction_keeps_none_of_its_records() -> None:
    records = [ping(0, 0), ping(0, 1)]
    harness = Harness(records)
    harness.producer.fail_on("commit_transaction", kafka_error())
    harness.run()
    [aborted] = harness.producer.aborted
    assert aborted.records == [pong(m) for m in records]  # produced, then thrown away
    assert harness.producer.records == [pong(m) for m in records]


def test_failures_in_a_row_double_the_backoff() -> None:
    harness = Harness([ping(0, 0)])
    for call in (1, 2, 3):
        harness.producer.fail_on("commit_transaction", kafka_error(), call)
    harness.run()
    assert harness.stop.waits == [0.1, 0.2, 0.4]
    assert harness.loop.counters.aborted_batches == 3
    assert harness.producer.records == [pong(ping(0, 0))]


def watch_calls(producer: FakeProducer, methods: tuple[str, ...],
                seen: Callable[[str], object]) -> None:
    """Call ``seen(method)`` as each of ``methods`` of ``producer`` is called, on the
    calling thread, then the method itself."""
    for method in methods:
        real = getattr(producer, method)

        def watched(*args: object, real: Callable[..., object] = real, method: str = method,
                    **kwargs: object) -> object:
            seen(method)
            return real(*args, **kwargs)

        setattr(producer, method, watched)


def test_a_batch_hands_the_worker_two_calls_and_its_records_go_from_the_worker() -> None:
    harness = Harness([ping(0, 0), ping(0, 1), ping(1, 5)])
    submitted: list[str] = []
    submit = harness.loop.worker.submit

    def counted(function: object, *args: object) -> object:
        opening = isinstance(function, loop.TransactionOpening)
        submitted.append("opening" if opening else getattr(function, "__name__", "?"))
        return submit(function, *args)  # type: ignore[arg-type]

    callers: dict[str, set[str]] = {}
    watch_calls(harness.producer, ("begin_transaction", "produce", "send_offsets_to_transaction"),
                lambda method: callers.setdefault(method, set()).add(
                    threading.current_thread().name))
    harness.loop.worker.submit = counted  # type: ignore[method-assign]
    harness.run()
    # The batch's two: the opening (begin, offsets, records) and the commit.
    assert submitted == ["init_transactions", "opening", "commit_transaction", "flush"]
    assert callers == {method: {"pinger-producer"} for method in
                       ("begin_transaction", "produce", "send_offsets_to_transaction")}
    [transaction] = harness.producer.committed
    assert transaction.records == [pong(m) for m in harness.records]


def test_the_offsets_are_added_before_the_first_record_is_produced() -> None:
    harness = Harness([ping(0, 0), ping(0, 1)])
    steps: list[str] = []
    watch_calls(harness.producer, ("begin_transaction", "send_offsets_to_transaction",
                                   "produce", "commit_transaction"), steps.append)
    harness.run()
    # A record would make librdkafka send AddPartitionsToTxn, which a coordinator still
    # writing the last transaction's markers refuses for a fixed 20 ms.
    assert steps == ["begin_transaction", "send_offsets_to_transaction", "produce", "produce",
                     "commit_transaction"]


def fetch_timeouts(harness: Harness) -> list[float]:
    """The timeout of each of the loop's consume() calls, as it makes them."""
    timeouts: list[float] = []
    consume = harness.consumer.consume

    def timed(num_messages: int = 1, timeout: float = -1) -> list[FakeMessage]:
        timeouts.append(timeout)
        return consume(num_messages, timeout)

    harness.consumer.consume = timed  # type: ignore[method-assign]
    return timeouts


def test_after_a_batch_that_was_not_full_the_next_fetch_waits_out_the_shortest_cycle() -> None:
    harness = Harness([ping(0, offset) for offset in range(3)],
                      settings=pure_settings({"services.batch_size": 2}), clock=FakeClock())
    harness.loop.min_cycle = 60.0  # longer than the test: every wait shows
    harness.producer.slow_on("commit_transaction", 0.3, call=2)  # the second batch's
    timeouts = fetch_timeouts(harness)
    harness.run()
    # A full batch of 2 (no wait after it), then 1 left (not full): the fetch after it
    # waits for the rest of the cycle counted from when that batch began (its 0.3 s commit
    # included), or a full batch.
    assert timeouts[0] == 0.0 and timeouts[1] == 0.0
    assert 59.0 < timeouts[2] <= 59.7
    assert harness.seen() == ["p0-0", "p0-1", "p0-2"]


def test_a_batch_begun_by_poll_after_an_empty_fetch_starts_the_shortest_cycle_too() -> None:
    harness = Harness([ping(0, 0), ping(0, 1)], settings=pure_settings({"services.batch_size": 3}))
    harness.loop.min_cycle = 60.0
    timeouts = fetch_timeouts(harness)
    consume, fetches = harness.consumer.consume, [0]

    def nothing_at_first(num_messages: int = 1, timeout: float = -1) -> list[FakeMessage]:
        fetches[0] += 1
        return [] if fetches[0] == 1 else consume(num_messages, timeout)

    harness.consumer.consume = nothing_at_first  # type: ignore[method-assign]
    harness.run()
    # The first fetch finds nothing: poll() waits for the first record (the fake's poll
    # fetches one), the rest comes at once, and the batch of 2 is not full, so the fetch
    # after it waits out the cycle as after any batch that was not full.
    assert timeouts[:2] == [-1, 0.0]
    assert 59.0 < timeouts[2] <= 60.0
    assert harness.seen() == ["p0-0", "p0-1"]


def test_full_batches_are_fetched_without_waiting() -> None:
    harness = Harness([ping(0, offset) for offset in range(6)],
                      settings=pure_settings({"services.batch_size": 2}))
    harness.loop.min_cycle = 60.0
    timeouts = fetch_timeouts(harness)
    harness.run()
    assert timeouts[:3] == [0.0, 0.0, 0.0]  # three full batches, each fetched at once
    assert len(harness.producer.committed) == 3


@pytest.mark.parametrize(("method", "call"), [
    ("begin_transaction", 1), ("produce", 2), ("send_offsets_to_transaction", 1)])
def test_a_retriable_error_opening_the_transaction_resumes_at_the_step_that_failed(
        method: str, call: int) -> None:
    records = [ping(0, 0), ping(0, 1), ping(0, 2)]
    harness = Harness(records)
    harness.producer.fail_on(method, kafka_error(KafkaError._TIMED_OUT, retriable=True), call)
    harness.run()
    assert harness.loop.counters.aborted_batches == 0
    assert harness.producer.aborted == [] and harness.consumer.seeks == []
    [transaction] = harness.producer.committed
    assert transaction.records == [pong(m) for m in records]  # each record once
    assert transaction.offsets == [(IN, 0, 3)]
    # The offsets are sent again only when they were the step that failed.
    again = 1 if method == "send_offsets_to_transaction" else 0
    assert harness.producer._calls["send_offsets_to_transaction"] == 1 + again


def test_a_retriable_kafka_error_is_retried_in_place_without_an_abort() -> None:
    harness = Harness([ping(0, 0), ping(0, 1)])
    harness.producer.fail_on("commit_transaction",
                             kafka_error(KafkaError._TIMED_OUT, retriable=True))
    harness.run()
    assert harness.loop.counters.aborted_batches == 0
    assert harness.producer.aborted == [] and harness.consumer.seeks == []
    assert len(harness.producer.committed) == 1


# ------------------------------------------------------------------------ dead letters


def test_bad_records_become_dead_letters_and_the_rest_of_the_batch_goes_through() -> None:
    good_a, good_b = ping(0, 0), ping(0, 6)
    bad = [
        FakeMessage(IN, 0, 1, b"{not json", key=b"k1"),
        FakeMessage(IN, 0, 2, None, key=b"k2"),  # no value at all
        FakeMessage(IN, 0, 3, b'{"name": "ping"}', key=b"k3"),  # JSON, not a Ping
        ping(0, 4, fail="reject"),
        ping(0, 5, fail="crash"),
    ]
    harness = Harness([good_a, *bad, good_b])
    harness.run()

    [transaction] = harness.producer.committed
    assert [r for r in transaction.records if r.topic == OUT] == [pong(good_a), pong(good_b)]
    assert transaction.offsets == [(IN, 0, 7)]  # the dead letters' offsets are consumed too
    letters = harness.letters()
    assert [(d.source_topic, d.partition, d.offset) for d in letters] == [
        (IN, 0, offset) for offset in range(1, 6)]
    reasons = [d.reason for d in letters]
    assert reasons[0].startswith("not valid JSON")
    assert reasons[1] == "empty message (no value)"
    assert reasons[2].startswith("Ping schema")
    assert reasons[3] == "p0-4 is not welcome"
    assert reasons[4] == "internal error: RuntimeError: p0-5 broke the rules"
    for letter, message in zip(letters, bad, strict=True):
        value = message.value() or b""
        assert letter.service == "pinger"
        assert letter.key == base64.b64encode(name_of(message).encode()).decode()
        assert letter.original == base64.b64encode(value).decode()
        assert letter.original_size == len(value)
        assert letter.original_sha256 == hashlib.sha256(value).hexdigest()
        assert not letter.truncated
    assert harness.seen() == ["p0-0", "p0-6"]
    assert harness.loop.counters.processed == 2
    assert harness.loop.counters.dead_letters == 5


def test_a_huge_bad_record_keeps_only_the_first_64_kib() -> None:
    value = b"[" * (DEAD_LETTER_MAX_ORIGINAL + 100)
    harness = Harness([FakeMessage(IN, 0, 0, value)])
    harness.run()
    [letter] = harness.letters()
    assert base64.b64decode(letter.original or "") == value[:DEAD_LETTER_MAX_ORIGINAL]
    assert letter.truncated
    assert letter.original_size == len(value)
    assert letter.original_sha256 == hashlib.sha256(value).hexdigest()


def test_a_record_that_breaks_the_batch_wide_step_alone_is_a_dead_letter() -> None:
    records = [ping(0, 0), ping(0, 1, fail="prepare"), ping(0, 2)]
    harness = Harness(records)
    harness.run()
    [letter] = harness.letters()
    assert (letter.offset, letter.reason) == (1, "internal error: ValueError")
    assert [r for r in harness.producer.records if r.topic == OUT] == [
        pong(records[0]), pong(records[2])]
    assert harness.loop.counters.aborted_batches == 0


def request_with_card(card: str) -> PaymentRequested:
    return PaymentRequested(
        payment_id=str(uuid.uuid4()), run_id="r1", amount=1_000, currency="USD",
        merchant=Merchant(id="m1", name="Shop", mcc="5411", country="US"),
        stages={"requested": 1}, card=card)


def test_the_edge_topics_dead_letters_withhold_the_original_bytes() -> None:
    pan = "4242424242424242"
    topic = SETTINGS.topics.requested
    # A record a sender got wrong, with the card in clear, and a card block sealed for
    # another payment (it does not decrypt for this one).
    sealed = CardCipher(KEYS.card_key).encrypt(CardBlock(pan, 12, 2040, "123"), b"other")
    records = [
        FakeMessage(topic, 0, 0, b'{"card": {"number": "' + pan.encode() + b'"}', key=b"tok"),
        FakeMessage(topic, 0, 1, encode(request_with_card(sealed)), key=b"tok"),
    ]
    harness = Harness(records, spec=AUTHORIZER)
    harness.run()

    letters = harness.letters()
    assert [d.offset for d in letters] == [0, 1]
    assert letters[1].reason == "card block cannot be decrypted with the configured key"
    for letter, message in zip(letters, records, strict=True):
        value = message.value() or b""
        assert letter.service == "authorizer"
        assert letter.original is None and letter.key is None
        assert letter.original_size == len(value)
        assert letter.original_sha256 == hashlib.sha256(value).hexdigest()
    assert not any(pan.encode() in r.value for r in harness.producer.records)


def test_a_card_number_in_a_free_field_is_a_dead_letter_without_the_original() -> None:
    # A well-formed request whose card block opens, with a card number put in the merchant's
    # name by its sender: nothing of it goes on, and the dead letter does not keep it.
    pan = "4242424242424242"
    topic = SETTINGS.topics.requested
    good = request_with_card("")
    written = msgspec.structs.replace(
        good, merchant=Merchant(id="m1", name=f"Shop {pan}", mcc="5411", country="US"),
        card=CardCipher(KEYS.card_key).encrypt(CardBlock(pan, 12, 2040, "123"),
                                               good.payment_id.encode()))
    value = encode(written)
    harness = Harness([FakeMessage(topic, 0, 0, value, key=b"tok")], spec=AUTHORIZER)
    harness.run()

    [letter] = harness.letters()
    assert letter.reason == "merchant.name is not allowed to hold a card number"
    assert letter.original is None and letter.key is None
    assert letter.original_sha256 == hashlib.sha256(value).hexdigest()
    assert len(harness.producer.records) == 1  # the dead letter alone
    assert not any(pan.encode() in r.value for r in harness.producer.records)


# ------------------------------------------------------------------------ fatal errors


FENCED = kafka_error(KafkaError._FENCED, "producer fenced by a newer instance", fatal=True)


def test_a_fenced_producer_ends_the_loop_without_committing() -> None:
    harness = Harness([ping(0, 0), ping(0, 1)])
    harness.producer.fail_on("commit_transaction", FENCED)
    with pytest.raises(FatalServiceError, match="commit_transaction: producer fenced"):
        harness.run()
    assert harness.producer.committed == []
    assert harness.loop.counters.aborted_batches == 0  # not a batch to retry
    assert harness.consumer.seeks == []
    assert harness.consumer.closed and harness.producer.flushed
    heartbeat = store.heartbeat_key("pinger", 0)
    assert harness.redis.commands("DEL", heartbeat), "a stopped service clears its heartbeat"


@pytest.mark.parametrize("method", ["begin_transaction", "send_offsets_to_transaction"])
def test_a_fatal_error_opening_the_transaction_names_the_step_that_failed(method: str) -> None:
    harness = Harness([ping(0, 0), ping(0, 1)])
    harness.producer.fail_on(method, FENCED)
    with pytest.raises(FatalServiceError, match=f"^{method}: producer fenced"):
        harness.run()
    assert harness.producer.committed == []


def test_the_offsets_get_what_is_left_of_the_openings_timeout() -> None:
    harness = Harness([ping(0, 0)], clock=FakeClock())
    harness.producer.slow_on("begin_transaction", 0.3)
    timeouts: list[float] = []
    send_offsets = harness.producer.send_offsets_to_transaction

    def timed(offsets: object, metadata: object, timeout: float) -> None:
        timeouts.append(timeout)
        send_offsets(offsets, metadata, timeout)  # type: ignore[arg-type]

    harness.producer.send_offsets_to_transaction = timed  # type: ignore[method-assign]
    harness.run()
    [timeout] = timeouts
    assert timeout <= harness.loop.call_timeout - 0.3


def test_a_fatal_error_while_aborting_ends_the_loop() -> None:
    harness = Harness([ping(0, 0)])
    harness.producer.fail_on("commit_transaction", kafka_error())
    harness.producer.fail_on("abort_transaction", FENCED)
    with pytest.raises(FatalServiceError, match="abort_transaction"):
        harness.run()
    assert harness.producer.committed == []
    assert harness.consumer.closed


def test_a_consumer_error_that_is_not_fatal_is_skipped() -> None:
    record = ping(0, 0)
    harness = Harness([record])
    harness.consumer.events.append(FakeMessage(
        IN, 0, -1, None, error=KafkaError(KafkaError._TRANSPORT, "broker down")))
    harness.run()
    [transaction] = harness.producer.committed
    assert transaction.records == [pong(record)]
    assert transaction.offsets == [(IN, 0, 1)]


def test_a_producer_fenced_at_start_ends_the_loop_before_subscribing() -> None:
    harness = Harness([ping(0, 0)])
    harness.producer.fail_on("init_transactions", FENCED)
    with pytest.raises(FatalServiceError, match="init_transactions"):
        harness.run()
    assert harness.consumer.subscribed == []


# ------------------------------------------------------------------------ rebalances


def test_records_of_partitions_no_longer_assigned_are_dropped() -> None:
    kept = [ping(0, 10), ping(0, 11)]
    taken = [ping(1, 40), ping(1, 41)]
    harness = Harness([*kept, *taken])
    harness.consumer.revoke_on_fetch = {(IN, 1)}  # a rebalance right after the fetch
    harness.run()
    [transaction] = harness.producer.committed
    assert transaction.records == [pong(m) for m in kept]
    assert transaction.offsets == [(IN, 0, 12)]  # nothing committed for the new owner's
    assert harness.seen() == ["p0-10", "p0-11"]
    assert harness.loop.counters.processed == 2


def test_a_batch_whose_partitions_were_all_taken_opens_no_transaction() -> None:
    harness = Harness([ping(1, 0), ping(1, 1)])
    harness.consumer.revoke_on_fetch = {(IN, 1)}
    harness.run()
    assert harness.producer.committed == [] and harness.producer.aborted == []
    assert harness.seen() == []
    assert harness.loop.counters.processed == 0


def test_a_rewind_leaves_partitions_taken_meanwhile_to_their_new_owner() -> None:
    records = [ping(0, 10), ping(1, 40)]
    harness = Harness(records)
    commit = harness.producer.commit_transaction

    def rebalance_then_fail(timeout: float | None = None) -> None:
        harness.consumer.assigned.discard((IN, 1))  # partition 1 moves to another instance
        harness.producer.commit_transaction = commit  # type: ignore[method-assign]
        raise kafka_error()

    harness.producer.commit_transaction = rebalance_then_fail  # type: ignore[method-assign]
    harness.run()
    assert harness.consumer.seeks == [(IN, 0, 10)]  # the new owner reads 40 from the commit
    assert harness.loop.counters.aborted_batches == 1
    [transaction] = harness.producer.committed
    assert transaction.records == [pong(records[0])]
    assert transaction.offsets == [(IN, 0, 11)]


# ------------------------------------------------------------------------ new Kafka clients


def renewing_harness(records: list[FakeMessage], clock: FakeClock | None = None) -> Harness:
    """Batches of two; a call is given up after 1 s (a 0.3 s timeout and 0.7 s of grace):
    short for a test, long beside what a fake call takes even on a busy machine."""
    harness = Harness(records, settings=pure_settings({"services.batch_size": 2}), clock=clock)
    harness.loop.call_timeout, harness.loop.call_grace = 0.3, 0.7
    return harness


def assert_each_pong_committed_once(harness: Harness, records: list[FakeMessage]) -> None:
    assert harness.cluster.records == [pong(m) for m in records]
    last = records[-1]
    assert harness.cluster.committed == {(IN, last.partition()): last.offset() + 1}


@pytest.mark.parametrize("method", ["send_offsets_to_transaction", "commit_transaction"])
def test_a_call_that_hangs_is_given_up_and_a_new_producer_processes_the_batch_once(
        method: str) -> None:
    records = [ping(0, offset) for offset in range(4)]
    harness = renewing_harness(records)
    release = harness.producer.hang_on(method, call=2)  # the second batch's
    harness.run_releasing(release)
    old_thread = harness.loop._abandoned[0]
    old_thread.join(5)

    assert [len(p.committed) for p in harness.producers] == [1, 1]
    assert_each_pong_committed_once(harness, records)
    assert harness.loop.counters.renewals == 1
    assert harness.loop.counters.aborted_batches == 1
    assert harness.producer.abort_calls == 0  # its thread was still inside the call
    # The consumer is kept (a new one would rejoin the group): it resumed from the commit.
    assert harness.consumers == [harness.consumer]
    assert harness.consumer.committed_calls == 1
    assert harness.consumer.seeks == [(IN, 0, 2)]
    assert harness.producers[1].initialized
    assert not old_thread.is_alive()  # released, the fenced call returned and its thread ended
    assert harness.producer.current is not None  # fenced: its transaction never committed


def test_a_call_that_fails_after_overrunning_its_timeout_renews_the_producer() -> None:
    records = [ping(0, 0), ping(0, 1)]
    harness = renewing_harness(records, FakeClock())
    harness.loop.call_grace = 5.0  # the call returns, late: it is not given up
    harness.producer.slow_on("commit_transaction", 0.5)
    harness.producer.fail_on("commit_transaction",
                             kafka_error(KafkaError._TIMED_OUT, "timed out", retriable=True))
    harness.run()

    assert harness.loop.counters.renewals == 1
    assert harness.producer.abort_calls == 0  # the new producer's init ends its transaction
    assert [len(p.committed) for p in harness.producers] == [0, 1]
    assert_each_pong_committed_once(harness, records)


def test_a_queue_that_stays_full_ends_the_opening_and_a_new_producer_takes_the_batch() -> None:
    records = [ping(0, 0), ping(0, 1)]
    harness = renewing_harness(records, FakeClock())
    harness.producer.queue_full = True  # the old producer's records never find room
    harness.run()

    assert harness.loop.counters.renewals == 1
    assert harness.loop._abandoned == []  # the call gave up by itself: no thread left polling
    assert [len(p.committed) for p in harness.producers] == [0, 1]
    assert_each_pong_committed_once(harness, records)


def test_an_abort_that_hangs_renews_the_producer() -> None:
    records = [ping(0, 0), ping(0, 1)]
    harness = renewing_harness(records)
    harness.producer.fail_on("commit_transaction", kafka_error())
    release = harness.producer.hang_on("abort_transaction")
    harness.run_releasing(release)
    assert harness.loop.counters.renewals == 1
    assert [len(p.committed) for p in harness.producers] == [0, 1]
    assert_each_pong_committed_once(harness, records)


def test_kafka_failing_batch_after_batch_renews_the_producer() -> None:
    records = [ping(0, 0)]
    harness = renewing_harness(records)
    for call in range(1, loop.FAILURES_BEFORE_RENEWAL + 1):
        harness.producer.fail_on("commit_transaction", kafka_error(), call)
    harness.run()
    assert harness.loop.counters.aborted_batches == loop.FAILURES_BEFORE_RENEWAL
    assert harness.loop.counters.renewals == 1
    assert [len(p.committed) for p in harness.producers] == [0, 1]
    assert_each_pong_committed_once(harness, records)


def test_a_new_producer_that_cannot_start_yet_is_started_again_not_replaced() -> None:
    """librdkafka goes on acquiring a producer id after init_transactions timed out: a
    replacement would then be fenced by the producer it replaced."""
    records = [ping(0, 0), ping(0, 1)]
    harness = renewing_harness(records)
    release = harness.producer.hang_on("commit_transaction")
    harness.producer_factory = lambda: not_yet
    not_yet = FakeProducer(harness.cluster)  # the broker is not back
    not_yet.fail_on("init_transactions",
                    kafka_error(KafkaError._TIMED_OUT, "coordinator loading", retriable=True))
    harness.run_releasing(release)
    assert harness.loop.counters.renewals == 1
    assert harness.producers == [harness.producer, not_yet]
    assert harness.consumers == [harness.consumer]  # resumed from the commit once ready
    assert_each_pong_committed_once(harness, records)


def test_a_new_producer_that_failed_for_good_is_replaced() -> None:
    records = [ping(0, 0), ping(0, 1)]
    harness = renewing_harness(records)
    release = harness.producer.hang_on("commit_transaction")
    not_yet = FakeProducer(harness.cluster)
    not_yet.fail_on("init_transactions", kafka_error(KafkaError._TIMED_OUT, "timed out"))
    factory = iter([not_yet, FakeProducer(harness.cluster)])
    harness.producer_factory = lambda: next(factory)
    harness.run_releasing(release)
    assert harness.loop.counters.renewals == 1
    assert [p.initialized for p in harness.producers] == [True, False, True]
    assert harness.consumers == [harness.consumer]  # resumed from the commit once ready
    assert_each_pong_committed_once(harness, records)


def test_a_commit_that_reached_the_coordinator_is_not_processed_again() -> None:
    """The answer to a commit is lost (the broker went down just after it): the consumer
    resumes after the batch, from the committed offsets, not from the batch's start."""
    records = [ping(0, offset) for offset in range(4)]
    harness = renewing_harness(records)
    release = harness.producer.hang_after_commit(call=2)
    harness.run_releasing(release)
    assert harness.loop.counters.renewals == 1
    assert [len(p.committed) for p in harness.producers] == [2, 0]
    assert_each_pong_committed_once(harness, records)
    assert harness.consumer.seeks == [(IN, 0, 4)]


def test_a_consumer_that_cannot_say_its_committed_offsets_is_replaced() -> None:
    records = [ping(0, offset) for offset in range(4)]
    harness = renewing_harness(records)
    release = harness.producer.hang_on("commit_transaction", call=2)
    harness.consumer.committed_failure = kafka_error(KafkaError._TIMED_OUT, "timed out")
    harness.run_releasing(release)
    assert harness.loop.counters.renewals == 1
    first, second = harness.consumers
    assert first.closed and second.subscribed == [IN]  # the new one starts from the commit
    assert_each_pong_committed_once(harness, records)


def test_every_broker_down_renews_the_producer_before_the_next_transaction() -> None:
    """After a broker restart the old producer's first send_offsets_to_transaction hangs
    (librdkafka#5456, #5511): it is not given the chance. What was fetched with the news is
    read again; the consumer is kept, and no batch is abandoned. A producer that has
    committed nothing yet is not renewed for it."""
    records = [ping(0, offset) for offset in range(4)]
    harness = renewing_harness(records)
    old = harness.producer
    release = old.hang_on("send_offsets_to_transaction", call=2)  # what it would do
    # The second fetch serves the news with the second batch; the third, the first after
    # the renewal, the same news again, as the real consumer had queued it meanwhile.
    down = KafkaError(KafkaError._ALL_BROKERS_DOWN, "1/1 brokers are down")
    harness.consumer.client_errors.update({2: [down, down], 3: [down]})
    harness.run_releasing(release)
    assert harness.loop.counters.renewals == 1  # not again for the news queued meanwhile
    assert harness.loop.counters.aborted_batches == 0
    assert [len(p.committed) for p in harness.producers] == [1, 1]
    assert old.current is None  # the old producer began no second transaction
    assert harness.consumers == [harness.consumer]
    assert harness.consumer.seeks == [(IN, 0, 2)]  # the batch fetched with the news
    assert_each_pong_committed_once(harness, records)


def fenced() -> FakeMessage:
    """The consumer's fencing as confluent_kafka hands it over: an error event with the code
    _FATAL and the fatal flag unset (seen with two consumers of one group.instance.id)."""
    return FakeMessage(IN, -1, -1001, None, error=KafkaError(
        KafkaError._FATAL, "Static consumer fenced by other consumer with same "
        "group.instance.id"))


@pytest.mark.parametrize("fatal_flag", [False, True])
def test_a_fenced_consumer_is_replaced_and_the_new_one_resumes_from_the_commit(
        fatal_flag: bool) -> None:
    """librdkafka's static member whose session ran out while the broker was down rejoins
    and is fenced by its own new membership (librdkafka#3437): what it fetched with the news
    is dropped, and a new consumer under the same instance id starts from the commit."""
    records = [ping(0, offset) for offset in range(4)]
    harness = renewing_harness(records)
    news = fenced()
    if fatal_flag:
        news = FakeMessage(IN, -1, -1001, None, error=KafkaError(
            KafkaError._FATAL, "fenced", fatal=True))
    harness.consumer.fetch_events[2] = [news]  # with the second batch
    harness.run()
    first, second = harness.consumers
    assert first.closed and second.subscribed == [IN]
    assert harness.producers == [harness.producer]  # the producer had nothing to do with it
    assert [len(t.records) for t in harness.cluster.transactions] == [2, 2]
    # Each transaction carries the group metadata of the consumer that fetched its batch.
    assert [t.group_metadata for t in harness.cluster.transactions] == [
        first.group_metadata, second.group_metadata]
    assert_each_pong_committed_once(harness, records)


def test_a_consumer_fenced_again_soon_ends_the_process() -> None:
    """A twin with the same instance id: the process ends rather than fence it back."""
    harness = renewing_harness([ping(0, offset) for offset in range(4)])
    harness.consumer.fetch_events[2] = [fenced()]
    original = harness._new_consumer

    def fenced_again() -> FakeConsumer:
        consumer = original()
        consumer.fetch_events[1] = [fenced()]
        return consumer

    harness.loop.new_consumer = fenced_again  # type: ignore[assignment]
    with pytest.raises(FatalServiceError, match="again within"):
        harness.run()
    assert len(harness.consumers) == 2
    assert len(harness.cluster.records) == 2  # only the first batch, before the fencing


def test_too_many_clients_stuck_at_once_end_the_process() -> None:
    harness = renewing_harness([ping(0, 0)])
    releases: list[threading.Event] = []

    def stuck_producer() -> FakeProducer:
        producer = FakeProducer(harness.cluster)
        releases.append(producer.hang_on("commit_transaction"))
        return producer

    releases.append(harness.producer.hang_on("commit_transaction"))
    harness.producer_factory = stuck_producer
    try:
        with pytest.raises(FatalServiceError, match="stuck"):
            harness.run()
    finally:
        for release in releases:
            release.set()
    assert len(harness.producers) == loop.MAX_ABANDONED + 2
    assert harness.cluster.records == []


# ------------------------------------------------------------------------ metrics


def test_the_loop_counts_each_batch_by_outcome() -> None:
    now_ms = int(time.time() * 1000)
    records = [ping(0, 0), ping(0, 1, "reject"),
               ping(1, 0, "crash"), ping(1, 1),
               FakeMessage(IN, 1, 2, b"not json", key=b"bad", at_ms=now_ms)]
    harness = Harness(records)
    metrics = PipelineMetrics("pinger")
    harness.loop.metrics = metrics
    harness.run()
    r = metrics.registry

    def processed(outcome: str) -> float:
        return value(r, "paysim_messages_processed_total", service="pinger", outcome=outcome)

    assert [processed(o) for o in ("ok", "rejected", "error", "undecodable")] == [2, 1, 1, 1]
    assert value(r, "paysim_dead_letters_total", service="pinger") == 3
    assert value(r, "paysim_batch_size_count", service="pinger") == 1
    assert value(r, "paysim_batch_size_sum", service="pinger") == 5
    assert value(r, "paysim_stage_latency_seconds_count", stage="pinger") == 1
    assert value(r, "paysim_transactions_aborted_total", service="pinger") == 0
    assert harness.loop.counters.processed == processed("ok")


def test_an_aborted_batch_counts_once_and_its_retry_once() -> None:
    harness = Harness([ping(0, 0), ping(0, 1)])
    harness.redis.execute_failures.append(("seen:", REDIS_DOWN))
    metrics = PipelineMetrics("pinger")
    harness.loop.metrics = metrics
    harness.run()
    r = metrics.registry
    assert value(r, "paysim_transactions_aborted_total", service="pinger") == 1
    assert value(r, "paysim_messages_processed_total", service="pinger", outcome="ok") == 2
    assert value(r, "paysim_batch_size_count", service="pinger") == 1
