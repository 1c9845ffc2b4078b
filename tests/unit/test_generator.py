"""The payment generator: seeded, repeatable; normal cards pass, spoiled ones get their reason."""

from __future__ import annotations

from collections import Counter
from datetime import UTC, datetime

import pytest

from paysim.domain import cards, decisions
from paysim.load import generator
from paysim.load.generator import CARD_CHECKS, COUNTRIES, GeneratedPayment, Mix, PaymentStream

SEED = 1234
MAX_USD = 10_000.0
MIX_COUNT = 20_000


def fields(payment: GeneratedPayment) -> tuple[object, ...]:
    card = payment.card
    return (payment.seq, card.number, card.exp_month, card.exp_year, card.cvv, payment.amount,
            payment.currency, payment.merchant.id, payment.merchant.name, payment.merchant.mcc,
            payment.merchant.country, payment.expected)


def verdict(payment: GeneratedPayment, now: datetime, max_usd: float = MAX_USD) -> str | None:
    return decisions.check_card(payment.card, payment.amount, payment.currency, now,
                                max_usd).reason


@pytest.fixture(scope="module")
def population() -> generator.Population:
    return generator.build_population(SEED)


@pytest.fixture(scope="module")
def mixed(population: generator.Population) -> list[GeneratedPayment]:
    stream = PaymentStream(population, SEED, Mix(bad_card_share=0.5, test_card_share=0.3),
                           max_amount_usd=MAX_USD)
    return stream.take(MIX_COUNT)


@pytest.fixture
def now() -> datetime:
    return datetime.now(UTC)


# ---------------------------------------------------------------------------- repeatability


def test_same_seed_same_population(population: generator.Population) -> None:
    again = generator.build_population(SEED)
    assert again.cardholders == population.cardholders
    assert again.merchants == population.merchants
    assert again.typical_usd == population.typical_usd
    assert len(population.cardholders) == 2000
    assert len(population.merchants) == 300


def test_same_seed_same_payments(population: generator.Population) -> None:
    first = PaymentStream(population, SEED).take(500)
    second = PaymentStream(generator.build_population(SEED), SEED).take(500)
    assert [fields(p) for p in first] == [fields(p) for p in second]
    assert [p.seq for p in first] == list(range(500))


def test_iterating_gives_the_same_sequence_as_take(population: generator.Population) -> None:
    taken = PaymentStream(population, SEED).take(300)
    iterated = iter(PaymentStream(population, SEED))
    assert [fields(next(iterated)) for _ in range(300)] == [fields(p) for p in taken]


def test_different_seeds_differ() -> None:
    one = generator.build_population(1, generator.PopulationSpec(cardholders=200, merchants=50))
    two = generator.build_population(2, generator.PopulationSpec(cardholders=200, merchants=50))
    assert [h.card.number for h in one.cardholders] != [h.card.number for h in two.cardholders]
    assert [h.name for h in one.cardholders] != [h.name for h in two.cardholders]
    assert [m.name for m in one.merchants] != [m.name for m in two.merchants]


def test_different_stream_seeds_differ(population: generator.Population) -> None:
    one = [fields(p) for p in PaymentStream(population, 1).take(300)]
    two = [fields(p) for p in PaymentStream(population, 2).take(300)]
    assert one != two
    assert sum(a != b for a, b in zip(one, two, strict=True)) > 250


def test_population_sizes_are_honoured() -> None:
    small = generator.build_population(5, generator.PopulationSpec(cardholders=17, merchants=3))
    assert len(small.cardholders) == 17
    assert len(small.merchants) == 3
    assert set(small.typical_usd) == {m.id for m in small.merchants}


# ---------------------------------------------------------------------------- normal cards


def test_every_population_card_passes_the_card_checks(population: generator.Population,
                                                      now: datetime) -> None:
    for holder in population.cardholders:
        check = decisions.check_card(holder.card, 1_000, "USD", now, MAX_USD)
        assert check.reason is None, holder.card


def test_cardholder_network_matches_the_card_number(population: generator.Population) -> None:
    wrong = [(h.network, cards.network(h.card.number), h.card.number)
             for h in population.cardholders if h.network != cards.network(h.card.number)]
    assert wrong == []


def test_population_merchants_are_valid(population: generator.Population) -> None:
    for merchant in population.merchants:
        assert merchant.country in COUNTRIES
        assert merchant.mcc in generator.MCCS
        assert 1 <= len(merchant.name) <= 60
        assert population.typical_usd[merchant.id] == generator.MCCS[merchant.mcc][1]
    assert len({m.id for m in population.merchants}) == len(population.merchants)


def test_every_normal_payment_passes_the_card_checks(mixed: list[GeneratedPayment],
                                                     now: datetime) -> None:
    normal = [p for p in mixed if p.expected is None]
    assert len(normal) > 1000
    assert all(verdict(p, now) is None for p in normal)


def test_normal_payment_amounts_and_currencies(population: generator.Population) -> None:
    payments = PaymentStream(population, SEED, Mix(0.0, 0.0), max_amount_usd=MAX_USD).take(3000)
    for payment in payments:
        assert type(payment.amount) is int
        assert payment.amount > 0
        assert payment.currency == COUNTRIES[payment.merchant.country]
    # Well under the maximum in every currency, and more than one currency shows up.
    assert len({p.currency for p in payments}) >= 8


# ---------------------------------------------------------------------------- spoiled payments


def test_every_spoiled_payment_gets_its_card_check_reason(mixed: list[GeneratedPayment],
                                                          now: datetime) -> None:
    spoiled = [p for p in mixed if p.expected in CARD_CHECKS]
    assert {p.expected for p in spoiled} == set(CARD_CHECKS)
    wrong = [(p.seq, p.expected, verdict(p, now)) for p in spoiled if verdict(p, now) != p.expected]
    assert wrong == []


def test_spoiled_amounts_include_zero_negative_and_too_much(mixed: list[GeneratedPayment]) -> None:
    amounts = [p.amount for p in mixed if p.expected == "13"]
    assert any(a == 0 for a in amounts)
    assert any(a < 0 for a in amounts)
    assert any(a > 0 for a in amounts)


def test_spoiled_currency_is_not_a_currency(mixed: list[GeneratedPayment]) -> None:
    for payment in mixed:
        if payment.expected == "12":
            assert payment.currency in generator.NOT_CURRENCIES
            assert payment.amount > 0


def test_test_card_payments_use_the_documented_numbers(mixed: list[GeneratedPayment],
                                                       now: datetime) -> None:
    by_test_card = [p for p in mixed if p.expected in set(decisions.TEST_CARDS.values())]
    assert {p.expected for p in by_test_card} == set(decisions.TEST_CARDS.values())
    for payment in by_test_card:
        assert decisions.TEST_CARDS.get(payment.card.number) == payment.expected
        # A test card passes the card checks: its answer comes from the issuer.
        assert verdict(payment, now) is None


def test_normal_payments_never_use_a_test_card(mixed: list[GeneratedPayment]) -> None:
    assert not any(p.card.number in decisions.TEST_CARDS for p in mixed if p.expected is None)


def test_observed_shares_match_the_mix(mixed: list[GeneratedPayment]) -> None:
    counts = Counter(p.expected for p in mixed)
    bad = sum(counts[code] for code in CARD_CHECKS)
    test = sum(counts[code] for code in decisions.TEST_CARDS.values())
    assert abs(bad / MIX_COUNT - 0.5) < 0.02
    assert abs(test / MIX_COUNT - 0.3) < 0.02
    assert abs(counts[None] / MIX_COUNT - 0.2) < 0.02
    for code, share in Mix(0.5, 0.3).targets():
        assert abs(counts[code] / MIX_COUNT - share) < 0.02, code


def test_mix_targets_split_evenly() -> None:
    targets = dict(Mix(0.5, 0.3).targets())
    assert set(targets) == set(CARD_CHECKS) | set(decisions.TEST_CARDS.values())
    for code in CARD_CHECKS:
        assert targets[code] == pytest.approx(0.1)
    for code in decisions.TEST_CARDS.values():
        assert targets[code] == pytest.approx(0.05)
    assert sum(dict(Mix().targets()).values()) == pytest.approx(0.08)


def test_no_mix_no_spoiled_payments(population: generator.Population) -> None:
    payments = PaymentStream(population, SEED, Mix(0.0, 0.0)).take(5000)
    assert all(p.expected is None for p in payments)
