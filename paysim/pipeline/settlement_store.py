"""Settlement in Redis: closing a window's movements into batches, paying them on the run's
settlement book, and the clearing file; and the closer thread beside the ledger service.

The ledger's APPLY script files each step's movement (domain.settlement.Movement) on the
list of its card's bucket, run and window, and the window in the bucket's windows set by its
end (ledger_store). A close takes the movements listed so far in a group of buckets
(shard_store.call_groups: every bucket on a single Redis, one bucket on a cluster), sums them
per merchant and currency, and in one script call (CLOSE) removes exactly those from the
lists, pays the batches on the run's settlement book and records them, unless another close
of the same window came first (a counter per bucket and window, which also numbers the
batches: a window closed early by `paysim settle` and again at its end settles each movement
once). Then the batches go onto payments.settlements and their movements into the run's
clearing file.

The run's book, batches and the set of runs with batches are kept per bucket too, in the
group's first bucket (readers add the buckets up): a script then stays in one slot. On a
single Redis a window closes into one batch per merchant and currency; on a cluster, into
one per bucket as well (its id says which: ``<run>/<window>.<n>.b<bucket>/...``).
"""

from __future__ import annotations

import csv
import json
import logging
import re
import threading
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path

import msgspec
import redis
from confluent_kafka import KafkaException, Producer

from paysim.domain import ledger, settlement
from paysim.domain.decisions import IssuerRates
from paysim.domain.ledger import Book
from paysim.domain.messages import encode, now_us
from paysim.domain.settlement import Batch, Movement
from paysim.infra.config import Settings
from paysim.infra.errors import PaysimError
from paysim.infra.files import owner_only, writing
from paysim.infra.kafka import client_config, produce
from paysim.pipeline import ledger_store, shard_store, store
from paysim.pipeline.run_rates import RunRates
from paysim.pipeline.shard_store import tag

GRACE_S = 5  # a window closes this long after its end: steps decided in it are written by then
EVERY_S = 1.0


def runs_key(bucket: int) -> str:
    """The runs with batches recorded in the bucket (a set)."""
    return f"paysim:settlement-runs:{tag(bucket)}"


def book_key(bucket: int, run_id: str) -> str:
    """The bucket's part of the run's settlement book: the payout transfers (ledger.Line
    fields)."""
    return f"paysim:book:{tag(bucket)}:{run_id}:settlement"


def batches_key(bucket: int, run_id: str) -> str:
    return f"paysim:batches:{tag(bucket)}:{run_id}"


def closes_key(bucket: int, run_id: str) -> str:
    """How many times each window of the run was closed in the bucket (CLOSE's check)."""
    return f"paysim:closes:{tag(bucket)}:{run_id}"


_movement_decoder = msgspec.json.Decoder(Movement)
_batch_decoder = msgspec.json.Decoder(Batch)


@dataclass(frozen=True)
class Closed:
    run_id: str
    window: int
    batches: list[Batch]
    movements: list[tuple[str, Movement]]  # (batch id, movement): the clearing file's rows


def open_windows(client: redis.Redis, due_by: float | None,
                 run_id: str | None = None) -> dict[tuple[str, int], list[int]]:
    """(run, window start) of every window with unsettled movements, ending by ``due_by``
    (Unix seconds; None: all of them, the current ones too), with the buckets holding them."""
    pipe = client.pipeline(transaction=False)
    for bucket in range(shard_store.BUCKETS):
        pipe.zrangebyscore(ledger_store.windows_key(bucket), "-inf",
                           "+inf" if due_by is None else due_by)
    found: dict[tuple[str, int], list[int]] = {}
    for bucket, members in enumerate(pipe.execute()):
        for member in members:
            try:
                run, window = json.loads(member)
            except (ValueError, TypeError):
                client.zrem(ledger_store.windows_key(bucket), member)  # not paysim's: drop it
                continue
            if isinstance(run, str) and isinstance(window, int) and run_id in (None, run):
                found.setdefault((run, window), []).append(bucket)
    return found


def close_window(client: redis.Redis, script: object, run_id: str, window: int,
                 buckets: list[int], window_s: float, ttl: int) -> Closed | None:
    """Settle what the window holds now in ``buckets`` (one call group); None when there was
    nothing, or another close came first (that one settled it)."""
    pipe = client.pipeline(transaction=False)
    for bucket in buckets:
        pipe.hget(closes_key(bucket, run_id), str(window))
        pipe.lrange(ledger_store.movements_key(bucket, run_id, window), 0, -1)
    replies = pipe.execute()
    closes = [int(raw or 0) for raw in replies[::2]]
    rows = replies[1::2]
    moves = [_movement_decoder.decode(row) for part in rows for row in part]
    member = ledger_store.window_member(run_id, window)
    if not moves:
        pipe = client.pipeline(transaction=False)
        for bucket in buckets:
            pipe.zrem(ledger_store.windows_key(bucket), member)
        pipe.execute()
        return None
    # One bucket of many (a cluster's group): its batches say which.
    part = f".b{buckets[0]}" if len(buckets) < shard_store.BUCKETS else ""
    run_part = f"{run_id}/{window}.{max(closes) + 1}{part}"
    batches = [msgspec.structs.replace(batch, batch_id=f"{run_part}/{batch.merchant_id}/"
                                                       f"{batch.currency}")
               for batch in settlement.batches(run_id, window, window_s,
                                               settlement.total(moves), now_us())]
    deltas = ledger.net(entry for batch in batches for entry in settlement.payout(batch))
    first = buckets[0]
    keys = [book_key(first, run_id), batches_key(first, run_id), runs_key(first)]
    args: list[object] = [member, str(window), ttl, run_id, len(buckets)]
    for bucket, count, listed in zip(buckets, closes, rows, strict=True):
        keys += [ledger_store.windows_key(bucket), closes_key(bucket, run_id),
                 ledger_store.movements_key(bucket, run_id, window)]
        args += [count, len(listed)]
    args.append(len(deltas))
    for line, delta in deltas.items():
        args += (line.field(), delta)
    args += [encode(batch) for batch in batches]
    done = script(keys=keys, args=args)  # type: ignore[operator]
    if not done:
        return None
    ids = {(b.merchant_id, b.currency): b.batch_id for b in batches}
    return Closed(run_id, window, batches,
                  [(ids[(m.merchant_id, m.currency)], m) for m in moves])


def _runs(client: redis.Redis) -> list[str]:
    pipe = client.pipeline(transaction=False)
    for bucket in range(shard_store.BUCKETS):
        pipe.smembers(runs_key(bucket))
    return sorted({member.decode() for members in pipe.execute() for member in members})


def read_batches(client: redis.Redis, run_id: str | None = None) -> list[Batch]:
    """Every closed batch of the run (of every run when None), oldest first."""
    runs = [run_id] if run_id is not None else _runs(client)
    pipe = client.pipeline(transaction=False)
    for run in runs:
        for bucket in range(shard_store.BUCKETS):
            pipe.lrange(batches_key(bucket, run), 0, -1)
    found = [_batch_decoder.decode(raw) for part in pipe.execute() for raw in part]
    return sorted(found, key=lambda batch: (batch.run_id, batch.closed_at, batch.batch_id))


def read_book(client: redis.Redis, run_id: str) -> Book:
    """The run's settlement book: its buckets' parts added up."""
    pipe = client.pipeline(transaction=False)
    for bucket in range(shard_store.BUCKETS):
        pipe.hgetall(book_key(bucket, run_id))
    total: dict[bytes, int] = {}
    for part in pipe.execute():
        for name, value in part.items():
            total[name] = total.get(name, 0) + int(value)
    return ledger_store.book_from_hash({name: str(value).encode()
                                        for name, value in total.items()})


def unsettled(client: redis.Redis, run_id: str) -> list[Movement]:
    """The run's movements not yet in a batch."""
    found = []
    for (run, window), buckets in open_windows(client, None, run_id).items():
        for bucket in buckets:
            found += [_movement_decoder.decode(row) for row in
                      client.lrange(ledger_store.movements_key(bucket, run, window), 0, -1)]
    return found


def run_folder(settings: Settings, run_id: str) -> Path:
    """The run's own folder; a run id is a client's text, so only its safe characters."""
    name = re.sub(r"[^A-Za-z0-9_.-]", "_", run_id).lstrip(".") or "_"
    return settings.lifecycle.runs_dir / name


CLEARING_COLUMNS = ("batch_id", "payment_id", "operation", "event", "at", "merchant_id",
                    "currency", "gross", "refunds", "chargebacks", "reversals", "interchange",
                    "scheme_fees", "dispute_fees", "net")


def append_clearing(settings: Settings, closed: Closed) -> Path:
    """The closed batches' movements, one row each, added to the run's clearing file."""
    path = run_folder(settings, closed.run_id) / "clearing.csv"
    # Owner only, from `paysim settle` too (the services already run under a private umask).
    with writing("the clearing file", path), owner_only():
        path.parent.mkdir(parents=True, exist_ok=True)
        new = not path.exists()
        with path.open("a", newline="", encoding="utf-8") as out:
            rows = csv.writer(out)
            if new:
                rows.writerow(CLEARING_COLUMNS)
            for batch_id, m in closed.movements:
                at = datetime.fromtimestamp(m.at / 1e6, UTC).isoformat(timespec="microseconds")
                rows.writerow((batch_id, m.payment_id, m.op_id, m.kind, at, m.merchant_id,
                               m.currency, m.gross, m.refunds, m.chargebacks, m.reversals,
                               m.interchange, m.scheme_fees, m.dispute_fees, m.net))
    return path


class Settler:
    """Closes windows and publishes what it closed: used by the closer thread and by
    `paysim settle`."""

    def __init__(self, settings: Settings, client: redis.Redis, producer: Producer) -> None:
        self.settings = settings
        self.redis = client
        self.producer = producer
        self._close = client.register_script(CLOSE_LUA)
        self.run_rates = RunRates(client, IssuerRates())

    def close(self, due_by: float | None, run_id: str | None = None) -> list[Closed]:
        closed = []
        windows = open_windows(self.redis, due_by, run_id)
        rates = self.run_rates.of({run for run, _ in windows})
        for (run, window), listed in windows.items():
            width = rates[run].settlement_window_s or self.settings.lifecycle.settlement_window
            # On a single Redis every bucket, listed or not: their close counters keep in
            # step, and so number the window's batches once.
            buckets = listed if store.is_cluster(self.redis) else range(shard_store.BUCKETS)
            for group in shard_store.call_groups(self.redis, buckets):
                done = close_window(self.redis, self._close, run, window, group, width,
                                    self.settings.redis.ledger_ttl)
                if done is None:
                    continue
                for batch in done.batches:
                    produce(self.producer, self.settings.topics.settlements, encode(batch),
                            key=batch.merchant_id)
                append_clearing(self.settings, done)
                closed.append(done)
        if closed:
            self.producer.flush(self.settings.kafka.timeout)
        return closed


def settlements_producer(settings: Settings) -> Producer:
    return Producer(client_config(settings, **{"enable.idempotence": True, "linger.ms": 5}))


class SettlementCloser(threading.Thread):
    """Closes each window GRACE_S after its end, once a second."""

    def __init__(self, settings: Settings, client: redis.Redis, stop: threading.Event) -> None:
        super().__init__(name="settlement", daemon=True)
        self.settings = settings
        self.redis = client
        self.stop_event = stop
        self.log = logging.getLogger("paysim.settlement")

    def run(self) -> None:
        producer = settlements_producer(self.settings)
        settler = Settler(self.settings, self.redis, producer)
        try:
            while not self.stop_event.wait(EVERY_S):
                try:
                    settler.close(now_us() / 1e6 - GRACE_S)
                except (redis.RedisError, KafkaException, BufferError, PaysimError) as exc:
                    # PaysimError: the clearing file could not be written (the batches are
                    # settled and recorded; `paysim settlement` shows them).
                    self.log.warning("settlement skipped a round: %s", exc)
        finally:
            producer.flush(5)


# Settles the movements a close read, once. KEYS: the run's settlement book, its batches and
# the runs with batches (of the group's first bucket); then per bucket its windows set, the
# run's close counters and the window's movements. ARGV: the window's member, its start, the
# TTL, the run, the count n of buckets, per bucket the close count and movements read, the
# count of book increments, the increments as field/delta pairs, the batches.
CLOSE_LUA = """
local book, batches, runs = KEYS[1], KEYS[2], KEYS[3]
local member, window, ttl, run = ARGV[1], ARGV[2], ARGV[3], ARGV[4]
local n = tonumber(ARGV[5])
for i = 1, n do
  local closes, moves = KEYS[3 * i + 2], KEYS[3 * i + 3]
  if (redis.call('HGET', closes, window) or '0') ~= ARGV[4 + 2 * i] then
    return 0
  end
  if redis.call('LLEN', moves) < tonumber(ARGV[5 + 2 * i]) then
    return 0
  end
end
for i = 1, n do
  local windows, closes, moves = KEYS[3 * i + 1], KEYS[3 * i + 2], KEYS[3 * i + 3]
  redis.call('LTRIM', moves, tonumber(ARGV[5 + 2 * i]), -1)
  redis.call('HINCRBY', closes, window, 1)
  redis.call('EXPIRE', closes, ttl)
  if redis.call('LLEN', moves) == 0 then
    redis.call('ZREM', windows, member)
  end
end
local a = 6 + 2 * n
local nincr = tonumber(ARGV[a])
for i = 0, nincr - 1 do
  redis.call('HINCRBY', book, ARGV[a + 1 + 2 * i], ARGV[a + 2 + 2 * i])
end
for i = a + 1 + 2 * nincr, #ARGV do
  redis.call('RPUSH', batches, ARGV[i])
end
redis.call('SADD', runs, run)
for _, key in ipairs({book, batches}) do
  redis.call('EXPIRE', key, ttl)
end
return 1
"""
