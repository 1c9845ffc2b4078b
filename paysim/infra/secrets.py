"""The keys paysim needs: configured, or generated once and kept in a private file.

The card and token keys are base64 of 32 bytes. The webhook secret is text in Stripe's format,
``whsec_`` and random characters, whose UTF-8 is the HMAC key (as Stripe's libraries use it);
a secret without that prefix is the older format, base64 of 32 bytes whose decoded bytes stay
the key, so that receivers set up with one keep verifying."""

from __future__ import annotations

import base64
import binascii
import json
import os
from dataclasses import dataclass
from pathlib import Path

from paysim.infra.config import Settings
from paysim.infra.errors import ConfigError
from paysim.infra.files import owner_only, writing

_NAMES = ("card_key", "token_key", "webhook_secret")
WEBHOOK_SECRET_PREFIX = "whsec_"
# Stripe's own secrets have 32 characters after the prefix; fewer than 16 is no secret.
_MIN_WEBHOOK_SECRET_CHARS = 16


@dataclass(frozen=True)
class Keys:
    card_key: bytes  # AES-256-GCM key for card blocks at the edge
    token_key: bytes  # HMAC key for card tokens
    webhook_secret: bytes  # HMAC key for webhook signatures (see webhook_key)


def new_webhook_secret() -> str:
    """``whsec_`` and 64 hex digits (the Stripe CLI's shape): safe in env, TOML and shells."""
    return WEBHOOK_SECRET_PREFIX + os.urandom(32).hex()


def _new_value(name: str) -> str:
    return new_webhook_secret() if name == "webhook_secret" else base64.b64encode(
        os.urandom(32)).decode()


def _stored(path: Path, create: bool) -> dict[str, str]:
    """Read the secrets file, creating it (mode 0600) first if no process has yet and
    ``create``; without ``create``, a missing file is a ConfigError naming it."""
    if not path.exists():
        if not create:
            raise ConfigError(f"no secrets: {path} does not exist and secrets."
                              f"{', secrets.'.join(_NAMES)} are not all set")
        with owner_only(), writing("the secrets file", path):
            path.parent.mkdir(parents=True, exist_ok=True)
            fresh = {name: _new_value(name) for name in _NAMES}
            scratch = path.with_name(f".{path.name}.{os.getpid()}")
            fd = os.open(scratch, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
            with os.fdopen(fd, "w") as handle:
                json.dump(fresh, handle)
            try:
                # link() fails if another process created the file first: then theirs wins.
                os.link(scratch, path)
            except FileExistsError:
                pass
            finally:
                scratch.unlink(missing_ok=True)
    try:
        return json.loads(path.read_text())
    except (OSError, ValueError) as exc:
        raise ConfigError(f"secrets file {path} cannot be read: {exc}") from None


def _base64_key(name: str, text: str) -> bytes:
    try:
        key = base64.b64decode(text, validate=True)
    except binascii.Error:
        raise ConfigError(f"secrets.{name} is not valid base64") from None
    if len(key) != 32:
        raise ConfigError(f"secrets.{name} must be 32 bytes, base64-encoded")
    return key


def webhook_key(text: str) -> bytes:
    """The HMAC key of a webhook secret: a whsec_ secret's UTF-8, or an older base64 secret's
    decoded bytes (as before, so existing receivers keep verifying)."""
    name = "secrets.webhook_secret"
    if not text.startswith(WEBHOOK_SECRET_PREFIX):
        try:
            return _base64_key("webhook_secret", text)
        except ConfigError:
            raise ConfigError(f"{name} must start with {WEBHOOK_SECRET_PREFIX} (Stripe's "
                              "format), or be base64 of 32 bytes (the older format)") from None
    if len(text) - len(WEBHOOK_SECRET_PREFIX) < _MIN_WEBHOOK_SECRET_CHARS:
        raise ConfigError(f"{name} needs at least {_MIN_WEBHOOK_SECRET_CHARS} characters "
                          f"after {WEBHOOK_SECRET_PREFIX}")
    # A stray space or newline pasted into a file would make every signature fail in silence.
    if not text.isprintable() or any(c.isspace() for c in text):
        raise ConfigError(f"{name} may hold no spaces or control characters")
    return text.encode()


def load_keys(settings: Settings, create: bool = True) -> Keys:
    """The configured keys, else the secrets file's; the file is made on first use unless
    ``create`` is false (a check that must use the keys someone else already has)."""
    configured = {name: getattr(settings.secrets, name) for name in _NAMES}
    stored = {} if all(configured.values()) else _stored(settings.secrets.file, create)
    keys = {}
    for name in _NAMES:
        text = configured[name] or stored.get(name) or ""
        if not isinstance(text, str):  # a hand-edited secrets file may hold anything
            raise ConfigError(f"secrets.{name} in {settings.secrets.file} is not text")
        keys[name] = webhook_key(text) if name == "webhook_secret" else _base64_key(name, text)
    return Keys(**keys)
