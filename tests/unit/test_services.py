"""Each pipeline service's decide step, built through the registry, on a fake Redis: what it
produces, where, under which key, and what it writes to Redis."""

from __future__ import annotations

import uuid
from typing import Any

import msgspec
import pytest

from paysim.domain import cards, decisions, money
from paysim.domain.cards import CardBlock, CardCipher
from paysim.domain.decisions import IssuerRates, Status
from paysim.domain.messages import (
    AUTHORIZED,
    NOTIFIED,
    PROCESSED,
    REQUESTED,
    CaptureMode,
    Merchant,
    Notification,
    PaymentAuthorized,
    PaymentEvent,
    PaymentOutcome,
    PaymentRequested,
)
from paysim.infra.config import Settings
from paysim.pipeline import ledger_store, shard_store, store
from paysim.pipeline.authorizer import Authorizer
from paysim.pipeline.notifications import WebhookEvent, event_id
from paysim.pipeline.notifier import Notifier
from paysim.pipeline.processor import Processor
from paysim.pipeline.registry import AUTHORIZER, NOTIFIER, PROCESSOR
from paysim.pipeline.service import Output, Rejected
from tests.unit.fakes import KEYS, FakePipeline, FakeRedis, pure_settings

# No random issuer answers unless a test asks for them.
SETTINGS = pure_settings({"issuer.decline_rate": 0, "issuer.fault_rate": 0,
                          "redis.outcome_ttl": 1234, "redis.ledger_ttl": 5678})
MERCHANT = Merchant(id="m-1", name="Corner Shop", mcc="5411", country="DE")
PAN = "4242424242424242"
GOOD_CARD = CardBlock(PAN, 12, 2040, "987")
CALLBACK = "https://shop.example/paysim-hook"


def new_id() -> str:
    return str(uuid.uuid4())


def decode(value: bytes, kind: type[Any]) -> Any:
    return msgspec.json.decode(value, type=kind)


# ============================================================================ authorizer


def authorizer(settings: Settings = SETTINGS) -> Authorizer:
    service = AUTHORIZER.build(settings, FakeRedis())  # type: ignore[arg-type]
    assert isinstance(service, Authorizer)
    return service


def requested(card: CardBlock = GOOD_CARD, *, amount: int = 2_500, currency: str = "EUR",
              callback_url: str | None = None, sealed_for: str | None = None) -> PaymentRequested:
    payment_id = new_id()
    sealed = CardCipher(KEYS.card_key).encrypt(card, (sealed_for or payment_id).encode())
    return PaymentRequested(payment_id=payment_id, run_id="run-a", seq=7, amount=amount,
                            currency=currency, merchant=MERCHANT, callback_url=callback_url,
                            stages={REQUESTED: 1_000}, card=sealed)


def test_an_approved_card_goes_on_to_the_issuer_keyed_by_its_token_without_card_data() -> None:
    item = requested(callback_url=CALLBACK)
    pipe = FakePipeline(FakeRedis())
    [output] = authorizer().decide(item, pipe)  # type: ignore[arg-type]

    token = cards.tokenize(PAN, KEYS.token_key)
    assert (output.topic, output.key) == (SETTINGS.topics.authorized, token)
    verdict = decode(output.value, PaymentAuthorized)
    assert verdict.token == token
    assert (verdict.payment_id, verdict.run_id, verdict.seq) == (item.payment_id, "run-a", 7)
    assert (verdict.amount, verdict.currency, verdict.merchant) == (2_500, "EUR", MERCHANT)
    assert verdict.callback_url == CALLBACK
    assert (verdict.masked_pan, verdict.network) == ("424242******4242", "visa")
    assert (verdict.exp_month, verdict.exp_year) == (12, 2040)
    assert verdict.test_reason is None
    assert verdict.stages[REQUESTED] == 1_000 and verdict.stages[AUTHORIZED] >= 1_000
    doc = msgspec.json.decode(output.value)
    assert not {"card", "cvv", "number"} & set(doc)
    assert PAN.encode() not in output.value
    assert GOOD_CARD.cvv not in [value for value in doc.values() if isinstance(value, str)]
    assert pipe.commands == []  # nothing final yet: no Redis write


def test_the_capture_mode_and_partial_approval_go_on_to_the_issuer() -> None:
    item = msgspec.structs.replace(requested(), capture=CaptureMode.MANUAL,
                                   partial_approval=True)
    [output] = authorizer().decide(item, FakePipeline(FakeRedis()))  # type: ignore[arg-type]
    verdict = decode(output.value, PaymentAuthorized)
    assert (verdict.capture, verdict.partial_approval) == (CaptureMode.MANUAL, True)


def test_a_test_card_carries_its_forced_issuer_answer() -> None:
    item = requested(CardBlock("4000000000000002", 12, 2040, "123"))
    [output] = authorizer().decide(item, FakePipeline(FakeRedis()))  # type: ignore[arg-type]
    assert output.topic == SETTINGS.topics.authorized
    assert decode(output.value, PaymentAuthorized).test_reason == "05"


@pytest.mark.parametrize(("card", "amount", "currency", "reason", "masked"), [
    (CardBlock("4242424242424241", 12, 2040, "123"), 2_500, "EUR", "14", "424242******4241"),
    (CardBlock("4242abcd42424242", 12, 2040, "123"), 2_500, "EUR", "14", None),
    (CardBlock(PAN, 1, 2020, "123"), 2_500, "EUR", "54", "424242******4242"),
    (CardBlock(PAN, 12, 2040, "12"), 2_500, "EUR", "N7", "424242******4242"),
    (GOOD_CARD, 0, "EUR", "13", "424242******4242"),
    (GOOD_CARD, money.minor_units(10_000.0, "EUR") + 1, "EUR", "13", "424242******4242"),
    (GOOD_CARD, 2_500, "XYZ", "12", "424242******4242"),
])
def test_a_failing_card_check_is_a_final_decline_on_results(
        card: CardBlock, amount: int, currency: str, reason: str, masked: str | None) -> None:
    item = requested(card, amount=amount, currency=currency)
    pipe = FakePipeline(FakeRedis())
    [output] = authorizer().decide(item, pipe)  # type: ignore[arg-type]

    assert (output.topic, output.key) == (SETTINGS.topics.results, item.payment_id)
    outcome = decode(output.value, PaymentOutcome)
    assert outcome.status == Status.DECLINED
    assert outcome.reason_code == reason
    assert outcome.reason_text == decisions.reason_text(reason)
    assert outcome.masked_pan == masked
    assert outcome.token is None
    assert AUTHORIZED in outcome.stages
    assert card.number.encode() not in output.value
    # The seed's contract, written by the service that decided.
    assert pipe.commands == [("SET", f"payment_result_{item.payment_id}", "declined", "EX", 1234)]


@pytest.mark.parametrize("item", [
    requested(sealed_for=new_id()),  # sealed for another payment
    msgspec.structs.replace(requested(), card="not base64 at all!"),
    msgspec.structs.replace(requested(), card=CardCipher(bytes(32)).encrypt(GOOD_CARD, b"x")),
])
def test_a_card_block_that_does_not_decrypt_is_rejected(item: PaymentRequested) -> None:
    pipe = FakePipeline(FakeRedis())
    with pytest.raises(Rejected, match="card block cannot be decrypted"):
        authorizer().decide(item, pipe)  # type: ignore[arg-type]
    assert pipe.commands == []


@pytest.mark.parametrize("url", ["ftp://shop.example/hook", "https://", "http://a b.example/",
                                 "javascript:alert(1)"])
def test_a_bad_callback_url_is_rejected(url: str) -> None:
    pipe = FakePipeline(FakeRedis())
    with pytest.raises(Rejected, match="callback_url"):
        authorizer().decide(requested(callback_url=url), pipe)  # type: ignore[arg-type]
    assert pipe.commands == []


@pytest.mark.parametrize(("changes", "field"), [
    ({"run_id": f"run {PAN}"}, "run_id"),
    ({"merchant": Merchant(id="m-1", name=f"Shop {PAN}", mcc="5411", country="DE")},
     "merchant.name"),
    ({"merchant": Merchant(id="4242-4242-4242-4242", name="Shop", mcc="5411", country="DE")},
     "merchant.id"),
    ({"callback_url": f"{CALLBACK}?card={PAN}"}, "callback_url"),
])
def test_a_card_number_in_a_free_field_is_rejected_without_echoing_it(
        changes: dict[str, Any], field: str) -> None:
    # The card block decrypts and the card is good: only the free field is wrong.
    item = msgspec.structs.replace(requested(), **changes)
    pipe = FakePipeline(FakeRedis())
    with pytest.raises(Rejected) as caught:
        authorizer().decide(item, pipe)  # type: ignore[arg-type]
    assert str(caught.value) == f"{field} is not allowed to hold a card number"
    assert pipe.commands == []


# ============================================================================ processor


def processor(client: FakeRedis, settings: Settings = SETTINGS) -> Processor:
    service = PROCESSOR.build(settings, client)  # type: ignore[arg-type]
    assert isinstance(service, Processor)
    return service


def authorized(*, run_id: str = "run-a", test_reason: str | None = None, currency: str = "EUR",
               amount: int = 4_200, pan: str = PAN) -> PaymentAuthorized:
    return PaymentAuthorized(
        payment_id=new_id(), run_id=run_id, seq=3, amount=amount, currency=currency,
        merchant=MERCHANT, stages={REQUESTED: 1_000, AUTHORIZED: 2_000},
        token=cards.tokenize(pan, KEYS.token_key), masked_pan=cards.mask(pan), network="visa",
        exp_month=12, exp_year=2040, test_reason=test_reason)


def decide_batch(service: Processor | Notifier, items: list[Any],
                 client: FakeRedis) -> tuple[list[Output], FakePipeline]:
    """prepare, then decide each item into one pipeline and finish it, as the loop does."""
    pipe = FakePipeline(client)
    service.prepare(items)
    outputs = [out for item in items for out in service.decide(item, pipe)]  # type: ignore[arg-type]
    service.finish(pipe)
    return outputs, pipe


def as_sets(commands: list[tuple[Any, ...]]) -> list[tuple[Any, ...]]:
    """The commands, a batch's decisions written as one script call (store.write_decisions)
    read as the SETs it makes."""
    found: list[tuple[Any, ...]] = []
    for command in commands:
        if command[0] != "EVAL":
            found.append(command)
            continue
        count = command[2]
        keys, (ttl, *values) = command[3:3 + count], command[3 + count:]
        found += [("SET", key, value, "EX", ttl) for key, value in zip(keys, values, strict=True)]
    return found


def answers(outputs: list[Output]) -> list[str]:
    """The reason codes on the results topic (the events beside them left out)."""
    return [decode(output.value, PaymentOutcome).reason_code for output in outputs
            if output.topic == SETTINGS.topics.results]


def test_the_ledgers_answers_become_outcomes_on_results_keyed_by_token() -> None:
    client = FakeRedis()
    items = [authorized(pan=PAN), authorized(test_reason="51"), authorized(test_reason="61")]
    outputs, pipe = decide_batch(processor(client), items, client)

    [script] = client.scripts
    assert script.source == ledger_store.APPLY_LUA
    [(keys, args)] = script.calls
    # One call for every bucket on a single Redis: their holds sets, windows sets, then cards.
    buckets = sorted({shard_store.bucket_of("run-a", item.token) for item in items})
    assert keys[:2 * len(buckets)] == [*map(ledger_store.holds_key, buckets),
                                       *map(ledger_store.windows_key, buckets)]
    assert args[:2] == [5678, len(buckets)]  # the ledger's TTL
    for item in items:  # every card's book and every record, kept together
        assert ledger_store.card_key("run-a", item.token) in keys
        assert ledger_store.record_key("run-a", item.token, item.payment_id) in keys

    results = [output for output in outputs if output.topic == SETTINGS.topics.results]
    assert len(results) == len(items)
    statuses = []
    for item, output in zip(items, results, strict=True):
        assert output.key == item.token
        outcome = decode(output.value, PaymentOutcome)
        assert outcome.payment_id == item.payment_id
        assert (outcome.token, outcome.masked_pan, outcome.network) == (
            item.token, item.masked_pan, "visa")
        assert outcome.reason_text == decisions.reason_text(outcome.reason_code)
        assert outcome.stages[AUTHORIZED] == 2_000 and PROCESSED in outcome.stages
        statuses.append(outcome.status)
    assert answers(results) == ["00", "51", "61"]
    assert statuses == [Status.APPROVED, Status.DECLINED, Status.DECLINED]
    assert as_sets(pipe.commands) == [
        ("SET", f"payment_result_{item.payment_id}", status, "EX", 1234)
        for item, status in zip(items, ["approved", "declined", "declined"], strict=True)]
    # The approved, automatically captured payment's one event, keyed by its token.
    events = [decode(o.value, PaymentEvent) for o in outputs
              if o.topic == SETTINGS.topics.events]
    assert [(e.kind, e.payment_id, e.amount, e.mti, e.state) for e in events] == [
        ("captured", items[0].payment_id, 4_200, "0200/0210", "captured")]


@pytest.mark.parametrize("cluster", [False, True])
def test_a_batchs_decisions_are_the_sets_the_seed_asks_for(cluster: bool) -> None:
    pipe = FakePipeline(FakeRedis())
    store.write_decisions(pipe, [("p-1", "approved"), ("p-2", "declined")], 60, cluster)
    # One script call on a single Redis; a SET each on a cluster (the keys' slots differ).
    assert [command[0] for command in pipe.commands] == (["SET", "SET"] if cluster else ["EVAL"])
    assert as_sets(pipe.commands) == [("SET", "payment_result_p-1", "approved", "EX", 60),
                                      ("SET", "payment_result_p-2", "declined", "EX", 60)]
    store.write_decisions(pipe, [], 60, cluster)
    assert len(pipe.commands) == (2 if cluster else 1)  # an empty batch writes nothing


def test_a_card_written_meanwhile_is_read_and_decided_again() -> None:
    client = FakeRedis()
    calls = []

    def first_conflicts(keys: list[str], args: list[Any]) -> list[int]:
        calls.append(keys)
        return [1] if len(calls) == 1 else []

    client.script_answers = first_conflicts  # type: ignore[assignment]
    outputs, _ = decide_batch(processor(client), [authorized()], client)
    assert len(calls) == 2 and answers(outputs) == ["00"]


@pytest.mark.parametrize("forced", ["05", "41", "43", "96"])
def test_a_forced_issuer_answer_skips_the_ledger(forced: str) -> None:
    client = FakeRedis()
    forced_item, plain = authorized(test_reason=forced), authorized()
    outputs, pipe = decide_batch(processor(client), [forced_item, plain], client)
    assert answers(outputs) == [forced, "00"]
    [(keys, _)] = client.scripts[0].calls
    assert ledger_store.record_key("run-a", plain.token, plain.payment_id) in keys
    assert not any(forced_item.payment_id in key for key in keys)
    assert ("SET", f"payment_result_{forced_item.payment_id}", "declined", "EX", 1234) in (
        as_sets(pipe.commands))


def test_a_batch_the_issuer_answers_alone_calls_no_script() -> None:
    client = FakeRedis()
    outputs, _ = decide_batch(processor(client), [authorized(test_reason="43")], client)
    assert answers(outputs) == ["43"]
    assert client.scripts[0].calls == []


@pytest.mark.parametrize(("rates", "answer"), [
    (IssuerRates(fault_rate=1.0), "91"),
    (IssuerRates(decline_rate=1.0), "05"),
    (IssuerRates(outages=((0, 2**62),)), "91"),  # an outage open now
    (IssuerRates(decline_rate=0.0, fault_rate=0.0), "00"),
])
def test_the_runs_issuer_rates_are_read_from_redis(rates: IssuerRates, answer: str) -> None:
    client = FakeRedis()
    client.strings[store.run_issuer_key("run-x")] = store.encode_run_issuer(rates)
    # The processor's own settings say the opposite: the run's setting wins.
    settings = pure_settings({"issuer.decline_rate": 0, "issuer.fault_rate": 1.0})
    items = [authorized(run_id="run-x"), authorized(run_id="run-x")]
    outputs, _ = decide_batch(processor(client, settings), items, client)
    assert answers(outputs) == [answer, answer]


def test_a_run_without_rates_gets_the_processors_settings() -> None:
    client = FakeRedis()
    client.strings[store.run_issuer_key("run-x")] = store.encode_run_issuer(
        IssuerRates(fault_rate=1.0))
    client.strings[store.run_issuer_key("run-garbled")] = b"{not json"
    items = [authorized(run_id="run-x"), authorized(run_id="run-plain"),
             authorized(run_id="run-garbled")]
    settings = pure_settings({"issuer.decline_rate": 1.0, "issuer.fault_rate": 0})
    outputs, _ = decide_batch(processor(client, settings), items, client)
    assert answers(outputs) == ["91", "05", "05"]


def test_each_runs_rates_are_read_once() -> None:
    client = FakeRedis()
    service = processor(client)
    decide_batch(service, [authorized(run_id="run-1"), authorized(run_id="run-2")], client)
    decide_batch(service, [authorized(run_id="run-2"), authorized(run_id="run-3")], client)
    assert [sorted(keys) for keys in client.mget_calls] == [
        [store.run_issuer_key("run-1"), store.run_issuer_key("run-2")],
        [store.run_issuer_key("run-3")]]


def test_an_unknown_currency_is_rejected_and_the_rest_settle() -> None:
    client = FakeRedis()
    service = processor(client)
    bad, good = authorized(currency="XYZ"), authorized()
    service.prepare([bad, good])
    pipe = FakePipeline(client)
    with pytest.raises(Rejected, match="unknown currency 'XYZ'"):
        service.decide(bad, pipe)  # type: ignore[arg-type]
    output, *_events = service.decide(good, pipe)  # type: ignore[arg-type]
    service.finish(pipe)
    assert answers([output]) == ["00"]
    [(keys, _)] = client.scripts[0].calls
    assert not any(bad.payment_id in key for key in keys)
    assert as_sets(pipe.commands) == [("SET", f"payment_result_{good.payment_id}", "approved",
                                       "EX", 1234)]


# ============================================================================ notifier


def notifier(client: FakeRedis) -> Notifier:
    service = NOTIFIER.build(SETTINGS, client)  # type: ignore[arg-type]
    assert isinstance(service, Notifier)
    return service


def outcome(*, run_id: str = "run-a", callback_url: str | None = CALLBACK,
            status: str = Status.APPROVED, reason: str = "00") -> PaymentOutcome:
    return PaymentOutcome(
        payment_id=new_id(), run_id=run_id, seq=11, amount=990, currency="JPY",
        merchant=MERCHANT, callback_url=callback_url,
        stages={REQUESTED: 1_000, AUTHORIZED: 2_000, PROCESSED: 3_000}, status=status,
        reason_code=reason, reason_text=decisions.reason_text(reason), token="tok_abc",
        masked_pan="424242******4242", network="visa")


def test_the_outcome_is_written_once_with_its_notified_time_and_the_client_notified() -> None:
    client = FakeRedis()
    item = outcome(status=Status.DECLINED, reason="51")
    [output], pipe = decide_batch(notifier(client), [item], client)

    assert (output.topic, output.key) == (SETTINGS.topics.notifications, item.payment_id)
    note = decode(output.value, Notification)
    assert note.event_id == event_id(item.payment_id)
    assert (note.payment_id, note.run_id, note.status, note.reason_code) == (
        item.payment_id, "run-a", "declined", "51")
    assert (note.amount, note.currency, note.masked_pan) == (990, "JPY", "424242******4242")

    key = store.outcome_key(item.payment_id)
    [hset] = [c for c in pipe.commands if c[:2] == ("HSET", key)]
    fields = dict(zip(hset[2::2], hset[3::2], strict=True))
    assert fields["status"] == "declined"
    assert (fields["notification"], fields["webhook_status"]) == ("sent", "pending")
    doc = decode(fields["doc"], PaymentOutcome)
    assert doc.stages == {**item.stages, NOTIFIED: note.notified_at}
    assert msgspec.structs.replace(doc, stages=item.stages) == item
    assert ("EXPIRE", key, 1234) in pipe.commands


def test_the_payment_goes_on_its_runs_stream() -> None:
    client = FakeRedis()
    item = outcome()
    [output], pipe = decide_batch(notifier(client), [item], client)
    stream = store.run_stream_key("run-a")
    [xadd] = [c for c in pipe.commands if c[:2] == ("XADD", stream)]
    assert xadd[2:4] == ("*", store.DONE_BATCH_FIELD)
    [entry] = store.read_done_entries({store.DONE_BATCH_FIELD.encode(): xadd[4]})
    assert (entry.payment_id, entry.status, entry.reason_code, entry.seq) == (
        item.payment_id, "approved", "00", 11)
    assert entry.stages[NOTIFIED] == decode(output.value, Notification).notified_at
    assert ("EXPIRE", stream, 1234) in pipe.commands


def test_a_webhook_is_queued_only_for_a_payment_with_a_callback_url() -> None:
    client = FakeRedis()
    with_url, without = outcome(), outcome(callback_url=None)
    outputs, pipe = decide_batch(notifier(client), [with_url, without], client)

    [queued] = [c for c in pipe.commands if c[:2] == ("XADD", store.WEBHOOK_STREAM)]
    webhook = queued[3]
    assert webhook["url"] == CALLBACK
    assert webhook["payment_id"] == with_url.payment_id
    assert webhook["event_id"] == event_id(with_url.payment_id)
    # The notification, as on the topic, in Stripe's envelope.
    body = decode(webhook["body"], WebhookEvent[Notification])
    assert body.data.object == decode(outputs[0].value, Notification)
    assert body.id == webhook["event_id"]
    [hset_without] = [c for c in pipe.commands
                      if c[:2] == ("HSET", store.outcome_key(without.payment_id))]
    assert hset_without[-2:] == ("webhook_status", "none")


def test_each_run_gets_one_stream_entry_and_expiry_per_batch() -> None:
    client = FakeRedis()
    service = notifier(client)
    batch = [outcome(run_id="run-1"), outcome(run_id="run-1"), outcome(run_id="run-2")]

    def stream_expires(pipe: FakePipeline) -> list[str]:
        return [c[1] for c in pipe.commands if c[0] == "EXPIRE" and c[1].startswith("paysim:run:")]

    _, first = decide_batch(service, batch, client)
    _, second = decide_batch(service, batch[:1], client)
    assert stream_expires(first) == [store.run_stream_key("run-1"), store.run_stream_key("run-2")]
    assert stream_expires(second) == [store.run_stream_key("run-1")]
    entries = [c for c in first.commands if c[0] == "XADD" and c[1].startswith("paysim:run:")]
    assert [(c[1], len(store.read_done_entries({c[3].encode(): c[4]}))) for c in entries] == [
        (store.run_stream_key("run-1"), 2), (store.run_stream_key("run-2"), 1)]


def test_a_webhook_is_queued_after_its_outcome_is_written() -> None:
    """The dispatcher records a delivery on the outcome hash: were the webhook queued first,
    the notifier's write could land after the delivery and set it back to pending."""
    client = FakeRedis()
    with_url = outcome()
    _, pipe = decide_batch(notifier(client), [with_url, outcome(callback_url=None)], client)
    written = pipe.commands.index(
        next(c for c in pipe.commands if c[:2] == ("HSET", store.outcome_key(with_url.payment_id))))
    queued = pipe.commands.index(
        next(c for c in pipe.commands if c[:2] == ("XADD", store.WEBHOOK_STREAM)))
    assert written < queued


def test_a_batch_is_one_script_call_and_an_aborted_batch_leaves_nothing_behind() -> None:
    client = FakeRedis()
    service = notifier(client)
    aborted = FakePipeline(client)
    service.prepare([outcome()])
    service.decide(outcome(), aborted)  # type: ignore[arg-type]
    # The batch's transaction aborted before finish: the next batch starts afresh.
    items = [outcome(), outcome(callback_url=None)]
    calls: list[tuple[Any, ...]] = []
    pipe = FakePipeline(client)
    pipe.execute_command = lambda *args: calls.append(args) or pipe  # type: ignore[method-assign]
    service.prepare(items)
    for item in items:
        service.decide(item, pipe)  # type: ignore[arg-type]
    service.finish(pipe)  # type: ignore[arg-type]
    [script, webhook] = calls
    assert script[:3] == ("EVAL", store.NOTIFIED_LUA, 3)  # one run: one stream entry
    assert script[3:6] == (store.outcome_key(items[0].payment_id),
                           store.outcome_key(items[1].payment_id), store.run_stream_key("run-a"))
    assert webhook[:2] == ("XADD", store.WEBHOOK_STREAM)
