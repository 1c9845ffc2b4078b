"""The load engine's lifecycle mix: the [lifecycle] table's checks, and the planning of each
payment's follow-up operations from the answers (pure)."""

from __future__ import annotations

import dataclasses
import random
from collections import Counter
from pathlib import Path

import pytest

from paysim.domain import lifecycle as domain_lifecycle
from paysim.domain.ledger import Book
from paysim.domain.lifecycle import Authorization, CardFunds, Change, PaymentRecord
from paysim.domain.messages import CaptureMode, OperationKind, OperationRequested
from paysim.infra.config import load_settings
from paysim.load.lifecycle import (
    Delay,
    Ending,
    Fate,
    FollowUps,
    LifecycleSpec,
    PlannedOp,
    draw_fate,
    split_amount,
)
from paysim.load.operations import OperationLoad
from paysim.load.report import lifecycle_report
from paysim.load.scenario import load_scenario
from paysim.pipeline import store
from tests.unit import test_load_logic

PID = "00000000-0000-4000-8000-000000000001"
SECOND = 1_000_000


@pytest.mark.parametrize(("text", "fragment"), [
    ("[lifecycle]\nmanual_capture_share = 1.5\n", "lifecycle.manual_capture_share: expected a "
                                                  "number from 0 to 1"),
    ("[lifecycle]\nrefund_share = nan\n", "lifecycle.refund_share: expected"),
    ("[lifecycle]\nreversal_share = inf\n", "lifecycle.reversal_share: expected"),
    ("[lifecycle]\nrefund_share = '5%'\n", "lifecycle.refund_share: expected"),
    ("[lifecycle]\ncapture_delay = 'soon'\n", "lifecycle.capture_delay: expected a duration"),
    ("[lifecycle]\ncapture_delay = 'inf'\n", "lifecycle.capture_delay: expected"),
    ("[lifecycle]\ncapture_delay = '2h'\n", "lifecycle.capture_delay: expected a duration up"),
    ("[lifecycle]\ncapture_delay = { min = '5s', max = '1s' }\n", "lifecycle.capture_delay"),
    ("[lifecycle]\nrefund_delay = { median = '5s' }\n", "lifecycle.refund_delay: expected"),
    ("[lifecycle]\ndispute_delay = { mean = 'nan' }\n", "lifecycle.dispute_delay: expected"),
    ("[lifecycle]\nsplit_parts = 1\n", "lifecycle.split_parts: expected a whole number from 2"),
    ("[lifecycle]\nhold_ttl = '0.5s'\n", "lifecycle.hold_ttl: expected a duration from 1s"),
    ("[lifecycle]\nhold_ttl = '2d'\n", "lifecycle.hold_ttl: expected"),
    ("[lifecycle]\nexpire_share = 0.1\n", "lifecycle.hold_ttl: expected a duration (holds"),
    ("[lifecycle]\nvoid_share = 0.6\nexpire_share = 0.6\nhold_ttl = '5s'\n",
     "lifecycle.expire_share: expected void_share + expire_share <= 1"),
    ("[lifecycle]\nrefund_share = 0.6\ndispute_share = 0.5\n",
     "lifecycle.dispute_share: expected refund_share + dispute_share <= 1"),
    ("[lifecycle]\ndispute_reasons = { '99.9' = 1 }\n", "lifecycle.dispute_reasons: expected"),
    ("[lifecycle]\ndispute_reasons = { '10.4' = nan }\n", "lifecycle.dispute_reasons"),
    ("[lifecycle]\nsettle = true\n", "lifecycle.settle: expected one of"),
    ("lifecycle = 3\n", "lifecycle: expected a table"),
])
def test_a_malformed_lifecycle_table_is_one_line_naming_the_key(tmp_path: Path, text: str,
                                                                fragment: str) -> None:
    test_load_logic.test_malformed_scenarios_are_one_line_naming_the_key(tmp_path, text,
                                                                         fragment)


def test_a_lifecycle_table_with_every_key(tmp_path: Path) -> None:
    path = tmp_path / "mix.toml"
    path.write_text("""[lifecycle]
manual_capture_share = 0.5
capture_delay = { min = "1s", max = "3s" }
refund_delay = { mean = "2s", max = "10s" }
reversal_delay = "500ms"
hold_ttl = "30s"
expire_share = 0.1
dispute_reasons = { "10.4" = 3, "4853" = 1 }
""")
    spec = load_scenario(path).lifecycle
    assert spec is not None
    assert spec.manual_capture_share == 0.5 and spec.capture_delay == Delay(1.0, 3.0)
    assert spec.refund_delay == Delay(0.0, 10.0, 2.0)
    assert spec.reversal_delay == Delay(0.5, 0.5) and spec.hold_ttl_s == 30.0
    assert spec.dispute_reasons == (("10.4", 3), ("4853", 1))


def test_a_scenario_without_a_lifecycle_table_has_no_mix(tmp_path: Path) -> None:
    path = tmp_path / "plain.toml"
    path.write_text("[load]\ncount = 10\n")
    assert load_scenario(path).lifecycle is None


def test_delays_stay_within_their_distribution() -> None:
    rng = random.Random(1)
    assert Delay(2.0, 2.0).draw(rng) == 2.0
    assert all(1.0 <= Delay(1.0, 3.0).draw(rng) <= 3.0 for _ in range(200))
    draws = [Delay(0.0, 5.0, 1.0).draw(rng) for _ in range(2000)]
    assert max(draws) <= 5.0 and 0.8 < sum(draws) / len(draws) < 1.2


def test_the_same_seed_draws_the_same_fates() -> None:
    spec = LifecycleSpec(manual_capture_share=0.5, refund_share=0.3, reversal_share=0.1)
    assert [draw_fate(spec, 7, n) for n in range(50)] == [draw_fate(spec, 7, n)
                                                          for n in range(50)]
    assert [draw_fate(spec, 7, n) for n in range(50)] != [draw_fate(spec, 8, n)
                                                          for n in range(50)]


def test_the_shares_of_the_mix_are_the_shares_drawn() -> None:
    spec = LifecycleSpec(manual_capture_share=0.3, refund_share=0.05, dispute_share=0.01,
                         void_share=0.2)
    fates = [draw_fate(spec, 3, n) for n in range(8_000)]
    manual = [f for f in fates if f.capture == CaptureMode.MANUAL]
    assert abs(len(manual) / len(fates) - 0.3) < 0.02
    assert abs(sum(f.ending == Ending.VOID for f in manual) / len(manual) - 0.2) < 0.03
    afters = Counter(f.after for f in fates)
    assert abs(afters["refund"] / len(fates) - 0.05) < 0.01
    assert abs(afters["dispute"] / len(fates) - 0.01) < 0.005


@pytest.mark.parametrize("total", [1, 2, 3, 7, 100, 12_345])
def test_a_split_capture_adds_up_to_its_total(total: int) -> None:
    parts = split_amount(total, (0.2, 0.5, 0.3))
    assert sum(parts) == total and all(p >= 1 for p in parts) and len(parts) <= 3


def planner(fate: Fate, ttl_s: float = 5.0) -> tuple[FollowUps, list[PlannedOp]]:
    followups = FollowUps(LifecycleSpec(), 1, ttl_s)
    sent = followups.sent(PID, "tok", "USD", 10_000, fate, 0)
    return followups, sent


def answer_all(followups: FollowUps, ops: list[PlannedOp], code: str = "00") -> list[PlannedOp]:
    """Answer each op with ``code`` (moving what it asked), following what each plans."""
    done = []
    while ops:
        op = ops.pop(0)
        done.append(op)
        ops += followups.answered(op, code, op.amount or 0, op.due_us + 1000)
    return done


def test_nothing_follows_a_declined_payment() -> None:
    followups, sent = planner(Fate(capture=CaptureMode.MANUAL, after="refund"))
    assert sent == []
    assert followups.authorized(PID, "51", 10_000, SECOND) == []


def test_a_reversal_is_due_at_the_payments_send_time_plus_its_delay_and_nothing_follows() -> None:
    followups, sent = planner(Fate(reversal_delay_s=2.0, after="refund"))
    assert [(op.kind, op.due_us) for op in sent] == [(OperationKind.REVERSE, 2 * SECOND)]
    assert followups.authorized(PID, "00", 10_000, SECOND) == []
    _, sent = planner(Fate(reversal_delay_s=0.0))
    assert sent[0].due_us == 0  # with its authorization


def test_an_automatic_capture_is_refunded_after_its_answer() -> None:
    followups, _ = planner(Fate(after="refund", after_delay_s=3.0, refund_share=0.25))
    [refund] = followups.authorized(PID, "00", 10_000, SECOND)
    assert refund.kind == OperationKind.REFUND and refund.amount == 2_500
    assert refund.due_us == 4 * SECOND and refund.token == "tok"


def test_a_hotel_hold_is_raised_then_captured_in_parts_within_what_is_held() -> None:
    fate = Fate(capture=CaptureMode.MANUAL, increment=(1.0, 0.2), ending_delay_s=2.0,
                capture_share=0.8, parts=(0.5, 0.5), part_delays_s=(1.0,))
    followups, _ = planner(fate)
    [increment] = followups.authorized(PID, "00", 10_000, SECOND)
    assert increment.kind == OperationKind.INCREMENT and increment.amount == 2_000
    assert increment.due_us == 2 * SECOND
    done = answer_all(followups, [increment])
    captures = [op for op in done if op.kind == OperationKind.CAPTURE]
    assert [op.amount for op in captures] == [4_800, 4_800]  # 80% of 12,000, in two
    assert [op.final for op in captures] == [False, True]  # the last releases the rest
    assert captures[0].due_us == increment.due_us + 1000 + 2 * SECOND
    assert captures[1].due_us == captures[0].due_us + 1000 + SECOND


def test_a_refused_increment_is_captured_within_the_first_hold() -> None:
    followups, _ = planner(Fate(capture=CaptureMode.MANUAL, increment=(1.0, 0.2)))
    [increment] = followups.authorized(PID, "00", 10_000, SECOND)
    [capture] = followups.answered(increment, "51", 0, 2 * SECOND)
    assert capture.amount == 10_000 and capture.final


def test_a_dispute_follows_the_capture_and_its_resolution_follows_the_dispute() -> None:
    fate = Fate(capture=CaptureMode.MANUAL, after="dispute", dispute_reason="13.1",
                dispute_won=True, resolve_delay_s=1.0)
    followups, _ = planner(fate)
    done = answer_all(followups, followups.authorized(PID, "00", 10_000, SECOND))
    assert [op.kind for op in done] == [OperationKind.CAPTURE, OperationKind.DISPUTE,
                                        OperationKind.RESOLVE]
    assert done[1].reason_code == "13.1" and done[2].won is True
    refused, _ = planner(fate)
    [capture] = refused.authorized(PID, "00", 10_000, SECOND)
    assert refused.answered(capture, "57", 0, 2 * SECOND) == []  # nothing captured: no dispute


def test_a_void_and_an_expiry_end_a_hold() -> None:
    followups, _ = planner(Fate(capture=CaptureMode.MANUAL, ending=Ending.VOID,
                                ending_delay_s=1.0, after="refund"))
    [void] = followups.authorized(PID, "00", 10_000, SECOND)
    assert void.kind == OperationKind.VOID and void.due_us == 2 * SECOND
    assert followups.answered(void, "00", 10_000, 3 * SECOND) == []
    expiring, _ = planner(Fate(capture=CaptureMode.MANUAL, ending=Ending.EXPIRE), ttl_s=5.0)
    [expiry] = expiring.authorized(PID, "00", 10_000, SECOND, processed_us=SECOND - 100)
    assert expiry.expected and expiry.op_id == f"expire-{PID}"  # the expiry thread's id
    assert expiry.due_us == SECOND - 100 + 5 * SECOND


def test_operation_ids_are_unique_per_payment() -> None:
    fate = Fate(capture=CaptureMode.MANUAL, increment=(0.0, 0.1), parts=(0.3, 0.3, 0.4),
                part_delays_s=(0.0, 0.0), after="refund")
    followups, _ = planner(fate)
    done = answer_all(followups, followups.authorized(PID, "00", 10_000, SECOND))
    ids = [op.op_id for op in done]
    assert len(ids) == len(set(ids)) == 5  # increment, three captures, a refund
    assert all(op_id.startswith(PID) for op_id in ids)


def answer(op_id: str, kind: str, code: str = "00", amount: int = 0) -> store.OperationDone:
    return store.OperationDone(op_id, kind, PID, code, amount, SECOND, 2 * SECOND)


def test_answers_are_counted_once_and_only_the_runs_own() -> None:
    load = OperationLoad(load_settings({}, env={}), "run-t", LifecycleSpec(), 1,
                         halted=lambda: False)
    fate = Fate(capture=CaptureMode.MANUAL, parts=(0.5, 0.5), part_delays_s=(0.0,))
    load.payment_sent(PID, "tok", "EUR", 10_000, fate, 0)
    load.authorization(store.DoneEntry(PID, "approved", "00", 10_000, "EUR", 0,
                                       {"notified": SECOND}))
    [(_, _, first)] = load._due
    load._waiting[first.op_id] = load._due.pop()[2]  # as the sender does when it is due
    with load.changed:  # as the reader holds it
        for _ in range(2):  # a redelivered batch writes the answer again
            load._answered(answer(first.op_id, "capture", amount=5_000))
        # The ledger expired the hold before the second part (its TTL was shorter than the
        # chain): counted, as the ledger answered it. Someone else's operation is not.
        load._answered(answer(f"expire-{PID}", "expire", amount=5_000))
        load._answered(answer("someone-else", "refund", amount=100))
    metrics = load.metrics
    assert dict(metrics.answered) == {"capture": 1, "expire": 1}
    assert dict(metrics.scheduled) == {"capture": 2, "expire": 1}  # the second part is due
    assert metrics.amounts[("capture", "00")] == {"EUR": 5_000}
    assert load.pending() == 1


def test_an_expiry_read_before_its_authorization_is_not_awaited_again() -> None:
    load = OperationLoad(load_settings({}, env={}), "run-t", LifecycleSpec(hold_ttl_s=1.0), 1,
                         halted=lambda: False)
    load.payment_sent(PID, "tok", "EUR", 10_000, Fate(capture=CaptureMode.MANUAL,
                                                      ending=Ending.EXPIRE), 0)
    with load.changed:  # the hold's TTL ran out while its outcome was on the way
        load._answered(answer(f"expire-{PID}", "expire", amount=10_000))
    load.authorization(store.DoneEntry(PID, "approved", "00", 10_000, "EUR", 0,
                                       {"notified": 3 * SECOND}))
    assert load.pending() == 0
    assert dict(load.metrics.scheduled) == dict(load.metrics.answered) == {"expire": 1}


def test_partial_approval_invalid_share_and_settlement_window_keys(tmp_path: Path) -> None:
    path = tmp_path / "mix.toml"
    path.write_text("[lifecycle]\npartial_approval_share = 0.2\ninvalid_share = 0.1\n"
                    'settlement_window = "20s"\n')
    spec = load_scenario(path).lifecycle
    assert spec is not None
    assert (spec.partial_approval_share, spec.invalid_share, spec.settlement_window_s) == (
        0.2, 0.1, 20.0)
    fates = [draw_fate(spec, 5, n) for n in range(4_000)]
    assert abs(sum(f.partial_approval for f in fates) / len(fates) - 0.2) < 0.03
    assert abs(sum(f.invalid_pick is not None for f in fates) / len(fates) - 0.1) < 0.02


@pytest.mark.parametrize(("text", "fragment"), [
    ("[lifecycle]\nsettlement_window = '0s'\n", "lifecycle.settlement_window: expected a "
                                                "duration from 1s to 1h"),
    ("[lifecycle]\nsettlement_window = '1d'\n", "lifecycle.settlement_window: expected"),
    ("[lifecycle]\ninvalid_share = 2\n", "lifecycle.invalid_share: expected a number"),
    ("[lifecycle]\npartial_approval_share = nan\n", "lifecycle.partial_approval_share"),
])
def test_the_new_lifecycle_keys_refuse_bad_values(tmp_path: Path, text: str,
                                                  fragment: str) -> None:
    test_load_logic.test_malformed_scenarios_are_one_line_naming_the_key(tmp_path, text,
                                                                         fragment)


def test_new_keys_leave_the_fates_an_older_seed_drew() -> None:
    """The new draws come last: a scenario without them plans what it planned before."""
    plain = LifecycleSpec(manual_capture_share=0.5, refund_share=0.3, dispute_share=0.1)
    mixed = dataclasses.replace(plain, partial_approval_share=0.5, invalid_share=0.5)
    for n in range(200):
        before, after = draw_fate(plain, 9, n), draw_fate(mixed, 9, n)
        assert dataclasses.replace(after, partial_approval=False, invalid_pick=None) == before


class LedgerModel:
    """The domain's own ledger answering the planner's operations, as the services do."""

    def __init__(self) -> None:
        self.book = Book()
        self.record: PaymentRecord | None = None

    def take(self, change: Change) -> Change:
        if change.changed:
            self.book.apply(change.entries)
            self.record = change.record
        return change

    def authorize(self, fate: Fate, amount: int) -> str:
        request = Authorization(PID, "run-1", "tok", amount, "USD", "m-1", "visa",
                                fate.capture, fate.partial_approval, 1_000_000, 1_000_000)
        change = self.take(domain_lifecycle.authorize(
            request, None, CardFunds(self.book, 0), SECOND, 3600 * SECOND))
        return change.answer.code

    def answer(self, op: PlannedOp) -> Change:
        request = OperationRequested(op_id=op.op_id, kind=op.kind, payment_id=PID,
                                     run_id="run-1", token="tok", amount=op.amount,
                                     final=op.final, reason_code=op.reason_code, won=op.won,
                                     requested_at=op.due_us)
        return self.take(domain_lifecycle.operate(request, self.record,
                                                  CardFunds(self.book, 0), op.due_us))


FATES = [
    Fate(),  # captured at once, nothing after
    Fate(after="refund", refund_share=0.4),
    Fate(after="refund"),
    Fate(after="dispute", dispute_reason="13.1", dispute_won=True),
    Fate(after="dispute", dispute_reason="4853"),
    Fate(capture=CaptureMode.MANUAL, parts=(0.5, 0.5), part_delays_s=(0.0,)),
    Fate(capture=CaptureMode.MANUAL, capture_share=0.6),
    Fate(capture=CaptureMode.MANUAL, increment=(0.0, 0.2), after="refund"),
    Fate(capture=CaptureMode.MANUAL, ending=Ending.VOID),
]


@pytest.mark.parametrize("fate", FATES)
@pytest.mark.parametrize("pick", [0.0, 0.25, 0.5, 0.75, 0.99])
def test_each_invalid_operation_is_one_the_ledger_refuses(fate: Fate, pick: float) -> None:
    """The planner's invalid operation, at the end of any life, is refused by the domain's
    ledger; every operation before it was accepted."""
    fate = dataclasses.replace(fate, invalid_pick=pick)
    model = LedgerModel()
    followups, _ = planner(fate)
    code = model.authorize(fate, 10_000)
    ops = followups.authorized(PID, code, 10_000, SECOND)
    answered = []
    while ops:
        op = ops.pop(0)
        change = model.answer(op)
        answered.append((op, change.answer.code))
        ops += followups.answered(op, change.answer.code, change.answer.amount,
                                  op.due_us + 1000)
    *valid, (invalid, refusal) = answered
    assert invalid.invalid and refusal in ("57", "13"), (invalid, refusal)
    assert all(code == "00" and not op.invalid for op, code in valid), valid


def test_a_declined_payment_gets_an_invalid_capture_and_an_expired_hold_one_too() -> None:
    followups, _ = planner(Fate(invalid_pick=0.3))
    [capture] = followups.authorized(PID, "51", 10_000, SECOND)
    assert capture.kind == OperationKind.CAPTURE and capture.invalid
    assert capture.due_us == 2 * SECOND
    assert followups.answered(capture, "57", 0, 3 * SECOND) == []  # one per payment
    expiring, _ = planner(Fate(capture=CaptureMode.MANUAL, ending=Ending.EXPIRE,
                               invalid_pick=0.0), ttl_s=5.0)
    [expiry] = expiring.authorized(PID, "00", 10_000, SECOND)
    [after] = expiring.answered(expiry, "00", 10_000, 7 * SECOND)
    assert after.invalid and after.kind == OperationKind.CAPTURE


def test_the_report_counts_invalid_operations_refused_and_accepted() -> None:
    load = OperationLoad(load_settings({}, env={}), "run-t", LifecycleSpec(), 1,
                         halted=lambda: False)
    load.payment_sent(PID, "tok", "EUR", 10_000, Fate(invalid_pick=0.0), 0)
    load.authorization(store.DoneEntry(PID, "approved", "00", 10_000, "EUR", 0,
                                       {"notified": SECOND}))
    [(_, _, void)] = load._due
    assert void.kind == OperationKind.VOID and void.invalid
    load._waiting[void.op_id] = load._due.pop()[2]
    with load.changed:
        load._answered(answer(void.op_id, "void", code="57"))
    report = lifecycle_report(load.metrics, 1.0)
    assert [(r.kind, r.answered, r.refused, r.accepted) for r in report.invalid] == [
        ("void", 1, 1, 0)]
    assert load.pending() == 0
