"""The edge's own Redis client on the event loop (paysim.edge.loop_redis) against the suite's
redis-server: replies matched to their calls across pipelines in flight together, the URL's
database and credentials, a lost connection, a timeout, a Redis that is not there, and the
writes left when the loop stops."""

from __future__ import annotations

import asyncio
import uuid
from collections.abc import Awaitable, Callable, Iterator, Sized
from typing import Any

import pytest
import redis

from paysim.edge.loop_redis import LoopRedis, pipes_for
from paysim.edge.steps import Command
from paysim.infra.config import Settings
from paysim.stack.ports import free_port
from tests.unit.on_loop import run_on_loop

Result = tuple[Any, BaseException | None]


@pytest.fixture()
def url(local_stack: object, settings: Settings) -> str:
    return settings.redis_url


@pytest.fixture()
def blocking(url: str) -> Iterator[redis.Redis]:
    client = redis.Redis.from_url(url)
    yield client
    client.close()


def loop_client(url: str, **options: Any) -> LoopRedis:
    pipes = pipes_for(redis.Redis.from_url(url, **options))
    assert isinstance(pipes, LoopRedis)
    return pipes


def on_loop(client: LoopRedis, work: Callable[[asyncio.AbstractEventLoop],
                                              Awaitable[None]]) -> None:
    """``work`` on a loop of its own (bounded by run_on_loop's deadline); the client closed
    after."""
    async def run(done: Callable[[None], None]) -> None:
        await work(asyncio.get_running_loop())
        done(None)

    try:
        run_on_loop([lambda done: asyncio.get_running_loop().create_task(run(done))])
    finally:
        client.close()


async def answered(results: Sized, count: int) -> None:
    while len(results) < count:
        await asyncio.sleep(0.001)


def calls(client: LoopRedis, batches: list[list[tuple[Command, ...]]]) -> list[Result]:
    """Each batch's calls asked in one pass of the loop, one pass after another without
    waiting for answers (so their pipelines are in flight together); every call's result
    and failure, in the order asked."""
    results: dict[int, Result] = {}

    async def ask(loop: asyncio.AbstractEventLoop) -> None:
        n = 0
        for batch in batches:
            for commands in batch:
                client.call(loop, commands,
                            lambda got, failure, n=n: results.__setitem__(n, (got, failure)))
                n += 1
            await asyncio.sleep(0)
        await answered(results, n)

    on_loop(client, ask)
    return [results[n] for n in range(len(results))]


def test_replies_reach_their_calls_across_pipelines_in_flight_together(url: str) -> None:
    prefix = f"loop-{uuid.uuid4().hex}"
    batches = [[(("SET", f"{prefix}:{b}:{i}", f"v{b}.{i}"), ("GET", f"{prefix}:{b}:{i}"))
                for i in range(40)] for b in range(5)]
    batches[2][7] = (("SET", f"{prefix}:text", "x"), ("INCR", f"{prefix}:text"))
    results = calls(loop_client(url), batches)
    assert len(results) == 200
    for n, (got, failure) in enumerate(results):
        b, i = divmod(n, 40)
        if (b, i) == (2, 7):  # an error reply fails its own call only
            assert got[0] == b"OK" and isinstance(got[1], redis.ResponseError)
            assert isinstance(failure, redis.ResponseError)
            continue
        assert (got, failure) == ([b"OK", f"v{b}.{i}".encode()], None)


def test_the_urls_database_user_and_name_are_used(url: str, blocking: redis.Redis) -> None:
    user, password = f"loop-{uuid.uuid4().hex[:8]}", uuid.uuid4().hex
    blocking.acl_setuser(user, enabled=True, passwords=[f"+{password}"], keys=["*"],
                         commands=["+@all"])
    key = f"loop-{uuid.uuid4().hex}"
    try:
        authed = url.replace("redis://", f"redis://{user}:{password}@", 1)
        results = calls(loop_client(f"{authed.rsplit('/', 1)[0]}/7?client_name=loop-edge"),
                        [[(("SET", key, "in 7"), ("ACL", "WHOAMI"),
                           ("CLIENT", "GETNAME"))]])
        assert results == [([b"OK", user.encode(), b"loop-edge"], None)]
        assert blocking.get(key) is None
        seventh = redis.Redis.from_url(f"{url.rsplit('/', 1)[0]}/7")
        assert seventh.get(key) == b"in 7"
        seventh.delete(key)
        seventh.close()
        wrong = url.replace("redis://", f"redis://{user}:not-{password}@", 1)
        [(got, failure)] = calls(loop_client(wrong), [[(("SET", key, "as nobody"),)]])
        # Nothing is sent on a connection whose AUTH failed, not even as the default user.
        assert got is None and isinstance(failure, redis.ConnectionError)
        assert "WRONGPASS" in str(failure)
        assert blocking.get(key) is None
    finally:
        blocking.acl_deluser(user)


def test_a_lost_connection_fails_its_calls_and_the_next_call_connects_again(
        url: str, blocking: redis.Redis) -> None:
    client = loop_client(url, socket_timeout=10)
    key = f"loop-{uuid.uuid4().hex}"
    results: list[Result] = []

    def record(got: Any, failure: BaseException | None) -> None:
        results.append((got, failure))

    async def main(loop: asyncio.AbstractEventLoop) -> None:
        client.call(loop, (("CLIENT", "ID"),), record)
        await answered(results, 1)
        client.call(loop, (("BLPOP", key, 5),), record)
        mine = results[0][0][0]
        while not any(int(c["id"]) == mine and c["cmd"] == "blpop"
                      for c in blocking.client_list()):  # until Redis holds it blocked
            await asyncio.sleep(0.001)
        blocking.client_kill_filter(_id=mine)
        await answered(results, 2)
        client.call(loop, (("SET", key, "again"),), record)
        await answered(results, 3)

    on_loop(client, main)
    assert isinstance(results[1][1], redis.ConnectionError) and results[1][0] is None
    assert results[2] == ([b"OK"], None)
    assert blocking.get(key) == b"again"
    blocking.delete(key)


def test_no_answer_within_the_socket_timeout_is_a_timeout(url: str) -> None:
    key = f"loop-{uuid.uuid4().hex}"
    [(got, failure)] = calls(loop_client(url, socket_timeout=0.3),
                             [[(("BLPOP", key, 3),)]])
    assert got is None and isinstance(failure, redis.TimeoutError)


def test_a_redis_that_is_not_there_is_a_connection_error_for_each_call(url: str) -> None:
    nowhere = f"redis://127.0.0.1:{free_port()}/0"
    results = calls(loop_client(nowhere, socket_connect_timeout=2),
                    [[(("GET", "a"),), (("GET", "b"),)]])
    assert [got for got, _ in results] == [None, None]
    assert all(isinstance(failure, redis.ConnectionError) for _, failure in results)


def test_the_writes_still_unanswered_when_the_loop_stopped_are_sent_at_close(
        url: str, blocking: redis.Redis) -> None:
    client = loop_client(url)
    key = f"loop-{uuid.uuid4().hex}"
    loop = asyncio.new_event_loop()  # never run: nothing went out before close
    client.call(loop, (("SET", key, b"written"),), lambda *_: None, awaited=False)
    client.call(loop, (("SET", f"{key}:abandoned", b"no"),), lambda *_: None)
    loop.close()
    client.close()
    assert blocking.get(key) == b"written"
    assert blocking.get(f"{key}:abandoned") is None
    blocking.delete(key)
