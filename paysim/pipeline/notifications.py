"""What a client is told about an outcome: the notification record, its stable event id, and
the webhook queued for it (the notification in Stripe's event envelope). Used by the notifier
and by the edge's POST /notify_client."""

from __future__ import annotations

import hashlib
import uuid
from typing import Generic, TypeVar

import msgspec
import redis

from paysim.domain.messages import Notification, PaymentEvent, PaymentOutcome, encode
from paysim.pipeline import store

EVENT_NAMESPACE = uuid.UUID("6f1c3a52-8d0e-4c1b-9a57-3f2e1d0c9b8a")


_NAMESPACE_BYTES = EVENT_NAMESPACE.bytes


def event_id(payment_id: str) -> str:
    """Stable per payment: a webhook delivered twice carries the same id, to deduplicate.

    uuid5(EVENT_NAMESPACE, payment_id), computed without building UUID objects (those were a
    tenth of the notifier's time)."""
    digest = bytearray(hashlib.sha1(_NAMESPACE_BYTES + payment_id.encode()).digest()[:16])
    digest[6] = (digest[6] & 0x0F) | 0x50  # version 5
    digest[8] = (digest[8] & 0x3F) | 0x80  # RFC 4122 variant
    return "evt_" + digest.hex()


def notification_for(outcome: PaymentOutcome, event: str, at: int) -> Notification:
    return Notification(
        event_id=event, payment_id=outcome.payment_id, run_id=outcome.run_id,
        status=outcome.status, reason_code=outcome.reason_code, amount=outcome.amount,
        currency=outcome.currency, masked_pan=outcome.masked_pan, notified_at=at,
    )


Body = TypeVar("Body", Notification, PaymentEvent)


class EventData(msgspec.Struct, Generic[Body], frozen=True):
    object: Body


class WebhookEvent(msgspec.Struct, Generic[Body], frozen=True, kw_only=True):
    """A webhook's body: Stripe's event envelope around the notification (or a later event
    of the payment's life), so that receivers built on Stripe's libraries
    (stripe.Webhook.construct_event) take it as an event."""

    id: str  # the event id: stable per payment and step, to deduplicate on
    object: str = "event"
    type: str  # payment.approved or payment.declined; payment.captured, payment.refunded, ...
    created: int  # Unix seconds, as Stripe's
    livemode: bool = False  # a simulator's payments are never live
    data: EventData[Body]


def webhook_body(notification: Notification) -> bytes:
    return encode(WebhookEvent(
        id=notification.event_id, type=f"payment.{notification.status}",
        created=notification.notified_at // 1_000_000, data=EventData(notification)))


def queue_webhook(pipe: redis.client.Pipeline, url: str, notification: Notification) -> None:
    """Queue a signed POST for the dispatcher; the queue is a Redis stream, so it survives
    a crash of this process."""
    _queue(pipe, url, notification.payment_id, notification.event_id,
           webhook_body(notification))


def queue_event_webhook(pipe: redis.client.Pipeline, url: str, event: PaymentEvent) -> None:
    """Queue a later event of a payment's life (payment.captured, payment.refunded, ...)."""
    _queue(pipe, url, event.payment_id, event.event_id, encode(WebhookEvent(
        id=event.event_id, type=f"payment.{event.kind}", created=event.at // 1_000_000,
        data=EventData(event))))


def _queue(pipe: redis.client.Pipeline, url: str, payment_id: str, event: str,
           body: bytes) -> None:
    pipe.xadd(store.WEBHOOK_STREAM, {"payment_id": payment_id, "event_id": event, "url": url,
                                     "body": body})
