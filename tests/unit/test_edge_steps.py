"""A route's steps run on the event loop: the Redis calls of every request waiting at one
moment in one pipeline, failures thrown back into the request that made them, the delivery
reports of one poll handed to the loop together."""

from __future__ import annotations

import asyncio
from typing import Any

import pytest
import redis

from paysim.edge import delivery
from paysim.edge.delivery import Deliveries
from paysim.edge.steps import (
    LoopRunner,
    RedisBatcher,
    RedisCalls,
    RedisWrites,
    Send,
    Steps,
    run_blocking,
)
from tests.unit.fakes import AckingProducer, FakeRedis
from tests.unit.on_loop import run_on_loop, steps_on_loop


def reserve(key: str) -> Steps[str]:
    """SET NX, then GET: what an idempotency reservation does."""
    (taken,) = yield RedisCalls((("SET", key, "mine", "NX", "EX", 60),))
    (value,) = yield RedisCalls((("GET", key),))
    return f"{'taken' if taken else 'refused'}:{value!r}"


def caught(key: str) -> Steps[str]:
    try:
        yield RedisCalls((("GET", key),))
    except redis.ConnectionError as exc:
        return f"caught {exc}"
    return "no error"


def sent(topic: str) -> Steps[Any]:
    failure = yield Send(topic, "k", b"v")
    return ("sent", failure)


def test_the_redis_calls_of_requests_waiting_together_go_in_one_pipeline() -> None:
    fake = FakeRedis()
    fake.strings["old"] = b"theirs"
    runner = LoopRunner(fake, Deliveries(AckingProducer()))  # type: ignore[arg-type]
    answers = steps_on_loop(runner, [reserve("a"), reserve("old"), reserve("b")])
    assert answers == ["taken:b'mine'", "refused:b'theirs'", "taken:b'mine'"]
    # Two pipelines for three requests of two round trips each: the SETs, then the GETs.
    assert [[command[0] for command in pipe] for pipe in fake.executions] == [
        ["SET"] * 3, ["GET"] * 3]


class Refusing(FakeRedis):
    def pipeline(self, transaction: bool = True) -> Any:
        raise redis.ConnectionError("Connection refused")


class RefusingAll(Refusing):
    def execute_command(self, *args: Any) -> Any:
        raise redis.ConnectionError("Connection refused")


def test_a_failed_pipeline_is_thrown_into_every_request_that_waited_on_it() -> None:
    runner = LoopRunner(Refusing(), Deliveries(AckingProducer()))  # type: ignore[arg-type]
    assert steps_on_loop(runner, [caught("a"), caught("b")]) == ["caught Connection refused"] * 2


def test_what_a_requests_steps_raise_goes_to_its_failed() -> None:
    runner = LoopRunner(Refusing(), Deliveries(AckingProducer()))  # type: ignore[arg-type]
    assert steps_on_loop(runner, [reserve("a"), caught("b")]) == [
        "raised Connection refused", "caught Connection refused"]


def test_the_blocking_runner_answers_the_same_steps_the_same() -> None:
    fake = FakeRedis()
    fake.strings["old"] = b"theirs"
    got = [run_blocking(reserve(key), fake, None)  # type: ignore[arg-type]
           for key in ("a", "old")]
    assert got == ["taken:b'mine'", "refused:b'theirs'"]
    # One command alone goes without a pipeline (which is what Refusing refuses).
    assert run_blocking(caught("a"), Refusing(), None) == "no error"  # type: ignore[arg-type]


def stored(key: str) -> Steps[str]:
    """Writes what a later request reads, and answers without waiting for it."""
    yield RedisWrites((("SET", key, b"done", "EX", 60),), "the answer")
    return "answered"


def read(key: str) -> Steps[Any]:
    (value,) = yield RedisCalls((("GET", key),))
    return value


def test_writes_nobody_waits_for_go_before_what_is_asked_after_them() -> None:
    fake = FakeRedis()
    runner = LoopRunner(fake, Deliveries(AckingProducer()))  # type: ignore[arg-type]
    pipelines_when_answered: list[int] = []

    def first(done: Any) -> None:
        def answered(answer: Any) -> None:
            pipelines_when_answered.append(len(fake.executions))
            done(answer)
        runner.start(stored("k"), answered, done)

    def after(done: Any) -> None:
        runner.start(read("k"), done, done)

    try:
        assert run_on_loop([first, after]) == ["answered", b"done"]
    finally:
        runner.close()
    assert pipelines_when_answered == [0]  # answered before its write went to Redis
    assert [[command[0] for command in pipe] for pipe in fake.executions] == [["SET", "GET"]]


def test_a_write_nobody_waits_for_that_fails_is_logged_not_thrown(
        caplog: pytest.LogCaptureFixture) -> None:
    runner = LoopRunner(Refusing(), Deliveries(AckingProducer()))  # type: ignore[arg-type]
    # The read after it waits on the same pipeline: the loop runs until that has failed.
    assert steps_on_loop(runner, [stored("k"), caught("k")]) == [
        "answered", "caught Connection refused"]
    assert run_blocking(stored("k"), RefusingAll(), None) == "answered"  # type: ignore[arg-type]
    assert [r.getMessage() for r in caplog.records] == [
        "the answer not stored: ConnectionError"] * 2


def test_the_writes_still_queued_when_the_loop_stopped_are_sent_at_close() -> None:
    fake = FakeRedis()
    batcher = RedisBatcher(fake)  # type: ignore[arg-type]
    loop = asyncio.new_event_loop()  # never run: nothing is handed over before close
    batcher.call(loop, (("SET", "written", b"1"),), lambda *_: None, awaited=False)
    batcher.call(loop, (("GET", "abandoned"),), lambda *_: None)
    loop.close()
    batcher.close()
    assert fake.executions == [[("SET", "written", b"1")]]
    assert fake.strings["written"] == b"1"


class CountingPolls(AckingProducer):
    """Acknowledges at the next poll; counts the polls that served reports."""

    def __init__(self) -> None:
        super().__init__()
        self.serving_polls = 0

    def poll(self, timeout: float | None = None) -> int:
        served = super().poll(timeout)
        self.serving_polls += served > 0
        return served


def test_the_reports_of_one_poll_reach_the_loop_in_one_hand_over(
        monkeypatch: pytest.MonkeyPatch) -> None:
    producer = CountingPolls()
    deliveries = Deliveries(producer)  # type: ignore[arg-type]
    runner = LoopRunner(FakeRedis(), deliveries)  # type: ignore[arg-type]
    handed: list[int] = []
    report_all = delivery._report_all

    def counting(reports: list[Any]) -> None:
        handed.append(len(reports))
        report_all(reports)

    monkeypatch.setattr(delivery, "_report_all", counting)
    answers = steps_on_loop(runner, [sent("t") for _ in range(5)],
                          between=lambda: deliveries.poll_once(0))
    assert answers == [("sent", None)] * 5
    assert len(producer.records) == 5 and producer.serving_polls == 1
    assert handed == [5]  # one hand-over to the loop for the five reports
