"""What a capture costs the merchant: interchange (to the issuer) and the scheme's fee, per
network, and the acquirer's fee on a dispute. Simulation figures of the right size (US
consumer credit, 2024: Visa and Mastercard interchange about 1.5-2.0% + 0.10 USD, scheme fees
about 0.13%), not any network's tariff."""

from __future__ import annotations

import functools
from dataclasses import dataclass

import msgspec

from paysim.domain import money


@dataclass(frozen=True)
class FeeRate:
    basis_points: int  # hundredths of a percent of the amount
    fixed_usd: float  # converted into the payment's currency

    def of(self, amount: int, currency: str) -> int:
        """The fee on ``amount`` minor units, rounded half up, never more than the amount."""
        fee = (amount * self.basis_points + 5_000) // 10_000 + _fixed(self.fixed_usd, currency)
        return min(fee, amount)


@functools.lru_cache(maxsize=1024)
def _fixed(usd: float, currency: str) -> int:
    return money.minor_units(usd, currency)


@dataclass(frozen=True)
class NetworkFees:
    interchange: FeeRate
    scheme: FeeRate


FEES: dict[str, NetworkFees] = {
    "visa": NetworkFees(FeeRate(165, 0.10), FeeRate(13, 0.0)),
    "mastercard": NetworkFees(FeeRate(175, 0.10), FeeRate(14, 0.0)),
    "amex": NetworkFees(FeeRate(250, 0.10), FeeRate(15, 0.0)),
    "discover": NetworkFees(FeeRate(155, 0.10), FeeRate(13, 0.0)),
}
OTHER_NETWORK = NetworkFees(FeeRate(180, 0.10), FeeRate(14, 0.0))

DISPUTE_FEE_USD = 15.0  # charged to the merchant per dispute, kept whatever the outcome


class CaptureFees(msgspec.Struct, frozen=True):
    """One capture's fees (a Struct: one per payment, and a frozen dataclass's __init__ was
    dearer than the arithmetic)."""

    interchange: int
    scheme: int

    @property
    def total(self) -> int:
        return self.interchange + self.scheme


def capture_fees(network: str, amount: int, currency: str) -> CaptureFees:
    """The fees on one capture; the scheme's fee comes out of what interchange leaves."""
    rates = FEES.get(network, OTHER_NETWORK)
    interchange = rates.interchange.of(amount, currency)
    return CaptureFees(interchange, min(rates.scheme.of(amount, currency),
                                        amount - interchange))


def dispute_fee(currency: str) -> int:
    return money.minor_units(DISPUTE_FEE_USD, currency)
