"""Settlement in Redis: closing a window's movements into batches, paying them on the run's
settlement book, and the clearing file; and the closer thread beside the ledger service.

The ledger's APPLY script files each step's movement (domain.settlement.Movement) on the
list of its run and window, and the window in ``paysim:windows`` by its end. A close takes
the movements listed so far, sums them per merchant and currency, and in one script call
(CLOSE) removes exactly those from the list, pays the batches on the run's settlement book
and records them, unless another close of the same window came first (a counter per window,
which also numbers the batches: a window closed early by `paysim settle` and again at its
end settles each movement once). Then the batches go onto payments.settlements and their
movements into the run's clearing file.
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
from paysim.infra.files import writing
from paysim.infra.kafka import client_config, produce
from paysim.pipeline import ledger_store
from paysim.pipeline.run_rates import RunRates

GRACE_S = 5  # a window closes this long after its end: steps decided in it are written by then
EVERY_S = 1.0
RUNS_KEY = "paysim:settlement-runs"


def book_key(run_id: str) -> str:
    """The run's settlement book: the payout transfers (ledger.Line fields)."""
    return f"paysim:book:{run_id}:settlement"


def batches_key(run_id: str) -> str:
    return f"paysim:batches:{run_id}"


def closes_key(run_id: str) -> str:
    """How many times each window of the run was closed (the CLOSE script's check)."""
    return f"paysim:closes:{run_id}"


_movement_decoder = msgspec.json.Decoder(Movement)
_batch_decoder = msgspec.json.Decoder(Batch)


@dataclass(frozen=True)
class Closed:
    run_id: str
    window: int
    batches: list[Batch]
    movements: list[tuple[str, Movement]]  # (batch id, movement): the clearing file's rows


def open_windows(client: redis.Redis, due_by: float | None,
                 run_id: str | None = None) -> list[tuple[str, int]]:
    """(run, window start) of every window with unsettled movements, ending by ``due_by``
    (Unix seconds; None: all of them, the current ones too)."""
    members = client.zrangebyscore(ledger_store.WINDOWS_KEY, "-inf",
                                   "+inf" if due_by is None else due_by)
    found = []
    for member in members:
        try:
            run, window = json.loads(member)
        except (ValueError, TypeError):
            client.zrem(ledger_store.WINDOWS_KEY, member)  # not paysim's: drop it
            continue
        if isinstance(run, str) and isinstance(window, int) and run_id in (None, run):
            found.append((run, window))
    return found


def close_window(client: redis.Redis, script: object, run_id: str, window: int,
                 window_s: float, ttl: int) -> Closed | None:
    """Settle what the window holds now; None when there was nothing, or another close
    came first (that one settled it)."""
    key = ledger_store.movements_key(run_id, window)
    pipe = client.pipeline(transaction=False)
    pipe.hget(closes_key(run_id), str(window))
    pipe.lrange(key, 0, -1)
    closes, raw = pipe.execute()
    closes = int(closes or 0)
    moves = [_movement_decoder.decode(row) for row in raw]
    if not moves:
        client.zrem(ledger_store.WINDOWS_KEY, ledger_store.window_member(run_id, window))
        return None
    run_part = f"{run_id}/{window}.{closes + 1}"
    batches = [msgspec.structs.replace(batch, batch_id=f"{run_part}/{batch.merchant_id}/"
                                                       f"{batch.currency}")
               for batch in settlement.batches(run_id, window, window_s,
                                               settlement.total(moves), now_us())]
    deltas = ledger.net(entry for batch in batches for entry in settlement.payout(batch))
    args: list[object] = [ledger_store.window_member(run_id, window), str(window), closes,
                          len(moves), ttl, run_id, len(deltas)]
    for line, delta in deltas.items():
        args += (line.field(), delta)
    args += [encode(batch) for batch in batches]
    done = script(keys=[ledger_store.WINDOWS_KEY, closes_key(run_id), key, book_key(run_id),
                        batches_key(run_id), RUNS_KEY], args=args)  # type: ignore[operator]
    if not done:
        return None
    ids = {(b.merchant_id, b.currency): b.batch_id for b in batches}
    return Closed(run_id, window, batches,
                  [(ids[(m.merchant_id, m.currency)], m) for m in moves])


def read_batches(client: redis.Redis, run_id: str | None = None) -> list[Batch]:
    """Every closed batch of the run (of every run when None), oldest first."""
    runs = [run_id] if run_id is not None else sorted(
        member.decode() for member in client.smembers(RUNS_KEY))
    found = []
    for run in runs:
        found += [_batch_decoder.decode(raw) for raw in client.lrange(batches_key(run), 0, -1)]
    return found


def read_book(client: redis.Redis, run_id: str) -> Book:
    return ledger_store.book_from_hash(client.hgetall(book_key(run_id)))


def unsettled(client: redis.Redis, run_id: str) -> list[Movement]:
    """The run's movements not yet in a batch."""
    found = []
    for run, window in open_windows(client, None, run_id):
        found += [_movement_decoder.decode(row) for row in
                  client.lrange(ledger_store.movements_key(run, window), 0, -1)]
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
    with writing("the clearing file", path):
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
        for run, window in windows:
            width = rates[run].settlement_window_s or self.settings.lifecycle.settlement_window
            done = close_window(self.redis, self._close, run, window, width,
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


# Settles the movements a close read, once. KEYS: windows set, the run's close counters, the
# window's movements, the run's settlement book, its batches, the runs with batches.
# ARGV: the window's member, its start, the close count read, the movements read, the TTL,
# the run, the count of book increments, the increments as field/delta pairs, the batches.
CLOSE_LUA = """
local windows, closes, moves, book, batches, runs = KEYS[1], KEYS[2], KEYS[3], KEYS[4],
  KEYS[5], KEYS[6]
local member, window, expected, nmoves, ttl = ARGV[1], ARGV[2], ARGV[3], tonumber(ARGV[4]),
  ARGV[5]
if (redis.call('HGET', closes, window) or '0') ~= expected then
  return 0
end
if redis.call('LLEN', moves) < nmoves then
  return 0
end
redis.call('LTRIM', moves, nmoves, -1)
redis.call('HINCRBY', closes, window, 1)
local nincr = tonumber(ARGV[7])
for i = 0, nincr - 1 do
  redis.call('HINCRBY', book, ARGV[8 + 2 * i], ARGV[9 + 2 * i])
end
for i = 8 + 2 * nincr, #ARGV do
  redis.call('RPUSH', batches, ARGV[i])
end
if redis.call('LLEN', moves) == 0 then
  redis.call('ZREM', windows, member)
end
redis.call('SADD', runs, ARGV[6])
for _, key in ipairs({closes, book, batches}) do
  redis.call('EXPIRE', key, ttl)
end
return 1
"""
