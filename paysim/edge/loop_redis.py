"""The edge's own Redis client on the server's event loop: the Redis calls of the requests on
the loop are sent from the loop itself, packed and read by hiredis, with no thread between
and several pipelines in flight on one connection.

Why not the thread batcher (paysim.edge.steps.RedisBatcher) for a plain Redis: it sends one
pipeline at a time, so a request asked while one is out waits for it to come back before
its own goes (2 ms at the median under wrk, session 9); each pipeline costs two thread
hand-overs and redis-py's packing and parsing (15-20 µs a request against 2 here, session
8). Redis answers a connection's commands in the order they came, so the calls keep their
order (a stored answer is written before a retry's reservation is read) and each reply is
matched to its call by its place.

Only for a single Redis over TCP or a Unix socket (``pipes_for``): a Redis Cluster (slots,
redirections) and TLS stay on the thread batcher, through redis-py. What it does of a
connection: AUTH and SELECT (and CLIENT SETNAME) as the URL says, a connect timeout, the
client's socket timeout on every pipeline (the connection is dropped when the oldest
unanswered one is older), and a new connection at the next call after one is lost. A call
whose connection failed gets ``redis.ConnectionError`` (or ``TimeoutError``), as from
redis-py, which the route answers with 503.
"""

from __future__ import annotations

import asyncio
import contextlib
import time
from collections import deque
from dataclasses import dataclass
from typing import Any

import hiredis
import redis
from redis.connection import Connection, UnixDomainSocketConnection

from paysim.edge.steps import (
    Command,
    Done,
    RedisBatcher,
    RedisPipes,
    Waiting,
    answer_each,
    send_unawaited,
)

_MORE = object()  # hiredis.Reader's answer while a reply is still incomplete


@dataclass(frozen=True)
class Target:
    """Where and how to connect, from a redis-py client's settings."""

    host: str
    port: int
    path: str | None  # a Unix socket, instead of host and port
    db: int
    username: str | None
    password: str | None
    client_name: str | None
    timeout_s: float
    connect_timeout_s: float

    def handshake(self) -> tuple[Command, ...]:
        """What a new connection sends before anything else."""
        commands: list[Command] = []
        if self.password is not None:
            commands.append(("AUTH", self.username, self.password) if self.username
                            else ("AUTH", self.password))
        if self.client_name:
            commands.append(("CLIENT", "SETNAME", self.client_name))
        if self.db:
            commands.append(("SELECT", self.db))
        return tuple(commands)


def target_of(client: Any) -> Target | None:
    """The plain Redis ``client`` talks to, or None when this client cannot stand in for it
    (a cluster, TLS, RESP3, a credential provider, decoded replies: anything but a
    redis.Redis over TCP or a Unix socket speaking RESP2 with bytes)."""
    if type(client) is not redis.Redis:
        return None
    pool = client.connection_pool
    kwargs = pool.connection_kwargs
    if (pool.connection_class not in (Connection, UnixDomainSocketConnection)
            or kwargs.get("protocol") not in (None, 2, "2")
            or kwargs.get("credential_provider") is not None
            or kwargs.get("decode_responses")):
        return None
    timeout = kwargs.get("socket_timeout") or 10.0
    return Target(host=kwargs.get("host", "localhost"), port=int(kwargs.get("port", 6379)),
                  path=kwargs.get("path"), db=int(kwargs.get("db") or 0),
                  username=kwargs.get("username"), password=kwargs.get("password"),
                  client_name=kwargs.get("client_name"), timeout_s=float(timeout),
                  connect_timeout_s=float(kwargs.get("socket_connect_timeout") or timeout))


def pipes_for(client: redis.Redis) -> RedisPipes:
    """The loop's own client for a plain Redis; the thread batcher for anything else."""
    target = target_of(client)
    return RedisBatcher(client) if target is None else LoopRedis(target, client)


@dataclass
class _Sent:
    """A pipeline written and not yet answered whole."""

    batch: list[Waiting]
    replies: int  # how many it awaits
    at: float  # time.monotonic() when written
    results: list[Any]


class _Link(asyncio.Protocol):
    """The connection's bytes to and from its LoopRedis."""

    def __init__(self, owner: LoopRedis) -> None:
        self.owner = owner

    def data_received(self, data: bytes) -> None:
        self.owner._received(data)

    def connection_lost(self, exc: Exception | None) -> None:
        self.owner._lost(self)


class LoopRedis:
    """Pipelines to one Redis from the running event loop (``call``, as RedisBatcher's):
    what a pass of the loop asked goes out at the end of that pass, whether or not earlier
    pipelines have been answered."""

    def __init__(self, target: Target, client: redis.Redis) -> None:
        self.target = target
        self.client = client  # blocking: for the writes still queued at close
        self._loop: asyncio.AbstractEventLoop | None = None
        self._queued: list[Waiting] = []
        self._flushing = False  # a flush is scheduled for the end of this pass
        self._sent: deque[_Sent] = deque()
        self._link: _Link | None = None
        self._transport: asyncio.Transport | None = None
        self._connecting = False  # from the first connect to its handshake's answer
        self._task: asyncio.Task[None] | None = None
        self._reader = self._new_reader()
        self._timer: asyncio.TimerHandle | None = None
        self._timed_out = False

    @staticmethod
    def _new_reader() -> Any:
        return hiredis.Reader(replyError=redis.ResponseError,
                              protocolError=redis.InvalidResponse, notEnoughData=_MORE)

    def call(self, loop: asyncio.AbstractEventLoop, commands: tuple[Command, ...],
             done: Done, awaited: bool = True) -> None:
        """On the loop: queue ``commands``; ``done`` gets their results (as hiredis reads
        them: OK as b"OK"; an error reply as its redis.ResponseError) on the loop. Not
        ``awaited``: sent at ``close`` through the blocking client if still unanswered (so
        such writes must be safe to repeat, as a SET is)."""
        self._loop = loop
        self._queued.append(Waiting(commands, done, awaited))
        if not self._flushing:
            self._flushing = True
            loop.call_soon(self._flush)  # after this pass of the loop: more may come

    def _flush(self) -> None:
        self._flushing = False
        if not self._queued or self._connecting:
            return  # (connecting: sent once connected)
        if self._transport is None:
            self._connecting = True
            assert self._loop is not None
            self._task = self._loop.create_task(self._connect())  # kept: tasks are weak
            return
        batch, self._queued = self._queued, []
        self._write(batch)

    def _write(self, batch: list[Waiting]) -> None:
        assert self._transport is not None and self._loop is not None
        commands = [command for waiting in batch for command in waiting.commands]
        self._transport.write(b"".join([hiredis.pack_command(command)
                                        for command in commands]))
        self._sent.append(_Sent(batch, len(commands), time.monotonic(), []))
        if self._timer is None:
            self._timer = self._loop.call_later(self.target.timeout_s, self._check_timeout)

    async def _connect(self) -> None:
        loop = asyncio.get_running_loop()
        target = self.target
        try:
            if target.path is not None:
                connecting = loop.create_unix_connection(lambda: _Link(self), target.path)
            else:
                connecting = loop.create_connection(lambda: _Link(self), target.host,
                                                    target.port)
            transport, link = await asyncio.wait_for(connecting, target.connect_timeout_s)
        except (OSError, TimeoutError) as exc:
            self._connecting = False
            failed, self._queued = self._queued, []
            error = (redis.TimeoutError("Timeout connecting to Redis")
                     if isinstance(exc, TimeoutError)
                     else redis.ConnectionError(f"Error connecting to Redis: {exc}"))
            answer_each(failed, error)
            return
        self._transport = transport  # type: ignore[assignment]
        self._link = link
        self._reader = self._new_reader()
        handshake = self.target.handshake()
        if handshake:  # nothing else goes until it is answered: a failed AUTH would
            # leave the connection to the default user
            self._write([Waiting(handshake, self._handshaken, True)])
        else:
            self._handshaken([], None)

    def _handshaken(self, _results: Any, failure: BaseException | None) -> None:
        self._connecting = False
        if failure is None:
            self._flush()
            return
        failed, self._queued = self._queued, []
        transport, self._transport, self._link = self._transport, None, None
        answer_each(failed, redis.ConnectionError(f"Redis refused the connection: {failure}"))
        if transport is not None:
            transport.close()  # the next call connects again, on a connection of its own

    def _received(self, data: bytes) -> None:
        reader = self._reader
        reader.feed(data)
        answered: list[_Sent] = []
        try:
            while self._sent:
                reply = reader.gets()
                if reply is _MORE:
                    break
                head = self._sent[0]
                head.results.append(reply)
                if len(head.results) == head.replies:
                    answered.append(self._sent.popleft())
        except redis.InvalidResponse:
            if self._transport is not None:
                self._transport.abort()  # _lost fails what is still waiting
        for sent in answered:
            answer_each(sent.batch, sent.results)

    def _check_timeout(self) -> None:
        self._timer = None
        if not self._sent or self._transport is None or self._loop is None:
            return
        due = self._sent[0].at + self.target.timeout_s
        if time.monotonic() >= due:
            self._timed_out = True
            self._transport.abort()
        else:
            self._timer = self._loop.call_later(due - time.monotonic(), self._check_timeout)

    def _lost(self, link: _Link) -> None:
        """The connection closed (by Redis, a failed handshake, a timeout): every pipeline
        still waiting fails; what is queued goes on a new connection."""
        if link is not self._link:
            return
        self._link, self._transport = None, None
        error: redis.RedisError = (redis.TimeoutError("Timeout reading from Redis")
                                   if self._timed_out else
                                   redis.ConnectionError("Connection to Redis lost"))
        self._timed_out = False
        lost, self._sent = list(self._sent), deque()
        for sent in lost:
            answer_each(sent.batch, error)
        if self._queued and not self._flushing and self._loop is not None:
            self._flushing = True
            self._loop.call_soon(self._flush)

    def close(self) -> None:
        """After the loop stopped: the writes nobody waits for that were queued or not yet
        answered go through the blocking client (those that wait were abandoned with their
        connections), and the connection is dropped."""
        left = [*self._queued, *(w for sent in self._sent for w in sent.batch)]
        self._queued, self._sent = [], deque()
        send_unawaited(self.client, left)
        if self._transport is not None:
            with contextlib.suppress(RuntimeError):  # its loop is closed
                self._transport.abort()
            self._transport = self._link = None
