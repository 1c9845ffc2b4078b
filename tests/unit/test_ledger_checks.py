"""The audit's ledger checks find what they claim: each planted fault is named, and a clean
card or run passes."""

from __future__ import annotations

import msgspec

from paysim.domain import ledger, settlement
from paysim.domain.ledger import CARD, Book, Line
from paysim.domain.messages import CaptureMode, Merchant, OperationKind, PaymentOutcome
from paysim.ops import ledger_checks
from tests.unit.test_lifecycle import NOW, TTL, Card

MERCHANT = Merchant(id="m-1", name="Shop", mcc="5411", country="US")


def outcome_of(card: Card, payment_id: str, code: str = "00",
               amount: int = 10_000) -> PaymentOutcome:
    return PaymentOutcome(payment_id=payment_id, run_id="run-1", amount=amount,
                          currency="USD", merchant=MERCHANT, stages={}, token="tok",
                          status="approved" if code in ("00", "10") else "declined",
                          reason_code=code, reason_text="")


def checked(card: Card, now: int = NOW) -> ledger_checks.CardCheck:
    outcomes = [outcome_of(card, pid, amount=record.authorized)
                for pid, record in card.records.items()]
    return ledger_checks.check_card(card.book, outcomes, dict(card.records), now)


def problems(check: ledger_checks.CardCheck) -> list[str]:
    return [what for _, what in check.problems]


def paid_card() -> tuple[Card, str]:
    card = Card()
    pid = card.authorize(10_000, capture=CaptureMode.AUTOMATIC).record.payment_id
    card.op(OperationKind.REFUND, pid, amount=2_000)
    return card, pid


def test_a_clean_card_passes() -> None:
    card, _ = paid_card()
    held = card.authorize(3_000).record.payment_id
    check = checked(card)
    assert check.problems == [] and check.holds_open == 1 and held not in check.holds_overdue


def test_a_double_debit_is_found_even_when_the_book_balances() -> None:
    card, _ = paid_card()
    card.book.apply(ledger.transfer(CARD, ledger.merchant_pending("m-1"), 8_000, "USD"))
    found = problems(checked(card))
    assert "card owes 16000 USD, its payments 8000" in found
    assert any(what.startswith("merchant m-1 has") for what in found)
    assert not any("does not balance" in what for what in found)


def test_money_from_nowhere_unbalances_the_book() -> None:
    card, _ = paid_card()
    card.book.lines[Line(ledger.POSTED, "USD", ledger.INTERCHANGE_INCOME)] += 1
    assert "book does not balance: p lines in USD sum to 1" in problems(checked(card))


def test_a_hold_past_its_ttl_is_overdue() -> None:
    card = Card()
    pid = card.authorize(3_000).record.payment_id
    check = checked(card, now=NOW + TTL + ledger_checks.EXPIRY_GRACE_US + 1)
    assert check.holds_overdue == [pid] and check.holds_open == 0


def test_a_step_applied_twice_is_found() -> None:
    card, pid = paid_card()
    record = card.records[pid]
    twice = record.events[-1]
    card.records[pid] = msgspec.structs.replace(record, events=[*record.events, twice])
    assert f"refunded of operation {twice.op_id} applied 2 times" in problems(checked(card))


def test_an_outcome_the_ledger_disagrees_with_is_found() -> None:
    card, pid = paid_card()
    outcome = outcome_of(card, pid, amount=9_999)
    check = ledger_checks.check_card(card.book, [outcome], dict(card.records), NOW)
    assert "approved 9999, the ledger authorized 10000" in problems(check)
    missing = ledger_checks.check_card(Book(), [outcome], {pid: None}, NOW)
    assert problems(missing) == ["answered 00 by the ledger, which has no record of it"]


def settled_run(card: Card) -> tuple[Book, list[settlement.Batch]]:
    batches = settlement.batches("run-1", 0, 60, settlement.total(card.movements), NOW)
    book = Book()
    for batch in batches:
        book.apply(settlement.payout(batch))
    return book, batches


def test_a_settled_run_passes_and_a_wrong_batch_is_found() -> None:
    card, _ = paid_card()
    book, batches = settled_run(card)
    pending = ledger_checks.merchant_pending_lines(card.book)
    assert ledger_checks.check_settlement(book, batches, [], pending) == []
    wrong = [msgspec.structs.replace(batches[0], net=batches[0].net + 1)]
    found = ledger_checks.check_settlement(book, wrong, [], pending)
    assert found[0].startswith(f"batch {batches[0].batch_id}: its parts add to")
    assert any("was paid" in what for what in found)


def test_movements_missing_from_settlement_are_found() -> None:
    card, _ = paid_card()
    pending = ledger_checks.merchant_pending_lines(card.book)
    # Nothing settled and nothing listed as unsettled: the merchant's money is unaccounted.
    found = ledger_checks.check_settlement(Book(), [], [], pending)
    assert found == [f"merchant m-1 is owed {card.merchant()} USD not yet settled, its "
                     "unsettled movements add to 0"]
    assert ledger_checks.check_settlement(Book(), [], card.movements, pending) == []
