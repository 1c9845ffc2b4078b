"""The card-data detector: card numbers and CVV fields, not timestamps, tokens or ids."""

from __future__ import annotations

import base64
import json

import msgspec
import pytest

from paysim.domain.messages import DeadLetter
from paysim.infra.config import load_settings
from paysim.ops.audit import Finding, _scan_bytes, _scan_redis_key, mask_pans, scan_record

TOPICS = load_settings({}, env={}).topics


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
    # Written in groups, as the edge refuses them: the audit finds what the edge would refuse.
    (b"log: card 4111 1111 1111 1111 declined", "PAN-like 411111******1111"),
    (json.dumps({"note": "amex 3782-822463-10005"}).encode(), "PAN-like 378282*****0005"),
    # As a name: in a field of times too, whose values alone are not scanned.
    (json.dumps({"4111111111111111": "x"}).encode(), "PAN-like 411111******1111"),
    (json.dumps({"stages": {"4111111111111111": 1}}).encode(), "PAN-like 411111******1111"),
])
def test_card_data_is_found_and_masked(raw: bytes, what: str) -> None:
    assert Finding("here", what) in scan(raw)


def test_a_grouped_card_number_is_masked_in_place() -> None:
    assert mask_pans("key paysim:idem:4111-1111-1111-1111 and 4242424242424242") == (
        "key paysim:idem:411111******1111 and 424242******4242")


def test_json_nested_deeper_than_python_recurses_is_scanned_as_text() -> None:
    raw = b"[" * 100_000 + b'"4111111111111111"' + b"]" * 100_000
    assert scan(raw) == [Finding("here", "PAN-like 411111******1111")]


def test_a_dead_letter_whose_original_is_no_base64_is_scanned_as_it_is() -> None:
    letter = msgspec.json.encode(DeadLetter(
        service="p", source_topic="t", partition=0, offset=0, key=None, at=0,
        reason="4111111111111111", original="abc"))  # padding missing
    findings: list[Finding] = []
    scan_record(TOPICS, TOPICS.dlq, letter, "here", findings)
    assert findings == [Finding("here", "PAN-like 411111******1111")]


def test_a_digit_run_failing_luhn_is_not_a_card() -> None:
    assert scan(json.dumps({"n": "4111111111111112"}).encode()) == []


class OneKeyRedis:
    """Just what the scan asks of Redis about one string key."""

    def __init__(self, value: bytes) -> None:
        self.value = value

    def type(self, key: bytes) -> bytes:
        return b"string"

    def get(self, key: bytes) -> bytes:
        return self.value


def test_a_card_number_in_a_redis_key_name_is_masked_where_it_is_reported() -> None:
    findings: list[Finding] = []
    _scan_redis_key(OneKeyRedis(b'{"note": "card 4111111111111111"}'),
                    b"paysim:idem:5105105105105100", findings)

    assert findings == [
        Finding("redis key paysim:idem:510510******5100", "PAN-like 510510******5100"),
        Finding("redis paysim:idem:510510******5100", "PAN-like 411111******1111"),
    ]
    assert not any("5105105105105100" in f.where + f.what for f in findings)


def test_a_finding_never_holds_a_card_number_in_clear() -> None:
    finding = Finding("/var/log/4242424242424242/x.log:3", "CVV value near 4111111111111111")
    assert finding == Finding("/var/log/424242******4242/x.log:3",
                              "CVV value near 411111******1111")
    # Digits that are no card number, and what is masked already, stay as they are.
    assert Finding("payments.results record 1234567890123", "x").where == (
        "payments.results record 1234567890123")
    assert Finding("redis paysim:idem:510510******5100", "x").where == (
        "redis paysim:idem:510510******5100")
