"""ISO 4217 exponents, formatting, and scaling US-dollar figures into minor units."""

from __future__ import annotations

import pytest

from paysim.domain import money
from paysim.load import generator


@pytest.mark.parametrize(("code", "places"), [
    ("JPY", 0), ("KRW", 0), ("ISK", 0), ("CLP", 0),
    ("USD", 2), ("EUR", 2), ("GBP", 2),
    ("BHD", 3), ("KWD", 3), ("JOD", 3), ("TND", 3),
    ("CLF", 4), ("UYW", 4),
])
def test_exponents(code: str, places: int) -> None:
    assert money.is_currency(code)
    assert money.exponent(code) == places


@pytest.mark.parametrize("code", ["XAU", "XXX", "XDR", "usd", "Usd", "", "US", "USDD", "XYZ"])
def test_not_currencies(code: str) -> None:
    assert not money.is_currency(code)


def test_exponent_of_a_non_currency_raises() -> None:
    with pytest.raises(KeyError):
        money.exponent("XAU")


@pytest.mark.parametrize(("amount", "currency", "text"), [
    (12345, "USD", "123.45 USD"),
    (5, "USD", "0.05 USD"),
    (0, "USD", "0.00 USD"),
    (100, "EUR", "1.00 EUR"),
    (123456789, "USD", "1,234,567.89 USD"),
    (-12345, "USD", "-123.45 USD"),
    (-5, "USD", "-0.05 USD"),
    (500, "JPY", "500 JPY"),
    (1500000, "JPY", "1,500,000 JPY"),
    (-1500, "JPY", "-1,500 JPY"),
    (1234, "BHD", "1.234 BHD"),
    (-1, "KWD", "-0.001 KWD"),
    (10000, "CLF", "1.0000 CLF"),
    (12345678, "CLF", "1,234.5678 CLF"),
    (100, "XYZ", "1.00 XYZ"),  # unknown: two places
])
def test_format_amount(amount: int, currency: str, text: str) -> None:
    assert money.format_amount(amount, currency) == text


@pytest.mark.parametrize(("usd", "currency", "units"), [
    (1.0, "USD", 100),
    (12.34, "USD", 1234),
    (10_000.0, "USD", 1_000_000),
    (1.0, "JPY", 150),
    (10_000.0, "JPY", 1_500_000),
    (1.0, "EUR", 92),
    (10.0, "BHD", 3_760),
    (1.0, "KWD", 307),
    (1.0, "CLF", 10_000),  # no rate: one unit per dollar, four places
    (0.0, "USD", 0),
])
def test_minor_units(usd: float, currency: str, units: int) -> None:
    result = money.minor_units(usd, currency)
    assert isinstance(result, int)
    assert result == units


def test_minor_units_of_a_non_currency_raises() -> None:
    with pytest.raises(KeyError):
        money.minor_units(1.0, "XYZ")


def test_every_rate_is_for_a_currency() -> None:
    assert all(money.is_currency(code) for code in money.UNITS_PER_USD)


def test_every_generated_currency_has_a_rate() -> None:
    # Without a rate a generated amount would be scaled one unit per dollar.
    for currency in set(generator.COUNTRIES.values()):
        assert money.is_currency(currency)
        assert currency in money.UNITS_PER_USD
