"""Card numbers: Luhn, BIN networks, CVV, expiry, masking, tokens and the card-block cipher."""

from __future__ import annotations

import base64
import calendar
import os
import random
from datetime import UTC, datetime, timedelta, timezone

import pytest
from cryptography.hazmat.primitives.ciphers.aead import AESGCM

from paysim.domain import cards

KNOWN_VALID = [
    "4242424242424242",  # Visa
    "378282246310005",  # Amex
    "6011111111111117",  # Discover
    "5555555555554444",  # Mastercard
    "2221000000000009",  # Mastercard 2-series
    "3530111333300000",  # JCB
    "6200000000000005",  # UnionPay
]
ONE_MICROSECOND = timedelta(microseconds=1)
# Unicode decimal digits that are not ASCII: superscript two, and Arabic-Indic "4242...".
SUPERSCRIPT_PAN = "4242\u00b242424242424"
ARABIC_INDIC_PAN = "\u0664\u0662" * 8


# ---------------------------------------------------------------------------- Luhn


@pytest.mark.parametrize("pan", KNOWN_VALID)
def test_known_numbers_pass_luhn(pan: str) -> None:
    assert cards.luhn_valid(pan)
    assert cards.well_formed_pan(pan)


@pytest.mark.parametrize("pan", KNOWN_VALID)
def test_every_one_digit_change_fails_luhn(pan: str) -> None:
    for position, original in enumerate(pan):
        for digit in "0123456789":
            if digit != original:
                changed = pan[:position] + digit + pan[position + 1 :]
                assert not cards.luhn_valid(changed), changed


@pytest.mark.parametrize("pan", ["", "4242 4242 4242 4242", "4242-4242-4242-4242",
                                 "424242424242424a", "-4242424242424242", "+4242424242424242"])
def test_non_digits_fail_luhn(pan: str) -> None:
    assert not cards.luhn_valid(pan)
    assert not cards.well_formed_pan(pan)


@pytest.mark.parametrize("pan", [SUPERSCRIPT_PAN, ARABIC_INDIC_PAN],
                         ids=["superscript-two", "arabic-indic"])
def test_non_ascii_digits_are_not_a_card_number(pan: str) -> None:
    # str.isdigit() is true for both; a PAN is ASCII digits only.
    assert not cards.luhn_valid(pan)
    assert not cards.well_formed_pan(pan)


@pytest.mark.parametrize("pan", KNOWN_VALID)
def test_luhn_complete_restores_the_check_digit(pan: str) -> None:
    assert cards.luhn_complete(pan[:-1]) == pan


@pytest.mark.parametrize("partial", ["0", "4", "12345", "400000000000", "999999999999999999"])
def test_luhn_complete_appends_one_valid_digit(partial: str) -> None:
    complete = cards.luhn_complete(partial)
    assert complete[:-1] == partial
    assert len(complete) == len(partial) + 1
    assert cards.luhn_valid(complete)


# ---------------------------------------------------------------------------- length bounds


@pytest.mark.parametrize(("length", "ok"), [(11, False), (12, True), (13, True), (16, True),
                                            (19, True), (20, False)])
def test_well_formed_pan_length_bounds(length: int, ok: bool) -> None:
    pan = cards.luhn_complete("4" + "0" * (length - 2))
    assert len(pan) == length
    assert cards.luhn_valid(pan)
    assert cards.well_formed_pan(pan) is ok


def test_bounds_constants() -> None:
    assert (cards.MIN_PAN_DIGITS, cards.MAX_PAN_DIGITS) == (12, 19)


# ---------------------------------------------------------------------------- networks


@pytest.mark.parametrize(("pan", "expected"), [
    ("4242424242424242", "visa"),
    ("4000000000000002", "visa"),
    ("5105105105105100", "mastercard"),
    ("5555555555554444", "mastercard"),
    ("5000000000000000", "unknown"),
    ("5600000000000000", "unknown"),
    # Mastercard 2-series: 2221 to 2720 inclusive.
    ("2221000000000009", "mastercard"),
    ("2720990000000000", "mastercard"),
    ("2500000000000000", "mastercard"),
    ("2220990000000000", "unknown"),
    ("2721000000000000", "unknown"),
    # Amex 34 and 37 only.
    ("340000000000000", "amex"),
    ("378282246310005", "amex"),
    ("350000000000000", "unknown"),
    ("330000000000000", "unknown"),
    # JCB 3528 to 3589.
    ("3528000000000000", "jcb"),
    ("3530111333300000", "jcb"),
    ("3589000000000000", "jcb"),
    ("3527000000000000", "unknown"),
    ("3590000000000000", "unknown"),
    # Discover: 6011, 644-649, 65, and 622126-622925 inside UnionPay's 62.
    ("6011111111111117", "discover"),
    ("6440000000000000", "discover"),
    ("6490000000000000", "discover"),
    ("6500000000000000", "discover"),
    ("6221260000000000", "discover"),
    ("6229250000000000", "discover"),
    ("6221250000000000", "unionpay"),
    ("6229260000000000", "unionpay"),
    ("6200000000000005", "unionpay"),
    ("6280000000000000", "unionpay"),
    ("6010000000000000", "unknown"),
    ("6430000000000000", "unknown"),
    # Diners: 300-305, 36, 38, 39.
    ("30000000000000", "diners"),
    ("30500000000000", "diners"),
    ("36000000000000", "diners"),
    ("38000000000000", "diners"),
    ("39000000000000", "diners"),
    ("30600000000000", "unknown"),
    # Unknown.
    ("1234567812345670", "unknown"),
    ("9999999999999995", "unknown"),
    ("7000000000000000", "unknown"),
    ("", "unknown"),
])
def test_network_from_bin(pan: str, expected: str) -> None:
    assert cards.network(pan) == expected


# ---------------------------------------------------------------------------- CVV


@pytest.mark.parametrize(("cvv", "card_network", "ok"), [
    ("1234", "amex", True),
    ("123", "amex", False),
    ("12345", "amex", False),
    ("123", "visa", True),
    ("1234", "visa", False),
    ("12", "visa", False),
    ("123", "mastercard", True),
    ("123", "unknown", True),
    ("12a", "visa", False),
    ("12a4", "amex", False),
    (" 123", "visa", False),
    ("", "visa", False),
    ("-12", "visa", False),
])
def test_cvv_rules(cvv: str, card_network: str, ok: bool) -> None:
    assert cards.valid_cvv(cvv, card_network) is ok


def test_cvv_length() -> None:
    assert cards.cvv_length("amex") == 4
    for other in ("visa", "mastercard", "discover", "jcb", "unionpay", "diners", "unknown"):
        assert cards.cvv_length(other) == 3


# ---------------------------------------------------------------------------- expiry


def test_good_through_the_last_microsecond_of_the_month() -> None:
    last = datetime(2027, 6, 30, 23, 59, 59, 999999, tzinfo=UTC)
    assert not cards.expired(6, 2027, last)
    assert cards.expired(6, 2027, last + ONE_MICROSECOND)
    assert cards.expired(6, 2027, datetime(2027, 7, 1, tzinfo=UTC))


def test_not_expired_before_or_during_the_month() -> None:
    assert not cards.expired(6, 2027, datetime(2027, 6, 1, tzinfo=UTC))
    assert not cards.expired(6, 2027, datetime(2020, 1, 1, tzinfo=UTC))


def test_december_rolls_over_into_next_year() -> None:
    last = datetime(2027, 12, 31, 23, 59, 59, 999999, tzinfo=UTC)
    assert not cards.expired(12, 2027, last)
    assert cards.expired(12, 2027, datetime(2028, 1, 1, tzinfo=UTC))


def test_february_leap_and_common_years() -> None:
    assert not cards.expired(2, 2028, datetime(2028, 2, 29, 23, 59, 59, 999999, tzinfo=UTC))
    assert not cards.expired(2, 2027, datetime(2027, 2, 28, 23, 59, 59, 999999, tzinfo=UTC))
    assert cards.expired(2, 2027, datetime(2027, 3, 1, tzinfo=UTC))


def test_two_digit_years_mean_2000s() -> None:
    last = datetime(2027, 12, 31, 23, 59, 59, 999999, tzinfo=UTC)
    assert not cards.expired(12, 27, last)
    assert cards.expired(12, 27, last + ONE_MICROSECOND)
    assert cards.expired(1, 26, datetime(2026, 2, 1, tzinfo=UTC))


def test_expiry_is_judged_in_utc() -> None:
    # 00:30 on 1 January at UTC+1 is still 31 December in UTC.
    plus_one = timezone(timedelta(hours=1))
    assert not cards.expired(12, 2027, datetime(2028, 1, 1, 0, 30, tzinfo=plus_one))
    # 23:30 on 31 December at UTC-1 is already January in UTC.
    minus_one = timezone(timedelta(hours=-1))
    assert cards.expired(12, 2027, datetime(2027, 12, 31, 23, 30, tzinfo=minus_one))


@pytest.mark.parametrize("month", [0, 13, -1, 100])
def test_impossible_months_count_as_expired(month: int) -> None:
    assert cards.expired(month, 2030, datetime(2026, 1, 1, tzinfo=UTC))


@pytest.mark.parametrize("year", [1999, 150, 10000, -5])
def test_impossible_years_count_as_expired(year: int) -> None:
    assert cards.expired(6, year, datetime(1990, 1, 1, tzinfo=UTC))


# ---------------------------------------------------------------------------- masking


@pytest.mark.parametrize(("pan", "masked"), [
    ("4242424242424242", "424242******4242"),
    ("378282246310005", "378282*****0005"),
    ("123456789012", "123456**9012"),
    ("4000000000000000006", "400000*********0006"),
])
def test_mask_keeps_first_six_and_last_four(pan: str, masked: str) -> None:
    assert cards.mask(pan) == masked
    assert len(cards.mask(pan)) == len(pan)


# ---------------------------------------------------------------------------- tokens


def test_tokenize_is_stable_per_key_and_differs_across_keys() -> None:
    pan = "4242424242424242"
    key_a, key_b = b"a" * 32, b"b" * 32
    token = cards.tokenize(pan, key_a)
    assert token == cards.tokenize(pan, key_a)
    assert token != cards.tokenize(pan, key_b)
    assert token != cards.tokenize("5555555555554444", key_a)
    assert token.startswith("tok_")
    assert len(token) == 4 + 32


@pytest.mark.parametrize("pan", KNOWN_VALID)
def test_token_never_contains_the_pan(pan: str) -> None:
    for key in (b"k" * 32, b"\x00" * 32, os.urandom(32)):
        token = cards.tokenize(pan, key)
        assert pan not in token
        assert pan[-4:] + pan[:6] not in token


# ---------------------------------------------------------------------------- cipher

CARD = cards.CardBlock(number="4242424242424242", exp_month=12, exp_year=2030, cvv="123")
PAYMENT_ID = b"0b6f5c1e-2d3a-4b5c-8d9e-0f1a2b3c4d5e"


@pytest.fixture
def key() -> bytes:
    return os.urandom(32)


def test_cipher_round_trip(key: bytes) -> None:
    cipher = cards.CardCipher(key)
    blob = cipher.encrypt(CARD, PAYMENT_ID)
    assert isinstance(blob, str)
    assert CARD.number not in blob
    assert cipher.decrypt(blob, PAYMENT_ID) == CARD


def test_each_encryption_uses_a_fresh_nonce(key: bytes) -> None:
    cipher = cards.CardCipher(key)
    first, second = cipher.encrypt(CARD, PAYMENT_ID), cipher.encrypt(CARD, PAYMENT_ID)
    assert first != second
    assert cipher.decrypt(first, PAYMENT_ID) == cipher.decrypt(second, PAYMENT_ID) == CARD


def test_a_block_from_another_payment_fails(key: bytes) -> None:
    cipher = cards.CardCipher(key)
    blob = cipher.encrypt(CARD, PAYMENT_ID)
    with pytest.raises(ValueError, match="cannot be decrypted"):
        cipher.decrypt(blob, b"another-payment-id")


def test_the_wrong_key_fails(key: bytes) -> None:
    blob = cards.CardCipher(key).encrypt(CARD, PAYMENT_ID)
    with pytest.raises(ValueError, match="cannot be decrypted"):
        cards.CardCipher(bytes(b ^ 1 for b in key)).decrypt(blob, PAYMENT_ID)


@pytest.mark.parametrize("index", [0, 5, 11, 12, 20, -1])  # nonce, body and tag bytes
def test_a_tampered_block_fails(key: bytes, index: int) -> None:
    cipher = cards.CardCipher(key)
    raw = bytearray(base64.b64decode(cipher.encrypt(CARD, PAYMENT_ID)))
    raw[index] ^= 0x01
    with pytest.raises(ValueError, match="cannot be decrypted"):
        cipher.decrypt(base64.b64encode(bytes(raw)).decode(), PAYMENT_ID)


def test_a_truncated_block_fails(key: bytes) -> None:
    cipher = cards.CardCipher(key)
    raw = base64.b64decode(cipher.encrypt(CARD, PAYMENT_ID))
    for cut in (1, 16, len(raw) - 12):
        with pytest.raises(ValueError, match="cannot be decrypted"):
            cipher.decrypt(base64.b64encode(raw[:-cut]).decode(), PAYMENT_ID)


@pytest.mark.parametrize("blob", ["", "not base64!!", "AAAA", "AAA", "====", "\u00e9t\u00e9",
                                  "QUJD\nREVG", base64.b64encode(b"x" * 40).decode()])
def test_garbage_fails_with_value_error(key: bytes, blob: str) -> None:
    with pytest.raises(ValueError, match="cannot be decrypted"):
        cards.CardCipher(key).decrypt(blob, PAYMENT_ID)


def test_sealed_json_that_is_not_a_card_block_fails(key: bytes) -> None:
    nonce = os.urandom(12)
    sealed = AESGCM(key).encrypt(nonce, b'{"number": 4242}', PAYMENT_ID)
    blob = base64.b64encode(nonce + sealed).decode()
    with pytest.raises(ValueError, match="cannot be decrypted"):
        cards.CardCipher(key).decrypt(blob, PAYMENT_ID)


# ---------------------------------------------------------------------------- card data in text


@pytest.mark.parametrize("text", [
    "4242424242424242",
    "run 4242424242424242",
    "order-378282246310005",  # after a dash
    "a_4242424242424242_b",  # underscores are not letters
    "tel:4242424242424242.",
    "https://shop.example/hook?pan=4242424242424242",
    "4242 4242 4242 4242",  # as printed on the card
    "4242-4242-4242-4242",
    "3782 822463 10005",  # Amex: 4-6-5
    "3056 930902 5904",  # Diners: 4-6-4
    "6200 0000 0000 0000 000",  # 19 digits: 4-4-4-4-3
    cards.luhn_complete("4" * 12),  # 13 digits, the shortest
    cards.luhn_complete("4" * 18),  # 19 digits, the longest
])
def test_a_card_number_in_text_is_found(text: str) -> None:
    assert cards.contains_card_number(text)


@pytest.mark.parametrize("text", [
    "",
    "corner shop",
    "4242424242424241",  # fails Luhn
    cards.luhn_complete("4" * 11),  # 12 digits: too short for a card number here
    cards.luhn_complete("4" * 19),  # 20 digits: too long
    "4242 4242 4242 4241",
    "4242  4242  4242  4242",  # double spaces: not how a card number is written
    "4242 4242-4242 4242",  # mixed separators
    "42424242 42424242",  # groups of eight
    "run-20261124-235405-179daf",  # a paysim run id: dates and times are not grouped in fours
    "tok_4242424242424242aa",  # inside a token: digits touching letters (as paysim audit --pci)
    "ab4242424242424242",
    "\u0664\u0662" * 8,  # Arabic-Indic digits are not a PAN
    "a0b1c2d3-e4f5-4a6b-8c7d-9e0f1a2b3c4d",
])
def test_text_without_a_card_number(text: str) -> None:
    assert not cards.contains_card_number(text)


def test_card_numbers_in_text_are_replaced_and_nothing_else() -> None:
    text = ("pay 4242 4242 4242 4242 and 378282246310005, not 4242424242424241 nor "
            "tok_4242424242424242aa")
    assert cards.redact_card_numbers(text) == (
        "pay [card number] and [card number], not 4242424242424241 nor tok_4242424242424242aa")


def test_every_luhn_valid_length_from_13_to_19_is_found_and_no_other() -> None:
    for length in range(10, 23):
        number = cards.luhn_complete("5" * (length - 1))
        assert cards.contains_card_number(f"x {number} y") == (13 <= length <= 19), length


# ---------------------------------------------------------------------------- expiry as text


@pytest.mark.parametrize(("text", "expected"), [
    ("12/30", (12, 2030)),
    ("01/2031", (1, 2031)),
    ("13/30", (13, 2030)),  # parsed; the card check declines month 13 (reason 54)
    ("00/99", (0, 2099)),
])
def test_parse_expiry(text: str, expected: tuple[int, int]) -> None:
    assert cards.parse_expiry(text) == expected


@pytest.mark.parametrize("text", ["", "1230", "12/3", "12/203", "12/20301", "1/30", "12-30",
                                  " 12/30", "12/30\n", "ab/cd", "\u0661\u0662/30"])
def test_parse_expiry_refuses_other_forms(text: str) -> None:
    with pytest.raises(ValueError, match="MM/YY or MM/YYYY"):
        cards.parse_expiry(text)


def test_luhn_valid_agrees_with_the_textbook_loop() -> None:
    def textbook(pan: str) -> bool:
        total = 0
        for position, digit in enumerate(int(d) for d in reversed(pan)):
            doubled = digit * 2 if position % 2 else digit
            total += doubled - 9 if doubled > 9 else doubled
        return total % 10 == 0

    rng = random.Random(16)
    numbers = ["".join(rng.choice("0123456789") for _ in range(rng.randint(1, 19)))
               for _ in range(5000)]
    numbers += [cards.luhn_complete(n[:-1]) for n in numbers if len(n) > 1]
    assert any(cards.luhn_valid(n) for n in numbers) and not all(map(cards.luhn_valid, numbers))
    assert [cards.luhn_valid(n) for n in numbers] == [textbook(n) for n in numbers]


def test_expired_agrees_with_the_last_moment_of_the_month_at_every_month_edge() -> None:
    def by_last_moment(month: int, year: int, now: datetime) -> bool:
        last_day = calendar.monthrange(year, month)[1]
        return now > datetime(year, month, last_day, 23, 59, 59, 999999, tzinfo=UTC)

    plus_five = timezone(timedelta(hours=5))
    for year in (2027, 2028):
        for month in range(1, 13):
            start = datetime(year, month, 1, tzinfo=UTC)
            for now in (start - ONE_MICROSECOND, start, start + timedelta(days=15),
                        (start - ONE_MICROSECOND).astimezone(plus_five),
                        start.astimezone(plus_five)):
                for card_month, card_year in ((month, year), (month - 1 or 12, year),
                                              (month % 12 + 1, year), (month, year - 1)):
                    assert cards.expired(card_month, card_year, now) == by_last_moment(
                        card_month, card_year, now), (card_month, card_year, now)
