"""Card numbers: Luhn, networks from the BIN, expiry, masking, tokens, and edge encryption."""

from __future__ import annotations

import base64
import hashlib
import hmac
import os
import re
from collections.abc import Callable
from datetime import UTC, datetime

import msgspec
from cryptography.exceptions import InvalidTag
from cryptography.hazmat.primitives.ciphers.aead import AESGCM

MIN_PAN_DIGITS = 12
MAX_PAN_DIGITS = 19


class CardBlock(msgspec.Struct, frozen=True):
    """What a cardholder types. Exists only at the edge; encrypted on the requested topic."""

    number: str
    exp_month: int
    exp_year: int
    cvv: str


def ascii_digits(text: str) -> bool:
    """Only 0-9: str.isdigit() also takes other scripts' digits and superscripts."""
    return text.isascii() and text.isdigit()


def luhn_valid(pan: str) -> bool:
    if not ascii_digits(pan):
        return False
    # Slices and table lookups instead of a per-digit loop: the authorizer checks every card.
    digits = pan.encode()
    kept = digits[-1::-2]
    doubled = digits[-2::-2].translate(_LUHN_DOUBLED)  # summed in C, not digit by digit
    return (sum(kept) - 48 * len(kept) + sum(doubled)) % 10 == 0


# Each ASCII digit's byte to the Luhn value of the digit doubled (2 * d, minus 9 past 9).
_LUHN_DOUBLED = bytes.maketrans(b"0123456789",
                                bytes(2 * d - 9 if d > 4 else 2 * d for d in range(10)))


def luhn_complete(partial: str) -> str:
    """Append the check digit that makes ``partial`` Luhn-valid."""
    for check in "0123456789":
        if luhn_valid(partial + check):
            return partial + check
    raise AssertionError("unreachable: one of ten digits always completes a Luhn number")


def well_formed_pan(pan: str) -> bool:
    """Card-check 14: 12 to 19 digits passing Luhn."""
    return MIN_PAN_DIGITS <= len(pan) <= MAX_PAN_DIGITS and luhn_valid(pan)


# A card number as people write one: 13 to 19 digits in a row, or in groups of four with a
# shorter last group (4-4-4-4, 4-4-4-4-3) or Amex's and Diners' 4-6-5 and 4-6-4, separated by
# single spaces or single dashes, the same throughout. Other groupings are not taken for one:
# a paysim run id (run-20261124-235405-...) or a date must not be. It stands alone: digits
# touching a letter or another digit are part of a token (hex, base64), not a card number;
# the same boundary as `paysim audit --pci`, so the edge refuses what the audit would report.
# (The first digit comes before the look-behind that checks what precedes it: re then skips
# to digits at once, which makes text without digits, the usual case, 2-4 times faster.)
_WRITTEN_PAN = re.compile(
    r"[0-9](?<![0-9A-Za-z][0-9])"
    r"(?:[0-9]{12,18}"
    r"|[0-9]{3}([ -])(?:[0-9]{4}\1){1,3}[0-9]{1,4}"
    r"|[0-9]{3}([ -])[0-9]{6}\2[0-9]{4,5})"
    r"(?![0-9A-Za-z])"
)


def card_numbers_in(text: str) -> list[tuple[tuple[int, int], str]]:
    """Each Luhn-valid card number of 13 to 19 digits in ``text``, contiguous or written in
    groups (see _WRITTEN_PAN): where it stands, and its digits."""
    if _WRITTEN_PAN.search(text) is None:  # the usual case, in one call: the authorizer
        return []                           # checks four fields of every payment
    found = []
    for match in _WRITTEN_PAN.finditer(text):
        digits = match.group().replace(" ", "").replace("-", "")
        if 13 <= len(digits) <= MAX_PAN_DIGITS and luhn_valid(digits):
            found.append((match.span(), digits))
    return found


def contains_card_number(text: str) -> bool:
    """True when ``text`` holds a card number (card_numbers_in). For free-text fields, which
    must never carry one."""
    return bool(card_numbers_in(text))


def replace_card_numbers(text: str, replacement: Callable[[str], str]) -> str:
    """``text`` with each card number card_numbers_in finds replaced by ``replacement`` of
    its digits."""
    for (start, end), digits in reversed(card_numbers_in(text)):
        text = text[:start] + replacement(digits) + text[end:]
    return text


def redact_card_numbers(text: str) -> str:
    """``text`` with each card number replaced by "[card number]": for client-supplied text
    an answer names."""
    return replace_card_numbers(text, lambda _: "[card number]")


def _in(prefix: str, low: int, high: int) -> bool:
    return ascii_digits(prefix) and low <= int(prefix) <= high


def network(pan: str) -> str:
    """The card network from the BIN (issuer identification number) ranges."""
    if pan.startswith("4"):
        return "visa"
    if _in(pan[:2], 51, 55) or _in(pan[:4], 2221, 2720):
        return "mastercard"
    if pan[:2] in ("34", "37"):
        return "amex"
    if _in(pan[:4], 3528, 3589):
        return "jcb"
    # Discover's 622126-622925 sits inside UnionPay's 62 block, so test it first.
    if pan.startswith("6011") or _in(pan[:3], 644, 649) or pan.startswith("65") or _in(
        pan[:6], 622126, 622925
    ):
        return "discover"
    if pan.startswith("62"):
        return "unionpay"
    if pan[:2] in ("36", "38", "39") or _in(pan[:3], 300, 305):
        return "diners"
    return "unknown"


def cvv_length(card_network: str) -> int:
    return 4 if card_network == "amex" else 3


def valid_cvv(cvv: str, card_network: str) -> bool:
    """Card-check N7: digits only, 4 for Amex, 3 for the others."""
    return ascii_digits(cvv) and len(cvv) == cvv_length(card_network)


def expired(exp_month: int, exp_year: int, now: datetime) -> bool:
    """Card-check 54: a card is good through the last moment of its expiry month, UTC."""
    if exp_year < 100:  # "27" on the card means 2027
        exp_year += 2000
    if not 1 <= exp_month <= 12 or not 2000 <= exp_year <= 9999:
        return True
    if now.tzinfo is not UTC:
        now = now.astimezone(UTC)
    # Past the last moment of the expiry month is in a later month: compared as (year,
    # month), not with that moment built (its calendar lookup and datetime were a tenth of
    # the authorizer's decision).
    return (now.year, now.month) > (exp_year, exp_month)


_EXPIRY_TEXT = re.compile(r"([0-9]{2})/([0-9]{2}|[0-9]{4})")


def parse_expiry(text: str) -> tuple[int, int]:
    """``MM/YY`` or ``MM/YYYY`` as (month, four-digit year); ValueError for any other form.
    The month is not range-checked here: month 13 is an expired card (reason 54), as with
    exp_month."""
    found = _EXPIRY_TEXT.fullmatch(text)
    if found is None:
        raise ValueError("an expiry must be MM/YY or MM/YYYY")
    month, year = int(found[1]), int(found[2])
    return month, (year + 2000 if len(found[2]) == 2 else year)


def mask(pan: str) -> str:
    """First 6 and last 4 digits, the rest starred: 411111******1111."""
    return pan[:6] + "*" * (len(pan) - 10) + pan[-4:]


def tokenize(pan: str, key: bytes) -> str:
    """A stable card token: keyed HMAC-SHA256 of the PAN (not reversible without the key)."""
    return "tok_" + hmac.new(key, pan.encode(), hashlib.sha256).hexdigest()[:32]


_card_encoder = msgspec.json.Encoder()
_card_decoder = msgspec.json.Decoder(CardBlock)


class CardCipher:
    """AES-256-GCM for the card block on the requested topic: nonce || ciphertext+tag."""

    NONCE_BYTES = 12

    def __init__(self, key: bytes) -> None:
        self._aead = AESGCM(key)

    def encrypt(self, card: CardBlock, associated: bytes) -> str:
        # The payment id is bound as associated data: a card block cannot be moved to
        # another payment without failing authentication.
        nonce = os.urandom(self.NONCE_BYTES)
        sealed = self._aead.encrypt(nonce, _card_encoder.encode(card), associated)
        return base64.b64encode(nonce + sealed).decode()

    def decrypt(self, blob: str, associated: bytes) -> CardBlock:
        """The card block; ValueError when it is not a valid sealed block for this payment."""
        try:
            raw = base64.b64decode(blob, validate=True)
            plain = self._aead.decrypt(raw[: self.NONCE_BYTES], raw[self.NONCE_BYTES :],
                                       associated)
            return _card_decoder.decode(plain)
        except (InvalidTag, ValueError, msgspec.DecodeError) as exc:
            raise ValueError("card block cannot be decrypted with the configured key") from exc
