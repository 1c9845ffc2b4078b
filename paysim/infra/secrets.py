"""The keys paysim needs: configured, or generated once and kept in a private file."""

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


@dataclass(frozen=True)
class Keys:
    card_key: bytes  # AES-256-GCM key for card blocks at the edge
    token_key: bytes  # HMAC key for card tokens
    webhook_secret: bytes  # HMAC key for webhook signatures


def _generated(path: Path) -> dict[str, str]:
    """Read the secrets file, creating it (mode 0600) first if no process has yet."""
    if not path.exists():
        with owner_only(), writing("the secrets file", path):
            path.parent.mkdir(parents=True, exist_ok=True)
            fresh = {name: base64.b64encode(os.urandom(32)).decode() for name in _NAMES}
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


def load_keys(settings: Settings) -> Keys:
    configured = {name: getattr(settings.secrets, name) for name in _NAMES}
    stored = {} if all(configured.values()) else _generated(settings.secrets.file)
    keys = {}
    for name in _NAMES:
        text = configured[name] or stored.get(name)
        try:
            keys[name] = base64.b64decode(text or "", validate=True)
        except binascii.Error:
            raise ConfigError(f"secrets.{name} is not valid base64") from None
        if len(keys[name]) != 32:
            raise ConfigError(f"secrets.{name} must be 32 bytes, base64-encoded")
    return Keys(**keys)
