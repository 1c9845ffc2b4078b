"""The notifier's batch script on a real redis-server: what a batch leaves in Redis is what
docs/conformance.md's notifier contract says, field by field, with the expiries, and the same
as the command-by-command writes a Redis Cluster gets."""

from __future__ import annotations

import uuid
from collections.abc import Iterator

import msgspec
import pytest
import redis

from paysim.domain import decisions
from paysim.domain.decisions import Status
from paysim.domain.messages import (
    AUTHORIZED,
    NOTIFIED,
    PROCESSED,
    REQUESTED,
    Merchant,
    PaymentOutcome,
)
from paysim.infra.config import Settings
from paysim.pipeline import store
from paysim.pipeline.notifier import Notifier
from paysim.pipeline.registry import NOTIFIER

MERCHANT = Merchant(id="m00001", name="Acme Groceries", mcc="5411", country="US")
TRACE_ID = "0af7651916cd43dd8448eb211c80319c"


@pytest.fixture
def client(local_stack, settings: Settings) -> Iterator[redis.Redis]:
    connected = store.connect_answering(settings)
    yield connected
    connected.close()


def outcome(run_id: str, callback_url: str | None = None) -> PaymentOutcome:
    return PaymentOutcome(
        payment_id=str(uuid.uuid4()), run_id=run_id, seq=3, amount=990, currency="JPY",
        merchant=MERCHANT, callback_url=callback_url,
        stages={REQUESTED: 1_000, AUTHORIZED: 2_000, PROCESSED: 3_000},
        status=Status.APPROVED, reason_code="00", reason_text=decisions.reason_text("00"),
        token="tok_abc", masked_pan="424242******4242", network="visa")


def notify(client: redis.Redis, settings: Settings, items: list[PaymentOutcome],
           one_by_one: bool, traced: PaymentOutcome) -> None:
    """A batch through the notifier's decide and finish into one pipeline, executed, as the
    loop runs it; ``one_by_one``: as on a Redis Cluster."""
    service = NOTIFIER.build(settings, client)
    assert isinstance(service, Notifier)
    service._one_by_one = one_by_one
    pipe = client.pipeline(transaction=False)
    service.prepare(items)
    for item in items:
        service.trace_id = TRACE_ID if item is traced else None
        service.decide(item, pipe)
    service.trace_id = None
    service.finish(pipe)
    pipe.execute()


def stored(client: redis.Redis, item: PaymentOutcome) -> dict[str, object]:
    """The outcome hash, its doc decoded, with the notified time left out (it is now)."""
    fields = {k.decode(): v for k, v in client.hgetall(store.outcome_key(item.payment_id)).items()}
    doc = msgspec.json.decode(fields.pop("doc"), type=PaymentOutcome)
    assert NOTIFIED in doc.stages
    assert msgspec.structs.replace(doc, stages=item.stages) == item
    return {name: value.decode() for name, value in fields.items()}


@pytest.mark.parametrize("one_by_one", [False, True], ids=["script", "one-by-one"])
def test_a_batch_leaves_what_the_notifiers_contract_says(
        client: redis.Redis, settings: Settings, one_by_one: bool) -> None:
    run_a, run_b = f"run-a-{uuid.uuid4().hex[:8]}", f"run-b-{uuid.uuid4().hex[:8]}"
    hooked = outcome(run_a, callback_url="http://127.0.0.1:9/hooks")
    items = [outcome(run_a), hooked, outcome(run_b), outcome(run_a)]
    newest = client.xrevrange(store.WEBHOOK_STREAM, count=1)
    last_webhook = newest[0][0] if newest else b"0-0"
    notify(client, settings, items, one_by_one, traced=items[2])

    ttl = settings.redis.outcome_ttl
    for item in items:
        fields = stored(client, item)
        expected = {"status": "approved", "notification": "sent",
                    "webhook_status": "pending" if item is hooked else "none"}
        if item is items[2]:
            expected["trace_id"] = TRACE_ID
        assert fields == expected
        assert 0 < client.ttl(store.outcome_key(item.payment_id)) <= ttl
        assert client.get(store.result_key(item.payment_id)) is None  # the decider's key
    for run, members in ((run_a, [items[0], items[1], items[3]]), (run_b, [items[2]])):
        key = store.run_stream_key(run)
        entries = [entry for _, fields in client.xrange(key)
                   for entry in store.read_done_entries(fields)]
        assert [e.payment_id for e in entries] == [m.payment_id for m in members]
        # One by one an entry a payment; by the script one entry per run and batch.
        assert client.xlen(key) == (len(members) if one_by_one else 1)
        assert all(e.stages[NOTIFIED] and e.amount == 990 and e.seq == 3 for e in entries)
        assert 0 < client.ttl(key) <= ttl
    queued = client.xrange(store.WEBHOOK_STREAM, min=b"(" + last_webhook)
    ours = {item.payment_id.encode() for item in items}
    assert [fields[b"payment_id"] for _, fields in queued if fields[b"payment_id"] in ours] == [
        hooked.payment_id.encode()]
