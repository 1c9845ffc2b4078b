"""The authorizer's card checks (reason-code table order) and the issuer's rules."""

from __future__ import annotations

from datetime import UTC, datetime

import pytest

from paysim.domain import cards, decisions, money
from paysim.domain.cards import CardBlock
from paysim.domain.decisions import IssuerRates, card_profile, check_card, draw, issuer_precheck

NOW_US = 1_800_000_000_000_000  # Unix microseconds; no outage is open then

NOW = datetime(2026, 6, 15, 12, 0, tzinfo=UTC)
MAX_USD = 10_000.0
VISA = CardBlock("4242424242424242", 12, 2030, "123")
AMEX = CardBlock("378282246310005", 12, 2030, "1234")


def check(card: CardBlock = VISA, amount: int = 1_000, currency: str = "USD",
          max_usd: float = MAX_USD) -> str | None:
    return check_card(card, amount, currency, NOW, max_usd).reason


def replace(card: CardBlock, **changes: object) -> CardBlock:
    fields = {"number": card.number, "exp_month": card.exp_month, "exp_year": card.exp_year,
              "cvv": card.cvv}
    fields.update(changes)
    return CardBlock(**fields)


# ---------------------------------------------------------------------------- good cards


@pytest.mark.parametrize(("card", "network"), [
    (VISA, "visa"), (AMEX, "amex"),
    (CardBlock("5555555555554444", 1, 27, "000"), "mastercard"),
    (CardBlock("6011111111111117", 6, 2026, "999"), "discover"),
])
def test_a_good_card_passes(card: CardBlock, network: str) -> None:
    verdict = check_card(card, 1_000, "USD", NOW, MAX_USD)
    assert verdict.reason is None
    assert verdict.accepted
    assert verdict.network == network


# ---------------------------------------------------------------------------- 14


@pytest.mark.parametrize("number", [
    "4242424242424241",  # bad Luhn
    cards.luhn_complete("4242424242"),  # 11 digits, Luhn-valid
    cards.luhn_complete("4" * 19),  # 20 digits, Luhn-valid
    "4242 4242 4242 4242",
    "4242-4242-4242-4242",
    "424242424242424x",
    "",
])
def test_bad_card_number_is_14(number: str) -> None:
    verdict = check_card(replace(VISA, number=number), 1_000, "USD", NOW, MAX_USD)
    assert verdict.reason == "14"
    assert not verdict.accepted


def test_non_digit_number_has_unknown_network() -> None:
    verdict = check_card(replace(VISA, number="4242 4242 4242 4242"), 1_000, "USD", NOW, MAX_USD)
    assert verdict.network == "unknown"


@pytest.mark.parametrize("number", ["4242\u00b242424242424", "\u0664\u0662" * 8],
                         ids=["superscript-two", "arabic-indic"])
def test_non_ascii_digits_are_14(number: str) -> None:
    # Both are str.isdigit(); the first makes check_card raise ValueError, the second passes.
    assert check(replace(VISA, number=number)) == "14"


# ---------------------------------------------------------------------------- 54


@pytest.mark.parametrize(("month", "year"), [(5, 2026), (12, 2025), (5, 26), (0, 2030),
                                             (13, 2030)])
def test_expired_card_is_54(month: int, year: int) -> None:
    assert check(replace(VISA, exp_month=month, exp_year=year)) == "54"


def test_card_expiring_this_month_passes() -> None:
    assert check(replace(VISA, exp_month=6, exp_year=2026)) is None


# ---------------------------------------------------------------------------- N7


@pytest.mark.parametrize(("card", "cvv"), [
    (VISA, "1234"), (VISA, "12"), (VISA, "12a"), (VISA, ""),
    (AMEX, "123"), (AMEX, "12345"), (AMEX, "12a4"),
])
def test_bad_cvv_is_n7(card: CardBlock, cvv: str) -> None:
    assert check(replace(card, cvv=cvv)) == "N7"


# ---------------------------------------------------------------------------- 13


@pytest.mark.parametrize("amount", [0, -1, -1_000])
def test_non_positive_amount_is_13(amount: int) -> None:
    assert check(amount=amount) == "13"


@pytest.mark.parametrize(("currency", "maximum"), [
    ("USD", 1_000_000),  # 10,000.00 USD in cents
    ("JPY", 1_500_000),  # 10,000 USD at 150 JPY, no minor unit
    ("BHD", 3_760_000),  # 3,760.000 BHD in fils
    ("EUR", 920_000),
])
def test_maximum_is_converted_per_currency(currency: str, maximum: int) -> None:
    assert money.minor_units(MAX_USD, currency) == maximum
    assert check(amount=maximum, currency=currency) is None
    assert check(amount=maximum + 1, currency=currency) == "13"


def test_same_figure_is_too_much_in_usd_but_fine_in_jpy() -> None:
    assert check(amount=1_200_000, currency="USD") == "13"
    assert check(amount=1_200_000, currency="JPY") is None


def test_maximum_follows_the_setting() -> None:
    assert check(amount=10_001, currency="USD", max_usd=100.0) == "13"
    assert check(amount=10_000, currency="USD", max_usd=100.0) is None


# ---------------------------------------------------------------------------- 12


@pytest.mark.parametrize("currency", ["XYZ", "usd", "XAU", "XXX", "", "US"])
def test_unknown_currency_is_12(currency: str) -> None:
    assert check(currency=currency) == "12"


# ---------------------------------------------------------------------------- order


@pytest.mark.parametrize(("card", "amount", "currency", "expected"), [
    # 14 before 54, N7, 13, 12
    (CardBlock("4242424242424241", 1, 2020, "1"), 0, "XYZ", "14"),
    (CardBlock("4242424242424241", 12, 2030, "123"), 1_000, "XYZ", "14"),
    # 54 before N7, 13, 12
    (CardBlock("4242424242424242", 1, 2020, "1"), 0, "XYZ", "54"),
    (CardBlock("4242424242424242", 1, 2020, "123"), 1_000, "XYZ", "54"),
    # N7 before 13, 12
    (CardBlock("4242424242424242", 12, 2030, "1"), 0, "USD", "N7"),
    (CardBlock("4242424242424242", 12, 2030, "1"), 1_000, "XYZ", "N7"),
    # 13 before 12
    (VISA, 0, "XYZ", "13"),
    (VISA, -5, "XYZ", "13"),
])
def test_first_failing_check_in_table_order_decides(card: CardBlock, amount: int,
                                                    currency: str, expected: str) -> None:
    assert check(card, amount, currency) == expected


def test_every_reason_has_a_text() -> None:
    for code in ("00", "05", "12", "13", "14", "41", "43", "51", "54", "61", "91", "96", "N7"):
        assert decisions.reason_text(code) != "unknown reason"
    assert decisions.reason_text("ZZ") == "unknown reason"


# ---------------------------------------------------------------------------- test cards


def test_test_cards_are_good_visa_numbers() -> None:
    for pan in decisions.TEST_CARDS:
        verdict = check_card(replace(VISA, number=pan), 1_000, "USD", NOW, MAX_USD)
        assert verdict.reason is None, pan
        assert verdict.network == "visa"


# ---------------------------------------------------------------------------- issuer precheck

NO_RATES = IssuerRates()


@pytest.mark.parametrize(("pan", "code"), list(decisions.TEST_CARDS.items()))
def test_precheck_for_each_test_card(pan: str, code: str) -> None:
    forced = decisions.TEST_CARDS[pan]
    answer = issuer_precheck(forced, NO_RATES, NOW_US, "payment-1")
    if code in decisions.FORCED_BY_ISSUER:
        assert answer == code
    else:  # 51 and 61 come from the ledger, not the precheck
        assert code in ("51", "61")
        assert answer is None


@pytest.mark.parametrize("forced", sorted(decisions.FORCED_BY_ISSUER))
def test_forced_answer_beats_the_rates(forced: str) -> None:
    every = IssuerRates(decline_rate=1.0, fault_rate=1.0)
    assert issuer_precheck(forced, every, NOW_US, "p") == forced


def test_zero_rates_never_answer() -> None:
    answers = [issuer_precheck(None, NO_RATES, NOW_US, f"payment-{i}") for i in range(2_000)]
    assert set(answers) == {None}


def test_rate_one_always_answers() -> None:
    ids = [f"payment-{i}" for i in range(500)]
    assert {issuer_precheck(None, IssuerRates(fault_rate=1.0), NOW_US, i) for i in ids} == {"91"}
    assert {issuer_precheck(None, IssuerRates(decline_rate=1.0), NOW_US, i) for i in ids} == {"05"}
    # The fault is drawn first.
    both = IssuerRates(decline_rate=1.0, fault_rate=1.0)
    assert {issuer_precheck(None, both, NOW_US, i) for i in ids} == {"91"}


def test_rates_in_between_answer_about_that_share() -> None:
    rates = IssuerRates(decline_rate=0.3)
    answers = [issuer_precheck(None, rates, NOW_US, f"payment-{i}") for i in range(10_000)]
    assert set(answers) == {None, "05"}
    assert 0.27 < answers.count("05") / len(answers) < 0.33


def test_precheck_is_deterministic_per_identity() -> None:
    rates = IssuerRates(decline_rate=0.5, fault_rate=0.2)
    first = [issuer_precheck(None, rates, NOW_US, "run", i) for i in range(300)]
    again = [issuer_precheck(None, rates, NOW_US, "run", i) for i in range(300)]
    assert first == again
    assert len(set(first)) == 3


def test_draw_is_deterministic_and_in_unit_interval() -> None:
    values = [draw("x", i) for i in range(1_000)]
    assert values == [draw("x", i) for i in range(1_000)]
    assert all(0.0 <= v < 1.0 for v in values)
    assert len(set(values)) == len(values)
    assert draw("fault", "p1") != draw("decline", "p1")
    assert draw("a", 1) != draw("a", 2)


# ---------------------------------------------------------------------------- card profiles


def test_profile_forced_51_has_no_credit() -> None:
    profile = card_profile("tok_x", "51")
    assert profile.credit_limit_usd == 0.0
    assert profile.daily_limit_usd > 1e6


def test_profile_forced_61_has_no_daily_allowance() -> None:
    profile = card_profile("tok_x", "61")
    assert profile.daily_limit_usd == 0.0
    assert profile.credit_limit_usd > 1e6


def test_regular_profiles_are_deterministic_per_token() -> None:
    tokens = [f"tok_{i:032x}" for i in range(200)]
    profiles = [card_profile(t, None) for t in tokens]
    assert profiles == [card_profile(t, None) for t in tokens]
    assert len({p.credit_limit_usd for p in profiles}) > 100
    for profile in profiles:
        assert 5_000 <= profile.credit_limit_usd <= 50_000
        assert profile.daily_limit_usd == profile.credit_limit_usd * 0.5


@pytest.mark.parametrize("forced", [None, "05", "41", "43", "96"])
def test_other_forced_reasons_get_the_regular_profile(forced: str | None) -> None:
    assert card_profile("tok_abc", forced) == card_profile("tok_abc", None)


def test_an_open_outage_answers_91_and_a_closed_one_does_not() -> None:
    rates = IssuerRates(outages=((NOW_US, NOW_US + 1_000_000),))
    assert issuer_precheck(None, rates, NOW_US, "p") == "91"
    assert issuer_precheck(None, rates, NOW_US + 999_999, "p") == "91"
    assert issuer_precheck(None, rates, NOW_US + 1_000_000, "p") is None
    assert issuer_precheck(None, rates, NOW_US - 1, "p") is None
    assert issuer_precheck("41", rates, NOW_US, "p") == "41"  # a test card's answer comes first
