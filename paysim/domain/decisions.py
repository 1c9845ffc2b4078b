"""Reason codes and the two decisions of the pipeline: the authorizer's card checks and the
issuer's settlement rules. Pure functions: the services and the HTTP edge call the same ones."""

from __future__ import annotations

import hashlib
from dataclasses import dataclass
from datetime import datetime
from enum import StrEnum

import msgspec

from paysim.domain import cards, money


class Status(StrEnum):
    APPROVED = "approved"
    DECLINED = "declined"


# ISO 8583 response codes as card networks use them, with the text shown to users.
REASONS: dict[str, str] = {
    "00": "approved",
    "05": "do not honour",
    "10": "partial approval",
    "12": "invalid currency (not ISO 4217)",
    "13": "invalid amount",
    "14": "invalid card number",
    "17": "reversed before it was authorized",
    "25": "payment not found",
    "41": "lost card",
    "43": "stolen card",
    "51": "insufficient funds",
    "54": "expired card",
    "57": "not permitted in the payment's state",
    "61": "exceeds amount limit",
    "91": "issuer unavailable",
    "96": "system malfunction",
    "N7": "CVV check failed",
}
APPROVED = "00"
PARTIALLY_APPROVED = "10"
APPROVING = frozenset({APPROVED, PARTIALLY_APPROVED})  # answers whose status is approved


def reason_text(code: str) -> str:
    return REASONS.get(code, "unknown reason")


class CardCheck(msgspec.Struct, frozen=True):
    """The authorizer's verdict. ``reason`` is None when the card passes every check. (A
    Struct: a frozen dataclass cost the authorizer ten times as much to make, per card.)"""

    reason: str | None
    network: str

    @property
    def accepted(self) -> bool:
        return self.reason is None


def check_card(card: cards.CardBlock, amount: int, currency: str, now: datetime,
               max_amount_usd: float) -> CardCheck:
    """The card checks in the order the reason-code table gives; the first failure decides."""
    number = card.number
    card_network = cards.network(number) if cards.ascii_digits(number) else "unknown"
    if not cards.well_formed_pan(number):
        return CardCheck("14", card_network)
    if cards.expired(card.exp_month, card.exp_year, now):
        return CardCheck("54", card_network)
    if not cards.valid_cvv(card.cvv, card_network):
        return CardCheck("N7", card_network)
    if not money.is_currency(currency):
        # An unknown currency has no exponent, so the amount check cannot be made in it;
        # a non-positive amount is still reported as the amount problem it is.
        return CardCheck("13" if amount <= 0 else "12", card_network)
    if amount <= 0 or amount > money.minor_units(max_amount_usd, currency):
        return CardCheck("13", card_network)
    return CardCheck(None, card_network)


# Documented test cards: the number decides the issuer's answer, as in payment providers'
# test modes (the numbers are Stripe's where a meaning matches).
TEST_CARDS: dict[str, str] = {
    "4000000000009995": "51",  # insufficient funds: its profile has no credit
    "4000000000006975": "61",  # over the daily limit: its profile has no daily allowance
    "4000000000000002": "05",  # do not honour
    "4000000000009987": "41",  # lost card
    "4000000000009979": "43",  # stolen card
    "4000000000000119": "96",  # system malfunction
}
# Outcomes the issuer gives without looking at the ledger.
FORCED_BY_ISSUER = frozenset({"05", "41", "43", "96"})


def draw(*parts: object) -> float:
    """A uniform number in [0, 1) fixed by ``parts``: the same payment, the same draw."""
    return _draw_text("|".join(map(str, parts)))


def _draw_text(text: str) -> float:
    digest = hashlib.blake2b(text.encode(), digest_size=8).digest()
    return int.from_bytes(digest, "big") / 2**64


@dataclass(frozen=True)
class CardProfile:
    """An issuer's view of a card, made deterministically from its token on first sight."""

    credit_limit_usd: float
    daily_limit_usd: float


def card_profile(token: str, forced_reason: str | None) -> CardProfile:
    if forced_reason == "51":
        return CardProfile(credit_limit_usd=0.0, daily_limit_usd=1e9)
    if forced_reason == "61":
        return CardProfile(credit_limit_usd=1e9, daily_limit_usd=0.0)
    # Limits well above what one run spends on a card, so 51 and 61 come from test cards,
    # small populations or long runs, not from noise.
    credit = 5_000 + round(draw("credit", token) * 45_000)
    return CardProfile(credit_limit_usd=float(credit), daily_limit_usd=credit * 0.5)


@dataclass(frozen=True)
class IssuerRates:
    decline_rate: float = 0.0  # share answered 05
    fault_rate: float = 0.0  # share answered 91
    # (start, end) in Unix microseconds: while one is open the issuer answers 91 to everything.
    outages: tuple[tuple[int, int], ...] = ()
    added_latency_ms: float = 0.0  # how long each batch waits on the issuer
    # How long the issuer keeps an uncaptured hold; None: the services' lifecycle.hold_ttl.
    hold_ttl_s: float | None = None
    # The run's settlement window (the scheme's, kept here with the run's other behaviour so
    # that one record says how the run is treated); None: lifecycle.settlement_window.
    settlement_window_s: float | None = None

    def in_outage(self, at_us: int) -> bool:
        return any(start <= at_us < end for start, end in self.outages)


def issuer_precheck(forced_reason: str | None, rates: IssuerRates, now_us: int,
                    *identity: object) -> str | None:
    """What the issuer answers before the ledger is consulted, or None to go on to it."""
    if forced_reason in FORCED_BY_ISSUER:
        return forced_reason
    if rates.outages and rates.in_outage(now_us):
        return "91"
    if not (rates.fault_rate or rates.decline_rate):
        return None
    # draw("fault", *identity) and draw("decline", *identity), the identity's text made once
    text = "|".join(map(str, identity))
    if rates.fault_rate and _draw_text(f"fault|{text}") < rates.fault_rate:
        return "91"
    if rates.decline_rate and _draw_text(f"decline|{text}") < rates.decline_rate:
        return "05"
    return None
