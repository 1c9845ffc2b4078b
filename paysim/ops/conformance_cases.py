"""The golden cases of `paysim conformance` and the judgement of what a candidate did with
them (pure: the records to send, then verdicts over what was read back): the machinery every
suite shares, and the processor's suite (the authorizer's and the notifier's are in
conformance_authorizer.py and conformance_notifier.py).

The contract a candidate is held to is docs/conformance.md's. For the processor: per record
on the authorized topic, one decision (the same on every delivery) as a PaymentOutcome on the
results topic keyed by the card token and as `payment_result_<id>` in Redis. For every
service: a record it cannot take as a DeadLetter naming its partition and offset; every
output inside a committed transaction.
"""

from __future__ import annotations

import uuid
from abc import ABC, abstractmethod
from collections.abc import Callable
from dataclasses import dataclass, field

import msgspec

from paysim.domain import decisions, money
from paysim.domain.decisions import IssuerRates, Status
from paysim.domain.messages import (
    AUTHORIZED,
    PROCESSED,
    REQUESTED,
    CaptureMode,
    Codec,
    DeadLetter,
    Merchant,
    PaymentAuthorized,
    PaymentOutcome,
    SchemaError,
    encode,
)
from paysim.infra.secrets import Keys
from paysim.pipeline.store import result_key

MERCHANT = Merchant(id="conformance-shop", name="Conformance Shop", mcc="5999", country="US")
CURRENCY = "USD"  # the cases' limits follow from the card profile in US dollars


@dataclass(frozen=True)
class Send:
    """One record the conformance run produces onto the candidate's input topic."""

    key: str | None
    value: bytes
    payment_id: str | None = None  # None when the record has none to read back
    aborted: bool = False  # produced in a transaction that is then aborted


class Expectation(ABC):
    """What one payment must come to, and how to tell from what was read back."""

    code: str  # the reason code it holds the candidate to (the suites' coverage)
    roles: tuple[str, ...] = ("results",)  # the output topics it judges (topics.<role>)

    @abstractmethod
    def judge(self, payment_id: str, sent: bytes, observed: Observed) -> tuple[list[str], str]:
        """What is wrong (empty: nothing), and what was seen, for a case that passes."""

    def awaited_key(self, payment_id: str) -> str | None:
        """The Redis key this payment's output is awaited on once the candidate consumed
        everything (it may be written just after the commit); None: nothing to wait for."""
        return None

    # A webhook is awaited for the payment too (it is posted after the commit).
    awaits_webhook: bool = False


@dataclass(frozen=True)
class Expect(Expectation):
    """The processor's one decision for a payment: its results record and the seed's key."""

    status: str
    code: str
    approved_amount: int | None

    def judge(self, payment_id: str, sent: bytes, observed: Observed) -> tuple[list[str], str]:
        outputs = observed.outputs(payment_id, "results")
        if not outputs:
            return [f"no results record for payment {payment_id}"], ""
        payment = msgspec.json.decode(sent, type=PaymentAuthorized)
        problems = first_problem(outputs, lambda output: _check_outcome(output, payment, self))
        problems += seed_key_problems(payment_id, self.status, observed)
        amount = "" if self.approved_amount is None else f" ({self.approved_amount})"
        return problems, f"{self.status} {self.code}{amount}: {records(outputs)}"

    def awaited_key(self, payment_id: str) -> str | None:
        return result_key(payment_id)


def records(outputs: list[Output]) -> str:
    return f"{len(outputs)} record{'s' if len(outputs) > 1 else ''}"


def first_problem(outputs: list[Output],
                  check: Callable[[Output], str | None]) -> list[str]:
    """The first output's problem that ``check`` finds, as a list (empty: none)."""
    for output in outputs:
        problem = check(output)
        if problem:
            return [problem]
    return []


def seed_key_problems(payment_id: str, status: str, observed: Observed) -> list[str]:
    stored = observed.redis.get(payment_id)
    if stored != status:
        return [f"{result_key(payment_id)} is {stored!r}, expected {status!r}"]
    return []


@dataclass
class Case:
    """A golden case: its records, in order, and what each payment id must come to."""

    name: str
    sends: list[Send]
    # payment id -> what it must come to; None: no output at all (a dead letter, an
    # aborted input)
    expects: dict[str, Expectation | None] = field(default_factory=dict)
    dead_letters: int = 0  # how many of its records must come back as dead letters


@dataclass
class Sent:
    """Where a record landed: (partition, offset), filled in once Kafka acknowledged it."""

    send: Send
    partition: int = -1
    offset: int = -1


@dataclass(frozen=True)
class Output:
    """A record read back from an output or the dead-letter topic (read_committed)."""

    topic: str
    partition: int
    offset: int
    key: bytes | None
    value: bytes
    role: str  # the topic's setting (topics.<role>): "results", "authorized", "dlq", ...


@dataclass
class Observed:
    """What the candidate did, as read back after it consumed every case's records."""

    consumed: bool  # its group committed past every record sent
    consumed_detail: str
    results: dict[str, list[Output]]  # payment id -> its records on the output topics
    dead_letters: list[Output]
    redis: dict[str, str | None]  # payment id -> payment_result_<id>
    # (topic, partition) -> offsets holding data records (read_uncommitted) and the end
    data_offsets: dict[tuple[str, int], set[int]]
    ends: dict[tuple[str, int], int]
    # payment id -> its outcome hash (paysim:payment:<id>): field -> value, and its TTL
    outcomes: dict[str, tuple[dict[str, bytes], int]] = field(default_factory=dict)
    # payment id -> its entries on its run's stream (paysim:run:<run>:done), raw
    done: dict[str, list[bytes]] = field(default_factory=dict)
    # payment id -> the webhooks posted for it: (Stripe-Signature header, body)
    webhooks: dict[str, list[tuple[str | None, bytes]]] = field(default_factory=dict)

    def outputs(self, payment_id: str, role: str) -> list[Output]:
        """The payment's records on one output topic."""
        return [o for o in self.results.get(payment_id, []) if o.role == role]


@dataclass(frozen=True)
class Verdict:
    name: str
    passed: bool
    detail: str


@dataclass(frozen=True)
class Suite:
    """The cases, the run issuers they need (run id -> issuer behaviour), the topics the
    candidate writes (their settings, besides the dead-letter topic), and whether its dead
    letters must withhold the original record (the edge topic's may hold card data)."""

    run_id: str
    cases: list[Case]
    issuers: dict[str, IssuerRates] = field(default_factory=dict)
    outputs: tuple[str, ...] = ("results",)
    withhold_original: bool = False


    def roles_of(self, payment_id: str) -> tuple[str, ...]:
        """The output topics the candidate answers this payment on (all: no expectation)."""
        for case in self.cases:
            if payment_id in case.expects:
                expect = case.expects[payment_id]
                return self.outputs if expect is None else expect.roles
        return self.outputs


# run id, the keys the candidate shares with paysim (card, token and webhook keys), and the
# URL of the conformance run's webhook receiver -> the suite
# The keys are None for a suite outside conformance.KEYED_SUITES.
SuiteFactory = Callable[[str, Keys | None, str], Suite]


def new_token() -> str:
    return f"tok_conformance_{uuid.uuid4().hex}"


def daily_limit(token: str) -> int:
    """A fresh card's daily limit in US cents, from its profile (docs/conformance.md)."""
    return money.minor_units(decisions.card_profile(token, None).daily_limit_usd, CURRENCY)


def _payment(run_id: str, seq: int, token: str, amount: int, *, test_reason: str | None = None,
             partial: bool = False, capture: CaptureMode = CaptureMode.AUTOMATIC,
             currency: str = CURRENCY) -> PaymentAuthorized:
    return PaymentAuthorized(
        payment_id=str(uuid.uuid4()), run_id=run_id, seq=seq, amount=amount,
        currency=currency, merchant=MERCHANT, stages={REQUESTED: 1, AUTHORIZED: 2},
        capture=capture, partial_approval=partial, token=token,
        masked_pan="400000******0002", network="visa", exp_month=12, exp_year=2099,
        test_reason=test_reason)


def _send(payment: PaymentAuthorized, *, aborted: bool = False) -> Send:
    return Send(payment.token, encode(payment), payment.payment_id, aborted)


def _approved(amount: int, code: str = decisions.APPROVED) -> Expect:
    return Expect(Status.APPROVED.value, code, amount)


def _declined(code: str) -> Expect:
    return Expect(Status.DECLINED.value, code, None)


def _decision(name: str, payment: PaymentAuthorized, expect: Expect) -> Case:
    return Case(name, [_send(payment)], {payment.payment_id: expect})


def poison_case(name: str, value: bytes, payment_id: str | None = None,
                key: str | None = None) -> Case:
    """A record the candidate cannot take: one dead letter, and no other effect."""
    expects: dict[str, Expectation | None] = {payment_id: None} if payment_id else {}
    return Case(name, [Send(key or new_token(), value, payment_id)], expects, dead_letters=1)


def processor_suite(run_id: str, _keys: Keys | None = None,
                    _webhooks: str | None = None) -> Suite:
    """Every decision row of the processor, redelivery, aborted input and poison records."""
    seq = iter(range(1_000_000))
    faulty, declining = f"{run_id}-faulty", f"{run_id}-declining"

    def pay(token: str, amount: int, run: str = run_id, **kwargs) -> PaymentAuthorized:
        return _payment(run, next(seq), token, amount, **kwargs)

    cases = [
        _decision("00 approved", pay(new_token(), 1_250), _approved(1_250)),
        _decision("00 approved, manual capture",
                  pay(new_token(), 990, capture=CaptureMode.MANUAL), _approved(990)),
    ]
    for code in ("05", "41", "43", "96", "51", "61"):
        cases.append(_decision(f"{code} {decisions.reason_text(code)} (test card)",
                               pay(new_token(), 2_000, test_reason=code), _declined(code)))
    over = new_token()
    cases.append(_decision("61 over the card's daily limit (its profile)",
                           pay(over, daily_limit(over) + 1), _declined("61")))
    partial = new_token()
    cases.append(_decision("10 partial approval: the daily limit's worth",
                           pay(partial, daily_limit(partial) + 5_000, partial=True),
                           _approved(daily_limit(partial), decisions.PARTIALLY_APPROVED)))
    cases.append(_decision("51 partial approval with no funds",
                           pay(new_token(), 2_000, test_reason="51", partial=True),
                           _declined("51")))
    cases.append(_decision("91 issuer unavailable (the run's fault rate 1)",
                           pay(new_token(), 2_000, run=faulty), _declined("91")))
    cases.append(_decision("05 do not honour (the run's decline rate 1)",
                           pay(new_token(), 2_000, run=declining), _declined("05")))

    spender = new_token()
    share = daily_limit(spender) * 6 // 10
    first, second = pay(spender, share), pay(spender, share)
    cases.append(Case("daily spend adds up: 60% approved, 60% more 61",
                      [_send(first), _send(second)],
                      {first.payment_id: _approved(share),
                       second.payment_id: _declined("61")}))

    again = new_token()
    share = daily_limit(again) * 4 // 10
    twice, after = pay(again, share), pay(again, share)
    cases.append(Case("redelivered record: one decision, spent once",
                      [_send(twice), _send(twice), _send(after)],
                      {twice.payment_id: _approved(share), after.payment_id: _approved(share)}))
    # The one after it, on the same card (so the same partition), is consumed only once
    # the aborted one was stepped over: waiting for it is waiting for both.
    card = new_token()
    aborted, follower = pay(card, 1_000), pay(card, 1_100)
    cases.append(Case("input of an aborted transaction is not read",
                      [_send(aborted, aborted=True), _send(follower)],
                      {aborted.payment_id: None, follower.payment_id: _approved(1_100)}))

    cases.append(poison_case("dead letter: not JSON", b"{this is not json"))
    wrong_v = pay(new_token(), 1_000)
    cases.append(poison_case("dead letter: schema version 2",
                         encode(msgspec.structs.replace(wrong_v, v=2)), wrong_v.payment_id))
    missing = pay(new_token(), 1_000)
    fields = msgspec.json.decode(encode(missing))
    del fields["token"]
    cases.append(poison_case("dead letter: a field missing (token)", msgspec.json.encode(fields),
                         missing.payment_id))
    unknown = pay(new_token(), 1_000, currency="ABC")
    cases.append(poison_case("dead letter: unknown currency ABC", encode(unknown),
                         unknown.payment_id))
    zero = pay(new_token(), 0)
    cases.append(poison_case("dead letter: amount 0", encode(zero), zero.payment_id))
    issuers = {faulty: IssuerRates(fault_rate=1.0), declining: IssuerRates(decline_rate=1.0)}
    return Suite(run_id, cases, issuers, outputs=("results",))


_outcomes = Codec(PaymentOutcome)
_letters = Codec(DeadLetter)


def _check_outcome(output: Output, sent: PaymentAuthorized, expect: Expect) -> str | None:
    """What is wrong with one results record, else None."""
    try:
        outcome = _outcomes.decode(output.value)
    except SchemaError as exc:
        return f"results record at {output.partition}/{output.offset}: {exc}"
    got = (outcome.status, outcome.reason_code, outcome.approved_amount)
    if got != (expect.status, expect.code, expect.approved_amount):
        return (f"decided {got[0]} {got[1]} (approved amount {got[2]}), expected "
                f"{expect.status} {expect.code} (approved amount {expect.approved_amount})")
    echoed = ("payment_id", "run_id", "seq", "amount", "currency", "merchant", "capture",
              "partial_approval", "token", "masked_pan", "network")
    changed = [name for name in echoed if getattr(outcome, name) != getattr(sent, name)]
    if changed:
        return f"results record changed {', '.join(changed)}"
    if PROCESSED not in outcome.stages or any(outcome.stages.get(stage) != at
                                              for stage, at in sent.stages.items()):
        return "results record's stages: the input's kept and 'processed' added"
    if output.key != (sent.token or "").encode():
        return "results record not keyed by the card token"
    return None


def _judge_decisions(case: Case, observed: Observed) -> tuple[list[str], list[str]]:
    """What is wrong with the case's payments, and what was seen (for a case that passes)."""
    problems, seen = [], []
    sent = {send.payment_id: send for send in case.sends if send.payment_id}
    for payment_id, expect in case.expects.items():
        if expect is None:
            problems += _nothing_problems(payment_id, observed)
            seen.append("no outcome")
            continue
        found, saw = expect.judge(payment_id, sent[payment_id].value, observed)
        problems += found
        seen.append(saw)
    return problems, seen


def _nothing_problems(payment_id: str, observed: Observed) -> list[str]:
    """A record that must have no effect: no output record, no seed key, no outcome."""
    problems = []
    outputs = observed.results.get(payment_id, [])
    if outputs:
        problems.append(f"{len(outputs)} {outputs[0].role} record(s) for a record that must "
                        "have none")
    stored = observed.redis.get(payment_id)
    if stored is not None:
        problems.append(f"{result_key(payment_id)} set ({stored!r}); must be unset")
    if observed.outcomes.get(payment_id) or observed.done.get(payment_id):
        problems.append(f"an outcome stored for payment {payment_id}; must be none")
    return problems


def _judge_dead_letters(sent: list[Sent], letters: list[Output], topic: str, service: str,
                        withhold_original: bool) -> tuple[list[str], list[str]]:
    """Each poison record of the case has a dead letter naming it, written by ``service``
    (keeping none of the record when ``withhold_original``)."""
    problems, seen = [], []
    for record in sent:
        found = []
        for output in letters:
            try:
                letter = _letters.decode(output.value)
            except SchemaError:
                continue
            if (letter.source_topic, letter.partition, letter.offset) == (
                    topic, record.partition, record.offset):
                found.append(letter)
        if not found:
            problems.append(f"no dead letter for {topic} {record.partition}/{record.offset}")
        elif not any(letter.service == service and letter.reason for letter in found):
            problems.append(f"dead letter without service {service!r} and a reason")
        elif withhold_original and any(letter.original is not None or letter.key is not None
                                       for letter in found):
            problems.append("dead letter keeps the record's bytes (original or key): on "
                            f"{topic} they may hold card data")
        else:
            seen.append(f"dead letter: {found[0].reason[:60]}")
    return problems, seen


def judge_case(case: Case, sent: list[Sent], observed: Observed, input_topic: str,
               service: str, withhold_original: bool = False) -> Verdict:
    problems, seen = _judge_decisions(case, observed)
    if case.dead_letters:
        more, letters = _judge_dead_letters(sent, observed.dead_letters, input_topic, service,
                                            withhold_original)
        problems += more
        seen = letters + seen
    return Verdict(case.name, not problems, "; ".join(problems or seen))


def outside_transactions(outputs: list[Output], observed: Observed) -> list[Output]:
    """Outputs with no transaction marker after them in their partition.

    A transactional producer's records are followed, in each partition, by the marker its
    commit writes (an offset that holds no data record); a plain producer's never are. A
    marker of another producer's transaction can stand in (a false pass, never a false
    failure), which is why the conformance run writes nothing to these topics itself."""
    alone = []
    for output in outputs:
        where = (output.topic, output.partition)
        data, end = observed.data_offsets.get(where, set()), observed.ends.get(where, 0)
        if all(offset in data for offset in range(output.offset + 1, end)):
            alone.append(output)
    return alone


def judge_transactions(observed: Observed, suite: Suite | None = None) -> Verdict:
    """Every output the candidate wrote is in a committed transaction. With ``suite``, a
    payment's outputs are those on the topics its expectation judges (a passed-on payment's
    results record is the processor's, not the authorizer's candidate's)."""
    outputs = [o for pid, found in observed.results.items() for o in found
               if suite is None or o.role in suite.roles_of(pid)] + observed.dead_letters
    alone = outside_transactions(outputs, observed)
    if not outputs:
        return Verdict("outputs only in committed transactions", False, "no outputs to judge")
    if alone:
        first = alone[0]
        return Verdict("outputs only in committed transactions", False,
                       f"{len(alone)} of {len(outputs)} outputs written outside a transaction "
                       f"(first: {first.topic} {first.partition}/{first.offset})")
    return Verdict("outputs only in committed transactions", True,
                   f"{len(outputs)} outputs, each followed by its commit marker")


def judge(suite: Suite, sent: dict[str, list[Sent]], observed: Observed,
          input_topic: str, service: str) -> list[Verdict]:
    """Every case's verdict, after the first: whether the candidate consumed at all."""
    verdicts = [Verdict("consumed every record (committed offsets)", observed.consumed,
                        observed.consumed_detail)]
    for case in suite.cases:
        poisoned = [s for s in sent[case.name] if case.dead_letters]
        verdicts.append(judge_case(case, poisoned, observed, input_topic, service,
                                   suite.withhold_original))
    verdicts.append(judge_transactions(observed, suite))
    return verdicts
