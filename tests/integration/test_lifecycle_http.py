"""A card payment's life through the HTTP API, on the real broker and Redis with run-all's
services: every row of the operations table, the invalid transitions (409 naming the state),
the events on payments.events, the webhooks, and an audit that balances afterwards."""

from __future__ import annotations

import json
import threading
import urllib.error
import urllib.request
import uuid
from collections.abc import Iterator
from http.server import ThreadingHTTPServer
from typing import Any, ClassVar

import pytest
import redis
import stripe
from confluent_kafka import Producer

from paysim.domain import cards, decisions, fees, money
from paysim.domain.messages import (
    Codec,
    Merchant,
    OperationKind,
    OperationRequested,
    PaymentAuthorized,
    PaymentEvent,
    encode,
    now_us,
)
from paysim.domain.settlement import Batch
from paysim.infra.config import Settings
from paysim.infra.kafka import client_config, read_topic
from paysim.infra.secrets import load_keys
from paysim.infra.waiting import wait_until
from paysim.pipeline import ledger_store, store
from tests.helpers import free_port
from tests.integration.pipeline_helpers import paysim, run_done_entries, send
from tests.integration.test_pipeline import _Receiver

VISA = "4242424242424242"
RUN = f"life-{uuid.uuid4().hex[:8]}"


def call(settings: Settings, method: str, path: str, body: dict[str, Any] | None = None,
         key: str | None = None) -> tuple[int, dict[str, Any], dict[str, str]]:
    headers = {"Content-Type": "application/json"}
    if key is not None:
        headers["Idempotency-Key"] = key
    request = urllib.request.Request(
        f"http://{settings.http.host}:{settings.http.port}{path}", method=method,
        data=None if body is None else json.dumps(body).encode(), headers=headers)
    try:
        with urllib.request.urlopen(request, timeout=30) as answer:
            return answer.status, json.loads(answer.read()), dict(answer.headers)
    except urllib.error.HTTPError as exc:
        return exc.code, json.loads(exc.read()), dict(exc.headers)


@pytest.fixture(scope="module")
def client(pipeline: Settings) -> Iterator[redis.Redis]:
    connection = store.connect(pipeline)
    yield connection
    connection.close()


def pay(settings: Settings, client: redis.Redis, amount: int = 10_000, *,
        capture: str = "manual", **extra: Any) -> dict[str, Any]:
    """A payment authorized through POST /authorize; its view once its outcome is in."""
    status, body, _ = call(settings, "POST", "/authorize", {
        "card_number": VISA, "exp_month": 12, "exp_year": 2099, "cvv": "123",
        "amount": amount, "currency": "USD", "run_id": RUN, "capture": capture,
        "merchant": {"id": "m-life", "name": "Hotel Paysim", "mcc": "7011", "country": "US"},
        **extra})
    assert status == 200, body
    payment_id = body["payment_id"]
    assert wait_until(lambda: store.read_outcome(client, payment_id) is not None, timeout=60)
    status, view, _ = call(settings, "GET", f"/payments/{payment_id}")
    assert status == 200 and "lifecycle" in view, view
    return view


def op(settings: Settings, payment_id: str, path: str, body: dict[str, Any] | None = None,
       **kwargs: Any) -> tuple[int, dict[str, Any]]:
    status, answer, _ = call(settings, "POST", path.format(payment_id), body, **kwargs)
    return status, answer


def test_manual_capture_in_parts_then_refused_past_the_hold(pipeline: Settings,
                                                           client: redis.Redis) -> None:
    view = pay(pipeline, client)
    pid = view["payment_id"]
    life = view["lifecycle"]
    assert life["state"] == "authorized" and life["amounts"]["held"] == 10_000
    assert [e["kind"] for e in life["events"]] == ["authorized"]
    assert life["events"][0]["mti"] == "0100/0110"

    status, answer = op(pipeline, pid, "/payments/{}/capture", {"amount": 4_000})
    assert status == 200, answer
    assert answer["operation"]["status"] == "applied" and answer["operation"]["amount"] == 4_000
    assert answer["payment"]["state"] == "partially_captured"
    status, answer = op(pipeline, pid, "/payments/{}/capture", {"amount": 6_001})
    assert status == 409 and answer["state"] == "partially_captured"
    assert answer["error"] == "cannot capture: 6001 is more than the 6000 still held"
    status, answer = op(pipeline, pid, "/payments/{}/capture", {"amount": 1_000, "final": True})
    assert status == 200 and answer["payment"]["state"] == "captured"
    amounts = answer["payment"]["amounts"]
    assert amounts["captured"] == 5_000 and amounts["held"] == 0
    charged = (fees.capture_fees("visa", 4_000, "USD").total
               + fees.capture_fees("visa", 1_000, "USD").total)
    assert amounts["fees"] == charged and amounts["net"] == 5_000 - charged
    status, answer = op(pipeline, pid, "/payments/{}/void")
    assert status == 409 and answer["error"] == "cannot void: the payment is captured"


def test_an_increment_raises_the_hold_but_not_on_an_automatic_capture(
        pipeline: Settings, client: redis.Redis) -> None:
    pid = pay(pipeline, client)["payment_id"]
    status, answer = op(pipeline, pid, "/payments/{}/increment", {"amount": 2_500})
    assert status == 200 and answer["payment"]["amounts"]["held"] == 12_500
    status, answer = op(pipeline, pid, "/payments/{}/capture")
    assert status == 200 and answer["operation"]["amount"] == 12_500
    auto = pay(pipeline, client, capture="automatic")["payment_id"]
    status, answer = op(pipeline, auto, "/payments/{}/increment", {"amount": 100})
    assert status == 409 and "captured automatically" in answer["error"]
    status, answer = op(pipeline, auto, "/payments/{}/increment", {})
    assert status == 400 and "missing field 'amount'" in answer["error"]


def test_void_then_nothing_more(pipeline: Settings, client: redis.Redis) -> None:
    pid = pay(pipeline, client)["payment_id"]
    status, answer = op(pipeline, pid, "/payments/{}/void")
    assert status == 200 and answer["payment"]["state"] == "voided"
    assert answer["payment"]["events"][-1]["mti"] == "0420"
    status, answer = op(pipeline, pid, "/payments/{}/capture")
    assert status == 409 and answer["state"] == "voided"


def test_refunds_up_to_the_captured_amount(pipeline: Settings, client: redis.Redis) -> None:
    pid = pay(pipeline, client, capture="automatic")["payment_id"]
    status, answer = op(pipeline, pid, "/payments/{}/refunds", {"amount": 3_000})
    assert status == 200 and answer["payment"]["state"] == "partially_refunded"
    status, answer = op(pipeline, pid, "/payments/{}/refunds", {"amount": 7_001})
    assert status == 409 and "7000 refundable" in answer["error"]
    status, answer = op(pipeline, pid, "/payments/{}/refunds")
    assert status == 200 and answer["operation"]["amount"] == 7_000
    assert answer["payment"]["state"] == "refunded"


def test_a_reversal_undoes_a_captured_payment(pipeline: Settings, client: redis.Redis) -> None:
    pid = pay(pipeline, client, capture="automatic")["payment_id"]
    status, answer = op(pipeline, pid, "/payments/{}/reverse")
    assert status == 200 and answer["payment"]["state"] == "reversed"
    assert answer["payment"]["amounts"]["net"] == 0 and answer["payment"]["amounts"]["fees"] == 0
    status, again = op(pipeline, pid, "/payments/{}/reverse")  # never refused, moves nothing
    assert status == 200 and again["operation"]["amount"] == 0


def test_a_dispute_and_its_resolution(pipeline: Settings, client: redis.Redis) -> None:
    held = pay(pipeline, client)["payment_id"]
    status, answer = op(pipeline, held, "/test/payments/{}/dispute", {"reason_code": "13.1"})
    assert status == 409 and "nothing captured to dispute" in answer["error"]
    won = pay(pipeline, client, capture="automatic")["payment_id"]
    status, answer = op(pipeline, won, "/test/payments/{}/dispute", {"reason_code": "13.1"})
    assert status == 200 and answer["payment"]["state"] == "disputed"
    assert answer["payment"]["dispute"] == {"reason_code": "13.1", "amount": 10_000,
                                            "status": "open"}
    status, answer = op(pipeline, won, "/test/payments/{}/dispute", {"reason_code": "4837"})
    assert status == 409 and "disputed already" in answer["error"]
    status, answer = op(pipeline, won, "/test/disputes/{}/resolve", {"won": True})
    assert status == 200 and answer["payment"]["state"] == "captured"
    lost = pay(pipeline, client, capture="automatic")["payment_id"]
    op(pipeline, lost, "/test/payments/{}/dispute", {"reason_code": "4837"})
    status, answer = op(pipeline, lost, "/test/disputes/{}/resolve", {"won": False})
    assert status == 200 and answer["payment"]["state"] == "charged_back"
    status, answer = op(pipeline, lost, "/test/disputes/{}/resolve", {"won": True})
    assert status == 409 and "no open dispute" in answer["error"]


def test_partial_approval_approves_what_the_card_has(pipeline: Settings,
                                                     client: redis.Redis) -> None:
    # The test card that has no credit: nothing available, so even opted in it is 51.
    view = pay(pipeline, client, card_number="4000000000009995", partial_approval=True)
    assert view["reason_code"] == "51" and view["lifecycle"]["state"] == "declined"
    status, answer = op(pipeline, view["payment_id"], "/payments/{}/capture")
    assert status == 409 and "declined" in answer["error"]


def test_partial_approval_approves_what_today_leaves(pipeline: Settings,
                                                      client: redis.Redis) -> None:
    """Code 10: the issuer approves less than asked, what the card's daily limit leaves."""
    token_key = load_keys(pipeline).token_key

    def daily_usd(pan: str) -> float:
        return decisions.card_profile(cards.tokenize(pan, token_key), None).daily_limit_usd

    # A card whose daily limit a payment under the 10,000 USD maximum can nearly use up.
    # Not a documented test card: those answer by their number whatever the limit.
    pan = next(pan for n in range(1000)
               if (pan := cards.luhn_complete(f"400000{n:09d}")) not in decisions.TEST_CARDS
               and daily_usd(pan) < 9_000)
    daily = money.minor_units(daily_usd(pan), "USD")
    run = f"partial-{uuid.uuid4().hex[:8]}"
    first = pay(pipeline, client, daily - 5_000, capture="automatic", card_number=pan,
                run_id=run)
    assert first["reason_code"] == "00"
    second = pay(pipeline, client, 10_000, card_number=pan, run_id=run,
                 partial_approval=True)
    assert (second["status"], second["reason_code"]) == ("approved", "10")
    assert second["lifecycle"]["amounts"]["authorized"] == 5_000
    status, answer = op(pipeline, second["payment_id"], "/payments/{}/capture")
    assert status == 200 and answer["operation"]["amount"] == 5_000


def test_an_operation_with_an_idempotency_key_applies_once(pipeline: Settings,
                                                           client: redis.Redis) -> None:
    pid = pay(pipeline, client)["payment_id"]
    key = f"cap-{uuid.uuid4()}"
    first = call(pipeline, "POST", f"/payments/{pid}/capture", {"amount": 1_000}, key=key)
    again = call(pipeline, "POST", f"/payments/{pid}/capture", {"amount": 1_000}, key=key)
    assert first[0] == again[0] == 200 and first[1] == again[1]
    assert again[2].get("Idempotent-Replayed") == "true"
    status, view, _ = call(pipeline, "GET", f"/payments/{pid}")
    assert status == 200 and view["lifecycle"]["amounts"]["captured"] == 1_000
    # The ledger answered it once, on the run's operations stream (what `send` reads). The
    # entry is written in the ledger's batch pipeline, after the answer the API returned.
    op_id = first[1]["operation"]["id"]

    def entries() -> list[store.OperationDone]:
        return [entry for entry in (store.read_operation_done(fields) for _, fields in
                                    client.xrange(store.run_operations_key(RUN)))
                if entry.op_id == op_id]

    assert wait_until(lambda: bool(entries()), timeout=30)
    mine = entries()
    assert [(e.kind, e.payment_id, e.reason_code, e.amount) for e in mine] == [
        ("capture", pid, "00", 1_000)]
    assert mine[0].answered_at >= mine[0].requested_at


def test_operations_on_unknown_payments_are_404(pipeline: Settings) -> None:
    status, answer = op(pipeline, str(uuid.uuid4()), "/payments/{}/capture")
    assert status == 404 and "no payment" in answer["error"]


def test_a_payment_the_card_checks_declined_is_409_not_404(pipeline: Settings) -> None:
    run = send(pipeline, "--count", "3", "--seed", "31", "--bad-share", "1",
               "--test-card-share", "0")["run_id"]
    declined = run_done_entries(pipeline, run)[0]
    assert declined.status == "declined"
    status, answer = op(pipeline, declined.payment_id, "/payments/{}/refunds")
    assert status == 409 and answer["state"] == "declined", answer
    assert answer["error"] == "cannot refund: the payment was declined"


def test_a_reversal_before_its_authorization_leaves_nothing_held(pipeline: Settings,
                                                                  client: redis.Redis) -> None:
    """The reversal reaches the ledger first (as a 0400 does when the acquirer timed out
    before the issuer answered); the authorization that follows holds nothing (17)."""
    payment_id, token, run = str(uuid.uuid4()), f"tok_{uuid.uuid4().hex}", RUN
    producer = Producer(client_config(pipeline))
    reversal = OperationRequested(op_id=f"rev-{payment_id}", kind=OperationKind.REVERSE,
                                  payment_id=payment_id, run_id=run, token=token,
                                  requested_at=now_us())
    producer.produce(pipeline.topics.operations, key=token, value=encode(reversal))
    assert producer.flush(30) == 0
    assert wait_until(lambda: ledger_store.read_answer(client, run, token, reversal.op_id)
                      is not None, timeout=60)
    late = PaymentAuthorized(
        payment_id=payment_id, run_id=run, amount=5_000, currency="USD",
        merchant=Merchant(id="m-life", name="Hotel Paysim", mcc="7011", country="US"),
        stages={"requested": now_us(), "authorized": now_us()}, token=token,
        masked_pan="424242******4242", network="visa", exp_month=12, exp_year=2099)
    producer.produce(pipeline.topics.authorized, key=token, value=encode(late))
    assert producer.flush(30) == 0
    assert wait_until(lambda: store.read_outcome(client, payment_id) is not None, timeout=60)
    stored = store.read_outcome(client, payment_id)
    assert stored is not None and stored.outcome.reason_code == "17"
    record = ledger_store.read_record(client, run, token, payment_id)
    assert record is not None and record.state == "reversed" and record.held == 0
    book = ledger_store.book_from_hash(client.hgetall(ledger_store.card_key(run, token)))
    assert not book.lines or not any(book.lines.values())


class _EventReceiver(_Receiver):
    """A receiver of this module's own: what it gets is not the pipeline tests' to count."""

    received: ClassVar[list[tuple[dict[str, str], bytes]]] = []


def test_events_reach_the_topic_and_the_client_as_signed_webhooks(
        pipeline: Settings, client: redis.Redis) -> None:
    server = ThreadingHTTPServer(("127.0.0.1", free_port()), _EventReceiver)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    try:
        url = f"http://127.0.0.1:{server.server_address[1]}/hook"
        pid = pay(pipeline, client, callback_url=url)["payment_id"]
        op(pipeline, pid, "/payments/{}/capture", {"amount": 2_000})
        op(pipeline, pid, "/payments/{}/refunds", {"amount": 500})
        # Captured at once: its capture is a webhook of its own too, from the processor.
        auto = pay(pipeline, client, 3_000, capture="automatic", callback_url=url)["payment_id"]

        def received() -> list[tuple[str, str]]:
            return [(event["type"], event["data"]["object"]["payment_id"]) for event in
                    (json.loads(body) for _, body in _EventReceiver.received)]

        def types() -> list[str]:
            return [kind for kind, payment in received() if payment == pid]

        assert wait_until(lambda: {"payment.captured", "payment.refunded"} <= set(types()),
                          timeout=60), types()
        assert wait_until(lambda: {("payment.approved", auto), ("payment.captured", auto)}
                          <= set(received()), timeout=60), received()
    finally:
        server.shutdown()
        server.server_close()
    secret = json.loads(pipeline.secrets.file.read_text())["webhook_secret"]
    for headers, body in _EventReceiver.received:
        event = stripe.Webhook.construct_event(body, headers.get("Stripe-Signature"), secret)
        if event.type == "payment.captured":
            captured = event.data.object
            assert (captured.payment_id, captured.amount, captured.mti) in {
                (pid, 2_000, "0220"), (auto, 3_000, "0200/0210")}, captured
    codec = Codec(PaymentEvent)
    events = [codec.decode(raw) for raw in read_topic(pipeline, pipeline.topics.events)]
    mine = [(e.kind, e.amount) for e in events if e.payment_id == pid]
    assert mine == [("authorized", 10_000), ("captured", 2_000), ("refunded", 500)]


def test_settle_closes_the_window_into_a_batch_per_merchant(pipeline: Settings,
                                                            client: redis.Redis) -> None:
    pay(pipeline, client, capture="automatic")  # at least one movement in the window
    settled = paysim(pipeline, "settle", "--run", RUN)
    assert settled.returncode == 0, settled.stderr
    assert "closed 1 window(s): 1 batch(es)" in settled.stdout
    shown = paysim(pipeline, "settlement", "--run", RUN, "--json")
    assert shown.returncode == 0, shown.stderr
    view = json.loads(shown.stdout)
    [batch] = view["batches"]
    assert (batch["merchant_id"], batch["currency"]) == ("m-life", "USD")
    assert view["unsettled"] == []
    # The batch is the sum of the payments' own figures, as their records keep them.
    records = [ledger_store.decode_record(client.get(key)) for key in
               client.scan_iter(match=f"paysim:pay:*:{RUN}:*", count=1000)]
    approved = [r for r in records if r.approved]
    assert batch["net"] == sum(r.merchant_net for r in approved)
    assert batch["gross"] == sum(r.captured for r in approved)
    assert batch["refunds"] == sum(r.refunded for r in approved)
    assert batch["interchange"] + batch["scheme_fees"] == sum(r.fees for r in approved)
    # Its movements, one row each, in the run's clearing file; the batch on its topic.
    clearing = pipeline.lifecycle.runs_dir / RUN / "clearing.csv"
    rows = clearing.read_text().splitlines()
    assert rows[0].startswith("batch_id,payment_id,operation,event,at")
    assert len(rows) - 1 == batch["movements"] and batch["movements"] >= 10
    codec = Codec(Batch)
    on_topic = [codec.decode(raw) for raw in read_topic(pipeline, pipeline.topics.settlements)]
    assert [b.net for b in on_topic if b.batch_id == batch["batch_id"]] == [batch["net"]]
    table = paysim(pipeline, "settlement", "--run", RUN)
    assert table.returncode == 0 and f"settlement batches of {RUN}" in table.stdout
    assert "nothing left to settle" in table.stdout


def test_the_audit_balances_after_every_operation(pipeline: Settings) -> None:
    result = paysim(pipeline, "audit", "--run", RUN, "--json")
    report = json.loads(result.stdout)
    assert result.returncode == 0, report["ledger_mismatches"]
    assert report["unbalanced"] == {} and report["ledger_mismatch_count"] == 0
    assert report["records_checked"] >= 10
    usd = report["balances"]["USD"]
    assert sum(usd.values()) == 0 and usd["interchange"] > 0 and usd["dispute fees"] > 0
    assert report["settlement_batches"] == 1
    assert usd["merchants settled"] == usd["acquirer settlement"] == -usd["issuer settlement"]
    assert usd["merchants settled"] > 0 and usd["merchants pending"] == 0
