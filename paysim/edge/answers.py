"""The bodies the HTTP API answers with, as types: the app builds its answers from them and
the OpenAPI document (paysim.edge.openapi) describes them from the same declarations."""

from __future__ import annotations

from typing import Any, Literal

import msgspec
from msgspec import UNSET, UnsetType

from paysim.pipeline.ledger_store import LifecycleView
from paysim.pipeline.store import OutcomeView

# The seed's 200 answers, word for word ("payment permitted", "notification sent"): its clients
# may look for them.
SEED_AUTHORIZED = "платеж разрешен"
SEED_NOTIFIED = "отправленное уведомление"


class Accepted(msgspec.Struct, frozen=True, kw_only=True):
    """POST /authorize, 200: the payment passed the card checks and is on Kafka."""

    payment_id: str
    status: Literal["accepted"] = "accepted"
    message: str = SEED_AUTHORIZED


class Declined(msgspec.Struct, frozen=True, kw_only=True):
    """POST /authorize, 400: a card check failed; the reason code says which."""

    error: str
    reason_code: str


class Error(msgspec.Struct, frozen=True, kw_only=True):
    """Every other answer that is not a success: one line saying what went wrong."""

    error: str


class Resent(msgspec.Struct, frozen=True, kw_only=True):
    """POST /notify_client, 200: the notification was sent again."""

    transaction_id: str
    message: str = SEED_NOTIFIED
    outcome: OutcomeView


class OperationView(msgspec.Struct, frozen=True, kw_only=True):
    """An operation on a payment: applied (with what it moved and the ledger's answer), or
    pending (accepted, not applied within the wait)."""

    id: str
    kind: str
    status: Literal["applied", "pending"]
    amount: int | UnsetType = UNSET
    reason_code: str | UnsetType = UNSET


class OperationApplied(msgspec.Struct, frozen=True, kw_only=True):
    """POST /payments/<id>/<operation>, 200: the ledger applied it; the payment as it now is."""

    operation: OperationView
    payment: LifecycleView | None


class OperationPending(msgspec.Struct, frozen=True, kw_only=True):
    """202: on Kafka, not yet applied within the wait; it applies once (GET the payment)."""

    operation: OperationView
    message: str


class Refused(msgspec.Struct, frozen=True, kw_only=True):
    """409: the ledger refuses the step; ``error`` says why, naming the payment's state."""

    error: str
    reason_code: str
    state: str | UnsetType = UNSET


def body(answer: msgspec.Struct) -> dict[str, Any]:
    """An answer as JSON-ready data (what an idempotency record keeps to replay)."""
    return msgspec.to_builtins(answer)
