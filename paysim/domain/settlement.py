"""Settlement: what each step of a payment's life does to its merchant's money, summed per
merchant, currency and settlement window into batches, and the transfers that pay a batch.

A step's *movement* splits the change to the merchant's pending balance into its parts:
    net = gross - refunds - chargebacks - reversals - interchange - scheme_fees - dispute_fees
(a dispute won is a negative chargeback; fees returned by a reversal are negative fees). A
closed window's batch is the sum of its movements; paying it moves ``net`` from the
merchant's pending account to its settled account, and the same amount from the issuer's
settlement account to the acquirer's (the issuer pays the scheme, the scheme the acquirer).
"""

from __future__ import annotations

from collections import defaultdict
from collections.abc import Iterable

import msgspec

from paysim.domain import ledger
from paysim.domain.ledger import POSTED, Entry
from paysim.domain.lifecycle import Change, EventKind


class Parts(msgspec.Struct, frozen=True, kw_only=True):
    """Merchant money in its parts (minor units): net = gross - refunds - chargebacks -
    reversals - interchange - scheme_fees - dispute_fees."""

    gross: int = 0
    refunds: int = 0
    chargebacks: int = 0
    reversals: int = 0
    interchange: int = 0
    scheme_fees: int = 0
    dispute_fees: int = 0
    net: int = 0


PARTS: tuple[str, ...] = Parts.__struct_fields__
MEASURES = (*PARTS, "movements")  # a batch's sums: the parts, and how many movements


class Movement(Parts, frozen=True, kw_only=True):
    """One step's effect on one merchant's money: a row of the clearing file."""

    payment_id: str
    op_id: str
    kind: str  # the event: captured, refunded, ...
    at: int  # Unix µs
    merchant_id: str
    currency: str


def movement(change: Change, deltas: dict[ledger.Line, int] | None = None) -> Movement | None:
    """What a decided step did to its merchant's money; None when it did nothing to it.
    ``deltas``: the step's entries summed per line, when the caller has them already."""
    record = change.record
    if not change.changed or not change.events:
        return None
    currency = record.currency
    if deltas is None:
        deltas = ledger.net(change.entries)

    def posted(account: str) -> int:
        return deltas.get(ledger.line(POSTED, currency, account), 0)

    net = posted(ledger.merchant_pending(record.merchant_id))
    interchange = posted(ledger.INTERCHANGE_INCOME)
    scheme = posted(ledger.scheme_fee_income(record.network))
    dispute_fees = posted(ledger.DISPUTE_FEE_INCOME)
    by_kind = {event.kind: event.amount for event in change.events}
    gross = by_kind.get(EventKind.CAPTURED, 0)
    refunds = by_kind.get(EventKind.REFUNDED, 0)
    chargebacks = by_kind.get(EventKind.DISPUTED, 0) - by_kind.get(EventKind.DISPUTE_WON, 0)
    reversals = gross - refunds - chargebacks - interchange - scheme - dispute_fees - net
    if not (net or gross or refunds or chargebacks or reversals):
        return None
    last = change.events[-1]
    return Movement(payment_id=record.payment_id, op_id=last.op_id, kind=last.kind,
                    at=last.at, merchant_id=record.merchant_id, currency=currency,
                    gross=gross, refunds=refunds, chargebacks=chargebacks, reversals=reversals,
                    interchange=interchange, scheme_fees=scheme, dispute_fees=dispute_fees,
                    net=net)


def window_width(window_s: float) -> int:
    """A settlement window's length in whole seconds (at least one): what windows start at
    and end by."""
    return max(1, round(window_s))


def window_of(at_us: int, window_s: float) -> int:
    """The settlement window a time falls in: its start, in Unix seconds."""
    width = window_width(window_s)
    return at_us // 1_000_000 // width * width


class Batch(msgspec.Struct, frozen=True, kw_only=True):
    """One merchant's settlement in one currency for one window (on payments.settlements).
    The parts are written out rather than inherited from Parts: a base's fields come first
    on the wire, and every record starts with its "v"."""

    v: int = 1
    batch_id: str
    run_id: str
    merchant_id: str
    currency: str
    window_start: int  # Unix seconds
    window_end: int
    gross: int = 0
    refunds: int = 0
    chargebacks: int = 0
    reversals: int = 0
    interchange: int = 0
    scheme_fees: int = 0
    dispute_fees: int = 0
    net: int = 0
    movements: int = 0
    closed_at: int = 0  # Unix µs


def batch_id(run_id: str, window_start: int, merchant_id: str, currency: str) -> str:
    return f"{run_id}/{window_start}/{merchant_id}/{currency}"


def batches(run_id: str, window_start: int, window_s: float,
            totals: dict[tuple[str, str], dict[str, int]], closed_at: int) -> list[Batch]:
    """A closed window's batches from its totals per (merchant, currency)."""
    end = window_start + window_width(window_s)
    return [Batch(batch_id=batch_id(run_id, window_start, merchant, currency), run_id=run_id,
                  merchant_id=merchant, currency=currency, window_start=window_start,
                  window_end=end, closed_at=closed_at, **sums)
            for (merchant, currency), sums in sorted(totals.items())]


def payout(batch: Batch) -> list[Entry]:
    """The transfers that pay a batch (a negative net is paid back by the merchant)."""
    if batch.net == 0:
        return []
    amount, currency = abs(batch.net), batch.currency
    pending, settled = (ledger.merchant_pending(batch.merchant_id),
                        ledger.merchant_settled(batch.merchant_id))
    issuer, acquirer = ledger.ISSUER_SETTLEMENT, ledger.ACQUIRER_SETTLEMENT
    if batch.net < 0:
        pending, settled, issuer, acquirer = settled, pending, acquirer, issuer
    return [*ledger.transfer(pending, settled, amount, currency),
            *ledger.transfer(issuer, acquirer, amount, currency)]


def total(movements: Iterable[Movement]) -> dict[tuple[str, str], dict[str, int]]:
    """Movements summed per (merchant, currency), as a window's totals."""
    sums: dict[tuple[str, str], dict[str, int]] = defaultdict(lambda: dict.fromkeys(MEASURES, 0))
    for move in movements:
        row = sums[(move.merchant_id, move.currency)]
        for part in PARTS:
            row[part] += getattr(move, part)
        row["movements"] += 1
    return dict(sums)
