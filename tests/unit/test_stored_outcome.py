"""An outcome read back from its Redis hash, typed, and the JSON view the API and CLI show."""

from __future__ import annotations

from typing import Any

import msgspec

from paysim.domain.messages import Merchant, PaymentOutcome, encode
from paysim.pipeline import store
from paysim.pipeline.store import StoredOutcome, WebhookState

OUTCOME = PaymentOutcome(
    payment_id="0b6f5c1e-2d3a-4b5c-8d9e-0f1a2b3c4d5e", run_id="run-1", seq=3, amount=1999,
    currency="USD", merchant=Merchant(id="m-9", name="Book Shop", mcc="5942", country="US"),
    callback_url="http://127.0.0.1:9/hook",
    stages={"notified": 30, "extra": 5, "requested": 10, "authorized": 20},
    status="approved", reason_code="00", reason_text="approved", token="tok_1",
    masked_pan="424242******4242", network="visa",
)


class FakeRedis:
    """What read_outcome asks of Redis: one hash."""

    def __init__(self, fields: dict[str, Any]) -> None:
        self.fields = {k.encode(): str(v).encode() if not isinstance(v, bytes) else v
                       for k, v in fields.items()}

    def hgetall(self, _key: str) -> dict[bytes, bytes]:
        return self.fields


def read(**fields: Any) -> StoredOutcome | None:
    return store.read_outcome(FakeRedis(fields), OUTCOME.payment_id)  # type: ignore[arg-type]


def test_the_hash_as_the_notifier_writes_it() -> None:
    stored = read(status="approved", doc=encode(OUTCOME), notification="sent",
                  webhook_status="pending")
    assert stored == StoredOutcome(OUTCOME, "sent", WebhookState("pending"))


def test_no_outcome_document_is_no_outcome() -> None:
    assert read() is None
    assert read(webhook_status="delivered", webhook_attempts=1) is None  # a late update
    assert read(status="approved", doc=b"{") is None
    # Decoded with the checks the notifier's decoding has: a document breaking one is unread.
    for broken in ({"currency": "usd"}, {"payment_id": "not-a-uuid"}, {"stages": {"X": 1}}):
        assert read(status="approved", doc=encode(msgspec.structs.replace(OUTCOME, **broken))
                    ) is None, broken


def test_the_view_keys_and_values() -> None:
    stored = read(status="approved", doc=encode(OUTCOME), notification="sent",
                  webhook_status="delivered", webhook_attempts=2, webhook_http_status=204,
                  webhook_error="")
    assert stored is not None
    view = msgspec.to_builtins(store.outcome_view(stored))
    assert list(view) == ["payment_id", "run_id", "seq", "status", "reason_code",
                          "reason_text", "amount", "currency", "merchant", "stages",
                          "notification", "masked_pan", "token", "network", "callback_url",
                          "webhook"]
    assert view["merchant"] == {"id": "m-9", "name": "Book Shop", "mcc": "5942",
                                "country": "US"}
    assert list(view["merchant"]) == ["id", "name", "mcc", "country"]
    # Known stages only, in pipeline order.
    assert list(view["stages"].items()) == [("requested", 10), ("authorized", 20),
                                            ("notified", 30)]
    assert (view["seq"], view["amount"], view["notification"]) == (3, 1999, "sent")
    assert view["webhook"] == {"status": "delivered", "attempts": 2, "http_status": 204,
                               "error": None}
    assert list(view["webhook"]) == ["status", "attempts", "http_status", "error"]


def test_empty_fields_are_null_and_a_webhook_of_none_is_shown() -> None:
    bare = msgspec.structs.replace(OUTCOME, token="", masked_pan=None, network="",
                                   callback_url=None, reason_text="")
    stored = read(status="declined", doc=encode(bare), webhook_status="none")
    assert stored is not None
    view = msgspec.to_builtins(store.outcome_view(stored))
    assert view["status"] == "declined"  # the hash's status field
    assert (view["token"], view["masked_pan"], view["network"], view["callback_url"]) == (
        None, None, None, None)
    assert (view["notification"], view["reason_text"]) == (None, "")
    assert view["webhook"] == {"status": "none", "attempts": 0, "http_status": None,
                               "error": None}
    failed = read(status="approved", doc=encode(OUTCOME), webhook_status="failed",
                  webhook_attempts=5, webhook_http_status=0, webhook_error="timed out")
    assert failed is not None
    assert msgspec.to_builtins(store.outcome_view(failed))["webhook"] == {
        "status": "failed", "attempts": 5, "http_status": None, "error": "timed out"}


def test_no_webhook_state_no_webhook_block() -> None:
    for fields in ({}, {"webhook_status": ""}):
        stored = read(status="approved", doc=encode(OUTCOME), **fields)
        assert stored is not None and stored.webhook is None
        assert "webhook" not in msgspec.to_builtins(store.outcome_view(stored))
