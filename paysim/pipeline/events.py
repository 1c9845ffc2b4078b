"""A payment's ledger events on payments.events (and, for a payment with a callback URL,
as webhooks): shared by the processor (authorizations) and the ledger service (the rest)."""

from __future__ import annotations

import redis

from paysim.domain.lifecycle import Change, EventKind, EventRecord, PaymentRecord
from paysim.domain.messages import PaymentEvent, encode
from paysim.pipeline.notifications import event_id, queue_event_webhook
from paysim.pipeline.service import Output


def event_message(record: PaymentRecord, event: EventRecord) -> PaymentEvent:
    return PaymentEvent(
        # Stable across redeliveries: the same step of the same payment, the same id.
        event_id=event_id(f"{record.payment_id}:{event.op_id}:{event.kind}"),
        kind=event.kind, payment_id=record.payment_id, run_id=record.run_id,
        op_id=event.op_id, amount=event.amount, currency=record.currency,
        merchant_id=record.merchant_id, network=record.network, mti=event.mti,
        state=record.state, at=event.at)


def queue_event_webhooks(pipe: redis.client.Pipeline, change: Change,
                         skip: frozenset[EventKind] = frozenset()) -> None:
    """Each event of a step decided now (not a replayed one) as a webhook to the payment's
    callback URL, when it has one; ``skip``: kinds the client hears of another way."""
    url = change.record.callback_url
    if not url or not change.changed:
        return
    for event in change.events:
        if event.kind not in skip:
            queue_event_webhook(pipe, url, event_message(change.record, event))


def event_outputs(topic: str, change: Change) -> list[Output]:
    """Each event of a decided step as a record keyed by the card's token."""
    return [Output(topic, change.record.token, encode(event_message(change.record, event)))
            for event in change.events]
