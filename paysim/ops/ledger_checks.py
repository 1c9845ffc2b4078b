"""What the audit checks of one card's book and its payments' records (pure).

The records say what happened to each payment; the book says where the money is. They must
agree: the card's posted balance is minus what its payments still owe (their refundable
amounts), its pending balance minus what they hold, each merchant's pending balance the sum of
its payments' nets; every book sums to zero per currency; no step appears twice.
"""

from __future__ import annotations

from collections import Counter, defaultdict
from dataclasses import dataclass, field

from paysim.domain import decisions, ledger
from paysim.domain.ledger import CARD, PENDING, POSTED, Book
from paysim.domain.lifecycle import PaymentRecord, State
from paysim.domain.messages import PaymentOutcome
from paysim.domain.settlement import Batch, Movement

# A hold past its TTL by less than this is the expiry scheduler's to release, not a fault.
EXPIRY_GRACE_US = 60_000_000
# Answers the ledger gives (a record holds them); the others come before the ledger.
LEDGER_ANSWERS = frozenset({"00", "10", "51", "61", "17"})


@dataclass
class CardCheck:
    problems: list[tuple[str | None, str]] = field(default_factory=list)  # (payment, what)
    holds_open: int = 0
    holds_overdue: list[str] = field(default_factory=list)


def account_kind(account: str) -> str:
    """The kind an account is summed under in the audit's balances."""
    if account == CARD:
        return "cards"
    if account.startswith("merchant:"):
        return "merchants " + account.rsplit(":", 1)[1]  # pending / settled
    if account.startswith("income:scheme:"):
        return "scheme fees"
    return {ledger.INTERCHANGE_INCOME: "interchange", ledger.DISPUTE_FEE_INCOME: "dispute fees",
            ledger.ISSUER_SETTLEMENT: "issuer settlement",
            ledger.ACQUIRER_SETTLEMENT: "acquirer settlement"}.get(account, account)


def account_kinds(book: Book) -> dict[tuple[str, str], int]:
    """The book's lines summed per (currency, kind); held amounts under "<kind> (held)"."""
    sums: Counter[tuple[str, str]] = Counter()
    for line, value in book.lines.items():
        kind = account_kind(line.account)
        sums[(line.currency, kind if line.kind == POSTED else f"{kind} (held)")] += value
    return dict(sums)


def check_card(book: Book, outcomes: list[PaymentOutcome],
               records: dict[str, PaymentRecord | None], now: int) -> CardCheck:
    check = CardCheck()
    for kind, currency, total in book.unbalanced():
        check.problems.append((None, f"book does not balance: {kind} lines in {currency} "
                                     f"sum to {total}"))
    for outcome in outcomes:
        _check_outcome(outcome, records.get(outcome.payment_id), check)
    owed: Counter[str] = Counter()
    held: Counter[str] = Counter()
    merchants: dict[tuple[str, str], int] = defaultdict(int)
    for payment_id, record in records.items():
        if record is None:
            continue
        _check_record(payment_id, record, now, check)
        owed[record.currency] += record.refundable if record.approved else 0
        held[record.currency] += record.held if record.approved else 0
        if record.approved:
            merchants[(record.currency, record.merchant_id)] += record.merchant_net
    for currency in sorted(set(owed) | set(held)):
        if -book.balance(CARD, currency) != owed[currency]:
            check.problems.append((None, f"card owes {-book.balance(CARD, currency)} "
                                         f"{currency}, its payments {owed[currency]}"))
        if -book.balance(CARD, currency, PENDING) != held[currency]:
            check.problems.append((None, f"card holds {-book.balance(CARD, currency, PENDING)}"
                                         f" {currency}, its payments {held[currency]}"))
    for (currency, merchant), net in sorted(merchants.items()):
        balance = book.balance(ledger.merchant_pending(merchant), currency)
        if balance != net:
            check.problems.append((None, f"merchant {merchant} has {balance} {currency} from "
                                         f"this card, its payments' net is {net}"))
    return check


def _check_outcome(outcome: PaymentOutcome, record: PaymentRecord | None,
                   check: CardCheck) -> None:
    pid = outcome.payment_id
    if outcome.reason_code not in LEDGER_ANSWERS:
        if record is not None and record.approved:
            check.problems.append((pid, f"declined {outcome.reason_code} before the ledger, "
                                        "but its record is approved"))
        return
    if record is None:
        check.problems.append((pid, f"answered {outcome.reason_code} by the ledger, which has "
                                    "no record of it"))
        return
    if record.authorization != outcome.reason_code:
        check.problems.append((pid, f"outcome says {outcome.reason_code}, the ledger "
                                    f"{record.authorization}"))
    approved = outcome.approved_amount or (
        outcome.amount if outcome.reason_code in decisions.APPROVING else 0)
    if record.authorized != approved:
        check.problems.append((pid, f"approved {approved}, the ledger authorized "
                                    f"{record.authorized}"))


def _check_record(payment_id: str, record: PaymentRecord, now: int, check: CardCheck) -> None:
    def problem(what: str) -> None:
        check.problems.append((payment_id, what))

    if record.held < 0:
        problem(f"holds {record.held}: released or captured more than authorized")
    if record.captured > record.authorized + record.incremented:
        problem(f"captured {record.captured}, more than authorized + increments "
                f"{record.authorized + record.incremented}")
    if record.refundable < 0:
        problem(f"refunded, reversed and disputed {record.captured - record.refundable}, "
                f"more than captured {record.captured}")
    if record.state == State.REVERSED and (record.held or record.refundable):
        problem(f"reversed, but holds {record.held} and owes {record.refundable}")
    steps = Counter((event.op_id, event.kind) for event in record.events)
    for (op_id, kind), times in steps.items():
        if times > 1:
            problem(f"{kind} of operation {op_id} applied {times} times")
    if record.held > 0 and record.approved:
        if record.hold_expires_at + EXPIRY_GRACE_US < now:
            check.holds_overdue.append(payment_id)
        else:
            check.holds_open += 1


def merchant_pending_lines(book: Book) -> dict[tuple[str, str], int]:
    """Each merchant's pending balance in this book, by (merchant account, currency)."""
    return {(line.account, line.currency): value for line, value in book.lines.items()
            if line.kind == POSTED and line.account.startswith("merchant:")
            and line.account.endswith(":pending")}


def check_settlement(book: Book, batches: list[Batch], unsettled: list[Movement],
                     pending: dict[tuple[str, str], int]) -> list[str]:
    """A run's settlement against its ledger: the settlement book balances; each batch adds
    up; what the batches paid is what the settlement book moved; and what the card books
    owe each merchant, less what was paid, is what its unsettled movements add to."""
    problems = [f"settlement book does not balance: {kind} lines in {currency} sum to "
                f"{total}" for kind, currency, total in book.unbalanced()]
    paid: Counter[tuple[str, str]] = Counter()
    for batch in batches:
        parts = (batch.gross - batch.refunds - batch.chargebacks - batch.reversals
                 - batch.interchange - batch.scheme_fees - batch.dispute_fees)
        if parts != batch.net:
            problems.append(f"batch {batch.batch_id}: its parts add to {parts}, its net is "
                            f"{batch.net}")
        paid[(batch.merchant_id, batch.currency)] += batch.net
    open_net: Counter[tuple[str, str]] = Counter()
    for move in unsettled:
        open_net[(move.merchant_id, move.currency)] += move.net
    merchants = {(account.split(":", 1)[1].rsplit(":", 1)[0], currency)
                 for account, currency in pending} | set(paid) | set(open_net)
    for merchant, currency in sorted(merchants):
        settled = book.balance(ledger.merchant_settled(merchant), currency)
        if settled != paid[(merchant, currency)]:
            problems.append(f"merchant {merchant} was paid {settled} {currency}, its batches "
                            f"say {paid[(merchant, currency)]}")
        owed = (pending.get((ledger.merchant_pending(merchant), currency), 0)
                + book.balance(ledger.merchant_pending(merchant), currency))
        if owed != open_net[(merchant, currency)]:
            problems.append(f"merchant {merchant} is owed {owed} {currency} not yet settled, "
                            f"its unsettled movements add to {open_net[(merchant, currency)]}")
    return problems
