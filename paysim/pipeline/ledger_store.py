"""The ledger in Redis: each card's book, its payments' records and its operations' answers,
read in one round trip per batch and written back atomically per card.

Every card belongs to one of shard_store.BUCKETS buckets, and its keys carry its bucket's
hash tag ``{b<n>.<m>}`` (one Redis Cluster slot), as do the bucket's indexes:
    paysim:card:{tag}:<run>:<token>            hash: the card's book (ledger.Line fields),
                                               today's authorized amount per currency
                                               (``d|USD|20261126``) and ``ver``, its version
    paysim:pay:{tag}:<run>:<token>:<payment>   the payment's record (lifecycle.PaymentRecord)
    paysim:answer:{tag}:<run>:<token>:<op>     an operation's answer (lifecycle.Answer, JSON)
    paysim:holds:{tag}                         the bucket's open holds by expiry time
    paysim:windows:{tag}                       its settlement windows with movements, by end
    paysim:moves:{tag}:<run>:<window>          its movements of the run in the window

The decisions are made in Python (paysim.domain.lifecycle) on what was read; the APPLY script
writes a card's changes only if its version is still the one read, else it reports the card,
which is read and decided again. Two services write the same cards (the processor's
authorizations, the lifecycle service's operations): the version keeps one from overwriting
the other's decision. One card's operations arrive in order (its records are keyed by token),
so a conflict is rare and one retry settles it. A batch's cards go to Redis in one script
call per shard_store.call_groups group: one in all on a single Redis, one per bucket on a
cluster. On a single Redis a batch of more than CHUNK_CARDS cards is settled in chunks, their
READ and APPLY calls pipelined on one connection, so that Redis works on the next chunk's
read and the last chunk's write while the processor decides (see _settle_chunks).
"""

from __future__ import annotations

import functools
import json
from collections import deque
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass, field
from typing import Any

import msgspec
import redis
from msgspec import UNSET, UnsetType

from paysim.domain import ledger, settlement
from paysim.domain.ledger import CARD, Book, Line
from paysim.domain.lifecycle import Answer, CardFunds, Change, Dispute, PaymentRecord
from paysim.domain.settlement import Movement
from paysim.infra.config import Settings
from paysim.pipeline import shard_store, store
from paysim.pipeline.shard_store import bucket_of, tag

VERSION_FIELD = "ver"
MAX_TRIES = 5
# Cards a READ or APPLY call takes when settle pipelines a batch's calls (see _settle_chunks).
# A batch of 500 payments at saturation touches about 420 cards; in probes of two rounds
# each, chunks of 50 cards settled 7% more payments a second than chunks of 100, and 6% more
# than chunks of 25 (docs/performance.md, "The ledger's calls pipelined").
CHUNK_CARDS = 50
_SAFE = 2 ** 53  # whole numbers up to here are exact as Lua's numbers (doubles)


def _card(run_id: str, token: str) -> str:
    """A card's part of its keys: its bucket's tag, run and token."""
    return f"{tag(bucket_of(run_id, token))}:{run_id}:{token}"


def card_key(run_id: str, token: str) -> str:
    return _card_keys(_card(run_id, token))[0]


def record_key(run_id: str, token: str, payment_id: str) -> str:
    return _card_keys(_card(run_id, token), payments=(payment_id,))[1]


def answer_key(run_id: str, token: str, op_id: str) -> str:
    return _card_keys(_card(run_id, token), ops=(op_id,))[1]


def _card_keys(part: str, payments: Iterable[str] = (), ops: Iterable[str] = ()) -> list[str]:
    """A card's hash, then these payments' records and these operations' answers, from the
    card's part of its keys (worked out once per card in a batch: its CRC-32 and formatting
    were paid per key)."""
    return [f"paysim:card:{part}", *(f"paysim:pay:{part}:{pid}" for pid in payments),
            *(f"paysim:answer:{part}:{op}" for op in ops)]


def holds_key(bucket: int) -> str:
    """The bucket's open holds by expiry (Unix µs): a sorted set."""
    return f"paysim:holds:{tag(bucket)}"


def windows_key(bucket: int) -> str:
    """The bucket's settlement windows with unsettled movements, by their end (Unix s)."""
    return f"paysim:windows:{tag(bucket)}"


def movements_key(bucket: int, run_id: str, window: int) -> str:
    """The bucket's settlement movements of the run in the window starting at ``window``."""
    return f"paysim:moves:{tag(bucket)}:{run_id}:{window}"


def window_member(run_id: str, window: int) -> str:
    return json.dumps([run_id, window])


def day_field(currency: str, day: str) -> str:
    return f"d|{currency}|{day}"


def hold_member(record: PaymentRecord) -> str:
    """A hold in the sorted set: where its payment's record is."""
    return json.dumps([record.run_id, record.token, record.payment_id])


def parse_hold_member(member: bytes | str) -> tuple[str, str, str] | None:
    """(run, token, payment id) of a hold entry; None for one paysim did not write."""
    try:
        run_id, token, payment_id = json.loads(member)
    except (ValueError, TypeError):
        return None
    if not all(isinstance(part, str) for part in (run_id, token, payment_id)):
        return None
    return run_id, token, payment_id


_record_decoder = msgspec.json.Decoder(PaymentRecord)
_answer_decoder = msgspec.json.Decoder(Answer)
_encode = msgspec.json.Encoder().encode


def decode_record(raw: bytes) -> PaymentRecord:
    return _record_decoder.decode(raw)


def read_record(client: redis.Redis, run_id: str, token: str,
                payment_id: str) -> PaymentRecord | None:
    raw = client.get(record_key(run_id, token, payment_id))
    return None if raw is None else decode_record(raw)


def read_answer(client: redis.Redis, run_id: str, token: str, op_id: str) -> Answer | None:
    raw = client.get(answer_key(run_id, token, op_id))
    return None if raw is None else _answer_decoder.decode(raw)


@dataclass
class CardSnapshot:
    """What a batch read of one card: its book's own lines in the currencies asked for,
    today's counters, its payments' records and its operations' answers. Deciding updates it
    as it goes, so a card's second payment in a batch sees the first one's hold."""

    version: str
    book: Book
    today: dict[str, int]
    records: dict[str, PaymentRecord | None]
    answers: dict[str, Answer | None]

    def funds(self, currency: str) -> CardFunds:
        return CardFunds(self.book, self.today.get(currency, 0))

    def take(self, change: Change) -> None:
        """What a decided step changed, for the card's next step in the same batch."""
        if change.changed:
            self.book.apply(change.entries)
            currency = change.record.currency
            self.today[currency] = self.today.get(currency, 0) + change.spent_today
            self.records[change.record.payment_id] = change.record


@dataclass
class CardWrite:
    """One card's changes in a batch, as the APPLY script takes them."""

    window_s: float  # the settlement window the movements are filed under
    increments: dict[str, int] = field(default_factory=dict)
    records: dict[str, PaymentRecord] = field(default_factory=dict)  # by payment id
    answers: dict[str, Answer] = field(default_factory=dict)  # by operation id
    holds_open: dict[str, int] = field(default_factory=dict)  # member -> expiry (µs)
    holds_closed: set[str] = field(default_factory=set)
    # Settlement movements by window start (Unix seconds): rows of the clearing file.
    movements: dict[int, list[Movement]] = field(default_factory=dict)

    def take(self, change: Change, before: PaymentRecord | None, day: str,
             op_id: str | None = None) -> None:
        """Add one decided step, and the answer to operation ``op_id`` (a refusal adds its
        answer only; a replay, already written, nothing)."""
        if op_id is not None:
            self.answers[op_id] = change.answer
        if not change.changed:
            return
        currency = change.record.currency
        deltas = ledger.net(change.entries)
        for line, delta in deltas.items():
            name = line.field()
            self.increments[name] = self.increments.get(name, 0) + delta
        if change.spent_today:
            name = day_field(currency, day)
            self.increments[name] = self.increments.get(name, 0) + change.spent_today
        record = change.record
        self.records[record.payment_id] = record
        moved = settlement.movement(change, deltas)
        if moved is not None:
            window = settlement.window_of(moved.at, self.window_s)
            self.movements.setdefault(window, []).append(moved)
        if record.held and record.hold_expires_at and not record.closed:
            member = hold_member(record)
            self.holds_open[member] = record.hold_expires_at
            self.holds_closed.discard(member)
        elif before is not None and before.held:
            member = hold_member(record)
            self.holds_closed.add(member)
            self.holds_open.pop(member, None)


class CardRef(msgspec.Struct, frozen=True):
    """A card of a run; a dict key in every batch (a Struct hashes in C)."""

    run_id: str
    token: str

    @property
    def part(self) -> str:
        """The card's part of its keys (see _card)."""
        return _card(self.run_id, self.token)


# What a batch reads of a card: the currencies of its book lines (None: every line), the
# records of these payments, the answers to these operations.
CardReads = tuple[set[str] | None, set[str], set[str]]


class LedgerStore:
    """Reads the cards a batch touches, lets the caller decide on them, writes the result."""

    def __init__(self, client: redis.Redis, ttl: int, window_s: float) -> None:
        self.client = client
        self.ttl = ttl
        self.window_s = window_s
        self._apply = client.register_script(APPLY_LUA)
        self._read = client.register_script(READ_LUA)
        self._cluster = store.is_cluster(client)

    @classmethod
    def for_settings(cls, client: redis.Redis, settings: Settings) -> LedgerStore:
        return cls(client, settings.redis.ledger_ttl, settings.lifecycle.settlement_window)

    def card_write(self, window_s: float | None = None) -> CardWrite:
        """A card's write; its movements filed under ``window_s`` (the run's settlement
        window), else the services' window."""
        return CardWrite(window_s or self.window_s)

    def read(self, cards: dict[CardRef, CardReads], day: str) -> dict[CardRef, CardSnapshot]:
        """Each card's snapshot, in one script call per group of buckets: one command rather
        than a pipeline of hundreds (redis-py's packing of each command cost more than
        Redis's work)."""
        snapshots: dict[CardRef, CardSnapshot] = {}
        by_bucket = _by_bucket(cards)
        for group in shard_store.call_groups(self.client, by_bucket):
            snapshots.update(self._read_group(
                {card: cards[card] for bucket in group for card in by_bucket[bucket]}, day))
        return snapshots

    def _read_group(self, cards: dict[CardRef, CardReads],
                    day: str) -> dict[CardRef, CardSnapshot]:
        call = _read_call(cards, day)
        return call.snapshots(self._read(keys=call.keys, args=call.args))

    def write(self, writes: Sequence[tuple[CardRef, CardSnapshot, CardWrite]]) -> set[CardRef]:
        """Apply each card's changes if its version is still the one read; the cards whose
        version moved meanwhile (to read and decide again). One script call per group of
        buckets (shard_store.call_groups)."""
        by_bucket: dict[int, list[tuple[CardRef, CardSnapshot, CardWrite]]] = {}
        for item in writes:
            by_bucket.setdefault(bucket_of(item[0].run_id, item[0].token), []).append(item)
        conflicts: set[CardRef] = set()
        for group in shard_store.call_groups(self.client, by_bucket):
            conflicts |= self._write_group([item for bucket in group
                                            for item in by_bucket[bucket]])
        return conflicts

    def _write_group(self, writes: list[tuple[CardRef, CardSnapshot, CardWrite]]) -> set[CardRef]:
        """One APPLY call (see _apply_call); the cards it refused."""
        call = _apply_call(writes, self.ttl)
        return call.conflicts(self._apply(keys=call.keys, args=call.args))

    def settle(self, cards: dict[CardRef, CardReads], day: str,
               decide: Callable[[CardRef, CardSnapshot], CardWrite]) -> None:
        """Read, decide (``decide`` updates its snapshot and returns the card's writes),
        write; cards another writer changed meanwhile are read and decided again."""
        pending = dict(cards)
        for _ in range(MAX_TRIES):
            if len(pending) <= CHUNK_CARDS or self._cluster:
                snapshots = self.read(pending, day)
                conflicts = self.write([(card, snapshot, decide(card, snapshot))
                                        for card, snapshot in snapshots.items()])
            else:
                conflicts = self._settle_chunks(pending, day, decide)
            if not conflicts:
                return
            pending = {card: pending[card] for card in conflicts}
        raise redis.RedisError(f"{len(pending)} card(s) kept changing under this batch")

    def _settle_chunks(self, cards: dict[CardRef, CardReads], day: str,
                       decide: Callable[[CardRef, CardSnapshot], CardWrite]) -> set[CardRef]:
        """settle's read, decide and write in chunks of cards, pipelined on one connection:
        Redis reads the next chunk and writes the last one while this one is decided. Each
        card is still read, decided and written once, atomically; only whole chunks' calls
        overlap. The cards another writer changed meanwhile are returned."""
        try:
            return self._pipelined(cards, day, decide)
        except redis.exceptions.NoScriptError:  # Redis restarted or its scripts were flushed
            self._read.sha = self.client.script_load(READ_LUA)
            self._apply.sha = self.client.script_load(APPLY_LUA)
            return self._pipelined(cards, day, decide)

    def _pipelined(self, cards: dict[CardRef, CardReads], day: str,
                   decide: Callable[[CardRef, CardSnapshot], CardWrite]) -> set[CardRef]:
        order = list(cards)
        chunks = [order[i:i + CHUNK_CARDS] for i in range(0, len(order), CHUNK_CARDS)]
        read: dict[int, dict[CardRef, CardSnapshot]] = {}
        conflicts: set[CardRef] = set()
        pool = self.client.connection_pool
        conn = pool.get_connection()
        calls = _CallsInFlight(conn)
        try:
            def send_read(i: int) -> None:
                call = _read_call({card: cards[card] for card in chunks[i]}, day)
                calls.send(self._read.sha, call.keys, call.args,
                           lambda reply: read.__setitem__(i, call.snapshots(reply)))

            send_read(0)
            for i in range(len(chunks)):
                if i + 1 < len(chunks):
                    send_read(i + 1)
                while i not in read:
                    calls.receive()
                writes = [(card, snapshot, decide(card, snapshot))
                          for card, snapshot in read.pop(i).items()]
                apply = _apply_call(writes, self.ttl)
                calls.send(self._apply.sha, apply.keys, apply.args,
                           lambda reply, apply=apply: conflicts.update(apply.conflicts(reply)))
            while calls.waiting:
                calls.receive()
        except BaseException:
            conn.disconnect()  # its unread replies must not reach the pool's next user
            raise
        finally:
            pool.release(conn)
        return conflicts


def _by_bucket(cards: dict[CardRef, CardReads]) -> dict[int, list[CardRef]]:
    found: dict[int, list[CardRef]] = {}
    for card in cards:
        found.setdefault(bucket_of(card.run_id, card.token), []).append(card)
    return found


# What the READ and APPLY scripts take, one document a call: MessagePack, which the scripts
# decode for less than JSON (cmsgpack against cjson) and redis-py packs as one argument.
_batch_encode = msgspec.msgpack.Encoder().encode


class _CallsInFlight:
    """Script calls sent on one connection ahead of their replies, which Redis gives in the
    order sent; each reply goes to the handler given with its call."""

    def __init__(self, conn: redis.connection.AbstractConnection) -> None:
        self.conn = conn
        self.waiting: deque[Callable[[Any], None]] = deque()

    def send(self, sha: str, keys: list[str], args: list[Any],
             on_reply: Callable[[Any], None]) -> None:
        # No health check: after 30 s idle it would send a PING and read the next reply as
        # its answer, which here belongs to a call already in flight.
        self.conn.send_command("EVALSHA", sha, len(keys), *keys, *args, check_health=False)
        self.waiting.append(on_reply)

    def receive(self) -> None:
        """The next reply, to its handler (a script's error is raised)."""
        handler = self.waiting.popleft()
        handler(self.conn.read_response())


@dataclass
class _ReadCall:
    """One READ call's keys and argument, and how to read its reply into snapshots."""

    keys: list[str]
    args: list[bytes]
    plan: list[tuple[CardRef, list[str] | None, list[str], list[str]]]
    day: str

    def snapshots(self, reply: list[object]) -> dict[CardRef, CardSnapshot]:
        replies = iter(reply)
        snapshots = {}
        for card, currencies_l, payments_l, ops_l in self.plan:
            if currencies_l is None:
                flat = next(replies)
                version, lines, today = _whole_card(dict(zip(flat[::2], flat[1::2],
                                                             strict=True)), self.day)
            else:
                version, *values = next(replies)
                lines, today = {}, {}
                # Indexes, not a slice unpacked: Cython (scripts/compile_modules.py) crashes
                # on that form here.
                for i, currency in enumerate(currencies_l):
                    posted, pending, spent = values[3 * i], values[3 * i + 1], values[3 * i + 2]
                    lines[ledger.line(ledger.POSTED, currency, CARD)] = int(posted or 0)
                    lines[ledger.line(ledger.PENDING, currency, CARD)] = int(pending or 0)
                    today[currency] = int(spent or 0)
            records = {pid: _maybe(next(replies), _record_decoder) for pid in payments_l}
            answers = {op: _maybe(next(replies), _answer_decoder) for op in ops_l}
            snapshots[card] = CardSnapshot((version or b"0").decode(), Book(lines), today,
                                           records, answers)
        return snapshots


def _read_call(cards: dict[CardRef, CardReads], day: str) -> _ReadCall:
    keys: list[str] = []
    spec: list[tuple[int, int, list[str] | None]] = []
    plan = []
    for card, (currencies, payments, ops) in cards.items():
        currencies_l = None if currencies is None else sorted(currencies)
        payments_l, ops_l = sorted(payments), sorted(ops)
        fields = None
        if currencies_l is not None:
            fields = [VERSION_FIELD]
            for currency in currencies_l:
                fields += _card_fields(currency, day)
        keys += _card_keys(card.part, payments_l, ops_l)
        spec.append((len(payments_l), len(ops_l), fields))
        plan.append((card, currencies_l, payments_l, ops_l))
    return _ReadCall(keys, [_batch_encode(spec)], plan, day)


@dataclass
class _ApplyCall:
    """One APPLY call's keys and arguments, and the cards it writes, in order."""

    keys: list[str]
    args: list[object]
    cards: list[CardRef]

    def conflicts(self, reply: list[object]) -> set[CardRef]:
        """The cards whose version had moved (APPLY answers their 1-based places)."""
        return {self.cards[int(index) - 1] for index in reply}


def _apply_call(writes: Sequence[tuple[CardRef, CardSnapshot, CardWrite]],
                ttl: int) -> _ApplyCall:
    """One APPLY call. Its keys are the holds, then the windows, of the buckets its cards are
    in, then the movement lists (one per bucket, run and window, however many cards file
    into it), then per card its hash and documents' keys. Its arguments are the TTL, the
    counts of buckets and lists, and the whole batch's changes as one flat MessagePack
    array (APPLY_LUA walks it): redis-py packs four arguments rather than three per
    payment, and the script decodes one array, not a JSON header per card (nested
    arrays per card cost the script half as much again to decode)."""
    placed = [(bucket_of(card.run_id, card.token), card, snapshot, write)
              for card, snapshot, write in writes]
    buckets = sorted({bucket for bucket, *_ in placed})
    place = {bucket: i + 1 for i, bucket in enumerate(buckets)}  # Lua's 1-based index
    lists: dict[tuple[int, str, int], int] = {}  # (bucket, run, window) -> its index
    list_rows: list[object] = []  # per list: bucket place, window end, window member
    card_keys: list[str] = []
    cards: list[object] = []
    for bucket, card, snapshot, write in placed:
        width = settlement.window_width(write.window_s)
        card_keys += _card_keys(card.part, write.records, write.answers)
        cards += (snapshot.version, place[bucket], len(write.increments))
        for name, delta in write.increments.items():
            # A delta past a double's whole numbers as text: the script leaves it to
            # HINCRBY (limits keep real ones far below).
            cards += (name, delta if -_SAFE < delta < _SAFE else str(delta))
        cards.append(len(write.records) + len(write.answers))
        cards += [_encode(record).decode() for record in write.records.values()]
        cards += [_encode(answer).decode() for answer in write.answers.values()]
        cards.append(len(write.holds_open))
        for member, expires in write.holds_open.items():
            cards += (str(expires), member)  # text: microseconds near 2^53
        cards.append(len(write.holds_closed))
        cards += sorted(write.holds_closed)
        cards.append(len(write.movements))
        for window, moved in write.movements.items():
            where = (bucket, card.run_id, window)
            index = lists.get(where)
            if index is None:
                index = lists[where] = len(lists) + 1
                list_rows += (place[bucket], str(window + width),
                              window_member(card.run_id, window))
            cards += (index, len(moved))
            cards += [_encode(move).decode() for move in moved]
    keys = [*map(holds_key, buckets), *map(windows_key, buckets),
            *(movements_key(bucket, run_id, window) for bucket, run_id, window in lists),
            *card_keys]
    return _ApplyCall(keys, [ttl, len(buckets), len(lists), _batch_encode([*list_rows, *cards])],
                      [card for card, _, _ in writes])


@functools.lru_cache(maxsize=4096)
def _card_fields(currency: str, day: str) -> tuple[str, str, str]:
    """The card's own lines in a currency and today's counter, as hash fields."""
    return (ledger.line(ledger.POSTED, currency, CARD).field(),
            ledger.line(ledger.PENDING, currency, CARD).field(), day_field(currency, day))


def _whole_card(raw: dict[bytes, bytes], day: str) -> tuple[bytes | None, dict[Line, int],
                                                            dict[str, int]]:
    """A card's version, book lines and today's counters from its whole hash."""
    lines, today = {}, {}
    for name, value in raw.items():
        text = name.decode()
        line = Line.parse(text)
        if line is not None:
            lines[line] = int(value)
        elif text.startswith("d|") and text.endswith(f"|{day}"):
            today[text.split("|")[1]] = int(value)
    return raw.get(VERSION_FIELD.encode()), lines, today


def book_from_hash(raw: dict[bytes, bytes]) -> Book:
    """A card's whole book from its hash, as HGETALL gives it (the audit's view)."""
    _, lines, _ = _whole_card(raw, "")
    return Book(lines)


class Amounts(msgspec.Struct, frozen=True, kw_only=True):
    """A payment's amounts on the ledger, in minor units of its currency."""

    authorized: int
    incremented: int
    captured: int
    held: int
    refunded: int
    reversed: int
    disputed: int
    fees: int
    dispute_fee: int
    net: int  # what the merchant keeps


class EventView(msgspec.Struct, frozen=True, kw_only=True):
    kind: str
    amount: int
    at: int  # Unix µs
    mti: str | None  # the ISO 8583 message type(s)
    operation: str  # the operation's id (the payment id for its authorization)


class LifecycleView(msgspec.Struct, frozen=True, kw_only=True):
    """A payment's life on the ledger: its state, amounts, dispute and events in order."""

    state: str
    capture: str
    currency: str
    amounts: Amounts
    dispute: Dispute | None
    hold_expires_at: int | None
    events: list[EventView]


class PaymentView(store.OutcomeView, frozen=True, kw_only=True):
    """A payment as API clients get it (GET /payments/<id>, `paysim status --json`): its
    outcome, and its life on the ledger once it has one."""

    lifecycle: LifecycleView | UnsetType = UNSET


def record_view(record: PaymentRecord) -> LifecycleView:
    return LifecycleView(
        state=record.state, capture=record.capture, currency=record.currency,
        amounts=Amounts(authorized=record.authorized, incremented=record.incremented,
                        captured=record.captured, held=record.held, refunded=record.refunded,
                        reversed=record.reversed, disputed=record.disputed, fees=record.fees,
                        dispute_fee=record.dispute_fee, net=record.merchant_net),
        dispute=record.dispute, hold_expires_at=record.hold_expires_at or None,
        events=[EventView(kind=e.kind, amount=e.amount, at=e.at, mti=e.mti,
                          operation=e.op_id) for e in record.events])


def payment_view(client: redis.Redis, stored: store.StoredOutcome) -> PaymentView:
    """The stored outcome's view, with the payment's record when the ledger has one."""
    outcome = stored.outcome
    record = None
    if outcome.token:
        record = read_record(client, outcome.run_id, outcome.token, outcome.payment_id)
    return PaymentView(**msgspec.structs.asdict(store.outcome_view(stored)),
                       lifecycle=UNSET if record is None else record_view(record))


def _maybe(raw: bytes | None, decoder: msgspec.json.Decoder) -> object:
    return None if raw is None else decoder.decode(raw)


# Reads a batch's cards. ARGV[1]: per card (MessagePack: cheaper for the script to decode than
# JSON) the counts of its records and answers and the fields of its hash to read (nil: all of
# it); KEYS: per card its hash, then the records' and answers' keys. Returns per card the
# fields (HMGET) or the whole hash (HGETALL, flat), then each record and answer (nil when
# missing).
READ_LUA = """
local out, k = {}, 1
for _, card in ipairs(cmsgpack.unpack(ARGV[1])) do
  local fields = card[3]
  if fields == nil then
    out[#out + 1] = redis.call('HGETALL', KEYS[k])
  else
    out[#out + 1] = redis.call('HMGET', KEYS[k], unpack(fields))
  end
  for i = 1, card[1] + card[2] do
    out[#out + 1] = redis.call('GET', KEYS[k + i])
  end
  k = k + 1 + card[1] + card[2]
end
return out
"""

# Writes each card's changes if the card's version is the one the batch read (else the card's
# index is returned, and nothing of it is written). ARGV: the TTL of what is written, the
# count n of buckets in the call, the count m of movement lists, and the batch as one flat
# MessagePack array of text and numbers (text, not bin: this Redis's cmsgpack does not decode
# bin): per list its bucket's place, window end and window member; then per card its version
# read, its bucket's place, the count of its increments and each (field, delta), the count of
# its documents and each, of its holds opened and each (expiry, member), of those closed and
# each, of its windows and per window (list index, count of movements, the movements).
# KEYS[1..n] are the buckets' sorted sets of holds, KEYS[n+1..2n] of settlement windows,
# KEYS[2n+1..2n+m] the movement lists; then per card its hash and its documents' keys. A
# card's version and the fields it increments are read with one HMGET and written back summed
# with one HSET: two calls, not one HINCRBY a field (each call a script makes costs Redis
# about a microsecond). Each list's movements are pushed once, after every card: in the
# cards' order, those of conflicting cards left out.
APPLY_LUA = """
local ttl, buckets, nlists = ARGV[1], tonumber(ARGV[2]), tonumber(ARGV[3])
local t = cmsgpack.unpack(ARGV[4])
local lists, p = {}, 1
for l = 1, nlists do
  lists[l] = {t[p], t[p + 1], t[p + 2]}
  p = p + 3
end
local k, index = 2 * buckets + nlists + 1, 0
local conflicts, pushed = {}, {}
local SAFE = 2 ^ 53  -- integers up to here are exact in Lua's doubles
while p <= #t do
  index = index + 1
  local card, version, holds, nfields = KEYS[k], t[p], KEYS[t[p + 1]], t[p + 2]
  p = p + 3
  local fields, deltas = {'ver'}, {}
  for i = 1, nfields do
    fields[i + 1], deltas[i + 1] = t[p], t[p + 1]
    p = p + 2
  end
  local ndocs = t[p]
  local docs = p + 1
  p = docs + ndocs
  local opened = p + 1
  p = opened + 2 * t[p]
  local closed = p + 1
  p = closed + t[p]
  local windows = t[p]
  p = p + 1
  local now = redis.call('HMGET', card, unpack(fields))
  local fresh = (now[1] or '0') == version
  if fresh then
    local sums = {'ver', (tonumber(now[1]) or 0) + 1}
    for j = 2, #fields do
      local delta, sum = deltas[j], tonumber(now[j] or '0')
      if type(delta) == 'number' and sum and sum == math.floor(sum)
          and math.abs(sum) < SAFE and math.abs(sum + delta) < SAFE then
        sums[#sums + 1] = fields[j]
        sums[#sums + 1] = sum + delta
      else  -- not whole numbers a double holds exactly: Redis's own 64-bit HINCRBY
        redis.call('HINCRBY', card, fields[j], delta)
      end
    end
    redis.call('HSET', card, unpack(sums))
    redis.call('EXPIRE', card, ttl)
    for i = 1, ndocs do
      redis.call('SET', KEYS[k + i], t[docs + i - 1], 'EX', ttl)
    end
    for i = opened, closed - 2, 2 do
      redis.call('ZADD', holds, t[i], t[i + 1])
    end
    for i = closed, p - 2 do
      redis.call('ZREM', holds, t[i])
    end
  else
    conflicts[#conflicts + 1] = index
  end
  for _ = 1, windows do
    local list, rows = t[p], t[p + 1]
    if fresh then
      local into = pushed[list] or {}
      pushed[list] = into
      for i = p + 2, p + 1 + rows do
        into[#into + 1] = t[i]
      end
    end
    p = p + 2 + rows
  end
  k = k + 1 + ndocs
end
for l, rows in pairs(pushed) do
  local list, w = KEYS[2 * buckets + l], lists[l]
  redis.call('ZADD', KEYS[buckets + w[1]], w[2], w[3])
  for i = 1, #rows, 1000 do  -- unpack's arguments are bounded by Lua's stack
    redis.call('RPUSH', list, unpack(rows, i, math.min(i + 999, #rows)))
  end
  redis.call('EXPIRE', list, ttl)
end
return conflicts
"""
