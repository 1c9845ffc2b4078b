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

import redis

from paysim.domain.messages import NoCardNumber
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
    value: str
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


def write_all(client: redis.Redis, writes: Sequence[Write]) -> None:
    """The work's first writes, for a request without a key (one command each)."""
    for write in writes:
        client.set(write.key, write.value, ex=write.ttl)


class Idempotency:
    """One Idempotency-Key: reserved before the work, then holding the answer to replay."""

    def __init__(self, client: redis.Redis, key: str, body: bytes, secret: bytes) -> None:
        self.client = client
        self.redis_key = store.idempotency_key(key)
        # Keyed: the body holds a PAN and CVV, and a bare hash of them could be brute-forced.
        self.hash = hmac.new(secret, body, hashlib.sha256).hexdigest()

    def reserve(self, also: Sequence[Write] = ()) -> Answer | None:
        """None when this request may do the work (``also`` written with the reservation, in
        one round trip); else the earlier answer to replay, ``also`` removed again.
        BadRequest (422 or 409) when the key cannot serve this request."""
        pending = json.dumps({"hash": self.hash, "state": "pending"})
        for _ in range(3):  # the record can expire between the SET and the GET
            if self._set_pending(pending, also):
                return None
            raw = self.client.get(self.redis_key)
            if raw is None:
                continue
            if also:  # the work is another request's: nothing of this one stays
                self.client.delete(*(write.key for write in also))
            return self._earlier(raw)
        raise redis.RedisError("idempotency record keeps changing")

    def _set_pending(self, pending: str, also: Sequence[Write]) -> bool:
        if not also:
            return bool(self.client.set(self.redis_key, pending, nx=True, ex=PENDING_TTL_S))
        pipe = self.client.pipeline(transaction=False)
        pipe.set(self.redis_key, pending, nx=True, ex=PENDING_TTL_S)
        for write in also:
            pipe.set(write.key, write.value, ex=write.ttl)
        return bool(pipe.execute()[0])

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

    def finish(self, answer: Answer) -> None:
        record = {"hash": self.hash, "state": "done", "status": answer.status,
                  "body": answer.body}
        self.client.set(self.redis_key, json.dumps(record), ex=DONE_TTL_S)

    def release(self) -> None:
        """Forget the reservation after a failure that the client should retry."""
        try:
            self.client.delete(self.redis_key)
        except redis.RedisError as exc:
            log.warning("idempotency reservation not released: %s", exc)
