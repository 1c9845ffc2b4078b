"""The conformance cases and their judgement, and run-all's external services (pure: no
broker, no Redis)."""

from __future__ import annotations

import dataclasses

import msgspec

from paysim.domain import cards, decisions
from paysim.domain.messages import (
    NOTIFIED,
    PROCESSED,
    DeadLetter,
    PaymentAuthorized,
    PaymentOutcome,
    PaymentRequested,
    encode,
)
from paysim.domain.webhooks import sign
from paysim.ops.conformance_authorizer import (
    NETWORK_CARDS,
    DeclinedAtEdge,
    PassedOn,
    authorizer_suite,
)
from paysim.ops.conformance_cases import (
    Observed,
    Output,
    Sent,
    judge_case,
    judge_transactions,
    processor_suite,
)
from paysim.ops.conformance_notifier import notifier_suite
from paysim.ops.run_all import external_services
from paysim.ops.supervisor import Supervisor
from paysim.pipeline import registry, store
from paysim.pipeline.authorizer import authorize
from paysim.pipeline.notifications import notification_for, webhook_body
from paysim.stack.process import ProcessRecord
from tests.helpers import assert_one_line_error, run_paysim
from tests.unit.fakes import KEYS, FakeRedis, pure_settings

# README's reason table: the codes the processor decides (the rest are the authorizer's or
# the ledger service's operations').
PROCESSOR_CODES = {"00", "10", "05", "41", "43", "51", "61", "91", "96"}


def test_the_suite_covers_every_processor_reason_code() -> None:
    suite = processor_suite("conformance-test")
    codes = {expect.code for case in suite.cases for expect in case.expects.values() if expect}
    assert codes == PROCESSOR_CODES
    assert sum(case.dead_letters for case in suite.cases) == 5
    assert any(send.aborted for case in suite.cases for send in case.sends)


def judge(case, sent: list[Sent], observed: Observed):
    return judge_case(case, sent, observed, "payments.authorized", "processor")


def _case(name: str):
    return next(case for case in processor_suite("conformance-test").cases if case.name == name)


def _observed(results: dict[str, list[Output]], redis: dict[str, str | None],
              letters: list[Output] | None = None) -> Observed:
    return Observed(True, "", results, letters or [], redis, {}, {})


def _outcome(payment: PaymentAuthorized, status: str, code: str, approved: int | None,
             offset: int = 0) -> Output:
    outcome = PaymentOutcome(
        payment_id=payment.payment_id, run_id=payment.run_id, seq=payment.seq,
        amount=payment.amount, currency=payment.currency, merchant=payment.merchant,
        stages={**payment.stages, PROCESSED: 3}, status=status, reason_code=code,
        reason_text=decisions.reason_text(code), token=payment.token,
        masked_pan=payment.masked_pan, network=payment.network, approved_amount=approved)
    return Output("payments.results", 0, offset, payment.token.encode(), encode(outcome),
                  "results")


def test_a_decision_passes_only_with_its_record_and_the_seed_key() -> None:
    case = _case("41 lost card (test card)")
    payment = msgspec.json.decode(case.sends[0].value, type=PaymentAuthorized)
    good = _outcome(payment, "declined", "41", None)
    passed = judge(case, [], _observed({payment.payment_id: [good]},
                                       {payment.payment_id: "declined"}))
    assert passed.passed, passed.detail
    assert passed.detail == "declined 41: 1 record"
    no_key = judge(case, [], _observed({payment.payment_id: [good]},
                                       {payment.payment_id: None}))
    assert not no_key.passed
    assert f"payment_result_{payment.payment_id} is None" in no_key.detail
    wrong = judge(case, [], _observed({payment.payment_id: [
        _outcome(payment, "declined", "05", None)]}, {payment.payment_id: "declined"}))
    assert not wrong.passed
    assert "decided declined 05" in wrong.detail


def test_a_redelivered_payment_with_two_decisions_fails() -> None:
    case = _case("redelivered record: one decision, spent once")
    twice, after = (msgspec.json.decode(send.value, type=PaymentAuthorized)
                    for send in (case.sends[0], case.sends[2]))
    answers = {twice.payment_id: "approved", after.payment_id: "approved"}
    same = [_outcome(twice, "approved", "00", twice.amount, 0),
            _outcome(twice, "approved", "00", twice.amount, 1)]
    later = [_outcome(after, "approved", "00", after.amount, 2)]
    assert judge(case, [], _observed({twice.payment_id: same,
                                      after.payment_id: later}, answers)).passed
    spent_twice = [_outcome(after, "declined", "61", None, 2)]
    verdict = judge(case, [], _observed({twice.payment_id: same,
                                         after.payment_id: spent_twice}, answers))
    assert not verdict.passed
    assert "decided declined 61" in verdict.detail


def test_a_poison_record_needs_a_dead_letter_naming_it() -> None:
    case = _case("dead letter: not JSON")
    sent = [Sent(case.sends[0], partition=2, offset=7)]
    letter = DeadLetter(service="processor", source_topic="payments.authorized", partition=2,
                        offset=7, reason="not valid JSON", key=None, original=None, at=1)
    found = Output("payments.dlq", 0, 0, None, encode(letter), "dlq")
    assert judge(case, sent, _observed({}, {}, [found])).passed
    elsewhere = Output("payments.dlq", 0, 0, None, encode(
        msgspec.structs.replace(letter, offset=8)), "dlq")
    verdict = judge(case, sent, _observed({}, {}, [elsewhere]))
    assert not verdict.passed
    assert verdict.detail == "no dead letter for payments.authorized 2/7"


def test_outputs_without_a_marker_after_them_are_outside_transactions() -> None:
    output = Output("payments.results", 0, 4, b"k", b"{}", "results")
    marked = Observed(True, "", {"p": [output]}, [], {}, {("payments.results", 0): {4}},
                      {("payments.results", 0): 6})
    assert judge_transactions(marked).passed
    plain = Observed(True, "", {"p": [output]}, [], {}, {("payments.results", 0): {4, 5}},
                     {("payments.results", 0): 6})
    verdict = judge_transactions(plain)
    assert not verdict.passed
    assert "1 of 1 outputs written outside a transaction" in verdict.detail


def test_external_services_come_from_the_supervisor_record() -> None:
    record = ProcessRecord(pid=1, address="", version="", started_at=0, boot_ticks=0,
                           details={"counts": {}, "external": ["processor", "nonsense"]})
    assert external_services(record) == ("processor",)
    assert external_services(None) == ()
    assert "http" not in registry.EXTERNAL_NAMES


def test_conformance_of_a_service_without_cases_is_bad_input() -> None:
    assert_one_line_error(run_paysim("conformance", "ledger"), 2, "ledger")


def test_run_all_starts_no_child_for_an_external_service(tmp_path) -> None:
    settings = pure_settings({"services.dir": str(tmp_path)})
    supervisor = Supervisor(settings, {"processor": 2}, lambda _: None, ("processor",))
    names = [child.name for child in supervisor.children]
    assert names == registry.instance_names({"processor": 2}, ("processor",))
    assert "processor-0" not in names and "authorizer-0" in names


def test_external_marks_are_read_back_and_cleared() -> None:
    client = FakeRedis()
    store.mark_external(client, ("processor", "notifier"), 10)
    assert store.external_services(client) == {"processor", "notifier"}
    store.mark_external(client, (), 10)
    assert store.external_services(client) == set()
    client.set(store.EXTERNAL_KEY, b"{not json")
    assert store.external_services(client) == set()


# ------------------------------------------------------------------ the authorizer's suite

AUTHORIZER_CODES = {"14", "54", "N7", "12", "13"}  # README's table: the authorizer's codes


def _authorizer_cases():
    return authorizer_suite("conformance-test", KEYS).cases


def test_the_authorizer_suite_covers_its_codes_networks_and_test_cards() -> None:
    expects = [e for case in _authorizer_cases() for e in case.expects.values() if e]
    assert {e.code for e in expects if isinstance(e, DeclinedAtEdge)} == AUTHORIZER_CODES
    passed = [e for e in expects if isinstance(e, PassedOn)]
    assert {e.network for e in passed} == set(NETWORK_CARDS)
    assert {e.test_reason for e in passed} == {None, *decisions.TEST_CARDS.values()}
    assert sum(case.dead_letters for case in _authorizer_cases()) == 9
    assert authorizer_suite("conformance-test", KEYS).withhold_original


def _authorizers_outputs(case) -> tuple[dict[str, list[Output]], dict[str, str | None]]:
    """What paysim's own authorizer decides for the case's records (its pure decision)."""
    results: dict[str, list[Output]] = {}
    seed: dict[str, str | None] = {}
    cipher = cards.CardCipher(KEYS.card_key)
    for offset, send in enumerate(case.sends):
        request = msgspec.json.decode(send.value, type=PaymentRequested)
        card = cipher.decrypt(request.card, request.payment_id.encode())
        verdict = authorize(request, card, pure_settings(), KEYS.token_key)
        if isinstance(verdict, PaymentAuthorized):
            output = Output("payments.authorized", 0, offset, verdict.token.encode(),
                            encode(verdict), "authorized")
        else:
            output = Output("payments.results", 0, offset, verdict.payment_id.encode(),
                            encode(verdict), "results")
            seed[verdict.payment_id] = verdict.status
        results.setdefault(request.payment_id, []).append(output)
    return results, seed


def test_paysims_authorizer_decisions_pass_every_decision_case() -> None:
    decided = [case for case in _authorizer_cases()
               if not case.dead_letters and all(case.expects.values())]
    assert len(decided) == 12
    for case in decided:
        results, seed = _authorizers_outputs(case)
        verdict = judge_case(case, [], _observed(results, seed), "payments.requested",
                             "authorizer")
        assert verdict.passed, (case.name, verdict.detail)


def test_an_authorizer_that_skips_the_cvv_check_fails_the_n7_cases() -> None:
    case = next(c for c in _authorizer_cases() if c.name.startswith("N7") and "Visa" in c.name)
    request = msgspec.json.decode(case.sends[0].value, type=PaymentRequested)
    card = cards.CardCipher(KEYS.card_key).decrypt(request.card, request.payment_id.encode())
    lenient = authorize(request, msgspec.structs.replace(card, cvv="123"), pure_settings(),
                        KEYS.token_key)
    output = Output("payments.authorized", 0, 0, b"k", encode(lenient), "authorized")
    verdict = judge_case(case, [], _observed({request.payment_id: [output]}, {}),
                         "payments.requested", "authorizer")
    assert not verdict.passed
    assert verdict.detail == ("passed on to the issuer (1 record on the authorized topic); "
                              "expected declined N7")


def test_a_declined_record_carrying_the_card_number_fails() -> None:
    case = next(c for c in _authorizer_cases() if c.name == "14 invalid card number (Luhn)")
    results, seed = _authorizers_outputs(case)
    [(payment_id, [output])] = results.items()
    outcome = msgspec.json.decode(output.value, type=PaymentOutcome)
    leaky = msgspec.structs.replace(outcome, reason_text="card 4242424242424241 failed")
    verdict = judge_case(case, [], _observed(
        {payment_id: [dataclasses.replace(output, value=encode(leaky))]}, seed),
        "payments.requested", "authorizer")
    assert not verdict.passed
    assert "carries the card number or CVV" in verdict.detail


def test_an_authorizer_dead_letter_keeping_the_record_fails() -> None:
    case = next(c for c in _authorizer_cases() if c.name == "dead letter: not JSON")
    sent = [Sent(case.sends[0], partition=1, offset=3)]
    letter = DeadLetter(service="authorizer", source_topic="payments.requested", partition=1,
                        offset=3, reason="not valid JSON", key=None, original=None, at=1)
    kept = msgspec.structs.replace(letter, original="e3RoaXM=")
    for found, passes in ((letter, True), (kept, False)):
        verdict = judge_case(case, sent, _observed({}, {}, [
            Output("payments.dlq", 0, 0, None, encode(found), "dlq")]),
            "payments.requested", "authorizer", withhold_original=True)
        assert verdict.passed is passes, verdict.detail


# ------------------------------------------------------------------ the notifier's suite


def _told(outcome: PaymentOutcome, event: str, offset: int) -> Output:
    notification = notification_for(outcome, event, 5)
    return Output("payments.notifications", 0, offset, outcome.payment_id.encode(),
                  encode(notification), "notifications")


def test_a_notifier_redelivery_needs_one_event_id_and_its_stored_outcome() -> None:
    case = next(c for c in notifier_suite("conformance-test").cases
                if c.name == "redelivered record: one event id")
    outcome = msgspec.json.decode(case.sends[0].value, type=PaymentOutcome)
    pid = outcome.payment_id
    notified = msgspec.structs.replace(outcome, stages={**outcome.stages, NOTIFIED: 5})
    stored = {pid: ({"status": b"approved", "doc": encode(notified)}, 3600)}
    entry = store.DoneEntry(pid, outcome.status, outcome.reason_code, outcome.amount,
                            outcome.currency, outcome.seq, notified.stages)
    done = {pid: [encode(entry)]}
    same = [_told(outcome, "evt_1", 0), _told(outcome, "evt_1", 1)]
    observed = Observed(True, "", {pid: same}, [], {}, {}, {}, stored, done)
    assert judge_case(case, [], observed, "payments.results", "notifier").passed
    observed.results = {pid: [_told(outcome, "evt_1", 0), _told(outcome, "evt_2", 1)]}
    verdict = judge_case(case, [], observed, "payments.results", "notifier")
    assert "2 notifications with 2 event ids" in verdict.detail
    observed.results, observed.done = {pid: same}, {}
    verdict = judge_case(case, [], observed, "payments.results", "notifier")
    assert verdict.detail == f"no entry for payment {pid} on its run's stream"


def test_a_notifier_webhook_must_be_signed_with_the_webhook_key() -> None:
    suite = notifier_suite("conformance-test", KEYS, "http://127.0.0.1:1/conformance/x")
    case = next(c for c in suite.cases if c.name == "webhook: signed, to the callback_url")
    outcome = msgspec.json.decode(case.sends[0].value, type=PaymentOutcome)
    assert outcome.callback_url == f"http://127.0.0.1:1/conformance/x/{outcome.payment_id}"
    pid = outcome.payment_id
    notified = msgspec.structs.replace(outcome, stages={**outcome.stages, NOTIFIED: 5})
    entry = store.DoneEntry(pid, outcome.status, outcome.reason_code, outcome.amount,
                            outcome.currency, outcome.seq, notified.stages)
    body = webhook_body(notification_for(outcome, "evt_1", 5_000_000))
    observed = Observed(True, "", {pid: [_told(outcome, "evt_1", 0)]}, [], {}, {}, {},
                        {pid: ({"status": b"declined", "doc": encode(notified)}, 3600)},
                        {pid: [encode(entry)]},
                        {pid: [(sign(body, KEYS.webhook_secret), body)]})
    verdict = judge_case(case, [], observed, "payments.results", "notifier")
    assert verdict.passed, verdict.detail
    observed.webhooks = {pid: [(sign(body, b"another key"), body)]}
    verdict = judge_case(case, [], observed, "payments.results", "notifier")
    assert verdict.detail.startswith("webhook signature:")
    observed.webhooks = {}
    verdict = judge_case(case, [], observed, "payments.results", "notifier")
    assert verdict.detail == "no webhook posted to the payment's callback_url"
