"""Webhook signatures, the way Stripe signs them, and the check receivers run.

Header: ``t=<unix seconds>,v1=<hex>`` (sent as ``Stripe-Signature`` and ``Paysim-Signature``)
where the hex is HMAC-SHA256 over ``<t>.<raw body>``. The key is the secret's UTF-8 when it is
text (``whsec_...``, as Stripe's libraries use it), or the bytes given (the older base64 secrets,
decoded). Receivers reject a timestamp more than 300 s away.
"""

from __future__ import annotations

import hashlib
import hmac
import time
import urllib.parse

SIGNATURE_HEADER = "Paysim-Signature"
STRIPE_SIGNATURE_HEADER = "Stripe-Signature"
TOLERANCE_S = 300
MAX_URL_CHARS = 2048


def valid_callback_url(url: object) -> bool:
    """An http(s) URL with a host, no spaces, at most 2048 characters: the one check every
    entry point (HTTP API, CLI, Kafka) applies before a payment may carry it."""
    if not isinstance(url, str) or len(url) > MAX_URL_CHARS or any(c.isspace() for c in url):
        return False
    try:
        parts = urllib.parse.urlsplit(url)
        return parts.scheme in ("http", "https") and bool(parts.hostname) and (
            parts.port is None or 0 < parts.port < 65536)
    except ValueError:
        return False


class SignatureError(ValueError):
    """The signature header is missing, malformed, stale, or does not match."""


def _mac(secret: str | bytes, timestamp: int, body: bytes) -> str:
    # Stripe's libraries hash the text "<t>.<body>" as UTF-8: the same bytes as these for a
    # UTF-8 body, which every JSON body is.
    key = secret.encode() if isinstance(secret, str) else secret
    return hmac.new(key, f"{timestamp}.".encode() + body, hashlib.sha256).hexdigest()


def sign(body: bytes, secret: str | bytes, timestamp: int | None = None) -> str:
    """The header value for ``body``."""
    at = int(time.time()) if timestamp is None else timestamp
    return f"t={at},v1={_mac(secret, at, body)}"


def verify(body: bytes, header: str | None, secret: str | bytes, tolerance_s: int = TOLERANCE_S,
           now: float | None = None) -> int:
    """Check a received webhook; return its timestamp, or raise SignatureError saying why.

    ``header`` is either signature header (the same value); ``secret`` the whsec_ text, or
    the bytes that are the key."""
    if not header:
        raise SignatureError(
            f"missing signature header ({STRIPE_SIGNATURE_HEADER} or {SIGNATURE_HEADER})")
    parts: dict[str, list[str]] = {}
    for item in header.split(","):
        name, sep, value = item.strip().partition("=")
        if sep:
            parts.setdefault(name, []).append(value)
    text = parts.get("t", [""])[0]
    # Ten digits cover Unix time to the year 2286; longer is no timestamp at all.
    if not (text.isascii() and text.isdigit() and len(text) <= 10):
        raise SignatureError("signature header has no valid t=")
    timestamp = int(text)
    current = time.time() if now is None else now
    if abs(current - timestamp) > tolerance_s:
        raise SignatureError(f"timestamp {timestamp} is outside the {tolerance_s} s tolerance")
    expected = _mac(secret, timestamp, body)
    # Several v1 values may be sent while a secret is being rotated; any match is enough.
    # As bytes: compare_digest refuses non-ASCII str, and a header may carry anything.
    wanted = expected.encode()
    if not any(hmac.compare_digest(wanted, given.encode(errors="replace"))
               for given in parts.get("v1", [])):
        raise SignatureError("no v1 signature matches the body")
    return timestamp
