"""Webhook signatures, the way Stripe signs them, and the check receivers run.

Header: ``t=<unix seconds>,v1=<hex>`` (sent as ``Stripe-Signature`` and ``Paysim-Signature``)
where the hex is HMAC-SHA256 over ``<t>.<raw body>``. The key is the secret's UTF-8 when it is
text (``whsec_...``, as Stripe's libraries use it), or the bytes given (the older base64 secrets,
decoded). Receivers reject a timestamp more than 300 s away.
"""

from __future__ import annotations

import hashlib
import hmac
import ipaddress
import re
import socket
import time
import urllib.parse
from collections.abc import Sequence
from dataclasses import dataclass

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


# Where a webhook may go. paysim's own services must never receive one: a callback_url of
# http://127.0.0.1:6379/ made the notifier POST to Redis. The forbidden endpoints and the allow
# list come from settings (pipeline.webhook_dispatch.callback_policy builds the policy); the
# rule here is pure. The edge and the CLI check the URL as written (no DNS in the request
# path); the dispatcher checks again when it connects, with every address the host resolves
# to, and for every connection (a redirect too).

LOCAL_NAMES = frozenset({"localhost", "localhost.localdomain", "ip6-localhost",
                         "ip6-loopback"})
IpAddress = ipaddress.IPv4Address | ipaddress.IPv6Address


@dataclass(frozen=True)
class Endpoint:
    """A host and port of paysim's own (``what``: "Kafka", "Redis", "the HTTP API")."""

    host: str
    port: int
    what: str


@dataclass(frozen=True)
class CallbackPolicy:
    """Never ``forbidden``; and when ``allow`` names any host names or networks (CIDR), only
    those."""

    forbidden: tuple[Endpoint, ...] = ()
    allow: tuple[str, ...] = ()


def _ip(host: str) -> IpAddress | None:
    """``host`` as an address, in every form a connect takes: 127.0.0.1, ::1, ::ffff:127.0.0.1,
    and the old IPv4 forms (127.1, 2130706433, 0x7f000001)."""
    text = host.strip("[]").split("%")[0]
    try:
        address: IpAddress = ipaddress.ip_address(text)
    except ValueError:
        if not re.fullmatch(r"[0-9a-fA-Fx.]+", text):
            return None
        try:
            address = ipaddress.IPv4Address(socket.inet_aton(text))  # parsing only, no I/O
        except OSError:
            return None
    if isinstance(address, ipaddress.IPv6Address) and address.ipv4_mapped is not None:
        return address.ipv4_mapped
    return address


def _name(host: str) -> str:
    return host.lower().rstrip(".")


def _is_local(host: str) -> bool:
    """This machine, whatever the spelling: loopback, the unspecified address, localhost."""
    address = _ip(host)
    if address is not None:
        return address.is_loopback or address.is_unspecified
    name = _name(host)
    return name in LOCAL_NAMES or name.endswith(".localhost")


def _same_host(a: str, b: str) -> bool:
    if _is_local(a) and _is_local(b):
        return True
    first, second = _ip(a), _ip(b)
    if first is not None or second is not None:
        return first == second
    return _name(a) == _name(b)


def _allowed(host: str, addresses: Sequence[str] | None, allow: Sequence[str]) -> bool:
    networks = []
    for entry in allow:
        try:
            networks.append(ipaddress.ip_network(entry, strict=False))
        except ValueError:
            if _name(entry) == _name(host):
                return True
    if not networks:
        return False
    address = _ip(host)
    if address is not None:
        return any(address in network for network in networks)
    if addresses is None:
        return True  # a name: decided on delivery, once its addresses are known
    found = [_ip(text) for text in addresses]
    return bool(found) and all(
        ip is not None and any(ip in network for network in networks) for ip in found)


def refused_destination(host: str, port: int, policy: CallbackPolicy,
                        addresses: Sequence[str] | None = None) -> str | None:
    """Why a webhook may not go to ``host``:``port`` (None: it may). ``addresses``: what the
    host resolved to, each checked as well; None where nothing was resolved."""
    for endpoint in policy.forbidden:
        if port == endpoint.port and any(_same_host(candidate, endpoint.host)
                                         for candidate in (host, *(addresses or ()))):
            return f"{host}:{port} is paysim's own {endpoint.what}"
    if policy.allow and not _allowed(host, addresses, policy.allow):
        return f"{host} is not in webhook.allow"
    return None


def refused_callback(url: str, policy: CallbackPolicy,
                     addresses: Sequence[str] | None = None) -> str | None:
    """Why ``url`` may not receive webhooks under ``policy``, in a few words; None when it
    may. The syntax first (valid_callback_url), then refused_destination."""
    if not valid_callback_url(url):
        return "not an http(s) URL"
    parts = urllib.parse.urlsplit(url)
    port = parts.port or (443 if parts.scheme == "https" else 80)
    return refused_destination(parts.hostname or "", port, policy, addresses)


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
