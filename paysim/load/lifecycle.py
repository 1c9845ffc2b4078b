"""A scenario's ``[lifecycle]`` mix, and the follow-up operations it plans for each payment.

Pure. Each payment's fate (manual or automatic capture, reversed or not, increment, how it
ends, refund or dispute) is drawn when it is sent, from the run's seed and the payment's
number alone, so the same seed plans the same operations whatever the timing. The operations
themselves are planned from the answers as they come back: nothing follows a declined
payment, a capture takes at most what is held, a refund or dispute comes only after a capture
was answered, a resolution only after its dispute was. Each operation has an intended time
(the answer it follows + its delay; for a reversal the payment's own intended send time +
its delay) from which its latency counts, as a payment's does.
"""

from __future__ import annotations

import random
from dataclasses import dataclass, field

from paysim.domain import decisions
from paysim.domain.lifecycle import DISPUTE_REASONS
from paysim.domain.messages import CaptureMode, OperationKind

US = 1_000_000
INVALID_DELAY_S = 1.0  # after the last answer of a payment's life, its invalid operation


@dataclass(frozen=True)
class Delay:
    """A delay in seconds: fixed (``low`` == ``high``), uniform from ``low`` to ``high``, or
    exponential around ``mean`` (cut at ``high``)."""

    low: float = 0.0
    high: float = 0.0
    mean: float | None = None

    @classmethod
    def fixed(cls, seconds: float) -> Delay:
        return cls(seconds, seconds)

    def draw(self, rng: random.Random) -> float:
        if self.mean is not None:
            return min(rng.expovariate(1 / self.mean), self.high) if self.mean > 0 else 0.0
        return rng.uniform(self.low, self.high) if self.high > self.low else self.low


@dataclass(frozen=True)
class LifecycleSpec:
    """The mix of follow-up operations. Shares of manual payments: ``increment_share``,
    ``void_share``, ``expire_share`` (left to expire; the rest are captured); of captures:
    ``partial_capture_share`` (less than held, the rest released), ``split_capture_share``
    (in 2 to ``split_parts`` parts); of captured payments: ``refund_share`` and
    ``dispute_share`` (one or the other); of all payments: ``reversal_share``, of which
    ``reversal_race_share`` are sent with their authorization, to race it,
    ``partial_approval_share`` (opted in to a partial approval, code 10) and
    ``invalid_share`` (given one operation their state forbids, once their life is over:
    the ledger must refuse it)."""

    manual_capture_share: float = 0.0
    capture_delay: Delay = Delay(1.0, 5.0)
    partial_capture_share: float = 0.0
    split_capture_share: float = 0.0
    split_parts: int = 3
    increment_share: float = 0.0
    increment_delay: Delay = Delay(0.5, 2.0)
    increment_fraction: float = 0.2  # an increment raises the hold by up to this share
    void_share: float = 0.0
    void_delay: Delay = Delay(1.0, 5.0)
    expire_share: float = 0.0
    hold_ttl_s: float | None = None  # the run's hold TTL; None: the services' setting
    refund_share: float = 0.0
    refund_delay: Delay = Delay(2.0, 6.0)
    partial_refund_share: float = 0.5
    reversal_share: float = 0.0
    reversal_delay: Delay = Delay(2.0, 2.0)  # the acquirer's timeout
    reversal_race_share: float = 0.0
    dispute_share: float = 0.0
    dispute_delay: Delay = Delay(2.0, 6.0)
    dispute_reasons: tuple[tuple[str, float], ...] = tuple((code, 1.0)
                                                           for code in DISPUTE_REASONS)
    dispute_won_share: float = 0.4
    resolve_delay: Delay = Delay(1.0, 3.0)
    partial_approval_share: float = 0.0
    invalid_share: float = 0.0
    settlement_window_s: float | None = None  # the run's window; None: the services'

    def longest_delay_s(self) -> float:
        """The longest a chain of follow-ups can take, for the run's end."""
        return (self.increment_delay.high + self.capture_delay.high * max(1, self.split_parts)
                + max(self.void_delay.high, self.hold_ttl_s or 0.0)
                + max(self.refund_delay.high, self.dispute_delay.high + self.resolve_delay.high)
                + self.reversal_delay.high + INVALID_DELAY_S)


class Ending:
    CAPTURE = "capture"
    VOID = "void"
    EXPIRE = "expire"


@dataclass(frozen=True)
class Fate:
    """What the mix drew for one payment, before anything was sent."""

    capture: CaptureMode = CaptureMode.AUTOMATIC
    reversal_delay_s: float | None = None  # None: not reversed
    increment: tuple[float, float] | None = None  # (delay s, share of the amount)
    ending: str = Ending.CAPTURE  # manual payments: capture, void or expire
    ending_delay_s: float = 0.0
    capture_share: float = 1.0  # of what is held
    parts: tuple[float, ...] = (1.0,)  # each capture's share of the total, in order
    part_delays_s: tuple[float, ...] = ()  # before each part after the first
    after: str | None = None  # refund, dispute or None, once captured
    after_delay_s: float = 0.0
    refund_share: float = 1.0
    dispute_reason: str = ""
    dispute_won: bool = False
    resolve_delay_s: float = 0.0
    partial_approval: bool = False
    invalid_pick: float | None = None  # None: no invalid operation; else which one


def draw_fate(spec: LifecycleSpec, seed: int, seq: int) -> Fate:
    """The fate of payment ``seq`` of a run seeded ``seed``. Every draw is made, in one
    order, whatever is used: the same seed and number give the same fate."""
    rng = random.Random(f"lifecycle:{seed}:{seq}")
    manual = rng.random() < spec.manual_capture_share
    reversed_ = rng.random() < spec.reversal_share
    race = rng.random() < spec.reversal_race_share
    reversal_delay = spec.reversal_delay.draw(rng)
    increment = rng.random() < spec.increment_share
    increment_delay = spec.increment_delay.draw(rng)
    increment_share = rng.uniform(0.05, 1.0) * spec.increment_fraction
    ending_draw = rng.random()
    void_delay = spec.void_delay.draw(rng)
    capture_delay = spec.capture_delay.draw(rng)
    partial = rng.random() < spec.partial_capture_share
    capture_share = rng.uniform(0.5, 0.95)
    split = rng.random() < spec.split_capture_share
    parts = rng.randint(2, max(2, spec.split_parts))
    weights = [rng.uniform(0.5, 1.5) for _ in range(parts)]
    part_delays = tuple(spec.capture_delay.draw(rng) for _ in range(parts - 1))
    after_draw = rng.random()
    refund_delay = spec.refund_delay.draw(rng)
    partial_refund = rng.random() < spec.partial_refund_share
    refund_share = rng.uniform(0.1, 0.9)
    dispute_delay = spec.dispute_delay.draw(rng)
    codes, code_weights = zip(*spec.dispute_reasons, strict=True)
    reason = rng.choices(codes, code_weights)[0]
    won = rng.random() < spec.dispute_won_share
    resolve_delay = spec.resolve_delay.draw(rng)
    # Drawn last: the draws above stay those of a seed planned before these existed.
    partial_approval = rng.random() < spec.partial_approval_share
    invalid = rng.random() < spec.invalid_share
    invalid_pick = rng.random()

    if ending_draw < spec.void_share:
        ending, ending_delay = Ending.VOID, void_delay
    elif ending_draw < spec.void_share + spec.expire_share:
        ending, ending_delay = Ending.EXPIRE, 0.0
    else:
        ending, ending_delay = Ending.CAPTURE, capture_delay
    if after_draw < spec.refund_share:
        after, after_delay = OperationKind.REFUND.value, refund_delay
    elif after_draw < spec.refund_share + spec.dispute_share:
        after, after_delay = OperationKind.DISPUTE.value, dispute_delay
    else:
        after, after_delay = None, 0.0
    total = sum(weights)
    return Fate(
        capture=CaptureMode.MANUAL if manual else CaptureMode.AUTOMATIC,
        reversal_delay_s=(0.0 if race else reversal_delay) if reversed_ else None,
        increment=(increment_delay, increment_share) if manual and increment else None,
        ending=ending, ending_delay_s=ending_delay,
        capture_share=capture_share if partial else 1.0,
        parts=tuple(w / total for w in weights) if split else (1.0,),
        part_delays_s=part_delays if split else (),
        after=after, after_delay_s=after_delay,
        refund_share=refund_share if partial_refund else 1.0,
        dispute_reason=reason, dispute_won=won, resolve_delay_s=resolve_delay,
        partial_approval=partial_approval,
        invalid_pick=invalid_pick if invalid and not reversed_ else None,
    )


@dataclass(frozen=True)
class PlannedOp:
    """One operation to send at ``due_us`` (Unix µs), or, when ``expected``, one the services
    send themselves (a hold's expiry) that the run waits for."""

    op_id: str
    kind: OperationKind
    payment_id: str
    token: str
    currency: str
    due_us: int
    amount: int | None = None
    final: bool = False
    reason_code: str | None = None
    won: bool | None = None
    expected: bool = False
    invalid: bool = False  # sent on purpose where the payment's state forbids it
    traceparent: str | None = None  # its payment's trace context, when tracing: its parent


@dataclass
class PaymentLife:
    """One payment as the planner follows it."""

    payment_id: str
    token: str
    currency: str
    amount: int
    fate: Fate
    held: int = 0
    captured: int = 0
    refunded: int = 0
    disputed: bool = False
    resolved: bool = False
    approved: bool = False
    invalid_sent: bool = False
    capture_amounts: list[int] = field(default_factory=list)  # the parts still to send
    parts_sent: int = 0
    ops: int = 0  # operations planned so far: numbers each op id
    traceparent: str | None = None  # where its trace entered (when tracing): its ops' parent

    def op(self, kind: OperationKind, due_us: int, **fields: object) -> PlannedOp:
        self.ops += 1
        return PlannedOp(f"{self.payment_id}:{kind.value}:{self.ops}", kind, self.payment_id,
                         self.token, self.currency, due_us, **fields,
                         traceparent=self.traceparent)


def split_amount(total: int, shares: tuple[float, ...]) -> list[int]:
    """``total`` in parts proportional to ``shares``, each at least 1 (fewer parts when the
    total is smaller than their number); the parts add up to ``total``."""
    count = max(1, min(len(shares), total))
    shares = shares[:count]
    scale = sum(shares)
    parts = [max(1, int(total * share / scale)) for share in shares[:-1]]
    while sum(parts) >= total and parts:  # rounding up to 1 can overshoot a small total
        parts.pop()
    return [*parts, total - sum(parts)]


class FollowUps:
    """Plans each payment's follow-up operations from the answers as they come back. Not
    thread-safe: its caller holds one lock around it."""

    def __init__(self, spec: LifecycleSpec, seed: int, hold_ttl_s: float) -> None:
        self.spec, self.seed, self.hold_ttl_s = spec, seed, hold_ttl_s
        self.lives: dict[str, PaymentLife] = {}

    def fate(self, seq: int) -> Fate:
        return draw_fate(self.spec, self.seed, seq)

    def sent(self, payment_id: str, token: str, currency: str, amount: int, fate: Fate,
             intended_us: int, traceparent: str | None = None) -> list[PlannedOp]:
        """A payment was sent (``traceparent``: its trace's first span, when traced): its
        reversal, if it has one."""
        life = PaymentLife(payment_id, token, currency, amount, fate, traceparent=traceparent)
        self.lives[payment_id] = life
        if fate.reversal_delay_s is None:
            return []
        return [life.op(OperationKind.REVERSE, intended_us + _us(fate.reversal_delay_s))]

    def authorized(self, payment_id: str, reason_code: str, amount: int, answered_us: int,
                   processed_us: int | None = None) -> list[PlannedOp]:
        """A payment's answer: what follows it. Nothing after a decline or a reversal (the
        acquirer treats the answer as never received)."""
        life = self.lives.get(payment_id)
        if life is None or life.fate.reversal_delay_s is not None:
            return []
        if reason_code not in decisions.APPROVING:
            return self._or_invalid(life, [], answered_us)
        fate = life.fate
        life.held, life.approved = amount, True
        if fate.capture == CaptureMode.AUTOMATIC:
            life.captured, life.held = amount, 0
            return self._or_invalid(life, self._after_capture(life, answered_us),
                                    answered_us)
        if fate.increment is not None:
            delay, share = fate.increment
            raise_by = max(1, round(amount * share))
            return [life.op(OperationKind.INCREMENT, answered_us + _us(delay),
                            amount=raise_by)]
        return self._ending(life, answered_us, processed_us)

    def answered(self, op: PlannedOp, reason_code: str, amount: int,
                 answered_us: int) -> list[PlannedOp]:
        """An operation's answer: what follows it."""
        life = self.lives.get(op.payment_id)
        if life is None or op.invalid:
            return []
        return self._or_invalid(life, self._next(life, op, reason_code in decisions.APPROVING,
                                                 amount, answered_us), answered_us)

    def _next(self, life: PaymentLife, op: PlannedOp, ok: bool, amount: int,
              answered_us: int) -> list[PlannedOp]:
        if op.kind == OperationKind.INCREMENT:
            if ok:
                life.held += amount
            return self._ending(life, answered_us, None)
        if op.kind == OperationKind.CAPTURE:
            if ok:
                life.captured += amount
                life.held -= amount
                if life.capture_amounts:
                    delays = life.fate.part_delays_s  # before each part after the first
                    delay = delays[life.parts_sent - 1] if life.parts_sent <= len(delays) \
                        else 0.0
                    return [self._next_part(life, answered_us + _us(delay))]
            life.capture_amounts = []
            return self._after_capture(life, answered_us) if life.captured else []
        if op.kind == OperationKind.REFUND and ok:
            life.refunded += amount
        if op.kind == OperationKind.RESOLVE and ok:
            life.resolved = True
        if op.kind == OperationKind.DISPUTE and ok:
            life.disputed = True
            return [life.op(OperationKind.RESOLVE,
                            answered_us + _us(life.fate.resolve_delay_s),
                            won=life.fate.dispute_won)]
        return []

    def _or_invalid(self, life: PaymentLife, following: list[PlannedOp],
                    at_us: int) -> list[PlannedOp]:
        """What follows; or, once nothing does, the payment's invalid operation if its fate
        has one (an expiry the services send still counts as following)."""
        if following or life.fate.invalid_pick is None or life.invalid_sent:
            return following
        life.invalid_sent = True
        choices = invalid_choices(life)
        kind, fields = choices[min(len(choices) - 1, int(life.fate.invalid_pick * len(choices)))]
        return [life.op(kind, at_us + _us(INVALID_DELAY_S), invalid=True, **fields)]

    def _ending(self, life: PaymentLife, at_us: int, processed_us: int | None
                ) -> list[PlannedOp]:
        fate = life.fate
        if fate.ending == Ending.VOID:
            return [life.op(OperationKind.VOID, at_us + _us(fate.ending_delay_s))]
        if fate.ending == Ending.EXPIRE:
            # The hold's TTL runs from the processor's decision; the ledger service's expiry
            # thread sends the operation, under its own id.
            start = processed_us if processed_us is not None else at_us
            return [PlannedOp(f"expire-{life.payment_id}", OperationKind.EXPIRE,
                              life.payment_id, life.token, life.currency,
                              start + _us(self.hold_ttl_s), expected=True)]
        total = min(life.held, max(1, round(life.held * fate.capture_share)))
        life.capture_amounts = split_amount(total, fate.parts)
        return [self._next_part(life, at_us + _us(fate.ending_delay_s))]

    def _next_part(self, life: PaymentLife, due_us: int) -> PlannedOp:
        amount = life.capture_amounts.pop(0)
        life.parts_sent += 1
        last = not life.capture_amounts
        return life.op(OperationKind.CAPTURE, due_us, amount=amount, final=last)

    def _after_capture(self, life: PaymentLife, at_us: int) -> list[PlannedOp]:
        fate = life.fate
        due = at_us + _us(fate.after_delay_s)
        if fate.after == OperationKind.REFUND:
            amount = life.captured if fate.refund_share >= 1 else max(
                1, round(life.captured * fate.refund_share))
            return [life.op(OperationKind.REFUND, due, amount=amount)]
        if fate.after == OperationKind.DISPUTE:
            return [life.op(OperationKind.DISPUTE, due, reason_code=fate.dispute_reason)]
        return []


def invalid_choices(life: PaymentLife) -> list[tuple[OperationKind, dict[str, object]]]:
    """Operations the payment's state, at the end of its life, forbids (each refused 57,
    or 13 for an amount past what is left)."""
    reason = {"reason_code": life.fate.dispute_reason or next(iter(DISPUTE_REASONS))}
    if not life.approved:
        return [(OperationKind.CAPTURE, {})]  # declined
    if not life.captured:  # voided or expired
        return [(OperationKind.CAPTURE, {}), (OperationKind.REFUND, {}),
                (OperationKind.DISPUTE, reason)]
    if life.disputed:
        return [(OperationKind.DISPUTE, reason)] + (
            [(OperationKind.RESOLVE, {"won": True})] if life.resolved else [])
    return [(OperationKind.VOID, {}), (OperationKind.INCREMENT, {"amount": 1}),
            (OperationKind.CAPTURE, {}), (OperationKind.RESOLVE, {"won": True}),
            (OperationKind.REFUND, {"amount": life.captured - life.refunded + 1})]


def _us(seconds: float) -> int:
    return round(seconds * US)
