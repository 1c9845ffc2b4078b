"""Everything paysim keeps in Redis: outcomes, the card ledger, run streams, heartbeats."""

from __future__ import annotations

import contextlib
import json
import os
import time
from typing import Any

import redis

from paysim.config import Settings
from paysim.schema import STAGES, PaymentOutcome

WEBHOOK_STREAM = "paysim:webhooks"
WEBHOOK_GROUP = "paysim-webhooks"


def connect(settings: Settings) -> redis.Redis:
    return redis.Redis.from_url(settings.redis_url, socket_timeout=10,
                                socket_connect_timeout=5, health_check_interval=30)


def result_key(payment_id: str) -> str:
    """The seed's contract: GET payment_result_<id> -> approved | declined."""
    return f"payment_result_{payment_id}"


def outcome_key(payment_id: str) -> str:
    return f"paysim:payment:{payment_id}"


def run_stream_key(run_id: str) -> str:
    """One entry per payment of the run once its client was notified."""
    return f"paysim:run:{run_id}:done"


def run_issuer_key(run_id: str) -> str:
    """A run's issuer behaviour (JSON), set by `paysim send` from its scenario."""
    return f"paysim:run:{run_id}:issuer"


def heartbeat_key(service: str, instance: int) -> str:
    return f"paysim:svc:{service}:{instance}"


HEARTBEAT_EVERY_S = 1.0
HEARTBEAT_TTL_S = 5
HEARTBEAT_FRESH_S = 3.0  # older than this, the service is taken for gone


def write_heartbeat(client: redis.Redis, service: str, instance: int, *, processed: int,
                    dead_letters: int, aborted_batches: int, started_at: float,
                    lag: int) -> None:
    """What `paysim ps` and run-all's panel show; expires unless renewed every second."""
    key = heartbeat_key(service, instance)
    pipe = client.pipeline(transaction=False)
    pipe.hset(key, mapping={
        "service": service, "instance": instance, "pid": os.getpid(), "processed": processed,
        "dead_letters": dead_letters, "aborted_batches": aborted_batches,
        "started_at": started_at, "seen_at": time.time(), "lag": lag,
    })
    pipe.expire(key, HEARTBEAT_TTL_S)
    pipe.execute()


def clear_heartbeat(client: redis.Redis, service: str, instance: int) -> None:
    """A clean stop says so at once instead of letting the heartbeat expire."""
    with contextlib.suppress(redis.RedisError):  # else it expires on its own
        client.delete(heartbeat_key(service, instance))


def idempotency_key(key: str) -> str:
    return f"paysim:idem:{key}"


def outcome_fields(outcome: PaymentOutcome) -> dict[str, Any]:
    fields: dict[str, Any] = {
        "payment_id": outcome.payment_id, "run_id": outcome.run_id, "seq": outcome.seq,
        "status": outcome.status, "reason_code": outcome.reason_code,
        "reason_text": outcome.reason_text, "amount": outcome.amount,
        "currency": outcome.currency, "merchant": json.dumps(
            {"id": outcome.merchant.id, "name": outcome.merchant.name,
             "mcc": outcome.merchant.mcc, "country": outcome.merchant.country}),
        "masked_pan": outcome.masked_pan or "", "token": outcome.token or "",
        "network": outcome.network or "", "callback_url": outcome.callback_url or "",
    }
    for stage, at in outcome.stages.items():
        fields[f"t_{stage}"] = at
    return fields


def write_outcome(pipe: redis.client.Pipeline, outcome: PaymentOutcome, ttl: int,
                  **extra: Any) -> None:
    """The plain status under the seed's key, and the whole outcome as a hash beside it."""
    pipe.set(result_key(outcome.payment_id), outcome.status, ex=ttl)
    key = outcome_key(outcome.payment_id)
    pipe.hset(key, mapping={**outcome_fields(outcome), **extra})
    pipe.expire(key, ttl)


def done_entry(outcome: PaymentOutcome) -> dict[str, Any]:
    """What `paysim send` reads back for each payment of its run."""
    entry: dict[str, Any] = {"payment_id": outcome.payment_id, "status": outcome.status,
                             "reason_code": outcome.reason_code, "amount": outcome.amount,
                             "currency": outcome.currency, "seq": outcome.seq}
    for stage, at in outcome.stages.items():
        entry[f"t_{stage}"] = at
    return entry


def read_outcome(client: redis.Redis, payment_id: str) -> dict[str, str] | None:
    raw = client.hgetall(outcome_key(payment_id))
    if not raw:
        return None
    return {k.decode(): v.decode() for k, v in raw.items()}


def outcome_view(stored: dict[str, str]) -> dict[str, Any]:
    """A stored outcome as API clients want it: numbers as numbers, the merchant as an
    object, stage times together, empty fields as null."""
    try:
        merchant = json.loads(stored.get("merchant") or "{}")
    except ValueError:
        merchant = {}
    view: dict[str, Any] = {
        "payment_id": stored.get("payment_id"), "run_id": stored.get("run_id"),
        "seq": int(stored.get("seq") or 0), "status": stored.get("status"),
        "reason_code": stored.get("reason_code"), "reason_text": stored.get("reason_text"),
        "amount": int(stored.get("amount") or 0), "currency": stored.get("currency"),
        "merchant": merchant, "stages": stage_times(stored),
        "notification": stored.get("notification") or None,
    }
    for name in ("masked_pan", "token", "network", "callback_url"):
        view[name] = stored.get(name) or None
    if stored.get("webhook_status"):
        view["webhook"] = {
            "status": stored["webhook_status"],
            "attempts": int(stored.get("webhook_attempts") or 0),
            "http_status": int(stored.get("webhook_http_status") or 0) or None,
            "error": stored.get("webhook_error") or None,
        }
    return view


def stage_times(outcome: dict[str, str]) -> dict[str, int]:
    return {stage: int(outcome[f"t_{stage}"]) for stage in STAGES if f"t_{stage}" in outcome}


# Settles one payment against its card's ledger, once: a marker per payment holds the answer,
# so a batch processed again after a crash gets the same answer and debits nothing twice.
# KEYS: ledger hash, settle marker. ARGV: amount, currency, credit limit, daily limit, day, ttl.
SETTLE_LUA = """
local done = redis.call('GET', KEYS[2])
if done then return done end
local cur = ARGV[2]
local limit_f, spent_f = 'limit:' .. cur, 'spent:' .. cur
local dlimit_f, day_f = 'dlimit:' .. cur, 'day:' .. cur .. ':' .. ARGV[5]
redis.call('HSETNX', KEYS[1], limit_f, ARGV[3])
redis.call('HSETNX', KEYS[1], dlimit_f, ARGV[4])
local amount = tonumber(ARGV[1])
local limit = tonumber(redis.call('HGET', KEYS[1], limit_f))
local spent = tonumber(redis.call('HGET', KEYS[1], spent_f) or '0')
local dlimit = tonumber(redis.call('HGET', KEYS[1], dlimit_f))
local today = tonumber(redis.call('HGET', KEYS[1], day_f) or '0')
local result
if today + amount > dlimit then
  result = '61'
elseif spent + amount > limit then
  result = '51'
else
  redis.call('HINCRBY', KEYS[1], spent_f, amount)
  redis.call('HINCRBY', KEYS[1], day_f, amount)
  redis.call('HINCRBY', KEYS[1], 'debits', 1)
  result = '00'
end
redis.call('SET', KEYS[2], result, 'EX', ARGV[6])
redis.call('EXPIRE', KEYS[1], ARGV[6])
return result
"""


def ledger_key(run_id: str, token: str) -> str:
    # Per run: the same --seed replays the same ledger, and runs do not drain each other's cards.
    return f"paysim:ledger:{run_id}:{token}"


def settle_marker_key(payment_id: str) -> str:
    return f"paysim:settled:{payment_id}"
