"""A card payment's whole life: authorization (a hold), increments, captures, voids, expiry,
reversals, refunds, disputes and their resolution, each as ledger transfers.

Pure: each step takes the payment's record (or None) and what it needs of its card, and gives
back a ``Change``: the new record, the ledger entries for the card's book, the events, and the
answer. Nothing changes when a step is refused; the answer then says why, naming the state.
The services apply a Change to Redis atomically (pipeline/ledger_store.py).

Amounts on a record only grow; what the payment holds and what can still be refunded are
derived from them:
    held       = authorized + incremented - captured - released
    refundable = captured - refunded - reversed - disputed
    merchant's net = captured - fees - refunded - reversed - disputed - dispute fee
"""

from __future__ import annotations

from enum import StrEnum

import msgspec

from paysim.domain import decisions, fees, ledger
from paysim.domain.ledger import CARD, Book, Entry
from paysim.domain.messages import CaptureMode, OperationKind, OperationRequested

# Network reason codes a test dispute may carry (Visa's and Mastercard's most common).
DISPUTE_REASONS: dict[str, str] = {
    "10.4": "Visa: other fraud, card absent",
    "12.6": "Visa: duplicate processing",
    "13.1": "Visa: merchandise or services not received",
    "13.3": "Visa: not as described or defective",
    "4837": "Mastercard: no cardholder authorization",
    "4853": "Mastercard: cardholder dispute",
    "4855": "Mastercard: goods or services not provided",
}


class EventKind(StrEnum):
    AUTHORIZED = "authorized"
    INCREMENTED = "incremented"
    CAPTURED = "captured"
    VOIDED = "voided"
    EXPIRED = "expired"
    REVERSED = "reversed"
    REFUNDED = "refunded"
    DISPUTED = "disputed"
    DISPUTE_WON = "dispute_won"
    DISPUTE_LOST = "dispute_lost"
    SETTLED = "settled"


class State(StrEnum):
    DECLINED = "declined"
    AUTHORIZED = "authorized"
    PARTIALLY_CAPTURED = "partially_captured"
    CAPTURED = "captured"
    PARTIALLY_REFUNDED = "partially_refunded"
    REFUNDED = "refunded"
    DISPUTED = "disputed"
    CHARGED_BACK = "charged_back"
    VOIDED = "voided"
    EXPIRED = "expired"
    REVERSED = "reversed"


# Answers to an operation besides the authorization's (decisions.REASONS has their texts).
OK = decisions.APPROVED
NOT_FOUND = "25"
NOT_PERMITTED = "57"
BAD_AMOUNT = "13"
NO_FUNDS = "51"
OVER_LIMIT = "61"
REVERSED_FIRST = "17"


class Answer(msgspec.Struct, frozen=True):
    code: str
    amount: int = 0  # what the step moved or approved
    error: str | None = None  # why it was refused, in one line

    @property
    def ok(self) -> bool:
        return self.code in decisions.APPROVING


class Dispute(msgspec.Struct, frozen=True):
    reason_code: str
    amount: int
    status: str = "open"  # open, won, lost


class EventRecord(msgspec.Struct, frozen=True):
    kind: str
    amount: int
    at: int  # Unix microseconds
    op_id: str
    mti: str | None = None


class PaymentRecord(msgspec.Struct, kw_only=True):
    """Everything the ledger knows of one payment, stored as one document beside its card's
    book. Each event names the operation that made it, so that an operation seen again (a
    batch redelivered after a crash) gives the same events and moves nothing."""

    payment_id: str
    run_id: str
    token: str
    currency: str = ""
    merchant_id: str = ""
    network: str = ""
    capture: str = CaptureMode.AUTOMATIC
    callback_url: str | None = None  # where its events go as webhooks
    authorization: str | None = None  # the answer; None on a record a reversal made first
    credit_limit: int = 0
    daily_limit: int = 0
    authorized: int = 0
    incremented: int = 0
    captured: int = 0
    released: int = 0
    refunded: int = 0
    reversed: int = 0
    disputed: int = 0
    interchange: int = 0
    scheme_fees: int = 0
    dispute_fee: int = 0
    dispute: Dispute | None = None
    closed: str | None = None  # voided, expired or reversed
    hold_expires_at: int = 0
    events: list[EventRecord] = msgspec.field(default_factory=list)

    @property
    def held(self) -> int:
        return self.authorized + self.incremented - self.captured - self.released

    @property
    def refundable(self) -> int:
        return self.captured - self.refunded - self.reversed - self.disputed

    @property
    def fees(self) -> int:
        return self.interchange + self.scheme_fees

    @property
    def merchant_net(self) -> int:
        return (self.captured - self.fees - self.refunded - self.reversed - self.disputed
                - self.dispute_fee)

    @property
    def approved(self) -> bool:
        return self.authorization in decisions.APPROVING

    @property
    def state(self) -> State:
        if self.closed is not None:
            return State(self.closed)
        if not self.approved:
            return State.DECLINED
        if self.dispute is not None and self.dispute.status != "won":
            return State.DISPUTED if self.dispute.status == "open" else State.CHARGED_BACK
        if self.refunded and not self.refundable:
            return State.REFUNDED
        if self.refunded:
            return State.PARTIALLY_REFUNDED
        if self.captured:
            return State.PARTIALLY_CAPTURED if self.held else State.CAPTURED
        return State.AUTHORIZED


class CardFunds(msgspec.Struct, frozen=True):
    """What a card has, as its book and today's counter say (for holds)."""

    book: Book
    spent_today: int  # authorized today, in the payment's currency

    def available(self, credit_limit: int, currency: str) -> int:
        return (credit_limit + self.book.balance(CARD, currency)
                + self.book.balance(CARD, currency, ledger.PENDING))


# msgspec Structs rather than dataclasses: one of each per payment, and a frozen dataclass's
# __init__ (object.__setattr__ per field) was a visible share of the processor's time.
class Change(msgspec.Struct):
    record: PaymentRecord
    answer: Answer
    entries: list[Entry] = msgspec.field(default_factory=list)
    events: list[EventRecord] = msgspec.field(default_factory=list)
    spent_today: int = 0  # added to the card's counter for today
    changed: bool = True  # False: a replayed or refused step; nothing to write


class Authorization(msgspec.Struct, frozen=True):
    """What the processor asks of the ledger for one authorized payment."""

    payment_id: str
    run_id: str
    token: str
    amount: int
    currency: str
    merchant_id: str
    network: str
    capture: CaptureMode
    partial_approval: bool
    credit_limit: int
    daily_limit: int
    callback_url: str | None = None


MTI = {
    (EventKind.AUTHORIZED, CaptureMode.MANUAL): "0100/0110",
    (EventKind.CAPTURED, CaptureMode.AUTOMATIC): "0200/0210",
    (EventKind.CAPTURED, CaptureMode.MANUAL): "0220",
    (EventKind.INCREMENTED, CaptureMode.MANUAL): "0100/0110",
    (EventKind.VOIDED, CaptureMode.MANUAL): "0420",
    (EventKind.REVERSED, CaptureMode.MANUAL): "0400/0410",
    (EventKind.REVERSED, CaptureMode.AUTOMATIC): "0400/0410",
    (EventKind.REFUNDED, CaptureMode.MANUAL): "0220",
    (EventKind.REFUNDED, CaptureMode.AUTOMATIC): "0220",
}


class _Step:
    """One step under way: a copy of the record, the entries and events it adds."""

    def __init__(self, record: PaymentRecord, op_id: str, now: int, *,
                 fresh: bool = False) -> None:
        # A copy, so that the caller's record stays as it was read (a refused step leaves it);
        # a record made for this step needs none.
        self.record = record if fresh else msgspec.structs.replace(
            record, events=list(record.events))
        self.op_id, self.now = op_id, now
        self.merchant = ledger.merchant_pending(self.record.merchant_id)
        self.entries: list[Entry] = []
        self.events: list[EventRecord] = []
        self.spent_today = 0

    def event(self, kind: EventKind, amount: int) -> None:
        mti = MTI.get((kind, self.record.capture))  # a StrEnum key matches its text
        self.events.append(EventRecord(kind, amount, self.now, self.op_id, mti))

    def hold(self, amount: int) -> None:
        self.entries += ledger.hold(CARD, self.merchant, amount, self.record.currency)

    def release(self, amount: int) -> None:
        if amount:
            self.entries += ledger.release(CARD, self.merchant, amount, self.record.currency)
            self.record.released += amount

    def capture(self, amount: int, held: bool = True) -> None:
        """Capture ``amount``: of the hold (``held``), or at once, with no hold before it."""
        record, currency = self.record, self.record.currency
        if held:
            self.entries += ledger.post(CARD, self.merchant, amount, currency)
        else:
            self.entries += ledger.transfer(CARD, self.merchant, amount, currency)
        charged = fees.capture_fees(record.network, amount, currency)
        if charged.interchange:
            self.entries += ledger.transfer(self.merchant, ledger.INTERCHANGE_INCOME,
                                            charged.interchange, currency)
        if charged.scheme:
            self.entries += ledger.transfer(
                self.merchant, ledger.scheme_fee_income(record.network), charged.scheme,
                currency)
        record.captured += amount
        record.interchange += charged.interchange
        record.scheme_fees += charged.scheme
        self.event(EventKind.CAPTURED, amount)

    def to_card(self, amount: int) -> None:
        if amount:
            self.entries += ledger.transfer(self.merchant, CARD, amount, self.record.currency)

    def done(self, answer: Answer) -> Change:
        self.record.events += self.events
        return Change(self.record, answer, self.entries, self.events, self.spent_today)


def _refused(record: PaymentRecord, code: str, error: str) -> Change:
    return Change(record, Answer(code, 0, error), changed=False)


def replayed(record: PaymentRecord, op_id: str, answer: Answer) -> Change:
    """A step seen again: its answer as first given, its events as first made, nothing
    moved."""
    return Change(record, answer, events=[e for e in record.events if e.op_id == op_id],
                  changed=False)


def authorize(request: Authorization, record: PaymentRecord | None, funds: CardFunds,
              now: int, hold_ttl_us: int) -> Change:
    """The issuer's answer from the card's funds and limits: a hold (captured at once unless
    the capture is manual), or a decline that moves nothing. A payment a reversal reached
    first holds nothing (17)."""
    op_id = request.payment_id
    if record is not None and record.authorization is not None:
        return replayed(record, op_id, Answer(record.authorization, record.authorized))
    base = PaymentRecord(
        payment_id=request.payment_id, run_id=request.run_id, token=request.token,
        currency=request.currency, merchant_id=request.merchant_id, network=request.network,
        capture=request.capture, credit_limit=request.credit_limit,
        daily_limit=request.daily_limit, callback_url=request.callback_url,
        closed=None if record is None else record.closed,
        events=[] if record is None else list(record.events))
    step = _Step(base, op_id, now, fresh=True)
    if base.closed == State.REVERSED:
        step.record.authorization = REVERSED_FIRST
        return step.done(Answer(REVERSED_FIRST, 0, "reversed before it was authorized"))
    amount, code = request.amount, OK
    available = funds.available(request.credit_limit, request.currency)
    today_left = request.daily_limit - funds.spent_today
    if request.partial_approval and amount > min(available, today_left):
        # Opted in: what both the funds and today's limit allow, if anything (the daily
        # limit is the smaller one on most cards, so it must count here too).
        amount = min(available, today_left)
        code = decisions.PARTIALLY_APPROVED if amount > 0 else (
            NO_FUNDS if available <= 0 else OVER_LIMIT)
    elif amount > today_left:
        code = OVER_LIMIT
    elif amount > available:
        code = NO_FUNDS
    step.record.authorization = code
    if code not in decisions.APPROVING:
        return step.done(Answer(code, 0, decisions.reason_text(code)))
    step.record.authorized = amount
    step.record.hold_expires_at = now + hold_ttl_us
    step.spent_today = amount
    if request.capture == CaptureMode.AUTOMATIC:
        # One event, captured: the 0200/0210 is the authorization and the capture in one
        # message (an authorized event before it was one more record a payment on
        # payments.events for nothing: issue 16). Posted at once: a hold, and the release
        # that posting it makes, would cancel out on the book (the same lines written).
        step.capture(amount, held=False)
    else:
        step.hold(amount)
        step.event(EventKind.AUTHORIZED, amount)
    return step.done(Answer(code, amount))


def operate(op: OperationRequested, record: PaymentRecord | None, funds: CardFunds | None,
            now: int) -> Change:
    """One operation on a payment: applied, or refused with the reason naming the payment's
    state. ``funds`` is needed by increments only. An operation seen before is the caller's
    to recognise (by its stored answer: ``replayed``)."""
    if op.kind == OperationKind.REVERSE:
        return _reverse(op, record, now)
    if record is None or record.authorization is None:
        return Change(record or PaymentRecord(payment_id=op.payment_id, run_id=op.run_id,
                                              token=op.token),
                      Answer(NOT_FOUND, 0, f"payment {op.payment_id} not found"),
                      changed=False)
    if not record.approved:
        return _refused(record, NOT_PERMITTED, f"cannot {op.kind}: the payment was declined")
    step = _Step(record, op.op_id, now)
    handler = _HANDLERS[op.kind]
    return handler(step, op, funds)


def _cannot(step: _Step, op: OperationRequested, why: str, code: str = NOT_PERMITTED) -> Change:
    return _refused(step.record, code, f"cannot {op.kind}: {why}")


def _capture(step: _Step, op: OperationRequested, _: CardFunds | None) -> Change:
    record = step.record
    if record.closed or not record.held:
        return _cannot(step, op, f"the payment is {record.state} and holds nothing")
    amount = record.held if op.amount is None else op.amount
    if amount > record.held:
        return _cannot(step, op, f"{amount} is more than the {record.held} still held",
                       BAD_AMOUNT)
    step.capture(amount)
    if op.final:
        step.release(record.held)
    if not record.held:
        record.hold_expires_at = 0
    return step.done(Answer(OK, amount))


def _increment(step: _Step, op: OperationRequested, funds: CardFunds | None) -> Change:
    record = step.record
    if record.closed or not record.held or record.capture != CaptureMode.MANUAL:
        return _cannot(step, op, f"the payment is {record.state} and holds nothing"
                       if record.capture == CaptureMode.MANUAL else
                       "the payment was captured automatically")
    if op.amount is None:
        return _cannot(step, op, "an increment needs an amount", BAD_AMOUNT)
    if funds is None:
        raise ValueError("an increment needs the card's funds")
    if funds.spent_today + op.amount > record.daily_limit:
        return _cannot(step, op, "over the card's daily limit", OVER_LIMIT)
    if op.amount > funds.available(record.credit_limit, record.currency):
        return _cannot(step, op, "insufficient funds", NO_FUNDS)
    record.incremented += op.amount
    step.spent_today = op.amount
    step.hold(op.amount)
    step.event(EventKind.INCREMENTED, op.amount)
    return step.done(Answer(OK, op.amount))


def _void(step: _Step, op: OperationRequested, _: CardFunds | None) -> Change:
    record = step.record
    if record.closed or record.captured or not record.held:
        return _cannot(step, op, f"the payment is {record.state}")
    amount = record.held
    step.release(amount)
    record.closed, record.hold_expires_at = State.VOIDED, 0
    step.event(EventKind.VOIDED, amount)
    return step.done(Answer(OK, amount))


def _expire(step: _Step, op: OperationRequested, _: CardFunds | None) -> Change:
    record = step.record
    if record.closed or not record.held:
        return _cannot(step, op, f"the payment is {record.state} and holds nothing")
    amount = record.held
    step.release(amount)
    record.hold_expires_at = 0
    if not record.captured:
        record.closed = State.EXPIRED
    step.event(EventKind.EXPIRED, amount)
    return step.done(Answer(OK, amount))


def _reverse(op: OperationRequested, record: PaymentRecord | None, now: int) -> Change:
    """ISO 8583 0400: the acquirer never saw the answer, so the authorization is undone,
    whenever the reversal arrives: before the authorization (remembered, so that it holds
    nothing), or after (the hold released, anything captured returned with its fees)."""
    step = _Step(record or PaymentRecord(payment_id=op.payment_id, run_id=op.run_id,
                                         token=op.token), op.op_id, now)
    record = step.record
    if record.closed == State.REVERSED:
        return step.done(Answer(OK, 0))  # reversed already: nothing more to undo
    if record.authorization is None or not record.approved:
        record.closed = State.REVERSED
        step.event(EventKind.REVERSED, 0)
        return step.done(Answer(OK, 0))
    held = record.held
    step.release(held)
    back = record.refundable
    step.to_card(back)
    record.reversed += back
    currency, merchant = record.currency, step.merchant
    if record.interchange:
        step.entries += ledger.transfer(ledger.INTERCHANGE_INCOME, merchant,
                                        record.interchange, currency)
    if record.scheme_fees:
        step.entries += ledger.transfer(ledger.scheme_fee_income(record.network), merchant,
                                        record.scheme_fees, currency)
    record.interchange = record.scheme_fees = 0
    record.closed, record.hold_expires_at = State.REVERSED, 0
    step.event(EventKind.REVERSED, held + back)
    return step.done(Answer(OK, held + back))


def _refund(step: _Step, op: OperationRequested, _: CardFunds | None) -> Change:
    record = step.record
    if record.refundable <= 0:
        return _cannot(step, op, f"the payment is {record.state} with nothing to refund")
    amount = record.refundable if op.amount is None else op.amount
    if amount > record.refundable:
        return _cannot(step, op, f"{amount} is more than the {record.refundable} refundable",
                       BAD_AMOUNT)
    step.to_card(amount)
    record.refunded += amount
    step.event(EventKind.REFUNDED, amount)
    return step.done(Answer(OK, amount))


def _dispute(step: _Step, op: OperationRequested, _: CardFunds | None) -> Change:
    record = step.record
    if op.reason_code not in DISPUTE_REASONS:
        return _cannot(step, op, f"unknown reason code {op.reason_code!r}; known: "
                       f"{', '.join(DISPUTE_REASONS)}", BAD_AMOUNT)
    if record.dispute is not None:
        return _cannot(step, op, f"the payment is {record.state}: disputed already")
    amount = record.refundable
    if amount <= 0:
        return _cannot(step, op, f"the payment is {record.state} with nothing captured to "
                       "dispute")
    fee = fees.dispute_fee(record.currency)
    step.to_card(amount)
    step.entries += ledger.transfer(step.merchant, ledger.DISPUTE_FEE_INCOME, fee,
                                    record.currency)
    record.disputed += amount
    record.dispute_fee += fee
    record.dispute = Dispute(op.reason_code, amount)
    step.event(EventKind.DISPUTED, amount)
    return step.done(Answer(OK, amount))


def _resolve(step: _Step, op: OperationRequested, _: CardFunds | None) -> Change:
    record = step.record
    if record.dispute is None or record.dispute.status != "open":
        return _cannot(step, op, f"the payment is {record.state} with no open dispute")
    if op.won is None:
        return _cannot(step, op, "a resolution says whether the dispute was won", BAD_AMOUNT)
    amount = record.dispute.amount
    if op.won:
        step.entries += ledger.transfer(CARD, step.merchant, amount, record.currency)
        record.disputed -= amount
    record.dispute = msgspec.structs.replace(record.dispute,
                                             status="won" if op.won else "lost")
    step.event(EventKind.DISPUTE_WON if op.won else EventKind.DISPUTE_LOST, amount)
    return step.done(Answer(OK, amount))


_HANDLERS = {
    OperationKind.CAPTURE: _capture,
    OperationKind.INCREMENT: _increment,
    OperationKind.VOID: _void,
    OperationKind.EXPIRE: _expire,
    OperationKind.REFUND: _refund,
    OperationKind.DISPUTE: _dispute,
    OperationKind.RESOLVE: _resolve,
}
