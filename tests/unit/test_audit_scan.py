"""The card-data detector: card numbers and CVV fields, not timestamps, tokens or ids."""

from __future__ import annotations

import base64
import json

import pytest

from paysim.ops.audit import Finding, _scan_bytes


def scan(raw: bytes) -> list[Finding]:
    findings: list[Finding] = []
    _scan_bytes(raw, "here", findings)
    return findings


@pytest.mark.parametrize("raw", [
    json.dumps({"t_requested": 1795564263335019, "stages": {"notified": 4111111111111111},
                "notified_at": 4111111111111111}).encode(),
    json.dumps({"token": "tok_9ba8ecc96c908cc4a41ac2975c0d078b"}).encode(),
    json.dumps({"payment_id": "84ae461d-e82a-494e-96d8-a757d666e9e7",
                "event_id": "evt_4111111111111111aa"}).encode(),
    json.dumps({"masked_pan": "411111******1111"}).encode(),
    base64.b64encode(b"\x00" * 40 + b"4111111111111111"),
    b"2026-11-24 23:36:35,154 paysim.processor INFO started after 1795564263 ms",
    json.dumps({"reason_text": "CVV check failed", "reason_code": "N7"}).encode(),
])
def test_no_false_alarm(raw: bytes) -> None:
    assert scan(raw) == []


@pytest.mark.parametrize(("raw", "what"), [
    (json.dumps({"card_number": "4111111111111111"}).encode(), "PAN-like 411111******1111"),
    (json.dumps({"note": "card 378282246310005 ok"}).encode(), "PAN-like 378282*****0005"),
    (json.dumps({"nested": [{"number": 5555555555554444}]}).encode(),
     "PAN-like 555555******4444"),
    (json.dumps({"cvv": "123"}).encode(), "CVV field 'cvv'"),
    (b"plain text with 4242424242424242 inside", "PAN-like 424242******4242"),
])
def test_card_data_is_found_and_masked(raw: bytes, what: str) -> None:
    assert Finding("here", what) in scan(raw)


def test_a_digit_run_failing_luhn_is_not_a_card() -> None:
    assert scan(json.dumps({"n": "4111111111111112"}).encode()) == []
