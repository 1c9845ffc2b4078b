"""A route's work as steps: one implementation of its rules, run two ways.

A route's core is a generator that yields what it needs done outside itself (``RedisCalls``:
commands for Redis, answered with their results; ``RedisWrites``: writes it does not wait
for; ``Send``: a record onto Kafka, answered with its delivery's ``Failure``) and returns its
answer. ``run_blocking`` runs such a generator on
the calling thread, each step as a call (the Flask routes, the tests, a worker thread).
``LoopRunner`` runs many at once on the server's event loop with no thread per request:
the Redis calls of every request waiting at one moment go to Redis as one pipeline (a thread
of its own runs it: Redis is not waited on by the loop), and the delivery reports come back
to the loop in batches (paysim.edge.delivery). A step that fails is thrown into the
generator, so its ``try``/``except`` mean the same either way.
"""

from __future__ import annotations

import asyncio
import logging
import threading
from collections.abc import Callable, Generator, Sequence
from dataclasses import dataclass
from typing import Any, NamedTuple, Protocol, TypeVar

import redis

from paysim.edge.delivery import Deliveries

log = logging.getLogger("paysim.http")

T = TypeVar("T")

Command = tuple[Any, ...]  # a Redis command as execute_command takes it: ("SET", key, ...)


@dataclass(frozen=True)
class RedisCalls:
    """Commands for Redis, in one round trip (a pipeline, no transaction: on a Redis Cluster
    the keys may be on several nodes); the answer is their results in order."""

    commands: tuple[Command, ...]


@dataclass(frozen=True)
class RedisWrites:
    """Writes whose results the work does not need (``what`` they store, for the log): the
    runner goes on at once, answered None, and only logs their failure. On the loop they are
    still sent before whatever is asked after them (the pipelines go one after another, each
    in order), so a request that follows the answer finds them written."""

    commands: tuple[Command, ...]
    what: str


@dataclass(frozen=True)
class Send:
    """A record onto Kafka; the answer is None once the broker acknowledged it, else why not."""

    topic: str
    key: str
    value: bytes
    headers: list[tuple[str, bytes]] | None = None


Step = RedisCalls | RedisWrites | Send
Steps = Generator[Step, Any, T]


def returning(value: T) -> Steps[T]:
    """Steps that need nothing done: just ``value`` (for work that is not a generator)."""
    return value
    yield  # a generator, so that ``yield from`` takes it


def run_blocking(steps: Steps[T], client: redis.Redis, deliveries: Deliveries | None) -> T:
    """Run ``steps`` on this thread: each Redis call and each send waited for in turn
    (``deliveries`` None: steps that send nothing)."""
    answer: Any = None
    failure: BaseException | None = None
    while True:
        try:
            step = steps.send(answer) if failure is None else steps.throw(failure)
        except StopIteration as stop:
            return stop.value  # type: ignore[no-any-return]
        answer, failure = None, None
        try:
            if isinstance(step, RedisCalls):
                answer = _call_blocking(client, step.commands)
            elif isinstance(step, RedisWrites):
                _write_blocking(client, step)
            else:
                assert deliveries is not None, "these steps send nothing"
                answer = deliveries.deliver(step.topic, step.key, step.value,
                                            headers=step.headers)
        except Exception as exc:
            failure = exc


def _call_blocking(client: redis.Redis, commands: Sequence[Command]) -> list[Any]:
    if len(commands) == 1:
        return [client.execute_command(*commands[0])]
    pipe = client.pipeline(transaction=False)
    for command in commands:
        pipe.execute_command(*command)
    return pipe.execute()


def _write_blocking(client: redis.Redis, writes: RedisWrites) -> None:
    try:
        _call_blocking(client, writes.commands)
    except redis.RedisError as exc:
        _not_written(writes.what, exc)


def _not_written(what: str, failure: BaseException | None) -> None:
    if failure is not None:
        log.warning("%s not stored: %s", what, type(failure).__name__)


Done = Callable[[Any, BaseException | None], None]  # a step's answer, or why it failed


class Waiting(NamedTuple):
    """Commands queued on the loop, what gets their results, whether a request waits."""

    commands: tuple[Command, ...]
    done: Done
    awaited: bool


class RedisBatcher:
    """The Redis calls of the requests on the event loop, one pipeline per moment: whatever
    was asked while the last pipeline was out goes in the next. One thread sends them, so the
    loop never waits on Redis; its answers come back to the loop in one callback a pipeline."""

    def __init__(self, client: redis.Redis) -> None:
        self.client = client
        self._waiting: list[Waiting] = []
        self._out = False  # a pipeline is with the thread
        self._ready = threading.Condition()
        self._batch: list[Waiting] | None = None
        self._loop: asyncio.AbstractEventLoop | None = None
        self._closed = False
        self._thread: threading.Thread | None = None

    def call(self, loop: asyncio.AbstractEventLoop, commands: tuple[Command, ...],
             done: Done, awaited: bool = True) -> None:
        """On the loop: queue ``commands``; ``done`` gets their results on the loop. Not
        ``awaited`` (writes nobody waits for): sent at ``close`` if the loop has stopped
        before their turn."""
        self._loop = loop
        self._waiting.append(Waiting(commands, done, awaited))
        if not self._out:
            self._out = True
            loop.call_soon(self._hand_over)  # after this pass of the loop: more may come

    def _hand_over(self) -> None:
        batch, self._waiting = self._waiting, []
        if self._thread is None:
            self._thread = threading.Thread(target=self._run, name="redis-batches",
                                            daemon=True)
            self._thread.start()
        with self._ready:
            self._batch = batch
            self._ready.notify()

    def _run(self) -> None:
        while True:
            with self._ready:
                while self._batch is None and not self._closed:
                    self._ready.wait()
                if self._batch is None:
                    return
                batch, self._batch = self._batch, None
            outcome = execute_waiting(self.client, batch)
            loop = self._loop
            try:
                assert loop is not None
                loop.call_soon_threadsafe(self._answer, batch, outcome)
            except RuntimeError:  # the loop closed: nobody waits for these any more
                return

    def _answer(self, batch: list[Waiting], outcome: list[Any] | BaseException) -> None:
        answer_each(batch, outcome)
        if self._waiting:
            assert self._loop is not None
            self._hand_over()
        else:
            self._out = False

    def close(self) -> None:
        """Stop the thread (the loop has stopped); send the writes still queued, which no
        request waits for (those that wait were abandoned with their connections)."""
        with self._ready:
            self._closed = True
            self._ready.notify()
        if self._thread is not None:
            self._thread.join(5)
        left, self._waiting = self._waiting, []
        send_unawaited(self.client, left)


def execute_waiting(client: redis.Redis, batch: list[Waiting]) -> list[Any] | BaseException:
    """The calls of ``batch`` in one pipeline on a blocking client: every command's result
    (an error reply as its exception), or why the whole pipeline failed."""
    try:
        pipe = client.pipeline(transaction=False)
        for commands, _done, _awaited in batch:
            for command in commands:
                pipe.execute_command(*command)
        return pipe.execute(raise_on_error=False)
    except Exception as exc:  # the whole pipeline failed (Redis away): each request hears
        return exc


def send_unawaited(client: redis.Redis, left: list[Waiting]) -> None:
    """At close, once the loop has stopped: the writes among ``left`` that nobody waits for,
    through the blocking client (those that wait were abandoned with their connections)."""
    writes = [waiting for waiting in left if not waiting.awaited]
    if writes:
        answer_each(writes, execute_waiting(client, writes))


def answer_each(batch: list[Waiting], outcome: list[Any] | BaseException) -> None:
    """Each queued call's results from its batch's (or the whole batch's failure)."""
    at = 0
    for commands, done, _awaited in batch:
        if isinstance(outcome, BaseException):
            _safely(done, None, outcome)
            continue
        results = outcome[at:at + len(commands)]
        at += len(commands)
        failed = next((r for r in results if isinstance(r, Exception)), None)
        _safely(done, results, failed)


def _safely(done: Done, answer: Any, failure: BaseException | None) -> None:
    try:
        done(answer, failure)
    except Exception:  # one request's failure is not the others'
        log.exception("a request waiting on Redis failed")


class RedisPipes(Protocol):
    """What takes the Redis calls of the requests on the loop: the thread's RedisBatcher, or
    the loop's own client (paysim.edge.loop_redis.LoopRedis)."""

    def call(self, loop: asyncio.AbstractEventLoop, commands: tuple[Command, ...],
             done: Done, awaited: bool = True) -> None: ...

    def close(self) -> None: ...


class LoopRunner:
    """Runs routes' steps on the running event loop (``start``), many at once. Their Redis
    calls go to ``pipes``, by default a RedisBatcher of ``client``."""

    def __init__(self, client: redis.Redis, deliveries: Deliveries,
                 pipes: RedisPipes | None = None) -> None:
        self.redis: RedisPipes = pipes if pipes is not None else RedisBatcher(client)
        self.deliveries = deliveries

    def start(self, steps: Steps[T], finished: Callable[[T], None],
              failed: Callable[[Exception], None]) -> None:
        """On the loop: run ``steps``; ``finished`` gets the answer, on the loop, or
        ``failed`` what ``steps`` raised (a route answers its own errors: a last line)."""
        self._advance(asyncio.get_running_loop(), steps, finished, failed, None, None)

    def _advance(self, loop: asyncio.AbstractEventLoop, steps: Steps[T],
                 finished: Callable[[T], None], failed: Callable[[Exception], None],
                 answer: Any, failure: BaseException | None) -> None:
        try:
            step = steps.send(answer) if failure is None else steps.throw(failure)
        except StopIteration as stop:
            finished(stop.value)
            return
        except Exception as exc:
            failed(exc)
            return

        def resume(answer: Any, failure: BaseException | None = None) -> None:
            self._advance(loop, steps, finished, failed, answer, failure)

        if isinstance(step, RedisCalls):
            self.redis.call(loop, step.commands, resume)
        elif isinstance(step, RedisWrites):
            what = step.what
            self.redis.call(loop, step.commands,
                            lambda _results, failure: _not_written(what, failure),
                            awaited=False)
            resume(None)  # queued before anything the rest asks: the order holds
        else:
            # The loop does not wait for room in a full producer queue: that is a 503 at
            # once, where a worker thread would have waited (paysim.edge.delivery.WAIT_S).
            self.deliveries.send_to_loop(loop, step.topic, step.key, step.value,
                                         step.headers, resume)

    def close(self) -> None:
        self.redis.close()

