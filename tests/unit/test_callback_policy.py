"""Where webhooks may go: never to paysim's own Kafka, Redis or HTTP API; only to
webhook.allow when it is set; checked again, with every resolved address, on delivery."""

from __future__ import annotations

import socket
import threading
from collections.abc import Iterator
from typing import Any

import pytest

from paysim.domain.webhooks import CallbackPolicy, Endpoint, refused_callback
from paysim.infra.config import load_settings, settings_env
from paysim.infra.errors import ConfigError
from paysim.pipeline import webhook_dispatch
from paysim.pipeline.webhook_dispatch import WebhookDispatcher, callback_policy, post
from tests.unit.fakes import pure_settings

POLICY = CallbackPolicy(forbidden=(Endpoint("127.0.0.1", 6379, "Redis"),
                                   Endpoint("kafka1.internal", 9092, "Kafka"),
                                   Endpoint("0.0.0.0", 8080, "HTTP API")))


@pytest.mark.parametrize("url", [
    "http://127.0.0.1:6379/", "http://localhost:6379", "http://LOCALHOST:6379/x",
    "http://[::1]:6379/", "http://0.0.0.0:6379", "http://127.0.0.2:6379", "http://127.1:6379/",
    "http://2130706433:6379/", "http://0x7f000001:6379/", "http://[::ffff:127.0.0.1]:6379/",
    "https://kafka1.internal:9092/", "http://KAFKA1.internal.:9092", "http://127.0.0.1:8080/",
    "http://hooks.localhost:8080/",
])
def test_paysims_own_ports_are_refused_however_written(url: str) -> None:
    assert refused_callback(url, POLICY) is not None


def test_the_refusal_says_which_service() -> None:
    assert refused_callback("http://localhost:6379/", POLICY) == (
        "localhost:6379 is paysim's own Redis")


@pytest.mark.parametrize("url", [
    "http://127.0.0.1:8081/hook", "https://example.com/hook", "http://127.0.0.1/",
    "http://kafka1.internal/", "http://10.0.0.5:6379/",
])
def test_other_ports_and_hosts_are_allowed(url: str) -> None:
    assert refused_callback(url, POLICY) is None


@pytest.mark.parametrize("url", ["ftp://example.com/", "file:///etc/passwd", "http://[::1"])
def test_not_an_http_url_is_refused(url: str) -> None:
    assert refused_callback(url, POLICY) == "not an http(s) URL"


def test_a_name_resolving_to_a_forbidden_address_is_refused() -> None:
    url = "http://hooks.example.test:6379/"
    assert refused_callback(url, POLICY) is None  # as written: no DNS at the edge
    assert refused_callback(url, POLICY, ["203.0.113.9"]) is None
    assert refused_callback(url, POLICY, ["203.0.113.9", "127.0.0.1"]) is not None


def test_the_allow_list_takes_names_and_networks() -> None:
    policy = CallbackPolicy(allow=("hooks.example.com", "10.0.0.0/8"))
    assert refused_callback("https://hooks.example.com/x", policy) is None
    assert refused_callback("https://HOOKS.example.com./x", policy) is None
    assert refused_callback("http://10.1.2.3:8000/", policy) is None
    assert refused_callback("https://evil.example.com/", policy, ["8.8.8.8"]) == (
        "evil.example.com is not in webhook.allow")
    assert refused_callback("http://192.168.0.1/", policy) is not None
    # A name outside the names: decided by its addresses, on delivery.
    assert refused_callback("https://internal.example/", policy) is None
    assert refused_callback("https://internal.example/", policy, ["10.0.0.7"]) is None
    assert refused_callback("https://internal.example/", policy, ["10.0.0.7", "8.8.8.8"])
    assert refused_callback("https://internal.example/", policy, []) is not None
    names_only = CallbackPolicy(allow=("hooks.example.com",))
    assert refused_callback("https://internal.example/", names_only) is not None


def test_paysims_own_ports_are_refused_even_when_allowed() -> None:
    policy = CallbackPolicy(forbidden=(Endpoint("127.0.0.1", 6379, "Redis"),),
                            allow=("127.0.0.0/8",))
    assert refused_callback("http://127.0.0.1:6379/", policy) is not None
    assert refused_callback("http://127.0.0.1:6380/", policy) is None


def test_the_policy_from_settings_names_every_own_port() -> None:
    local = callback_policy(pure_settings({"stack.redis_port": 16379, "stack.brokers": 3}))
    for port in (16379, 9092, 9093, 9094, 9095, 9096, 9097, 8080):
        assert refused_callback(f"http://localhost:{port}/", local) is not None, port
    remote = callback_policy(pure_settings({"kafka.bootstrap": "b1.example:9093,b2.example:9093",
                                            "redis.url": "rediss://:pw@cache.example:6380/0",
                                            "http.host": "0.0.0.0", "http.port": 8000}))
    assert refused_callback("https://b2.example:9093/", remote) == (
        "b2.example:9093 is paysim's own Kafka")
    assert refused_callback("https://cache.example:6380/", remote) is not None
    assert refused_callback("http://127.0.0.1:8000/", remote) is not None
    assert refused_callback("https://cache.example/", remote) is None


def test_webhook_allow_is_a_setting() -> None:
    settings = load_settings(env={"PAYSIM_WEBHOOK_ALLOW": "hooks.example.com, 10.0.0.0/8"})
    assert settings.webhook.allow == ("hooks.example.com", "10.0.0.0/8")
    assert load_settings(env=settings_env(settings)).webhook.allow == settings.webhook.allow
    assert load_settings(env={}).webhook.allow == ()
    assert load_settings(env=settings_env(load_settings(env={}))).webhook.allow == ()
    for bad in ("10.0.0.0/33", "bad host!", "a_b.example"):
        with pytest.raises(ConfigError, match="PAYSIM_WEBHOOK_ALLOW"):
            load_settings(env={"PAYSIM_WEBHOOK_ALLOW": bad})


# ---------------------------------------------------------------------------- the dispatcher


@pytest.fixture
def listener() -> Iterator[socket.socket]:
    """A listening socket standing for Redis: nothing may connect to it."""
    sock = socket.create_server(("127.0.0.1", 0))
    sock.setblocking(False)
    yield sock
    sock.close()


def connected(listener: socket.socket) -> bool:
    try:
        listener.accept()[0].close()
    except BlockingIOError:
        return False
    return True


def dispatcher(port: int) -> WebhookDispatcher:
    settings = pure_settings({"stack.redis_port": port, "webhook.max_attempts": 3})
    return WebhookDispatcher(settings, None, b"k", "notifier-0",  # type: ignore[arg-type]
                             threading.Event())


def test_the_dispatcher_refuses_redis_without_connecting_or_retrying(
    listener: socket.socket,
) -> None:
    port = listener.getsockname()[1]
    attempt, tries = dispatcher(port)._post_with_retries(f"http://127.0.0.1:{port}/", b"{}",
                                                        "evt_1") or (None, None)
    assert attempt is not None and tries == 0
    assert (attempt.delivered, attempt.refused) == (False, True)
    assert attempt.error == f"refused: 127.0.0.1:{port} is paysim's own Redis"
    assert not connected(listener)


def test_a_name_is_checked_with_every_address_it_resolves_to(
    listener: socket.socket, monkeypatch: pytest.MonkeyPatch,
) -> None:
    port = listener.getsockname()[1]

    def resolve(host: str, port: int) -> list[Any]:
        assert host == "hooks.example.test"
        return [(socket.AF_INET, socket.SOCK_STREAM, 6, "", ("203.0.113.9", port)),
                (socket.AF_INET, socket.SOCK_STREAM, 6, "", ("127.0.0.1", port))]

    monkeypatch.setattr(webhook_dispatch, "_resolve", resolve)
    policy = dispatcher(port).policy
    attempt = post(f"http://hooks.example.test:{port}/", b"{}", b"k", "evt_1", 1.0, policy)
    assert (attempt.delivered, attempt.refused) == (False, True)
    assert "paysim's own Redis" in (attempt.error or "")
    assert not connected(listener)


def test_an_allowed_url_is_posted(listener: socket.socket) -> None:
    # The same listener when it is not paysim's: the POST reaches it (no answer: a timeout).
    port = listener.getsockname()[1]
    attempt = post(f"http://127.0.0.1:{port}/", b"{}", b"k", "evt_1", 0.2, CallbackPolicy())
    assert (attempt.delivered, attempt.refused) == (False, False)
    assert connected(listener)
