"""Webhook signatures: sign, verify, every reason a receiver rejects one, Stripe's library
taking paysim's deliveries, and the webhook secret's format."""

from __future__ import annotations

import base64
import json
import os
import re
import time
from pathlib import Path

import msgspec
import pytest
import stripe

from paysim.domain.messages import Notification, encode
from paysim.domain.webhooks import (
    SIGNATURE_HEADER,
    STRIPE_SIGNATURE_HEADER,
    TOLERANCE_S,
    SignatureError,
    sign,
    verify,
)
from paysim.infra.config import Settings, load_settings
from paysim.infra.errors import ConfigError
from paysim.infra.secrets import Keys, load_keys
from paysim.pipeline.notifications import event_id, webhook_body
from paysim.pipeline.webhook_dispatch import signed_headers

BODY = b'{"event_id":"evt_1","status":"approved","amount":1234,"currency":"USD"}'
SECRET = b"whsec_test_secret"
T = 1_700_000_000


def test_signature_error_is_a_value_error() -> None:
    assert issubclass(SignatureError, ValueError)
    with pytest.raises(ValueError):
        verify(BODY, None, SECRET, now=T)


def test_header_shape() -> None:
    assert SIGNATURE_HEADER == "Paysim-Signature"
    assert TOLERANCE_S == 300
    assert re.fullmatch(rf"t={T},v1=[0-9a-f]{{64}}", sign(BODY, SECRET, timestamp=T))


def test_round_trip() -> None:
    assert verify(BODY, sign(BODY, SECRET, timestamp=T), SECRET, now=T) == T


def test_round_trip_with_the_current_time() -> None:
    header = sign(BODY, SECRET)
    stamp = verify(BODY, header, SECRET)
    assert abs(stamp - time.time()) < 5


def test_signature_depends_on_body_secret_and_time() -> None:
    base = sign(BODY, SECRET, timestamp=T)
    assert sign(BODY, SECRET, timestamp=T) == base
    assert sign(BODY + b" ", SECRET, timestamp=T) != base
    assert sign(BODY, SECRET + b"x", timestamp=T).split(",")[1] != base.split(",")[1]
    assert sign(BODY, SECRET, timestamp=T + 1).split(",")[1] != base.split(",")[1]


def test_wrong_secret_is_rejected() -> None:
    header = sign(BODY, b"another secret", timestamp=T)
    with pytest.raises(SignatureError, match="no v1 signature matches"):
        verify(BODY, header, SECRET, now=T)


@pytest.mark.parametrize("body", [BODY + b" ", BODY.replace(b"1234", b"1235"), b"", BODY[:-1]])
def test_altered_body_is_rejected(body: bytes) -> None:
    header = sign(BODY, SECRET, timestamp=T)
    with pytest.raises(SignatureError, match="no v1 signature matches"):
        verify(body, header, SECRET, now=T)


def test_a_signature_cannot_be_moved_to_another_timestamp() -> None:
    mac = sign(BODY, SECRET, timestamp=T).split(",v1=")[1]
    with pytest.raises(SignatureError, match="no v1 signature matches"):
        verify(BODY, f"t={T + 10},v1={mac}", SECRET, now=T)


@pytest.mark.parametrize("header", [None, ""])
def test_missing_header_is_rejected(header: str | None) -> None:
    with pytest.raises(SignatureError,
                       match=r"missing signature header \(Stripe-Signature or Paysim-Signature\)"):
        verify(BODY, header, SECRET, now=T)


@pytest.mark.parametrize("header", [
    "garbage",
    "v1=abcdef",
    f"t=,v1={'0' * 64}",
    f"t=abc,v1={'0' * 64}",
    f"t=1.5e9,v1={'0' * 64}",
    f"ts={T},v1={'0' * 64}",
    ",,,",
    "=",
])
def test_malformed_header_is_rejected(header: str) -> None:
    with pytest.raises(SignatureError, match="no valid t="):
        verify(BODY, header, SECRET, now=T)


def test_header_without_v1_is_rejected() -> None:
    with pytest.raises(SignatureError, match="no v1 signature matches"):
        verify(BODY, f"t={T}", SECRET, now=T)
    mac = sign(BODY, SECRET, timestamp=T).split(",v1=")[1]
    with pytest.raises(SignatureError, match="no v1 signature matches"):
        verify(BODY, f"t={T},v0={mac}", SECRET, now=T)


@pytest.mark.parametrize("offset", [0, 1, 299, 300, -1, -300])
def test_within_tolerance_is_accepted(offset: int) -> None:
    header = sign(BODY, SECRET, timestamp=T)
    assert verify(BODY, header, SECRET, now=T + offset) == T


@pytest.mark.parametrize("now", [T + 301, T + 300.5, T + 86_400, T - 301, T - 300.5, 0])
def test_outside_tolerance_is_rejected(now: float) -> None:
    # now > T: the signature is too old; now < T: it claims to come from the future.
    header = sign(BODY, SECRET, timestamp=T)
    with pytest.raises(SignatureError, match="outside the 300 s tolerance"):
        verify(BODY, header, SECRET, now=now)


def test_custom_tolerance() -> None:
    header = sign(BODY, SECRET, timestamp=T)
    assert verify(BODY, header, SECRET, tolerance_s=10, now=T + 10) == T
    with pytest.raises(SignatureError):
        verify(BODY, header, SECRET, tolerance_s=10, now=T + 11)


def test_one_matching_v1_of_several_is_enough() -> None:
    good = sign(BODY, SECRET, timestamp=T).split(",v1=")[1]
    old = sign(BODY, b"old secret", timestamp=T).split(",v1=")[1]
    for header in (f"t={T},v1={old},v1={good}", f"t={T},v1={good},v1={old}",
                   f"t={T}, v1={'f' * 64}, v1={good}", f"v1={good},t={T}"):
        assert verify(BODY, header, SECRET, now=T) == T


def test_several_v1_none_matching_is_rejected() -> None:
    old = sign(BODY, b"old secret", timestamp=T).split(",v1=")[1]
    with pytest.raises(SignatureError, match="no v1 signature matches"):
        verify(BODY, f"t={T},v1={old},v1={'0' * 64},v1=", SECRET, now=T)


def test_rotation_with_two_secrets() -> None:
    new_header = sign(BODY, b"new", timestamp=T)
    old_header = sign(BODY, b"old", timestamp=T)
    both = f"{new_header},v1={old_header.split(',v1=')[1]}"
    assert verify(BODY, both, b"new", now=T) == T
    assert verify(BODY, both, b"old", now=T) == T
    with pytest.raises(SignatureError):
        verify(BODY, both, b"other", now=T)


# Malformed headers come from the network: every one must end as SignatureError.


@pytest.mark.parametrize("v1", ["\u00e9", "abc\u00ff", "\u2603" * 64],
                         ids=["e-acute", "y-diaeresis", "snowmen"])
def test_non_ascii_v1_is_a_signature_error(v1: str) -> None:
    with pytest.raises(SignatureError):
        verify(BODY, f"t={T},v1={v1}", SECRET, now=T)


def test_absurd_timestamp_is_a_signature_error() -> None:
    with pytest.raises(SignatureError):
        verify(BODY, f"t={'9' * 400},v1={'0' * 64}", SECRET, now=float(T))


# Stripe's own library must take paysim's deliveries: the secret is text (whsec_...) whose
# UTF-8 is the HMAC key, and the body is Stripe's event envelope.

STRIPE_SECRET = "whsec_" + "5f" * 32


def test_stripe_verifies_a_paysim_signature() -> None:
    header = sign(BODY, STRIPE_SECRET)
    assert stripe.WebhookSignature.verify_header(BODY, header, STRIPE_SECRET, tolerance=300)


def test_paysim_signs_exactly_as_stripe_does() -> None:
    assert sign(BODY, STRIPE_SECRET, timestamp=T) == (
        stripe.WebhookSignature.generate_signature_header(BODY.decode(), STRIPE_SECRET, T))


def test_paysim_verifies_a_stripe_signature_with_the_text_secret() -> None:
    header = stripe.WebhookSignature.generate_signature_header(BODY.decode(), STRIPE_SECRET, T)
    assert verify(BODY, header, STRIPE_SECRET, now=T) == T
    assert verify(BODY, header, STRIPE_SECRET.encode(), now=T) == T  # its UTF-8, the same key
    with pytest.raises(SignatureError, match="no v1 signature matches"):
        verify(BODY, header, STRIPE_SECRET + "x", now=T)


def test_a_non_ascii_body_signs_the_same_for_both() -> None:
    body = '{"merchant":"Caf\u00e9 M\u00fcller \u2603"}'.encode()
    header = sign(body, STRIPE_SECRET)
    assert stripe.WebhookSignature.verify_header(body, header, STRIPE_SECRET, tolerance=300)


def test_both_signature_headers_carry_the_same_signature() -> None:
    headers = signed_headers(BODY, STRIPE_SECRET.encode(), "evt_1")
    assert headers[SIGNATURE_HEADER] == headers[STRIPE_SIGNATURE_HEADER]
    assert STRIPE_SIGNATURE_HEADER == "Stripe-Signature"
    assert headers["Paysim-Event-Id"] == "evt_1"
    assert headers["Content-Type"] == "application/json"
    assert stripe.WebhookSignature.verify_header(
        BODY, headers[STRIPE_SIGNATURE_HEADER], STRIPE_SECRET, tolerance=300)
    assert verify(BODY, headers[SIGNATURE_HEADER], STRIPE_SECRET) > 0


NOTE = Notification(event_id=event_id("pay_1"), payment_id="pay_1", run_id="run-1",
                    status="declined", reason_code="51", amount=990, currency="JPY",
                    masked_pan="424242******4242", notified_at=1_700_000_123_456_789)


def test_the_webhook_body_is_stripes_event_envelope() -> None:
    event = json.loads(webhook_body(NOTE))
    assert list(event) == ["id", "object", "type", "created", "livemode", "data"]
    assert event["id"] == NOTE.event_id == event_id("pay_1")  # stable per payment
    assert (event["object"], event["type"], event["livemode"]) == (
        "event", "payment.declined", False)
    assert event["created"] == 1_700_000_123  # Unix seconds, as Stripe's
    assert event["data"] == {"object": json.loads(encode(NOTE))}
    approved = msgspec.structs.replace(NOTE, status="approved")
    assert json.loads(webhook_body(approved))["type"] == "payment.approved"


def test_stripe_constructs_the_event_from_a_delivery() -> None:
    body = webhook_body(NOTE)
    header = signed_headers(body, STRIPE_SECRET.encode(), NOTE.event_id)[STRIPE_SIGNATURE_HEADER]
    event = stripe.Webhook.construct_event(body, header, STRIPE_SECRET)
    assert (event.id, event.type, event.object) == (NOTE.event_id, "payment.declined", "event")
    note = event.data.object
    assert (note.payment_id, note.status, note.reason_code, note.amount) == (
        "pay_1", "declined", "51", 990)


# The webhook secret: Stripe's format by default, the older base64 one still as it was.


def key_settings(tmp_path: Path, webhook_secret: str | None = None) -> Settings:
    flags: dict[str, object] = {"secrets.file": str(tmp_path / "secrets.json")}
    if webhook_secret is not None:
        flags["secrets.webhook_secret"] = webhook_secret
    return load_settings(flags, env={})


def test_a_generated_webhook_secret_is_stripes_format(tmp_path: Path) -> None:
    keys = load_keys(key_settings(tmp_path))
    stored = json.loads((tmp_path / "secrets.json").read_text())["webhook_secret"]
    assert re.fullmatch(r"whsec_[0-9a-f]{64}", stored)
    assert keys.webhook_secret == stored.encode()  # the text itself is the key
    assert load_keys(key_settings(tmp_path)) == keys  # generated once
    assert len(keys.card_key) == len(keys.token_key) == 32


def test_a_configured_whsec_secret_is_used_as_text(tmp_path: Path) -> None:
    keys = load_keys(key_settings(tmp_path, STRIPE_SECRET))
    assert keys.webhook_secret == STRIPE_SECRET.encode()


def test_an_older_base64_secret_keeps_its_decoded_bytes_as_key(tmp_path: Path) -> None:
    raw = bytes(range(64, 96))
    keys = load_keys(key_settings(tmp_path, base64.b64encode(raw).decode()))
    assert keys.webhook_secret == raw  # receivers set up before keep verifying


def test_an_older_secrets_file_keeps_working(tmp_path: Path) -> None:
    raw = {name: os.urandom(32) for name in ("card_key", "token_key", "webhook_secret")}
    (tmp_path / "secrets.json").write_text(
        json.dumps({name: base64.b64encode(value).decode() for name, value in raw.items()}))
    assert load_keys(key_settings(tmp_path)) == Keys(**raw)


@pytest.mark.parametrize(("secret", "message"), [
    ("not-a-secret", "must start with whsec_"),
    (base64.b64encode(b"short").decode(), "must start with whsec_"),
    ("whsec_short", "at least 16 characters after whsec_"),
    ("whsec_0123456789abcdef 0123", "no spaces or control characters"),
    ("whsec_0123456789abcdef\u00070123", "no spaces or control characters"),
])
def test_a_bad_webhook_secret_is_a_one_line_config_error(
        tmp_path: Path, secret: str, message: str) -> None:
    with pytest.raises(ConfigError, match=message) as raised:
        load_keys(key_settings(tmp_path, secret))
    assert "\n" not in str(raised.value)
    assert str(raised.value).startswith("secrets.webhook_secret ")
