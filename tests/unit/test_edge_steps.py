"""A route's steps run on the event loop: the Redis calls of every request waiting at one
moment in one pipeline, failures thrown back into the request that made them, the delivery
reports of one poll handed to the loop together."""

from __future__ import annotations

from typing import Any

import pytest
import redis

from paysim.edge import delivery
from paysim.edge.delivery import Deliveries
from paysim.edge.steps import LoopRunner, RedisCalls, Send, Steps, run_blocking
from tests.unit.fakes import AckingProducer, FakeRedis
from tests.unit.on_loop import steps_on_loop


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
