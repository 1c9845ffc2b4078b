"""The messages on paysim's topics: typed, versioned, JSON on the wire.

Every message carries the payment id (a UUID, also the idempotency key), the run it belongs to,
the amount in integer minor units with its ISO 4217 currency, the merchant, and ``stages``: the
time (Unix microseconds) it entered each stage, for per-stage latency.
"""

from __future__ import annotations

import time
from typing import Annotated, Generic, TypeVar

import msgspec

SCHEMA_VERSION = 1

# Stage names, in pipeline order.
REQUESTED = "requested"
AUTHORIZED = "authorized"
PROCESSED = "processed"
NOTIFIED = "notified"
STAGES = (REQUESTED, AUTHORIZED, PROCESSED, NOTIFIED)

# \Z, not $: $ also matches before a trailing newline.
UUID_PATTERN = r"^[0-9a-f]{8}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{12}\Z"
Uuid = Annotated[str, msgspec.Meta(pattern=UUID_PATTERN)]
Currency = Annotated[str, msgspec.Meta(pattern=r"^[A-Z]{3}\Z")]
Text = Annotated[str, msgspec.Meta(min_length=1, max_length=200)]


def now_us() -> int:
    return time.time_ns() // 1000


class Merchant(msgspec.Struct, frozen=True):
    id: Text
    name: Text
    mcc: Annotated[str, msgspec.Meta(pattern=r"^[0-9]{4}\Z")]
    country: Annotated[str, msgspec.Meta(pattern=r"^[A-Z]{2}\Z")]


class Message(msgspec.Struct, frozen=True, kw_only=True):
    """Fields every message shares."""

    v: int = SCHEMA_VERSION
    payment_id: Uuid
    run_id: Text
    seq: int = 0  # the payment's index in its run
    amount: int
    currency: Currency
    merchant: Merchant
    callback_url: str | None = None
    stages: dict[str, int]


class PaymentRequested(Message, frozen=True, kw_only=True):
    """On payments.requested: the card block sealed with AES-GCM (paysim.cards.CardCipher)."""

    card: str


class PaymentAuthorized(Message, frozen=True, kw_only=True):
    """On payments.authorized, keyed by card token: no PAN, no CVV."""

    token: str
    masked_pan: str
    network: str
    exp_month: int
    exp_year: int
    test_reason: str | None = None  # a documented test card's forced issuer answer


class PaymentOutcome(Message, frozen=True, kw_only=True):
    """On payments.results: the final answer for a payment."""

    status: str
    reason_code: str
    reason_text: str
    token: str | None = None
    masked_pan: str | None = None
    network: str | None = None


class Notification(msgspec.Struct, frozen=True, kw_only=True):
    """On payments.notifications: what the client was told."""

    v: int = SCHEMA_VERSION
    event_id: str
    payment_id: str
    run_id: str
    status: str
    reason_code: str
    amount: int
    currency: str
    masked_pan: str | None
    notified_at: int


class DeadLetter(msgspec.Struct, frozen=True, kw_only=True):
    """On payments.dlq: a message a service could not take, with why and its original bytes."""

    v: int = SCHEMA_VERSION
    service: str
    source_topic: str
    partition: int
    offset: int
    reason: str
    key: str | None  # base64; None where the original is withheld
    # base64 of the value as it arrived (at most the first 64 KiB: see ``truncated``); None
    # for the edge topic, whose malformed records may hold card data in clear.
    original: str | None
    original_size: int = 0
    original_sha256: str = ""
    truncated: bool = False
    at: int


encode = msgspec.json.Encoder().encode


class SchemaError(ValueError):
    """A message that is not valid JSON, or does not fit its schema."""


T = TypeVar("T", bound=msgspec.Struct)


class Codec(Generic[T]):  # Generic, not PEP 695: paysim supports Python 3.11
    """Decodes one message type and turns every failure into a one-line SchemaError."""

    def __init__(self, kind: type[T]) -> None:
        self.kind = kind
        self._decoder = msgspec.json.Decoder(kind)

    def decode(self, raw: bytes | None) -> T:
        if raw is None:
            raise SchemaError("empty message (no value)")
        try:
            message = self._decoder.decode(raw)
        except msgspec.ValidationError as exc:
            raise SchemaError(f"{self.kind.__name__} schema: {exc}") from None
        except msgspec.DecodeError as exc:
            raise SchemaError(f"not valid JSON: {exc}") from None
        except RecursionError:
            raise SchemaError("JSON nested too deeply") from None
        if getattr(message, "v", SCHEMA_VERSION) != SCHEMA_VERSION:
            raise SchemaError(f"unsupported schema version {message.v} (this paysim reads "
                              f"{SCHEMA_VERSION})")
        return message
