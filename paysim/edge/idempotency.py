"""The Idempotency-Key protocol of POST /authorize.

A request with a key reserves it in Redis before the work, with a keyed fingerprint of its
body; when done, the record holds the answer, which a retry with the same key and body gets
again (marked with the REPLAY_HEADER). The same key with another body is refused (422), and so
is a retry while the first request is still at work (409).

The reservation can carry the work's first writes (``Write``: POST /authorize's route note) in
the same round trip to Redis; they stay only when the reservation is this request's.
"""

from __future__ import annotations

import hashlib
import hmac
import json
import logging
from collections.abc import Sequence
from typing import Any, NamedTuple

import msgspec
import redis

from paysim.domain.messages import NoCardNumber
from paysim.edge.steps import Command, RedisCalls, RedisWrites, Steps
from paysim.edge.validation import BadRequest
from paysim.pipeline import store

log = logging.getLogger("paysim.http")

HEADER = "Idempotency-Key"
REPLAY_HEADER = "Idempotent-Replayed"
PENDING_TTL_S = 60
DONE_TTL_S = 86400
MAX_KEY_CHARS = 255


class Answer(NamedTuple):
    """An answer given before, to give again."""

    status: int
    body: dict[str, Any]


class Write(NamedTuple):
    """A string the work writes before anything else, with its time to live."""

    key: str
    value: bytes
    ttl: int


def key_from(key: str | None) -> str | None:
    """The request's Idempotency-Key (its HEADER's value, None without one); BadRequest when
    it is unusable."""
    if key is None:
        return None
    key = key.strip()
    if not key or len(key) > MAX_KEY_CHARS or not key.isprintable():
        raise BadRequest(f"{HEADER} must be 1 to {MAX_KEY_CHARS} printable characters")
    if not NoCardNumber.predicate(key):  # it would be a Redis key, in clear, for a day
        raise BadRequest(f"{HEADER} {NoCardNumber.answer}")
    return key


def write_all(writes: Sequence[Write]) -> Steps[None]:
    """The work's first writes, for a request without a key (one round trip)."""
    if writes:
        yield RedisCalls(tuple(_set(write) for write in writes))


def _set(write: Write) -> Command:
    return ("SET", write.key, write.value, "EX", write.ttl)


class Idempotency:
    """One Idempotency-Key: reserved before the work, then holding the answer to replay.
    Its work is steps (paysim.edge.steps): run on the server's event loop, with the Redis
    calls of other requests, or on a thread by run_blocking."""

    def __init__(self, key: str, body: bytes, secret: bytes) -> None:
        self.redis_key = store.idempotency_key(key)
        # Keyed: the body holds a PAN and CVV, and a bare hash of them could be brute-forced.
        self.hash = hmac.new(secret, body, hashlib.sha256).hexdigest()

    def reserving(self, also: Sequence[Write] = ()) -> Steps[Answer | None]:
        """None when this request may do the work (``also`` written with the reservation, in
        one round trip); else the earlier answer to replay, ``also`` removed again.
        BadRequest (422 or 409) when the key cannot serve this request."""
        # msgspec, not json: this, the stored answer and the route note were a quarter of the
        # route's Python with the json module. The records are read back with json.loads.
        pending = msgspec.json.encode({"hash": self.hash, "state": "pending"})
        reservation = ("SET", self.redis_key, pending, "NX", "EX", PENDING_TTL_S)
        for _ in range(3):  # the record can expire between the SET and the GET
            results = yield RedisCalls((reservation, *(_set(write) for write in also)))
            if results[0]:
                return None
            (raw,) = yield RedisCalls((("GET", self.redis_key),))
            if raw is None:
                continue
            if also:  # the work is another request's: nothing of this one stays
                # One DEL a key: on a Redis Cluster they may be in different slots.
                yield RedisCalls(tuple(("DEL", write.key) for write in also))
            return self._earlier(raw)
        raise redis.RedisError("idempotency record keeps changing")

    def _earlier(self, raw: bytes) -> Answer:
        """The answer a record holds; BadRequest when it cannot be replayed to this body."""
        try:
            record = json.loads(raw)
        except ValueError:
            record = {}
        if record.get("hash") != self.hash:
            raise BadRequest(f"{HEADER} was already used with a different request body",
                             status=422)
        if record.get("state") != "done":
            raise BadRequest(f"a request with this {HEADER} is still being processed; "
                             "retry later", status=409)
        return Answer(int(record["status"]), record["body"])

    def finishing(self, answer: Answer) -> Steps[None]:
        """Store the answer to replay. Not waited for: the work is done, and the client is
        told so either way (a record not stored expires as pending; a retry meanwhile gets
        409 rather than doing it twice). On the server's loop a retry still finds it: the
        retry's reservation goes to Redis after it (paysim.edge.steps.RedisWrites)."""
        record = {"hash": self.hash, "state": "done", "status": answer.status,
                  "body": answer.body}
        yield RedisWrites((("SET", self.redis_key, msgspec.json.encode(record), "EX",
                            DONE_TTL_S),), "the idempotency answer")

    def releasing(self) -> Steps[None]:
        """Forget the reservation after a failure that the client should retry."""
        try:
            yield RedisCalls((("DEL", self.redis_key),))
        except redis.RedisError as exc:
            log.warning("idempotency reservation not released: %s", exc)
