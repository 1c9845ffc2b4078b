"""A payment's life on the ledger, as pure steps: every row of the operations table, every
refused transition, and (hypothesis) any sequence of operations keeps the book balanced and
the record's amounts consistent with it."""

from __future__ import annotations

import uuid

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from paysim.domain import fees, ledger, lifecycle, settlement
from paysim.domain.ledger import CARD, PENDING, POSTED, Book
from paysim.domain.lifecycle import (
    Authorization,
    CardFunds,
    Change,
    EventKind,
    PaymentRecord,
    State,
)
from paysim.domain.messages import CaptureMode, OperationKind, OperationRequested

TTL = 7 * 86_400 * 1_000_000
NOW = 1_800_000_000_000_000


class Card:
    """One card's book and today's counter, as the store keeps them."""

    def __init__(self, credit: int = 100_000, daily: int = 50_000) -> None:
        self.book = Book()
        self.today = 0
        self.credit, self.daily = credit, daily
        self.records: dict[str, PaymentRecord] = {}
        self.movements: list[settlement.Movement] = []

    def funds(self) -> CardFunds:
        return CardFunds(self.book, self.today)

    def take(self, change: Change) -> Change:
        moved = settlement.movement(change)
        if moved is not None:
            self.movements.append(moved)
        if change.changed:
            self.book.apply(change.entries)
            self.today += change.spent_today
            self.records[change.record.payment_id] = change.record
        return change

    def authorize(self, amount: int, *, capture: CaptureMode = CaptureMode.MANUAL,
                  partial: bool = False, payment_id: str | None = None,
                  network: str = "visa") -> Change:
        payment_id = payment_id or str(uuid.uuid4())
        request = Authorization(payment_id, "run-1", "tok", amount, "USD", "m-1", network,
                                capture, partial, self.credit, self.daily)
        return self.take(lifecycle.authorize(request, self.records.get(payment_id),
                                             self.funds(), NOW, TTL))

    def op(self, kind: OperationKind, payment_id: str, **fields: object) -> Change:
        op = OperationRequested(op_id=uuid.uuid4().hex, kind=kind, payment_id=payment_id,
                                run_id="run-1", token="tok", requested_at=NOW, **fields)
        return self.take(lifecycle.operate(op, self.records.get(payment_id), self.funds(),
                                           NOW))

    def card(self, kind: str = POSTED) -> int:
        return self.book.balance(CARD, "USD", kind)

    def merchant(self, kind: str = POSTED) -> int:
        return self.book.balance(ledger.merchant_pending("m-1"), "USD", kind)


def kinds(change: Change) -> list[str]:
    return [event.kind for event in change.events]


def test_automatic_capture_holds_and_posts_at_once_and_charges_fees() -> None:
    card = Card()
    change = card.authorize(10_000, capture=CaptureMode.AUTOMATIC)
    assert change.answer.code == "00" and change.answer.amount == 10_000
    # One event: the 0200/0210 is the authorization and the capture in one message.
    assert kinds(change) == ["captured"]
    assert [(e.amount, e.mti) for e in change.events] == [(10_000, "0200/0210")]
    charged = fees.capture_fees("visa", 10_000, "USD")
    assert charged.interchange == 175 and charged.scheme == 13  # 1.65% + 0.10, 0.13%
    assert card.card() == -10_000 and card.card(PENDING) == 0
    assert card.merchant() == 10_000 - charged.total
    assert card.book.balance(ledger.INTERCHANGE_INCOME, "USD") == 175
    record = change.record
    assert record.state == State.CAPTURED and record.merchant_net == 10_000 - 188
    assert not list(card.book.unbalanced())


def test_manual_capture_holds_then_captures_in_parts() -> None:
    card = Card()
    auth = card.authorize(10_000)
    assert kinds(auth) == ["authorized"] and auth.events[0].mti == "0100/0110"
    assert card.card(PENDING) == -10_000 and card.card() == 0
    pid = auth.record.payment_id
    first = card.op(OperationKind.CAPTURE, pid, amount=4_000)
    assert first.answer.code == "00" and first.record.state == State.PARTIALLY_CAPTURED
    assert first.events[0].mti == "0220"
    second = card.op(OperationKind.CAPTURE, pid, amount=6_000)
    assert second.record.state == State.CAPTURED and second.record.held == 0
    assert card.card() == -10_000 and card.card(PENDING) == 0
    over = card.op(OperationKind.CAPTURE, pid, amount=1)
    assert over.answer.code == "57" and "captured and holds nothing" in over.answer.error


def test_a_final_capture_releases_the_rest_of_the_hold() -> None:
    card = Card()
    pid = card.authorize(10_000).record.payment_id
    change = card.op(OperationKind.CAPTURE, pid, amount=3_000, final=True)
    assert change.record.held == 0 and change.record.released == 7_000
    assert card.card() == -3_000 and card.card(PENDING) == 0


def test_a_capture_above_the_hold_is_refused_and_moves_nothing() -> None:
    card = Card()
    pid = card.authorize(10_000).record.payment_id
    change = card.op(OperationKind.CAPTURE, pid, amount=10_001)
    assert change.answer.code == "13" and not change.changed and not change.entries
    assert "more than the 10000 still held" in change.answer.error


def test_an_increment_raises_the_hold_and_a_capture_may_take_all_of_it() -> None:
    card = Card()
    pid = card.authorize(10_000).record.payment_id
    assert card.op(OperationKind.INCREMENT, pid, amount=2_500).answer.code == "00"
    assert card.card(PENDING) == -12_500 and card.today == 12_500
    change = card.op(OperationKind.CAPTURE, pid)
    assert change.answer.amount == 12_500 and change.record.state == State.CAPTURED


def test_an_increment_needs_funds_and_a_held_manual_payment() -> None:
    card = Card(credit=10_000)
    pid = card.authorize(9_000).record.payment_id
    assert card.op(OperationKind.INCREMENT, pid, amount=1_001).answer.code == "51"
    auto = card.authorize(500, capture=CaptureMode.AUTOMATIC).record.payment_id
    refused = card.op(OperationKind.INCREMENT, auto, amount=10)
    assert refused.answer.code == "57" and "captured automatically" in refused.answer.error


def test_void_releases_the_hold_but_not_after_a_capture() -> None:
    card = Card()
    pid = card.authorize(10_000).record.payment_id
    change = card.op(OperationKind.VOID, pid)
    assert change.record.state == State.VOIDED and card.card(PENDING) == 0
    assert change.events[0].mti == "0420"
    again = card.op(OperationKind.CAPTURE, pid)
    assert again.answer.code == "57" and "voided" in again.answer.error
    other = card.authorize(10_000).record.payment_id
    card.op(OperationKind.CAPTURE, other, amount=1)
    assert card.op(OperationKind.VOID, other).answer.code == "57"


def test_expiry_releases_what_is_still_held() -> None:
    card = Card()
    pid = card.authorize(10_000).record.payment_id
    change = card.op(OperationKind.EXPIRE, pid)
    assert change.record.state == State.EXPIRED and card.card(PENDING) == 0
    partly = card.authorize(10_000).record.payment_id
    card.op(OperationKind.CAPTURE, partly, amount=2_000)
    expired = card.op(OperationKind.EXPIRE, partly)
    assert expired.answer.amount == 8_000 and expired.record.state == State.CAPTURED


def test_partial_approval_approves_what_the_card_has() -> None:
    card = Card(credit=6_000)
    change = card.authorize(10_000, partial=True)
    assert change.answer.code == "10" and change.answer.amount == 6_000
    assert change.record.authorized == 6_000 and card.card(PENDING) == -6_000
    assert card.authorize(100, partial=True).answer.code == "51"  # nothing left
    assert Card(credit=6_000).authorize(10_000).answer.code == "51"  # not opted in


def test_partial_approval_stops_at_the_daily_limit_too() -> None:
    card = Card(credit=100_000, daily=5_000)
    change = card.authorize(8_000, partial=True)
    assert change.answer.code == "10" and change.answer.amount == 5_000
    assert card.authorize(100, partial=True).answer.code == "61"  # today's limit used up


def test_the_daily_limit_comes_before_funds() -> None:
    card = Card(credit=100_000, daily=5_000)
    assert card.authorize(5_001).answer.code == "61"


def test_a_reversal_after_capture_returns_money_and_fees() -> None:
    card = Card()
    pid = card.authorize(10_000, capture=CaptureMode.AUTOMATIC).record.payment_id
    change = card.op(OperationKind.REVERSE, pid)
    assert change.record.state == State.REVERSED and change.answer.amount == 10_000
    assert change.events[0].mti == "0400/0410"
    assert card.card() == 0 and card.merchant() == 0
    assert card.book.balance(ledger.INTERCHANGE_INCOME, "USD") == 0
    assert change.record.merchant_net == 0


def test_a_reversal_before_the_authorization_leaves_it_holding_nothing() -> None:
    card = Card()
    pid = str(uuid.uuid4())
    assert card.op(OperationKind.REVERSE, pid).answer.code == "00"
    late = card.authorize(10_000, payment_id=pid)
    assert late.answer.code == "17" and not late.entries and card.card(PENDING) == 0
    assert late.record.state == State.REVERSED


def test_refunds_up_to_what_was_captured() -> None:
    card = Card()
    pid = card.authorize(10_000, capture=CaptureMode.AUTOMATIC).record.payment_id
    assert card.op(OperationKind.REFUND, pid, amount=4_000).record.state == (
        State.PARTIALLY_REFUNDED)
    over = card.op(OperationKind.REFUND, pid, amount=6_001)
    assert over.answer.code == "13" and "6000 refundable" in over.answer.error
    rest = card.op(OperationKind.REFUND, pid)
    assert rest.answer.amount == 6_000 and rest.record.state == State.REFUNDED
    assert card.card() == 0
    assert card.op(OperationKind.REFUND, pid).answer.code == "57"


def test_a_dispute_debits_the_merchant_with_a_fee_and_a_win_returns_the_money() -> None:
    card = Card()
    pid = card.authorize(10_000, capture=CaptureMode.AUTOMATIC).record.payment_id
    before = card.merchant()
    disputed = card.op(OperationKind.DISPUTE, pid, reason_code="13.1")
    fee = fees.dispute_fee("USD")
    assert disputed.record.state == State.DISPUTED and card.card() == 0
    assert card.merchant() == before - 10_000 - fee
    assert card.op(OperationKind.DISPUTE, pid, reason_code="13.1").answer.code == "57"
    won = card.op(OperationKind.RESOLVE, pid, won=True)
    assert won.record.state == State.CAPTURED and card.merchant() == before - fee
    assert kinds(won) == [EventKind.DISPUTE_WON]
    assert card.op(OperationKind.RESOLVE, pid, won=False).answer.code == "57"


def test_a_lost_dispute_keeps_the_money_with_the_cardholder() -> None:
    card = Card()
    pid = card.authorize(10_000, capture=CaptureMode.AUTOMATIC).record.payment_id
    card.op(OperationKind.DISPUTE, pid, reason_code="4837")
    lost = card.op(OperationKind.RESOLVE, pid, won=False)
    assert lost.record.state == State.CHARGED_BACK and card.card() == 0


def test_disputes_need_a_capture_and_a_known_reason() -> None:
    card = Card()
    pid = card.authorize(10_000).record.payment_id
    assert card.op(OperationKind.DISPUTE, pid, reason_code="13.1").answer.code == "57"
    assert card.op(OperationKind.DISPUTE, pid, reason_code="99.9").answer.code == "13"


def test_operations_on_unknown_or_declined_payments_are_refused() -> None:
    card = Card(credit=10)
    assert card.op(OperationKind.CAPTURE, str(uuid.uuid4())).answer.code == "25"
    declined = card.authorize(10_000).record.payment_id
    change = card.op(OperationKind.CAPTURE, declined)
    assert change.answer.code == "57" and "declined" in change.answer.error


def test_an_authorization_seen_again_gives_the_same_answer_and_events() -> None:
    card = Card()
    first = card.authorize(10_000, capture=CaptureMode.AUTOMATIC)
    again = card.authorize(10_000, capture=CaptureMode.AUTOMATIC,
                           payment_id=first.record.payment_id)
    assert not again.changed and again.answer == first.answer
    assert again.events == first.events


OPERATIONS = st.sampled_from([OperationKind.CAPTURE, OperationKind.INCREMENT,
                              OperationKind.VOID, OperationKind.EXPIRE, OperationKind.REVERSE,
                              OperationKind.REFUND, OperationKind.DISPUTE,
                              OperationKind.RESOLVE])


@settings(max_examples=150, deadline=None)
@given(auths=st.lists(st.tuples(st.integers(1, 30_000), st.booleans(), st.booleans()),
                      min_size=1, max_size=4),
       ops=st.lists(st.tuples(OPERATIONS, st.integers(0, 3), st.none() | st.integers(1, 20_000),
                              st.booleans()), max_size=25))
def test_any_life_keeps_the_book_balanced_and_the_amounts_consistent(
        auths: list[tuple[int, bool, bool]],
        ops: list[tuple[OperationKind, int, int | None, bool]]) -> None:
    card = Card(credit=50_000, daily=60_000)
    ids = [card.authorize(amount, capture=CaptureMode.AUTOMATIC if auto else
                          CaptureMode.MANUAL, partial=partial).record.payment_id
           for amount, auto, partial in auths]
    for kind, which, amount, flag in ops:
        fields: dict[str, object] = {"amount": amount}
        if kind == OperationKind.CAPTURE:
            fields["final"] = flag
        if kind == OperationKind.DISPUTE:
            fields["reason_code"] = "10.4"
        if kind == OperationKind.RESOLVE:
            fields["won"] = flag
        if kind in (OperationKind.VOID, OperationKind.EXPIRE, OperationKind.REVERSE,
                    OperationKind.DISPUTE, OperationKind.RESOLVE):
            fields.pop("amount")
        card.op(kind, ids[which % len(ids)], **fields)
        assert not list(card.book.unbalanced())
        records = card.records.values()
        for record in records:
            assert record.held >= 0 and record.refundable >= 0 and record.disputed >= 0
            assert record.captured <= record.authorized + record.incremented
            assert record.refunded <= record.captured
        # The card's own lines are the records' amounts, so the audit can check one
        # against the other.
        assert -card.card(PENDING) == sum(r.held for r in records)
        assert -card.card() == sum(r.refundable for r in records)
        assert card.merchant() == sum(r.merchant_net for r in records)
        assert card.today == sum(r.authorized + r.incremented for r in records)
        # The settlement movements split the merchant's money into parts that add up, and
        # settle exactly what the merchant is owed.
        [totals] = settlement.total(card.movements).values() or [dict.fromkeys(
            settlement.MEASURES, 0)]
        assert totals["net"] == card.merchant()
        assert totals["gross"] == sum(r.captured for r in records)
        assert totals["refunds"] == sum(r.refunded for r in records)
        assert totals["reversals"] == sum(r.reversed for r in records)
        assert totals["interchange"] + totals["scheme_fees"] == sum(r.fees for r in records)
        assert -card.card() - card.card(PENDING) <= card.credit


def test_a_transfer_moves_a_positive_amount() -> None:
    with pytest.raises(ValueError, match="positive amount"):
        ledger.transfer("a", "b", 0, "USD")


def test_a_batch_is_paid_from_the_merchants_pending_to_settled_and_issuer_to_acquirer() -> None:
    card = Card()
    pid = card.authorize(10_000, capture=CaptureMode.AUTOMATIC).record.payment_id
    card.op(OperationKind.REFUND, pid, amount=1_000)
    [batch] = settlement.batches("run-1", 1_800_000_000, 86_400,
                                 settlement.total(card.movements), NOW)
    assert (batch.gross, batch.refunds, batch.movements) == (10_000, 1_000, 2)
    assert batch.net == 10_000 - 1_000 - 188 == card.merchant()
    assert batch.window_end - batch.window_start == 86_400
    book = Book()
    book.apply(settlement.payout(batch))
    assert book.balance(ledger.merchant_pending("m-1"), "USD") == -batch.net
    assert book.balance(ledger.merchant_settled("m-1"), "USD") == batch.net
    assert book.balance(ledger.ACQUIRER_SETTLEMENT, "USD") == batch.net
    assert not list(book.unbalanced())


def test_a_negative_batch_is_paid_back_by_the_merchant() -> None:
    card = Card()
    pid = card.authorize(1_000, capture=CaptureMode.AUTOMATIC).record.payment_id
    card.op(OperationKind.DISPUTE, pid, reason_code="10.4")  # 1,000 back plus a 15.00 fee
    [batch] = settlement.batches("run-1", 0, 60, settlement.total(card.movements), NOW)
    assert batch.net < 0
    book = Book()
    book.apply(settlement.payout(batch))
    assert book.balance(ledger.merchant_settled("m-1"), "USD") == batch.net
    assert book.balance(ledger.ISSUER_SETTLEMENT, "USD") == -batch.net


def test_windows_start_on_whole_multiples_of_their_width() -> None:
    assert settlement.window_of(1_800_000_123_456_789, 86_400) == 1_800_000_123 // 86_400 * 86_400
    assert settlement.window_of(5_999_999, 2) == 4
