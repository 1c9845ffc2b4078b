"""The HTTP API served for real (as `paysim service http` runs it) in a test's
thread, and plain HTTP calls to it."""

from __future__ import annotations

import base64
import contextlib
import json
import os
import threading
import urllib.error
import urllib.request
from collections.abc import Iterator
from typing import Any

from paysim.edge.server import serve
from paysim.infra.config import Settings
from paysim.infra.waiting import wait_until


def http_call(url: str, body: dict[str, Any] | None = None) -> tuple[int, dict[str, Any]]:
    data = None if body is None else json.dumps(body).encode()
    request = urllib.request.Request(url, data=data, method="GET" if data is None else "POST",
                                     headers={"Content-Type": "application/json"})
    try:
        with urllib.request.urlopen(request, timeout=15) as response:
            return response.status, json.loads(response.read())
    except urllib.error.HTTPError as exc:
        with exc:
            assert exc.headers.get_content_type() == "application/json"
            return exc.code, json.loads(exc.read())


def secret_flags() -> dict[str, object]:
    return {f"secrets.{name}": base64.b64encode(os.urandom(32)).decode()
            for name in ("card_key", "token_key", "webhook_secret")}


def answer_of(url: str) -> tuple[int, dict[str, Any]] | None:
    """The server's answer, whatever its status; None while nothing listens."""
    try:
        return http_call(url)
    except OSError:
        return None


@contextlib.contextmanager
def serving(settings: Settings) -> Iterator[str]:
    """serve() in a thread until the block ends; yields its base URL once it answers."""
    stop = threading.Event()
    failures: list[BaseException] = []

    def run() -> None:
        try:
            serve(settings, stop)
        except BaseException as exc:
            failures.append(exc)

    thread = threading.Thread(target=run, name="test-http-serve", daemon=True)
    thread.start()
    base = f"http://127.0.0.1:{settings.http.port}"
    try:
        assert wait_until(lambda: answer_of(f"{base}/healthz") is not None or bool(failures),
                          30)
        assert not failures, failures
        yield base
    finally:
        stop.set()
        thread.join(30)
    assert not thread.is_alive(), "serve() did not return after stop was set"
    assert not failures, failures
    assert answer_of(f"{base}/healthz") is None
