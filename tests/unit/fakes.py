"""Plain-Python stand-ins for what the pipeline calls on confluent_kafka's Consumer and Producer
and on redis-py's client and pipeline: enough behaviour for the loop and the services' decide
steps to run without a broker or a redis-server, and a record of every call to assert on."""

from __future__ import annotations

import base64
import threading
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field
from typing import Any

import msgspec
from confluent_kafka import (
    TIMESTAMP_CREATE_TIME,
    TIMESTAMP_NOT_AVAILABLE,
    KafkaError,
    KafkaException,
    TopicPartition,
)

from paysim.infra.config import Settings, load_settings
from paysim.infra.secrets import Keys
from paysim.pipeline import ledger_store, store

Partition = tuple[str, int]


class FakeMessage:
    """A consumed record (or a consumer error event when ``error`` is given)."""

    def __init__(self, topic: str, partition: int, offset: int, value: bytes | None,
                 key: bytes | None = None, error: KafkaError | None = None,
                 at_ms: int | None = None,
                 headers: list[tuple[str, bytes]] | None = None) -> None:
        self._topic, self._partition, self._offset = topic, partition, offset
        self._value, self._key, self._error = value, key, error
        self._headers = headers
        self._at_ms = at_ms  # the record's CreateTime; None: no timestamp

    def timestamp(self) -> tuple[int, int]:
        if self._at_ms is None:
            return TIMESTAMP_NOT_AVAILABLE, 0
        return TIMESTAMP_CREATE_TIME, self._at_ms

    def topic(self) -> str:
        return self._topic

    def partition(self) -> int:
        return self._partition

    def offset(self) -> int:
        return self._offset

    def value(self) -> bytes | None:
        return self._value

    def key(self) -> bytes | None:
        return self._key

    def headers(self) -> list[tuple[str, bytes]] | None:
        return self._headers  # None, as the real client, when the record has none

    def error(self) -> KafkaError | None:
        return self._error


class Stop(threading.Event):
    """The loop's stop event; its backoff waits are recorded and return at once."""

    def __init__(self) -> None:
        super().__init__()
        self.waits: list[float] = []

    def wait(self, timeout: float | None = None) -> bool:
        self.waits.append(timeout if timeout is not None else -1.0)
        return self.is_set()


class FakeConsumer:
    """Delivers ``records`` partition by partition from each partition's position; seek moves
    the position back as the real consumer does. Once nothing is left, poll() sets ``stop``,
    so ServiceLoop.run() returns when the records are used up. Each partition starts at its
    offset in ``committed`` (a FakeCluster's), as a new consumer of the group would, and
    committed() reads them there. At the n-th fetch (counting from 1), ``client_errors[n]``
    are handed to ``error_cb`` (as the real consumer's poll serves its error_cb) and
    ``fetch_events[n]`` are delivered before any record."""

    MAX_CALLS = 1000  # a loop that never ends stops here, and its test fails on what it sees

    def __init__(self, stop: threading.Event, records: Iterable[FakeMessage],
                 committed: dict[Partition, int] | None = None) -> None:
        self.stop = stop
        self.logs: dict[Partition, list[FakeMessage]] = {}
        for record in records:
            self.logs.setdefault((record.topic(), record.partition()), []).append(record)
        self.committed_offsets = committed if committed is not None else {}
        self.positions = {tp: self.committed_offsets.get(tp, log[0].offset())
                          for tp, log in self.logs.items()}
        self.assigned: set[Partition] = set(self.logs)
        self.events: list[FakeMessage] = []  # error events, delivered before any record
        self.revoke_on_fetch: set[Partition] = set()  # a rebalance right after a fetch
        self.seeks: list[tuple[str, int, int]] = []
        self.subscribed: list[str] = []
        self.group_metadata = object()
        self.closed = False
        self.calls = 0
        self.client_errors: dict[int, list[KafkaError]] = {}
        self.fetch_events: dict[int, list[FakeMessage]] = {}  # error events at the n-th fetch
        self.error_cb: Callable[[KafkaError], None] | None = None
        self.committed_failure: BaseException | None = None  # committed() raises it
        self.committed_calls = 0
        self.on_assign: Callable[[Any, list[TopicPartition]], None] | None = None
        self.on_revoke: Callable[[Any, list[TopicPartition]], None] | None = None
        self.assign_pending = False  # subscribed: the assignment comes with the next fetch

    def subscribe(self, topics: list[str],
                  on_assign: Callable[[Any, list[TopicPartition]], None] | None = None,
                  on_revoke: Callable[[Any, list[TopicPartition]], None] | None = None) -> None:
        """As the real consumer, the assignment comes with the first fetch, through
        ``on_assign``; ``revoke_on_fetch`` goes through ``on_revoke``."""
        self.subscribed = list(topics)
        self.on_assign, self.on_revoke = on_assign, on_revoke
        self.assign_pending = True

    def consume(self, num_messages: int = 1, timeout: float = -1) -> list[FakeMessage]:
        self.calls += 1
        if self.calls > self.MAX_CALLS:
            self.stop.set()
            return []
        for error in self.client_errors.pop(self.calls, []):
            if self.error_cb is not None:
                self.error_cb(error)
        if self.assign_pending:
            self.assign_pending = False
            if self.on_assign is not None:
                self.on_assign(self, self.assignment())
        self.events.extend(self.fetch_events.pop(self.calls, []))
        batch = self.events[:num_messages]
        del self.events[:len(batch)]
        for tp in sorted(self.assigned):
            for record in self.logs.get(tp, []):
                if len(batch) >= num_messages:
                    break
                if record.offset() >= self.positions[tp]:
                    batch.append(record)
                    self.positions[tp] = record.offset() + 1
        if batch and self.revoke_on_fetch:
            self.assigned -= self.revoke_on_fetch
            if self.on_revoke is not None:
                self.on_revoke(self, [TopicPartition(t, p) for t, p in
                                      sorted(self.revoke_on_fetch)])
            self.revoke_on_fetch = set()
        return batch

    def poll(self, timeout: float | None = None) -> FakeMessage | None:
        batch = self.consume(1)
        if batch:
            return batch[0]
        self.stop.set()  # idle: the test's records are used up
        return None

    def assignment(self) -> list[TopicPartition]:
        return [TopicPartition(t, p) for t, p in sorted(self.assigned)]

    def seek(self, partition: TopicPartition) -> None:
        self.seeks.append((partition.topic, partition.partition, partition.offset))
        self.positions[(partition.topic, partition.partition)] = partition.offset

    def consumer_group_metadata(self) -> object:
        return self.group_metadata

    def get_watermark_offsets(self, partition: TopicPartition,
                              cached: bool = False) -> tuple[int, int]:
        log = self.logs[(partition.topic, partition.partition)]
        return log[0].offset(), log[-1].offset() + 1

    def position(self, partitions: list[TopicPartition]) -> list[TopicPartition]:
        return [TopicPartition(tp.topic, tp.partition, self.positions[(tp.topic, tp.partition)])
                for tp in partitions]

    def committed(self, partitions: list[TopicPartition],
                  timeout: float | None = None) -> list[TopicPartition]:
        """The group's committed offsets; OFFSET_INVALID (-1001) where none was committed."""
        self.committed_calls += 1
        if self.committed_failure is not None:
            raise self.committed_failure
        return [TopicPartition(tp.topic, tp.partition,
                               self.committed_offsets.get((tp.topic, tp.partition), -1001))
                for tp in partitions]

    def close(self) -> None:
        self.closed = True


@dataclass(frozen=True)
class Produced:
    topic: str
    key: str | None
    value: bytes
    headers: tuple[tuple[str, bytes], ...] | None = None  # None: none given


def _headers(headers: list[tuple[str, bytes]] | None) -> tuple[tuple[str, bytes], ...] | None:
    return None if headers is None else tuple(headers)


@dataclass
class Transaction:
    records: list[Produced] = field(default_factory=list)
    offsets: list[tuple[str, int, int]] = field(default_factory=list)
    group_metadata: object = None


@dataclass
class FakeCluster:
    """What the broker keeps across producers of one transactional.id: the producer epoch
    (init_transactions bumps it, fencing older producers), the committed transactions and
    the group's committed offsets."""

    epoch: int = 0
    transactions: list[Transaction] = field(default_factory=list)
    committed: dict[Partition, int] = field(default_factory=dict)

    @property
    def records(self) -> list[Produced]:
        """Every committed record, whichever producer committed it, in order."""
        return [record for transaction in self.transactions for record in transaction.records]


class AckingProducer:
    """A plain (not transactional) producer whose broker acknowledges every record at the
    next poll, as the HTTP API's deliveries wait for; or reports ``error`` for each."""

    def __init__(self, error: KafkaError | None = None) -> None:
        self.error = error
        self.records: list[Produced] = []
        self._unacknowledged: list[Callable[..., Any]] = []

    def produce(self, topic: str, value: bytes | None = None, key: str | None = None,
                on_delivery: Callable[..., Any] | None = None,
                headers: list[tuple[str, bytes]] | None = None) -> None:
        self.records.append(Produced(topic, key, value or b"", _headers(headers)))
        if on_delivery is not None:
            self._unacknowledged.append(on_delivery)

    def poll(self, timeout: float | None = None) -> int:
        acknowledged, self._unacknowledged = self._unacknowledged, []
        for on_delivery in acknowledged:
            on_delivery(self.error, None)
        return len(acknowledged)


def kafka_error(code: int = KafkaError._TRANSPORT, reason: str = "broker gone", *,
                fatal: bool = False, retriable: bool = False) -> KafkaException:
    return KafkaException(KafkaError(code, reason, fatal=fatal, retriable=retriable))


class FakeClock:
    """A monotonic clock whose time moves only when told: what a loop under test reads as
    its time (ServiceLoop's ``clock``), moved by the fake calls said to take some."""

    def __init__(self) -> None:
        self.now = 0.0

    def __call__(self) -> float:
        return self.now

    def advance(self, seconds: float) -> None:
        self.now += seconds


class FakeProducer:
    """A transactional producer: records reach ``committed`` only through commit_transaction;
    an aborted transaction's records are dropped. ``fail_on`` makes a call raise, ``hang_on``
    block until released, ``slow_on`` take its time (on ``clock``, which the loop under test
    reads too). With a ``cluster``, a newer producer's init_transactions fences this one, and
    commits reach the cluster."""

    HANG_LIMIT_S = 30.0  # a hung call that a test forgot to release returns after this

    def __init__(self, cluster: FakeCluster | None = None,
                 clock: FakeClock | None = None) -> None:
        self.cluster = cluster
        self.clock = clock
        self.epoch = 0
        self.initialized = False
        self.current: Transaction | None = None
        self.committed: list[Transaction] = []
        self.aborted: list[Transaction] = []
        self.abort_calls = 0
        self.flushed = False
        self._failures: dict[tuple[str, int], BaseException] = {}
        self._hangs: dict[tuple[str, int], threading.Event] = {}
        self._hangs_after_commit: dict[int, threading.Event] = {}
        self._delays: dict[tuple[str, int], float] = {}
        self._calls: dict[str, int] = {}
        # Every produce() refused for room, as by librdkafka's full queue; poll() then takes
        # its whole timeout on ``clock``, waiting for room that does not come.
        self.queue_full = False

    def fail_on(self, method: str, exc: BaseException, call: int = 1) -> None:
        """Raise ``exc`` from the ``call``-th call of ``method`` (counting from 1)."""
        self._failures[(method, call)] = exc

    def hang_on(self, method: str, call: int = 1) -> threading.Event:
        """Block the ``call``-th call of ``method`` until the returned event is set."""
        release = self._hangs[(method, call)] = threading.Event()
        return release

    def hang_after_commit(self, call: int = 1) -> threading.Event:
        """Let the ``call``-th commit_transaction commit, then block it until the returned
        event is set: a commit that reached the coordinator, its answer lost."""
        release = self._hangs_after_commit[call] = threading.Event()
        return release

    def slow_on(self, method: str, seconds: float, call: int = 1) -> None:
        """Make the ``call``-th call of ``method`` take ``seconds`` of the producer's clock
        before it goes on."""
        if self.clock is None:
            raise ValueError("slow_on needs the producer to have a clock")
        self._delays[(method, call)] = seconds

    def _enter(self, method: str) -> None:
        self._calls[method] = self._calls.get(method, 0) + 1
        key = (method, self._calls[method])
        release = self._hangs.pop(key, None)
        if release is not None:
            release.wait(self.HANG_LIMIT_S)
        delay = self._delays.pop(key, None)
        if delay is not None and self.clock is not None:
            self.clock.advance(delay)  # the fake call's own duration
        failure = self._failures.pop(key, None)
        if failure is not None:
            raise failure
        if self.cluster is not None and self.initialized and self.epoch != self.cluster.epoch:
            raise KafkaException(KafkaError(KafkaError._FENCED, "fenced by a newer producer",
                                            fatal=True))

    def _in_transaction(self, method: str) -> Transaction:
        if self.current is None:
            raise KafkaException(KafkaError(KafkaError._STATE, f"{method}: no transaction"))
        return self.current

    def init_transactions(self, timeout: float | None = None) -> None:
        self._enter("init_transactions")
        if self.cluster is not None:
            self.cluster.epoch += 1
            self.epoch = self.cluster.epoch
        self.initialized = True

    def begin_transaction(self) -> None:
        self._enter("begin_transaction")
        if self.current is not None:
            raise KafkaException(KafkaError(KafkaError._STATE, "transaction already open"))
        self.current = Transaction()

    def produce(self, topic: str, value: bytes | None = None, key: str | None = None,
                on_delivery: Callable[..., Any] | None = None,
                headers: list[tuple[str, bytes]] | None = None) -> None:
        self._enter("produce")
        if self.queue_full:
            raise BufferError("Local: Queue full")
        self._in_transaction("produce").records.append(
            Produced(topic, key, value or b"", _headers(headers)))

    def send_offsets_to_transaction(self, offsets: list[TopicPartition], metadata: object,
                                    timeout: float | None = None) -> None:
        self._enter("send_offsets_to_transaction")
        transaction = self._in_transaction("send_offsets_to_transaction")
        transaction.offsets = sorted((tp.topic, tp.partition, tp.offset) for tp in offsets)
        transaction.group_metadata = metadata

    def commit_transaction(self, timeout: float | None = None) -> None:
        self._enter("commit_transaction")
        transaction = self._in_transaction("commit_transaction")
        self.committed.append(transaction)
        self.current = None
        if self.cluster is not None:
            self.cluster.transactions.append(transaction)
            for topic, partition, offset in transaction.offsets:
                self.cluster.committed[(topic, partition)] = offset
        release = self._hangs_after_commit.pop(self._calls["commit_transaction"], None)
        if release is not None:
            release.wait(self.HANG_LIMIT_S)

    def abort_transaction(self, timeout: float | None = None) -> None:
        self.abort_calls += 1
        self._enter("abort_transaction")
        self.aborted.append(self._in_transaction("abort_transaction"))
        self.current = None

    def poll(self, timeout: float | None = None) -> int:
        if self.queue_full and self.clock is not None and timeout:
            self.clock.advance(timeout)
        return 0

    def flush(self, timeout: float | None = None) -> int:
        self.flushed = True
        return 0

    @property
    def records(self) -> list[Produced]:
        """Every committed record, in order."""
        return [record for transaction in self.committed for record in transaction.records]


Command = tuple[Any, ...]


class FakePipeline:
    """Queues commands; execute() hands them to the client's log, or raises the error the
    client holds for one of their keys."""

    def __init__(self, client: FakeRedis) -> None:
        self.client = client
        self.commands: list[Command] = []

    def execute_command(self, *args: Any) -> FakePipeline:
        if args[:2] == ("EVAL", store.NOTIFIED_LUA):
            self.commands += notified_script(args[2:])
        else:
            self.commands.append(args)
        return self

    def expire(self, name: str, time: int) -> FakePipeline:
        return self.execute_command("EXPIRE", name, time)

    def set(self, name: str, value: str | bytes, nx: bool = False,
            ex: int | None = None) -> FakePipeline:
        """Applied to the client's strings when the pipeline executes (NX answered)."""
        return self.execute_command("SET", name, value, {"nx": nx, "ex": ex})

    def xadd(self, name: str, fields: dict[str, Any], id: str = "*",
             **_: Any) -> FakePipeline:
        return self.execute_command("XADD", name, id, dict(fields))

    def hset(self, name: str, key: str | None = None, value: Any = None,
             mapping: dict[str, Any] | None = None) -> FakePipeline:
        return self.execute_command("HSET", name, dict(mapping or {key: value}))

    def sadd(self, name: str, *values: Any) -> FakePipeline:
        return self.execute_command("SADD", name, *values)

    def srem(self, name: str, *values: Any) -> FakePipeline:
        return self.execute_command("SREM", name, *values)

    def delete(self, *names: str) -> FakePipeline:
        return self.execute_command("DEL", *names)

    # Reads, answered from the client's strings and hashes when the pipeline executes.

    def get(self, name: str) -> FakePipeline:
        return self.execute_command("GET", name)

    def hmget(self, name: str, keys: list[str]) -> FakePipeline:
        return self.execute_command("HMGET", name, list(keys))

    def hgetall(self, name: str) -> FakePipeline:
        return self.execute_command("HGETALL", name)

    def _answer(self, command: Command) -> Any:
        name, *args = command
        if name == "GET":
            return self.client.strings.get(args[0])
        if name == "HMGET":
            stored = self.client.hashes.get(args[0], {})
            return [stored.get(key.encode()) for key in args[1]]
        if name == "HGETALL":
            return dict(self.client.hashes.get(args[0], {}))
        if name == "SET" and len(args) == 3 and isinstance(args[2], dict):  # from set()
            return self.client.set(args[0], args[1], **args[2])
        if name in ("SET", "DEL"):  # raw, as execute_command("SET", key, value, "NX", ...)
            return self.client.execute_command(name, *args)
        return True

    def execute(self, raise_on_error: bool = True) -> list[Any]:
        for i, (prefix, error) in enumerate(self.client.execute_failures):
            if any(len(c) > 1 and str(c[1]).startswith(prefix) for c in self.commands):
                del self.client.execute_failures[i]
                raise error
        done, self.commands = self.commands, []
        self.client.executed.extend(done)
        self.client.executions.append(done)
        if self.client.after_execute is not None:
            self.client.after_execute(done)
        return [self._answer(command) for command in done]


def notified_script(call: tuple[Any, ...]) -> list[Command]:
    """The commands store.NOTIFIED_LUA runs for its keys and arguments, in its order (the
    integration tests check the script itself on a real Redis)."""
    count, *rest = call
    keys, (ttl, payments, *args) = rest[:count], rest[count:]
    commands: list[Command] = []
    for i in range(payments):
        hash_key = keys[i]
        status, doc, webhook_status, trace_id = args[4 * i:4 * i + 4]
        fields = ["status", status, "doc", doc, "notification", "sent",
                  "webhook_status", webhook_status]
        if trace_id != "":
            fields += ["trace_id", trace_id]
        commands += [("HSET", hash_key, *fields), ("EXPIRE", hash_key, ttl)]
    for stream, entry in zip(keys[payments:], args[4 * payments:], strict=True):
        commands += [("XADD", stream, "*", store.DONE_BATCH_FIELD, entry),
                     ("EXPIRE", stream, ttl)]
    return commands


class FakeScript:
    """A registered Lua script: answers with ``client.script_answers(keys, args)``."""

    def __init__(self, client: FakeRedis, source: str) -> None:
        self.client = client
        self.source = source
        self.calls: list[tuple[list[str], list[Any]]] = []

    def __call__(self, keys: list[str], args: list[Any]) -> list[Any]:
        self.calls.append((list(keys), list(args)))
        if self.source == ledger_store.READ_LUA:
            return self._read(keys, args)
        return self.client.script_answers(keys, args)

    def _read(self, keys: list[str], args: list[Any]) -> list[Any]:
        """The ledger's READ script on this client's hashes and strings."""
        out: list[Any] = []
        at = 0
        for records, answers, fields in msgspec.msgpack.decode(args[0]):
            stored = self.client.hashes.get(keys[at], {})
            if fields is None:
                out.append([part for pair in stored.items() for part in pair])
            else:
                out.append([stored.get(name.encode()) for name in fields])
            out += [self.client.strings.get(key)
                    for key in keys[at + 1:at + 1 + records + answers]]
            at += 1 + records + answers
        return out


class FakeRedis:
    def __init__(self) -> None:
        self.strings: dict[str, bytes] = {}
        self.hashes: dict[str, dict[bytes, bytes]] = {}
        self.executed: list[Command] = []  # every command of every executed pipeline
        self.executions: list[list[Command]] = []  # the same, pipeline by pipeline
        # (key prefix, error): the next pipeline writing a key with that prefix raises it.
        self.execute_failures: list[tuple[str, Exception]] = []
        self.mget_calls: list[list[str]] = []
        self.after_execute: Callable[[list[Command]], None] | None = None  # given each pipeline
        self.scripts: list[FakeScript] = []  # every registered script but the ledger's READ
        # A script's answer; the ledger's APPLY script answers the cards that conflicted:
        # none unless a test says otherwise.
        self.script_answers: Callable[[list[str], list[Any]], list[bytes]] = (
            lambda keys, _: [])

    def pipeline(self, transaction: bool = True) -> FakePipeline:
        return FakePipeline(self)

    # What the HTTP API calls outside pipelines: idempotency records and stored outcomes.

    def get(self, name: str) -> bytes | None:
        return self.strings.get(name)

    def set(self, name: str, value: str | bytes, nx: bool = False,
            ex: int | None = None) -> bool:
        if nx and name in self.strings:
            return False
        self.strings[name] = value.encode() if isinstance(value, str) else value
        return True

    def delete(self, *names: str) -> int:
        return sum(self.strings.pop(name, None) is not None for name in names)

    def hgetall(self, name: str) -> dict[bytes, bytes]:
        return dict(self.hashes.get(name, {}))

    def ping(self) -> bool:
        return True

    def execute_command(self, name: str, *args: Any) -> Any:
        """GET, SET (with NX, EX) and DEL as raw commands, answered as redis-py does."""
        if name == "GET":
            return self.get(args[0])
        if name == "DEL":
            return self.delete(*args)
        if name == "SET":
            options = [str(arg).upper() for arg in args[2:]]
            ex = int(args[2 + options.index("EX") + 1]) if "EX" in options else None
            return self.set(args[0], args[1], nx="NX" in options, ex=ex) or None
        raise NotImplementedError(name)

    def mget(self, keys: list[str]) -> list[bytes | None]:
        self.mget_calls.append(list(keys))
        return [self.strings.get(key) for key in keys]

    def register_script(self, source: str) -> FakeScript:
        script = FakeScript(self, source)
        if source != ledger_store.READ_LUA:
            self.scripts.append(script)
        return script

    def commands(self, name: str, key: str | None = None) -> list[Command]:
        """The executed commands called ``name`` (on ``key`` when given)."""
        return [c for c in self.executed
                if c[0] == name and (key is None or (len(c) > 1 and c[1] == key))]


# Fixed keys, configured in the settings so that nothing reads or writes a secrets file.
KEYS = Keys(card_key=bytes(range(32)), token_key=bytes(range(32, 64)),
            webhook_secret=bytes(range(64, 96)))


def pure_settings(flags: dict[str, object] | None = None) -> Settings:
    """Settings for tests without a stack: the fixed keys, no environment, ``flags`` on top."""
    return load_settings({
        "secrets.card_key": base64.b64encode(KEYS.card_key).decode(),
        "secrets.token_key": base64.b64encode(KEYS.token_key).decode(),
        "secrets.webhook_secret": base64.b64encode(KEYS.webhook_secret).decode(),
        **(flags or {}),
    }, env={})
