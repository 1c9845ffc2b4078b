"""Fake card payments: a Faker-made population once per run, then a fast seeded stream.

Faker builds the cardholders and merchants (one Faker call per payment would cap the stream
at a few thousand a second); each payment is then drawn from that population with a seeded
``random.Random``, so the same seed gives the same payments. A configurable share of payments
carries a bad card (one per card check) or a documented test card, and each payment records
the reason it was built to get (``expected``), so a run can be checked against its mix.
"""

from __future__ import annotations

import math
import random
from collections.abc import Iterator
from dataclasses import dataclass, field
from datetime import UTC, datetime

import msgspec
from faker import Faker
from msgspec.structs import replace

from paysim.domain import cards, decisions, money
from paysim.domain.messages import Merchant

# Merchant category codes (ISO 18245) with a typical ticket in US dollars.
MCCS: dict[str, tuple[str, float]] = {
    "5411": ("grocery", 45.0), "5812": ("restaurant", 38.0), "5814": ("fast food", 12.0),
    "5541": ("fuel", 55.0), "5732": ("electronics", 240.0), "5912": ("pharmacy", 25.0),
    "4111": ("transit", 6.0), "7011": ("hotel", 320.0), "5942": ("books", 22.0),
    "4814": ("telecom", 60.0), "5999": ("retail", 35.0), "5311": ("department store", 90.0),
}
# Merchant countries with the currency they charge in.
COUNTRIES: dict[str, str] = {
    "US": "USD", "GB": "GBP", "DE": "EUR", "FR": "EUR", "ES": "EUR", "NL": "EUR",
    "JP": "JPY", "CA": "CAD", "AU": "AUD", "CH": "CHF", "SE": "SEK", "BH": "BHD",
    "KW": "KWD", "BR": "BRL", "IN": "INR", "SG": "SGD",
}
COUNTRY_WEIGHTS = [30, 10, 8, 6, 4, 3, 8, 6, 4, 3, 2, 2, 1, 4, 5, 4]
# Network: (share of cards, BIN prefixes, length).
NETWORKS: dict[str, tuple[float, tuple[str, ...], int]] = {
    "visa": (0.45, ("4",), 16),
    "mastercard": (0.30, ("51", "53", "55", "2221", "2720"), 16),
    "amex": (0.08, ("34", "37"), 15),
    "discover": (0.06, ("6011", "65"), 16),
    "jcb": (0.05, ("3528", "3589"), 16),
    # Not 622126-622925: that block inside UnionPay's 62 is Discover's.
    "unionpay": (0.06, ("621", "623", "624", "625", "626", "628"), 16),
}
CARD_CHECKS = ("14", "54", "N7", "13", "12")
NOT_CURRENCIES = ("XYZ", "ABC", "QQQ", "ZZZ")


@dataclass(frozen=True)
class Mix:
    """Shares of payments built to be declined: by a card check, or by a test card."""

    bad_card_share: float = 0.05  # split evenly over the five card checks
    test_card_share: float = 0.03  # split evenly over the documented test cards

    def targets(self) -> list[tuple[str, float]]:
        """(reason, share) for each injected reason."""
        per_check = self.bad_card_share / len(CARD_CHECKS)
        per_card = self.test_card_share / len(decisions.TEST_CARDS)
        return ([(code, per_check) for code in CARD_CHECKS]
                + [(code, per_card) for code in decisions.TEST_CARDS.values()])


@dataclass(frozen=True)
class PopulationSpec:
    """Who pays where: sizes, country and network weights, and a scale on ticket sizes."""

    cardholders: int = 2000
    merchants: int = 300
    countries: tuple[tuple[str, float], ...] = tuple(zip(COUNTRIES, COUNTRY_WEIGHTS,
                                                         strict=True))
    networks: tuple[tuple[str, float], ...] = tuple((n, v[0]) for n, v in NETWORKS.items())
    amount_scale: float = 1.0


@dataclass(frozen=True)
class Cardholder:
    name: str
    card: cards.CardBlock
    network: str


class GeneratedPayment(msgspec.Struct, frozen=True):
    """A fake payment as drawn (a Struct, not a dataclass: a frozen dataclass's construction
    cost the sender ten times as much, once per payment)."""

    seq: int
    card: cards.CardBlock
    amount: int
    currency: str
    merchant: Merchant
    expected: str | None  # the reason code this payment was built to get; None: a normal one


@dataclass
class Population:
    cardholders: list[Cardholder]
    merchants: list[Merchant]
    typical_usd: dict[str, float] = field(default_factory=dict)  # merchant id -> typical ticket


def make_pan(rng: random.Random, prefixes: tuple[str, ...], length: int) -> str:
    prefix = rng.choice(prefixes)
    body = prefix + "".join(rng.choice("0123456789") for _ in range(length - len(prefix) - 1))
    return cards.luhn_complete(body)


def build_population(seed: int, spec: PopulationSpec | None = None) -> Population:
    spec = spec or PopulationSpec()
    faker = Faker()
    faker.seed_instance(seed)
    rng = random.Random(seed)
    names = [name for name, _ in spec.networks]
    weights = [weight for _, weight in spec.networks]
    this_year = datetime.now(UTC).year
    holders = []
    for _ in range(spec.cardholders):
        network = rng.choices(names, weights)[0]
        _, prefixes, length = NETWORKS[network]
        card = cards.CardBlock(
            number=make_pan(rng, prefixes, length), exp_month=rng.randint(1, 12),
            exp_year=this_year + rng.randint(1, 5),
            cvv="".join(rng.choice("0123456789") for _ in range(cards.cvv_length(network))),
        )
        holders.append(Cardholder(faker.name(), card, network))
    shops, typical = [], {}
    countries = [country for country, _ in spec.countries]
    country_weights = [weight for _, weight in spec.countries]
    for index in range(spec.merchants):
        mcc = rng.choice(list(MCCS))
        merchant = Merchant(id=f"m{index:05d}", name=faker.company()[:60], mcc=mcc,
                            country=rng.choices(countries, country_weights)[0])
        shops.append(merchant)
        typical[merchant.id] = MCCS[mcc][1] * spec.amount_scale
    return Population(holders, shops, typical)


def with_fields(card: cards.CardBlock, **changes: object) -> cards.CardBlock:
    return msgspec.structs.replace(card, **changes)


class PaymentStream:
    """Payments drawn from a population: the same seed, the same sequence."""

    def __init__(self, population: Population, seed: int, mix: Mix | None = None,
                 max_amount_usd: float = 10_000.0) -> None:
        self.population = population
        self.rng = random.Random(seed ^ 0x5EED)
        self.mix = mix or Mix()
        self.max_amount_usd = max_amount_usd
        self._targets = self.mix.targets()
        # A draw at or above every target's share together is a normal payment: the loop
        # over the targets in next() is left out for it (with a margin far above the float
        # error of the loop's subtractions, so that the same draw decides the same way).
        self._normal_from = sum(share for _, share in self._targets) + 1e-9
        self._reason_of_test_card = {code: pan for pan, code in decisions.TEST_CARDS.items()}
        self._seq = 0

    def __iter__(self) -> Iterator[GeneratedPayment]:
        while True:
            yield self.next()

    def take(self, count: int) -> list[GeneratedPayment]:
        """The next ``count`` payments; numbering goes on from the previous call."""
        return [self.next() for _ in range(count)]

    def next(self) -> GeneratedPayment:
        rng = self.rng
        seq, self._seq = self._seq, self._seq + 1
        holder = rng.choice(self.population.cardholders)
        merchant = rng.choice(self.population.merchants)
        currency = COUNTRIES[merchant.country]
        # Log-normal around the merchant's typical ticket, clipped well under the maximum.
        usd = min(self.population.typical_usd[merchant.id] * math.exp(rng.gauss(0, 0.7)),
                  self.max_amount_usd / 4)
        payment = GeneratedPayment(seq, holder.card, max(1, money.minor_units(usd, currency)),
                                   currency, merchant, None)
        draw = rng.random()
        if draw >= self._normal_from:
            return payment
        for reason, share in self._targets:
            if draw < share:
                return self._spoil(payment, reason, holder.network)
            draw -= share
        return payment

    def _spoil(self, payment: GeneratedPayment, reason: str, network: str) -> GeneratedPayment:
        """The payment changed in exactly one way so that it gets ``reason``."""
        rng, card = self.rng, payment.card
        if reason == "14":
            last = card.number[-1]
            wrong = rng.choice([d for d in "0123456789" if d != last])
            return replace(payment, card=with_fields(card, number=card.number[:-1] + wrong),
                           expected=reason)
        if reason == "54":
            past = datetime.now(UTC).year - rng.randint(1, 3)
            return replace(payment, card=with_fields(card, exp_year=past), expected=reason)
        if reason == "N7":
            wrong_length = cards.cvv_length(network) + rng.choice((-1, 1))
            cvv = "".join(rng.choice("0123456789") for _ in range(wrong_length))
            return replace(payment, card=with_fields(card, cvv=cvv), expected=reason)
        if reason == "13":
            too_much = money.minor_units(self.max_amount_usd * 2, payment.currency)
            return replace(payment, amount=rng.choice((0, -payment.amount, too_much)),
                           expected=reason)
        if reason == "12":
            return replace(payment, currency=rng.choice(NOT_CURRENCIES), expected=reason)
        pan = self._reason_of_test_card[reason]
        test_card = cards.CardBlock(pan, card.exp_month, card.exp_year, "123")
        return replace(payment, card=test_card, expected=reason)
