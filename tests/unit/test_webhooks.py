"""Webhook signatures: sign, verify, and every reason a receiver rejects one."""

from __future__ import annotations

import re
import time

import pytest

from paysim.domain.webhooks import SIGNATURE_HEADER, TOLERANCE_S, SignatureError, sign, verify

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
    with pytest.raises(SignatureError, match="missing Paysim-Signature header"):
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
