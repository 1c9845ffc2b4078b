"""The processor's golden cases for `paysim conformance`, and the judgement of what a
candidate did with them (pure: the records to send, then verdicts over what was read back).

The contract a candidate is held to is docs/conformance.md's: per record on the authorized
topic, one decision (the same on every delivery) as a PaymentOutcome on the results topic
keyed by the card token and as `payment_result_<id>` in Redis; a record it cannot take as a
DeadLetter naming its partition and offset; every output inside a committed transaction.
"""

from __future__ import annotations

import uuid
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

MERCHANT = Merchant(id="conformance-shop", name="Conformance Shop", mcc="5999", country="US")
CURRENCY = "USD"  # the cases' limits follow from the card profile in US dollars


@dataclass(frozen=True)
class Send:
    """One record the conformance run produces onto the candidate's input topic."""

    key: str | None
    value: bytes
    payment_id: str | None = None  # None when the record has none to read back
    aborted: bool = False  # produced in a transaction that is then aborted


@dataclass(frozen=True)
class Expect:
    """The one decision a payment must get."""

    status: str
    code: str
    approved_amount: int | None


@dataclass
class Case:
    """A golden case: its records, in order, and what each payment id must come to."""

    name: str
    sends: list[Send]
    # payment id -> its decision; None: no decision at all (a dead letter, an aborted input)
    expects: dict[str, Expect | None] = field(default_factory=dict)
    dead_letters: int = 0  # how many of its records must come back as dead letters


@dataclass
class Sent:
    """Where a record landed: (partition, offset), filled in once Kafka acknowledged it."""

    send: Send
    partition: int = -1
    offset: int = -1


@dataclass(frozen=True)
class Output:
    """A record read back from the results or dead-letter topic (read_committed)."""

    topic: str
    partition: int
    offset: int
    key: bytes | None
    value: bytes


@dataclass
class Observed:
    """What the candidate did, as read back after it consumed every case's records."""

    consumed: bool  # its group committed past every record sent
    consumed_detail: str
    results: dict[str, list[Output]]  # payment id -> its results records
    dead_letters: list[Output]
    redis: dict[str, str | None]  # payment id -> payment_result_<id>
    # (topic, partition) -> offsets holding data records (read_uncommitted) and the end
    data_offsets: dict[tuple[str, int], set[int]]
    ends: dict[tuple[str, int], int]


@dataclass(frozen=True)
class Verdict:
    name: str
    passed: bool
    detail: str


@dataclass(frozen=True)
class Suite:
    """The cases and the run issuers they need (run id -> issuer behaviour)."""

    run_id: str
    cases: list[Case]
    issuers: dict[str, IssuerRates]


def _token() -> str:
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


def _poison(name: str, value: bytes, payment_id: str | None = None) -> Case:
    expects: dict[str, Expect | None] = {payment_id: None} if payment_id else {}
    return Case(name, [Send(_token(), value, payment_id)], expects, dead_letters=1)


def processor_suite(run_id: str) -> Suite:
    """Every decision row of the processor, redelivery, aborted input and poison records."""
    seq = iter(range(1_000_000))
    faulty, declining = f"{run_id}-faulty", f"{run_id}-declining"

    def pay(token: str, amount: int, run: str = run_id, **kwargs) -> PaymentAuthorized:
        return _payment(run, next(seq), token, amount, **kwargs)

    cases = [
        _decision("00 approved", pay(_token(), 1_250), _approved(1_250)),
        _decision("00 approved, manual capture",
                  pay(_token(), 990, capture=CaptureMode.MANUAL), _approved(990)),
    ]
    for code in ("05", "41", "43", "96", "51", "61"):
        cases.append(_decision(f"{code} {decisions.reason_text(code)} (test card)",
                               pay(_token(), 2_000, test_reason=code), _declined(code)))
    over = _token()
    cases.append(_decision("61 over the card's daily limit (its profile)",
                           pay(over, daily_limit(over) + 1), _declined("61")))
    partial = _token()
    cases.append(_decision("10 partial approval: the daily limit's worth",
                           pay(partial, daily_limit(partial) + 5_000, partial=True),
                           _approved(daily_limit(partial), decisions.PARTIALLY_APPROVED)))
    cases.append(_decision("51 partial approval with no funds",
                           pay(_token(), 2_000, test_reason="51", partial=True),
                           _declined("51")))
    cases.append(_decision("91 issuer unavailable (the run's fault rate 1)",
                           pay(_token(), 2_000, run=faulty), _declined("91")))
    cases.append(_decision("05 do not honour (the run's decline rate 1)",
                           pay(_token(), 2_000, run=declining), _declined("05")))

    spender = _token()
    share = daily_limit(spender) * 6 // 10
    first, second = pay(spender, share), pay(spender, share)
    cases.append(Case("daily spend adds up: 60% approved, 60% more 61",
                      [_send(first), _send(second)],
                      {first.payment_id: _approved(share),
                       second.payment_id: _declined("61")}))

    again = _token()
    share = daily_limit(again) * 4 // 10
    twice, after = pay(again, share), pay(again, share)
    cases.append(Case("redelivered record: one decision, spent once",
                      [_send(twice), _send(twice), _send(after)],
                      {twice.payment_id: _approved(share), after.payment_id: _approved(share)}))
    # The one after it, on the same card (so the same partition), is consumed only once
    # the aborted one was stepped over: waiting for it is waiting for both.
    card = _token()
    aborted, follower = pay(card, 1_000), pay(card, 1_100)
    cases.append(Case("input of an aborted transaction is not read",
                      [_send(aborted, aborted=True), _send(follower)],
                      {aborted.payment_id: None, follower.payment_id: _approved(1_100)}))

    cases.append(_poison("dead letter: not JSON", b"{this is not json"))
    wrong_v = pay(_token(), 1_000)
    cases.append(_poison("dead letter: schema version 2",
                         encode(msgspec.structs.replace(wrong_v, v=2)), wrong_v.payment_id))
    missing = pay(_token(), 1_000)
    fields = msgspec.json.decode(encode(missing))
    del fields["token"]
    cases.append(_poison("dead letter: a field missing (token)", msgspec.json.encode(fields),
                         missing.payment_id))
    unknown = pay(_token(), 1_000, currency="ABC")
    cases.append(_poison("dead letter: unknown currency ABC", encode(unknown),
                         unknown.payment_id))
    zero = pay(_token(), 0)
    cases.append(_poison("dead letter: amount 0", encode(zero), zero.payment_id))
    issuers = {faulty: IssuerRates(fault_rate=1.0), declining: IssuerRates(decline_rate=1.0)}
    return Suite(run_id, cases, issuers)


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
    """What is wrong with the case's decisions, and what was seen (for a case that passes)."""
    problems, seen = [], []
    sent = {send.payment_id: send for send in case.sends if send.payment_id}
    for payment_id, expect in case.expects.items():
        outputs = observed.results.get(payment_id, [])
        stored = observed.redis.get(payment_id)
        if expect is None:
            if outputs:
                problems.append(f"{len(outputs)} results record(s) for a record that must "
                                "have none")
            if stored is not None:
                problems.append(f"payment_result_{payment_id} set ({stored!r}); must be unset")
            seen.append("no outcome")
            continue
        if not outputs:
            problems.append(f"no results record for payment {payment_id}")
            continue
        payment = msgspec.json.decode(sent[payment_id].value, type=PaymentAuthorized)
        for output in outputs:
            problem = _check_outcome(output, payment, expect)
            if problem:
                problems.append(problem)
                break
        if stored != expect.status:
            problems.append(f"payment_result_{payment_id} is {stored!r}, expected "
                            f"{expect.status!r}")
        amount = "" if expect.approved_amount is None else f" ({expect.approved_amount})"
        seen.append(f"{expect.status} {expect.code}{amount}: {len(outputs)} "
                    f"record{'s' if len(outputs) > 1 else ''}")
    return problems, seen


def _judge_dead_letters(sent: list[Sent], letters: list[Output], topic: str,
                        service: str) -> tuple[list[str], list[str]]:
    """Each poison record of the case has a dead letter naming it, written by ``service``."""
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
        else:
            seen.append(f"dead letter: {found[0].reason[:60]}")
    return problems, seen


def judge_case(case: Case, sent: list[Sent], observed: Observed, input_topic: str,
               service: str) -> Verdict:
    problems, seen = _judge_decisions(case, observed)
    if case.dead_letters:
        more, letters = _judge_dead_letters(sent, observed.dead_letters, input_topic, service)
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


def judge_transactions(observed: Observed) -> Verdict:
    outputs = [o for found in observed.results.values() for o in found] + observed.dead_letters
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
        verdicts.append(judge_case(case, poisoned, observed, input_topic, service))
    verdicts.append(judge_transactions(observed))
    return verdicts
