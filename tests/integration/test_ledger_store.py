"""The ledger's APPLY script on a real redis-server: what a processor batch leaves in Redis
(records, balanced books, one settlement movement per capture, filed under its window), that a
replayed batch posts nothing twice, and that a card whose version moved is left untouched
while the others of its call are written."""

from __future__ import annotations

import uuid
from collections.abc import Callable, Iterator

import msgspec
import pytest
import redis

from paysim.domain import cards, lifecycle
from paysim.domain.messages import (
    AUTHORIZED,
    REQUESTED,
    Merchant,
    PaymentAuthorized,
    PaymentOutcome,
    now_us,
)
from paysim.infra.config import Settings
from paysim.pipeline import ledger_store, settlement_store, shard_store, store
from paysim.pipeline.ledger_store import CardRef, LedgerStore
from paysim.pipeline.processor import Processor
from paysim.pipeline.registry import PROCESSOR
from tests.helpers import settings_for

MERCHANT = Merchant(id="m00001", name="Acme Groceries", mcc="5411", country="US")
KEY = b"k" * 32
PANS = ["4111111111111111", "5555555555554444", "4000056655665556"]


@pytest.fixture
def client(local_stack, settings: Settings) -> Iterator[redis.Redis]:
    connected = store.connect_answering(settings)
    yield connected
    connected.close()


def authorized(run_id: str, pan: str, amount: int, currency: str) -> PaymentAuthorized:
    return PaymentAuthorized(
        payment_id=str(uuid.uuid4()), run_id=run_id, amount=amount, currency=currency,
        merchant=MERCHANT, stages={REQUESTED: 1, AUTHORIZED: 2},
        token=cards.tokenize(pan, KEY), masked_pan=cards.mask(pan), network="visa",
        exp_month=12, exp_year=2040)


def authorization(item: PaymentAuthorized) -> lifecycle.Authorization:
    return lifecycle.Authorization(
        payment_id=item.payment_id, run_id=item.run_id, token=item.token, amount=item.amount,
        currency=item.currency, merchant_id=item.merchant.id, network=item.network,
        capture=item.capture, partial_approval=False, credit_limit=1_000_000,
        daily_limit=1_000_000, callback_url=None)


def run_batch(service: Processor, client: redis.Redis,
              items: list[PaymentAuthorized]) -> list[PaymentOutcome]:
    """prepare, decide and finish one batch, as the service loop does; its outcomes."""
    pipe = client.pipeline(transaction=False)
    service.prepare(items)
    outputs = [output for item in items for output in service.decide(item, pipe)]
    service.finish(pipe)
    pipe.execute()
    return [msgspec.json.decode(output.value, type=PaymentOutcome) for output in outputs
            if output.topic == service.settings.topics.results]


def ledger_state(client: redis.Redis, run_id: str,
                 items: list[PaymentAuthorized]) -> tuple[object, ...]:
    # The books without their version: a replayed batch's cards are written back unchanged,
    # which moves the version (as any write does) and nothing else.
    version = ledger_store.VERSION_FIELD.encode()
    books = {item.token: {name: value for name, value in
                          client.hgetall(ledger_store.card_key(run_id, item.token)).items()
                          if name != version} for item in items}
    records = [ledger_store.read_record(client, run_id, item.token, item.payment_id)
               for item in items]
    moves = sorted(move.payment_id for move in settlement_store.unsettled(client, run_id))
    return books, records, moves


@pytest.mark.parametrize("chunk_cards", [ledger_store.CHUNK_CARDS, 3])
def test_a_batch_writes_balanced_books_records_and_one_movement_per_capture(
        client: redis.Redis, service_flags: dict[str, object], chunk_cards: int,
        monkeypatch: pytest.MonkeyPatch) -> None:
    # With chunks of 3 cards the batch's 32 cards are settled as 11 pipelined chunks.
    monkeypatch.setattr(ledger_store, "CHUNK_CARDS", chunk_cards)
    run_id = f"run-{uuid.uuid4().hex[:8]}"
    # No random issuer answers: every payment goes to the ledger.
    settings = settings_for({**service_flags, "issuer.decline_rate": 0, "issuer.fault_rate": 0})
    service = PROCESSOR.build(settings, client)
    assert isinstance(service, Processor)
    # Two payments on one card (its second sees the first's), then more cards than buckets
    # (so some share a bucket's movement list) in three currencies.
    others = [cards.luhn_complete(f"4{n:014d}") for n in range(1, 2 * shard_store.BUCKETS)]
    items = [authorized(run_id, PANS[0], 1_000, "EUR"), authorized(run_id, PANS[0], 2_500, "EUR"),
             *(authorized(run_id, pan, 700 + n, ("USD", "JPY", "EUR")[n % 3])
               for n, pan in enumerate(others))]
    outcomes = run_batch(service, client, items)
    assert [(o.payment_id, o.status) for o in outcomes] == [
        (item.payment_id, "approved") for item in items]

    books, records, moves = ledger_state(client, run_id, items)
    for item, record in zip(items, records, strict=True):
        assert record is not None and record.captured == item.amount
    assert len(books) == len(items) - 1
    for raw in books.values():
        book = ledger_store.book_from_hash(raw)
        assert book.lines and list(book.unbalanced()) == []
    assert ledger_store.book_from_hash(books[items[0].token]).balance(
        "card", "EUR") == -3_500
    assert moves == sorted(item.payment_id for item in items)

    # The same batch again (a redelivery): nothing is posted twice, the same answers.
    again = run_batch(service, client, items)
    assert ledger_state(client, run_id, items) == (books, records, moves)
    assert [(o.payment_id, o.status, o.approved_amount) for o in again] == [
        (o.payment_id, o.status, o.approved_amount) for o in outcomes]


def test_a_card_whose_version_moved_is_reported_and_not_written(
        client: redis.Redis, settings: Settings) -> None:
    run_id = f"run-{uuid.uuid4().hex[:8]}"
    ledger = LedgerStore.for_settings(client, settings)
    stale, fresh = (authorized(run_id, pan, 1_234, "EUR") for pan in PANS[:2])
    cards_read = {CardRef(run_id, item.token): ({"EUR"}, {item.payment_id}, set())
                  for item in (stale, fresh)}
    snapshots = ledger.read(cards_read, "20261126")
    writes = []
    for card, snapshot in snapshots.items():
        item = stale if card.token == stale.token else fresh
        write = ledger.card_write()
        change = lifecycle.authorize(authorization(item), None, snapshot.funds("EUR"),
                                     now_us(), 3_600_000_000)
        snapshot.take(change)
        write.take(change, None, "20261126")
        writes.append((card, snapshot, write))
    # Another writer changes the stale card between the read and the write.
    client.hincrby(ledger_store.card_key(run_id, stale.token), ledger_store.VERSION_FIELD, 1)

    assert ledger.write(writes) == {CardRef(run_id, stale.token)}
    _, records, moves = ledger_state(client, run_id, [stale, fresh])
    assert records[0] is None and records[1] is not None
    assert moves == [fresh.payment_id]
    assert client.hgetall(ledger_store.card_key(run_id, stale.token)) == {b"ver": b"1"}


def test_holds_opened_and_closed_by_a_write(client: redis.Redis, settings: Settings) -> None:
    run_id = f"run-{uuid.uuid4().hex[:8]}"
    ledger = LedgerStore.for_settings(client, settings)
    card = CardRef(run_id, cards.tokenize(PANS[1], KEY))
    holds = ledger_store.holds_key(shard_store.bucket_of(run_id, card.token))
    expiry = 2 ** 53 - 1  # a time in µs near the end of a double's whole numbers

    def write(opened: dict[str, int], closed: set[str]) -> None:
        [(_, snapshot)] = ledger.read({card: ({"EUR"}, set(), set())}, "20261126").items()
        changes = ledger.card_write()
        changes.holds_open.update(opened)
        changes.holds_closed.update(closed)
        assert ledger.write([(card, snapshot, changes)]) == set()

    write({f"{run_id}-a": expiry, f"{run_id}-b": 5}, set())
    assert client.zscore(holds, f"{run_id}-a") == expiry
    assert client.zscore(holds, f"{run_id}-b") == 5
    write({}, {f"{run_id}-a", f"{run_id}-b"})
    assert client.zscore(holds, f"{run_id}-a") is None
    assert client.zscore(holds, f"{run_id}-b") is None


def test_increments_past_a_doubles_whole_numbers_stay_exact(
        client: redis.Redis, settings: Settings) -> None:
    # APPLY sums a card's fields in Lua (doubles) and falls back to HINCRBY past 2^53.
    run_id = f"run-{uuid.uuid4().hex[:8]}"
    ledger = LedgerStore.for_settings(client, settings)
    card = CardRef(run_id, cards.tokenize(PANS[0], KEY))
    key = ledger_store.card_key(run_id, card.token)
    client.hset(key, mapping={"big": 2 ** 60, "edge": 2 ** 53 + 1, "cancels": -(2 ** 60),
                              "small": 10, ledger_store.VERSION_FIELD: 4})
    [(_, snapshot)] = ledger.read({card: ({"EUR"}, set(), set())}, "20261126").items()
    write = ledger.card_write()
    write.increments.update({"big": 3, "edge": -10, "cancels": 2 ** 60 + 3, "small": -15,
                             "new": 7})
    assert ledger.write([(card, snapshot, write)]) == set()
    assert client.hgetall(key) == {
        b"big": str(2 ** 60 + 3).encode(), b"edge": str(2 ** 53 - 9).encode(),
        b"cancels": b"3", b"small": b"-5", b"new": b"7", b"ver": b"5"}


def many_cards(run_id: str, count: int) -> dict[CardRef, ledger_store.CardReads]:
    return {CardRef(run_id, cards.tokenize(cards.luhn_complete(f"5{n:014d}"), KEY)):
            ({"EUR"}, {f"pay-{n}"}, set()) for n in range(count)}


def hold_each(ledger: LedgerStore, decided: list[CardRef]):
    """A decide callback for settle: each card's one payment authorized for 1,000."""
    def decide(card: CardRef, snapshot: ledger_store.CardSnapshot) -> ledger_store.CardWrite:
        decided.append(card)
        [(payment_id, before)] = snapshot.records.items()
        item = lifecycle.Authorization(
            payment_id=payment_id, run_id=card.run_id, token=card.token, amount=1_000,
            currency="EUR", merchant_id=MERCHANT.id, network="visa", capture="automatic",
            partial_approval=False, credit_limit=1_000_000, daily_limit=1_000_000,
            callback_url=None)
        change = lifecycle.authorize(item, before, snapshot.funds("EUR"), now_us(),
                                     3_600_000_000)
        write = ledger.card_write()
        snapshot.take(change)
        write.take(change, before, "20261126")
        return write
    return decide


def chunked_batch(client: redis.Redis, settings: Settings, monkeypatch: pytest.MonkeyPatch,
                  count: int) -> tuple[str, LedgerStore, list[CardRef]]:
    """A run's ``count`` cards, one new payment each, that settle takes in chunks of 3."""
    monkeypatch.setattr(ledger_store, "CHUNK_CARDS", 3)
    run_id = f"run-{uuid.uuid4().hex[:8]}"
    return run_id, LedgerStore.for_settings(client, settings), list(many_cards(run_id, count))


def settle_chunked(ledger: LedgerStore, run_id: str, count: int,
                   meanwhile: Callable[[CardRef, list[CardRef]], None]) -> list[CardRef]:
    """Settle chunked_batch's cards, calling ``meanwhile`` with each card and the cards
    decided so far before deciding it; the cards in the order decided."""
    decided: list[CardRef] = []
    hold = hold_each(ledger, decided)

    def decide(card: CardRef, snapshot: ledger_store.CardSnapshot) -> ledger_store.CardWrite:
        meanwhile(card, decided)
        return hold(card, snapshot)

    ledger.settle(many_cards(run_id, count), "20261126", decide)
    return decided


def assert_held_once(client: redis.Redis, run_id: str, held: list[CardRef]) -> None:
    for card in held:
        book = ledger_store.book_from_hash(client.hgetall(ledger_store.card_key(run_id,
                                                                                card.token)))
        assert book.balance("card", "EUR") == -1_000


def test_pipelined_chunks_decide_again_a_card_another_writer_changed(
        client: redis.Redis, settings: Settings, monkeypatch: pytest.MonkeyPatch) -> None:
    # 10 cards in chunks of 3: while the third chunk is decided, another writer bumps the
    # version of its last card, already read; the chunk's APPLY refuses that card alone,
    # writes the others, and settle reads and decides it again.
    run_id, ledger, order = chunked_batch(client, settings, monkeypatch, 10)

    def another_writer(card: CardRef, decided: list[CardRef]) -> None:
        if card == order[6] and order[6] not in decided:
            client.hincrby(ledger_store.card_key(run_id, order[8].token),
                           ledger_store.VERSION_FIELD, 1)

    decided = settle_chunked(ledger, run_id, 10, another_writer)
    assert decided == [*order, order[8]]
    assert_held_once(client, run_id, order)
    assert client.hget(ledger_store.card_key(run_id, order[8].token), "ver") == b"2"


def test_pipelined_chunks_survive_flushed_scripts_and_a_failed_decision(
        client: redis.Redis, settings: Settings, monkeypatch: pytest.MonkeyPatch) -> None:
    run_id, ledger, order = chunked_batch(client, settings, monkeypatch, 8)

    # A decision that fails halfway: the error reaches the caller, and the connection its
    # calls were pipelined on, with replies unread, is not handed to the next command.
    def failing(card: CardRef, snapshot: ledger_store.CardSnapshot) -> ledger_store.CardWrite:
        if card == order[4]:
            raise ValueError("a bug in a decision")
        return hold_each(ledger, [])(card, snapshot)

    with pytest.raises(ValueError, match="a bug"):
        ledger.settle(many_cards(run_id, 8), "20261126", failing)
    assert client.get("paysim:no-such-key") is None and client.ping()

    # Scripts flushed (a Redis restarted without them): settle loads them again. Any card
    # the failed attempt wrote is found decided, and nothing is held twice.
    client.script_flush()
    decided: list[CardRef] = []
    ledger.settle(many_cards(run_id, 8), "20261126", hold_each(ledger, decided))
    assert decided == order
    assert_held_once(client, run_id, order)


def test_scripts_flushed_in_the_middle_of_a_pipelined_batch(
        client: redis.Redis, settings: Settings, monkeypatch: pytest.MonkeyPatch) -> None:
    # The scripts vanish while the second of four chunks is decided: some call after that
    # finds no script, settle loads them and settles the batch again. Whatever the first
    # attempt wrote is found decided: every card is held once.
    run_id, ledger, order = chunked_batch(client, settings, monkeypatch, 10)

    def flush(card: CardRef, decided: list[CardRef]) -> None:
        if card == order[3] and order[3] not in decided:
            client.script_flush()

    decided = settle_chunked(ledger, run_id, 10, flush)
    assert decided.count(order[3]) == 2  # the batch was settled again
    assert_held_once(client, run_id, order)
