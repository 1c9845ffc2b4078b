"""What a client is told about an outcome: the notification record, its stable event id, and
the webhook queued for it. Used by the notifier and by the edge's POST /notify_client."""

from __future__ import annotations

import hashlib
import uuid

import redis

from paysim.domain.messages import Notification, PaymentOutcome, encode
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


def queue_webhook(pipe: redis.client.Pipeline, url: str, notification: Notification) -> None:
    """Queue a signed POST for the dispatcher; the queue is a Redis stream, so it survives
    a crash of this process."""
    pipe.xadd(store.WEBHOOK_STREAM, {
        "payment_id": notification.payment_id, "event_id": notification.event_id,
        "url": url, "body": encode(notification),
    })
