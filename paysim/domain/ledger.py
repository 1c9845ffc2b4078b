"""The double-entry ledger: accounts, transfers and books, in integer minor units.

Every movement of money is a transfer that debits one account and credits another by the same
amount in one currency. A hold is a two-phase transfer (as TigerBeetle's pending transfers): it
is first *pending*, then *posted* in part or whole, or *released* (voided, expired, reversed).

The ledger is kept as many **books**, each balanced on its own: one per card (every transfer a
card takes part in, both legs: the card's own account and its counterparties' share), and one
per run for the settlement transfers between merchants, issuer and acquirer. An account's
balance is the sum of its lines over all books; since every book sums to zero per currency, so
does the whole ledger, at every moment a book is written (a book is written atomically). One
card's book sits under one Redis key with the card's other keys, which a Redis Cluster keeps
in one slot.

A book is a flat map of lines ``(kind, currency, account) -> int``: kind ``p`` is the posted
balance (credits minus debits), kind ``h`` the pending balance (pending credits minus pending
debits). Money leaving an account makes its balance negative: a card that spent 10.00 has
``p`` = -1000.
"""

from __future__ import annotations

import functools
from collections import defaultdict
from collections.abc import Iterable, Iterator
from typing import NamedTuple

POSTED = "p"
PENDING = "h"

# Accounts. A card's own account is CARD in its book; across books it is card:<token>.
CARD = "card"
ISSUER_SETTLEMENT = "issuer:settlement"
ACQUIRER_SETTLEMENT = "acquirer:settlement"
INTERCHANGE_INCOME = "income:interchange"
DISPUTE_FEE_INCOME = "income:dispute_fees"


def scheme_fee_income(network: str) -> str:
    return f"income:scheme:{network}"


def merchant_pending(merchant_id: str) -> str:
    """What the acquirer owes the merchant for captures not yet settled."""
    return f"merchant:{merchant_id}:pending"


def merchant_settled(merchant_id: str) -> str:
    """What was paid out to the merchant in closed settlement batches."""
    return f"merchant:{merchant_id}:settled"


class Line(NamedTuple):
    kind: str  # POSTED or PENDING
    currency: str
    account: str

    def field(self) -> str:
        """The line as a Redis hash field: ``p|USD|merchant:m-1:pending``. The account comes
        last, so a merchant id holding ``|`` still reads back (split at most twice)."""
        return _field(self)

    @classmethod
    def parse(cls, field: str) -> Line | None:
        """A book line from its hash field; None for the book's other fields."""
        parts = field.split("|", 2)
        if len(parts) != 3 or parts[0] not in (POSTED, PENDING):
            return None
        return cls(*parts)


# One change to one line of a book: (line, delta). A plain tuple, not a NamedTuple: a payment
# makes about ten, and building NamedTuples was a tenth of the processor's time.
Entry = tuple[Line, int]


@functools.lru_cache(maxsize=65536)
def line(kind: str, currency: str, account: str) -> Line:
    """The line, made once: the same few accounts recur in every payment."""
    return Line(kind, currency, account)


def transfer(debit: str, credit: str, amount: int, currency: str) -> list[Entry]:
    """A posted transfer at once."""
    _positive(amount)
    return [(line(POSTED, currency, debit), -amount), (line(POSTED, currency, credit), amount)]


def hold(debit: str, credit: str, amount: int, currency: str) -> list[Entry]:
    """A pending transfer: the debit account's money is held, not yet moved."""
    _positive(amount)
    return [(line(PENDING, currency, debit), -amount),
            (line(PENDING, currency, credit), amount)]


def release(debit: str, credit: str, amount: int, currency: str) -> list[Entry]:
    """Part or all of a pending transfer undone (void, expiry, reversal, a final capture's
    rest)."""
    _positive(amount)
    return [(line(PENDING, currency, debit), amount),
            (line(PENDING, currency, credit), -amount)]


def post(debit: str, credit: str, amount: int, currency: str) -> list[Entry]:
    """Part or all of a pending transfer posted (a capture)."""
    return [*release(debit, credit, amount, currency),
            *transfer(debit, credit, amount, currency)]


def _positive(amount: int) -> None:
    if amount <= 0:
        raise ValueError(f"a transfer moves a positive amount, not {amount}")


@functools.lru_cache(maxsize=65536)
def _field(of: Line) -> str:
    return f"{of.kind}|{of.currency}|{of.account}"


class Book:
    """A balanced set of lines, read from and written back to one store key."""

    def __init__(self, lines: dict[Line, int] | None = None) -> None:
        self.lines: dict[Line, int] = defaultdict(int, lines or {})

    def apply(self, entries: Iterable[Entry]) -> None:
        for changed, delta in entries:
            self.lines[changed] += delta

    def balance(self, account: str, currency: str, kind: str = POSTED) -> int:
        return self.lines.get(line(kind, currency, account), 0)

    def totals(self) -> dict[tuple[str, str], int]:
        """Per (kind, currency), the sum of every line: zero in a balanced book."""
        sums: dict[tuple[str, str], int] = defaultdict(int)
        for each, value in self.lines.items():
            sums[(each.kind, each.currency)] += value
        return dict(sums)

    def unbalanced(self) -> Iterator[tuple[str, str, int]]:
        """(kind, currency, sum) of every per-currency sum that is not zero."""
        for (kind, currency), total in sorted(self.totals().items()):
            if total:
                yield kind, currency, total


def net(entries: Iterable[Entry]) -> dict[Line, int]:
    """The entries summed per line, zero lines dropped: what a store increments."""
    sums: dict[Line, int] = defaultdict(int)
    for changed, delta in entries:
        sums[changed] += delta
    return {changed: delta for changed, delta in sums.items() if delta}
