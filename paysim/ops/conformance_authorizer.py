"""The authorizer's golden cases for `paysim conformance authorizer` (pure).

Per record on the requested topic, with the card sealed as the edge seals it (AES-256-GCM
under the card key, the payment id as associated data): a card that passes every check goes
on as a PaymentAuthorized on the authorized topic, keyed by its token (HMAC-SHA256 under the
token key), with the PAN masked and no CVV; a card that fails one is declined for good, a
PaymentOutcome on the results topic keyed by the payment id and `payment_result_<id>` =
declined. docs/conformance.md has the contract in full.
"""

from __future__ import annotations

import uuid
from dataclasses import dataclass
from typing import TypeVar

import msgspec

from paysim.domain import cards, decisions
from paysim.domain.decisions import Status
from paysim.domain.messages import (
    AUTHORIZED,
    REQUESTED,
    Codec,
    PaymentAuthorized,
    PaymentOutcome,
    PaymentRequested,
    SchemaError,
    encode,
)
from paysim.infra.secrets import Keys
from paysim.ops.conformance_cases import (
    CURRENCY,
    MERCHANT,
    Case,
    Expectation,
    Observed,
    Output,
    Send,
    Suite,
    first_problem,
    poison_case,
    records,
    seed_key_problems,
)
from paysim.pipeline.store import result_key

GOOD_EXPIRY = (12, 2099)
# One card per network the BIN ranges name (docs/conformance.md), and one they do not.
NETWORK_CARDS = {
    "visa": "4242424242424242", "mastercard": "5555555555554444", "amex": "378282246310005",
    "discover": "6011111111111117", "jcb": "3530111333300000", "diners": "36227206271667",
    "unionpay": "6200000000000005", "unknown": "9999999999999995",
}
VISA = NETWORK_CARDS["visa"]
AMEX = NETWORK_CARDS["amex"]
# What the authorizer copies from the request onto what it writes.
ECHOED = ("payment_id", "run_id", "seq", "amount", "currency", "merchant", "callback_url",
          "capture", "partial_approval")

_authorized = Codec(PaymentAuthorized)
_outcomes = Codec(PaymentOutcome)
R = TypeVar("R", PaymentAuthorized, PaymentOutcome)


def _stages_problem(stages: dict[str, int], sent: PaymentRequested) -> str | None:
    if AUTHORIZED not in stages or any(stages.get(stage) != at
                                       for stage, at in sent.stages.items()):
        return "stages: the input's kept and 'authorized' added"
    return None


def _decoded(codec: Codec[R], where: str, output: Output, pan: str) -> R | str:
    """The record ``output`` holds, or what is wrong with it: the card number or a CVV in
    it (anywhere: an unknown field too), or not its schema."""
    if pan.encode() in output.value or b'"cvv"' in output.value:
        return f"{where} carries the card number or CVV"
    try:
        return codec.decode(output.value)
    except SchemaError as exc:
        return f"{where}: {exc}"


def _written_problem(where: str, output: Output, record: PaymentAuthorized | PaymentOutcome,
                     sent: PaymentRequested, key: str, key_name: str) -> str | None:
    """What the authorizer must write on either topic: the request's fields as they came,
    its stages with 'authorized' added, under the right key."""
    changed = [name for name in ECHOED if getattr(record, name) != getattr(sent, name)]
    if changed:
        return f"{where}: changed {', '.join(changed)}"
    problem = _stages_problem(record.stages, sent)
    if problem:
        return f"{where}: {problem}"
    if output.key != key.encode():
        return f"{where} not keyed by {key_name}"
    return None


@dataclass(frozen=True)
class PassedOn(Expectation):
    """The card passed every check: on to the issuer, tokenised and masked."""

    token: str
    masked_pan: str
    network: str
    exp_month: int
    exp_year: int
    test_reason: str | None
    pan: str  # to check that it appears nowhere in the record
    code: str = "passed on"
    roles: tuple[str, ...] = ("authorized",)  # its results record is the processor's

    def judge(self, payment_id: str, sent: bytes, observed: Observed) -> tuple[list[str], str]:
        outputs = observed.outputs(payment_id, "authorized")
        problems = []
        if not outputs:
            problems.append(f"no authorized record for payment {payment_id}")
        request = msgspec.json.decode(sent, type=PaymentRequested)
        problems += first_problem(outputs, lambda output: self._check(output, request))
        # No seed key to check: the issuer (the processor) writes it for this payment.
        test = f", test_reason {self.test_reason}" if self.test_reason else ""
        return problems, f"{self.network}{test}: {records(outputs)}"

    def _check(self, output: Output, sent: PaymentRequested) -> str | None:
        where = f"authorized record at {output.partition}/{output.offset}"
        record = _decoded(_authorized, where, output, self.pan)
        if isinstance(record, str):
            return record
        got = (record.token, record.masked_pan, record.network, record.exp_month,
               record.exp_year, record.test_reason)
        want = (self.token, self.masked_pan, self.network, self.exp_month, self.exp_year,
                self.test_reason)
        if got != want:
            return f"{where}: (token, masked_pan, network, expiry, test_reason) {got}, " \
                   f"expected {want}"
        return _written_problem(where, output, record, sent, self.token, "the card token")


@dataclass(frozen=True)
class DeclinedAtEdge(Expectation):
    """The card failed a check: declined for good, on the results topic and the seed key."""

    code: str
    masked_pan: str | None
    network: str
    pan: str  # to check that it appears nowhere in the record
    roles: tuple[str, ...] = ("authorized", "results")

    def judge(self, payment_id: str, sent: bytes, observed: Observed) -> tuple[list[str], str]:
        passed = observed.outputs(payment_id, "authorized")
        if passed:
            # Then its results record and seed key are the processor's: nothing to judge.
            return [f"passed on to the issuer ({records(passed)} on the authorized topic); "
                    f"expected declined {self.code}"], ""
        outputs = observed.outputs(payment_id, "results")
        problems = [] if outputs else [f"no results record for payment {payment_id}"]
        request = msgspec.json.decode(sent, type=PaymentRequested)
        problems += first_problem(outputs, lambda output: self._check(output, request))
        problems += seed_key_problems(payment_id, Status.DECLINED.value, observed)
        return problems, f"declined {self.code}: {records(outputs)}"

    def awaited_key(self, payment_id: str) -> str | None:
        return result_key(payment_id)

    def _check(self, output: Output, sent: PaymentRequested) -> str | None:
        where = f"results record at {output.partition}/{output.offset}"
        outcome = _decoded(_outcomes, where, output, self.pan)
        if isinstance(outcome, str):
            return outcome
        if (outcome.status, outcome.reason_code) != (Status.DECLINED, self.code):
            return (f"{where}: {outcome.status} {outcome.reason_code}, expected declined "
                    f"{self.code}")
        got = (outcome.approved_amount, outcome.token, outcome.masked_pan, outcome.network)
        want = (None, None, self.masked_pan, self.network)
        if got != want:
            return (f"{where}: (approved amount, token, masked_pan, network) {got}, "
                    f"expected {want}")
        return _written_problem(where, output, outcome, sent, sent.payment_id,
                                "the payment id")


class _Requests:
    """Builds the suite's requests: cards sealed under the card key, run and seq filled."""

    def __init__(self, run_id: str, keys: Keys) -> None:
        self.run_id = run_id
        self.keys = keys
        self.cipher = cards.CardCipher(keys.card_key)
        self.seq = 0

    def request(self, pan: str, *, cvv: str | None = None,
                expiry: tuple[int, int] = GOOD_EXPIRY, amount: int = 1_500,
                currency: str = CURRENCY, sealed_for: str | None = None,
                **fields: object) -> PaymentRequested:
        """A request for ``pan``; ``sealed_for``: the card bound to another payment id."""
        self.seq += 1
        payment_id = str(uuid.uuid4())
        card = cards.CardBlock(pan, expiry[0], expiry[1],
                               cvv or "1" * cards.cvv_length(cards.network(pan)))
        return PaymentRequested(
            payment_id=payment_id, run_id=self.run_id, seq=self.seq, amount=amount,
            currency=currency, merchant=MERCHANT, stages={REQUESTED: 1},
            card=self.cipher.encrypt(card, (sealed_for or payment_id).encode()),
            **fields)  # type: ignore[arg-type]

    def send(self, request: PaymentRequested, pan: str, *, aborted: bool = False) -> Send:
        """Keyed by the card token, as paysim's edge keys them."""
        return Send(cards.tokenize(pan, self.keys.token_key), encode(request),
                    request.payment_id, aborted)

    def passed_on(self, pan: str) -> PassedOn:
        return PassedOn(cards.tokenize(pan, self.keys.token_key), cards.mask(pan),
                        cards.network(pan), *GOOD_EXPIRY, decisions.TEST_CARDS.get(pan), pan)


def _declined(code: str, pan: str) -> DeclinedAtEdge:
    masked = cards.mask(pan) if cards.ascii_digits(pan) and len(pan) >= 12 else None
    return DeclinedAtEdge(code, masked, cards.network(pan), pan)


def authorizer_suite(run_id: str, keys: Keys | None, _webhooks: str | None = None) -> Suite:
    """Every check of the authorizer and its order, the networks, the test cards,
    redelivery, aborted input and poison records. ``keys``: the candidate's, which seal
    the cards (None is a caller's mistake: see conformance.candidate_keys)."""
    if keys is None:
        raise ValueError("the authorizer's cases seal cards: they need the candidate's keys")
    build = _Requests(run_id, keys)

    def many(name: str, rows: list[tuple[str, dict[str, object], Expectation]]) -> Case:
        case = Case(name, [])
        for pan, fields, expect in rows:
            request = build.request(pan, **fields)  # type: ignore[arg-type]
            case.sends.append(build.send(request, pan))
            case.expects[request.payment_id] = expect
        return case

    def one(name: str, pan: str, expect: Expectation, **fields: object) -> Case:
        return many(name, [(pan, fields, expect)])

    cases = [
        many("passed on: each card network from the BIN",
             [(pan, {}, build.passed_on(pan)) for pan in NETWORK_CARDS.values()]),
        many("passed on: the test cards with their test_reason",
             [(pan, {}, build.passed_on(pan)) for pan in decisions.TEST_CARDS]),
        one("14 invalid card number (Luhn)", "4242424242424241",
            _declined("14", "4242424242424241")),
        one("14 invalid card number (11 digits)", "42424242424", _declined("14", "42424242424")),
        one("54 expired card (last month's end passed)", VISA, _declined("54", VISA),
            expiry=(1, 2020)),
        one("54 expired card (month 13)", VISA, _declined("54", VISA), expiry=(13, 2099)),
        one("N7 CVV check failed (4 digits on a Visa)", VISA, _declined("N7", VISA),
            cvv="1234"),
        one("N7 CVV check failed (3 digits on an Amex)", AMEX, _declined("N7", AMEX),
            cvv="123"),
        one("12 invalid currency (ABC)", VISA, _declined("12", VISA), currency="ABC"),
        one("13 invalid amount (0)", VISA, _declined("13", VISA), amount=0),
        many("the first failing check decides (14, 54, N7, 13 in that order)", [
            ("4242424242424241", {"expiry": (1, 2020)}, _declined("14", "4242424242424241")),
            (VISA, {"expiry": (1, 2020), "cvv": "12"}, _declined("54", VISA)),
            (VISA, {"cvv": "12", "currency": "ABC"}, _declined("N7", VISA)),
            (VISA, {"currency": "ABC", "amount": 0}, _declined("13", VISA)),
        ]),
    ]
    twice = build.request(VISA)
    cases.append(Case("redelivered record: the same answer each time",
                      [build.send(twice, VISA), build.send(twice, VISA)],
                      {twice.payment_id: build.passed_on(VISA)}))
    pan = NETWORK_CARDS["mastercard"]
    aborted, follower = build.request(pan), build.request(pan)
    cases.append(Case("input of an aborted transaction is not read",
                      [build.send(aborted, pan, aborted=True), build.send(follower, pan)],
                      {aborted.payment_id: None, follower.payment_id: build.passed_on(pan)}))

    cases.append(poison_case("dead letter: not JSON", b"{this is not json"))
    for name, request in [
        ("schema version 2", msgspec.structs.replace(build.request(VISA), v=2)),
        ("card block sealed for another payment",
         build.request(VISA, sealed_for=str(uuid.uuid4()))),
        ("card block not base64", msgspec.structs.replace(build.request(VISA), card="%%%")),
        ("callback_url not http(s)", build.request(VISA, callback_url="ftp://127.0.0.1/x")),
        ("a card number in merchant.name", msgspec.structs.replace(
            build.request(VISA), merchant=msgspec.structs.replace(
                MERCHANT, name=f"Shop {NETWORK_CARDS['discover']}"))),
        # Every record about a payment echoes its amount and seq: one that reads as a card
        # number (13 to 19 digits passing Luhn) would carry it onward in clear.
        ("an amount that looks like a card number",
         msgspec.structs.replace(build.request(VISA), amount=int(VISA))),
        ("a seq that looks like a card number",
         msgspec.structs.replace(build.request(VISA), seq=int(AMEX))),
    ]:
        cases.append(poison_case(f"dead letter: {name}", encode(request), request.payment_id))
    missing = msgspec.json.decode(encode(build.request(VISA)))
    del missing["card"]
    cases.append(poison_case("dead letter: a field missing (card)", msgspec.json.encode(missing),
                             missing["payment_id"]))
    return Suite(run_id, cases, outputs=("authorized", "results"), withhold_original=True)
