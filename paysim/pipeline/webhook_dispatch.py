"""Delivers queued webhooks with retries and backoff, and records each delivery's state.

The queue is a Redis stream read through a consumer group: an entry is acknowledged only once
it was delivered or its attempts ran out, so a delivery interrupted by a crash is claimed again
after a restart (at least once; the event id lets the client deduplicate).

A webhook never goes to paysim's own Kafka, Redis or HTTP API, nor outside ``webhook.allow``
(callback_policy): records can reach the notifier straight from Kafka, past the edge's check,
and a host name can resolve to anything. Every connection (a redirect's too) resolves its host
here, checks every address against the policy, and connects only to those addresses; a refused
URL is recorded as failed with the reason, never attempted. Environment proxies are not used:
through one, the policy would see the proxy, not the receiver.
"""

from __future__ import annotations

import http.client
import ipaddress
import logging
import socket
import threading
import urllib.error
import urllib.parse
import urllib.request
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from typing import Any

import redis

from paysim.domain.webhooks import (
    SIGNATURE_HEADER,
    STRIPE_SIGNATURE_HEADER,
    CallbackPolicy,
    Endpoint,
    refused_callback,
    refused_destination,
    sign,
)
from paysim.infra.config import Settings
from paysim.pipeline import store
from paysim.pipeline.prometheus import DELIVERED, FAILED, MALFORMED, REFUSED, PipelineMetrics

MAX_IN_FLIGHT = 64
WORKERS = 8
FIRST_BACKOFF_S = 0.5
MAX_BACKOFF_S = 30.0


class WebhookDispatcher(threading.Thread):
    def __init__(self, settings: Settings, client: redis.Redis, secret: bytes, consumer: str,
                 stop: threading.Event, metrics: PipelineMetrics | None = None) -> None:
        super().__init__(name="webhooks", daemon=True)
        self.metrics = metrics
        if metrics is not None:
            metrics.track_webhooks()
        self.settings = settings
        self.redis = client
        self.secret = secret
        self.consumer = consumer
        self.stop_event = stop
        self.slots = threading.BoundedSemaphore(MAX_IN_FLIGHT)
        self.policy = callback_policy(settings, resolve=True)
        self.log = logging.getLogger("paysim.webhooks")
        attempts = settings.webhook.max_attempts
        # Longer than any delivery can take, so only abandoned entries are claimed.
        longest_s = attempts * settings.webhook.timeout + sum(backoffs(attempts))
        self.claim_idle_ms = int(1000 * (longest_s + 60))

    def run(self) -> None:
        with ThreadPoolExecutor(WORKERS, thread_name_prefix="webhook") as pool:
            while not self.stop_event.is_set():
                try:
                    for entry_id, fields in self._next_entries():
                        self.slots.acquire()
                        pool.submit(self._deliver, entry_id, fields)
                except redis.RedisError as exc:
                    self.log.warning("webhook queue unavailable: %s", exc)
                    self.stop_event.wait(1.0)

    def _next_entries(self) -> list[tuple[bytes, dict[bytes, bytes]]]:
        try:
            self.redis.xgroup_create(store.WEBHOOK_STREAM, store.WEBHOOK_GROUP, id="0",
                                     mkstream=True)
        except redis.ResponseError as exc:
            if "BUSYGROUP" not in str(exc):
                raise
        claimed = self.redis.xautoclaim(store.WEBHOOK_STREAM, store.WEBHOOK_GROUP,
                                        self.consumer, self.claim_idle_ms, count=50)[1]
        if claimed:
            return [(entry_id, fields) for entry_id, fields in claimed if fields]
        with store.movable_keys(self.redis):
            read = self.redis.xreadgroup(store.WEBHOOK_GROUP, self.consumer,
                                         {store.WEBHOOK_STREAM: ">"}, count=50, block=500)
        return [entry for _, entries in read for entry in entries]

    def _post_with_retries(self, url: str, body: bytes,
                           event: str) -> tuple[Attempt, int] | None:
        """The last attempt and how many were made; None when stopped before an answer."""
        attempts = self.settings.webhook.max_attempts
        for tries, backoff in enumerate(backoffs(attempts), start=1):
            attempt = post(url, body, self.secret, event, self.settings.webhook.timeout,
                           self.policy)
            if attempt.refused:
                return attempt, tries - 1  # final, and this one never reached the network
            if attempt.delivered or tries == attempts:
                return attempt, tries
            if self.stop_event.wait(backoff):
                return None
        raise AssertionError("unreachable: the last attempt returns")

    def _deliver(self, entry_id: bytes, fields: dict[bytes, bytes]) -> None:
        try:
            try:
                payment_id = fields[b"payment_id"].decode()
                result = self._post_with_retries(fields[b"url"].decode(), fields[b"body"],
                                                 fields[b"event_id"].decode())
            except (KeyError, UnicodeDecodeError) as exc:
                # A malformed entry can never be delivered: record and drop it, not retry it.
                self.log.warning("webhook entry %s is malformed (%s): dropped", entry_id, exc)
                self._finish(entry_id, None, Attempt(False, None, "malformed entry"), 0)
                return
            if result is None:
                return  # not acknowledged: delivered after the restart
            attempt, tries = result
            if attempt.refused:
                self.log.warning("webhook for %s not sent: %s", payment_id, attempt.error)
            elif not attempt.delivered:
                self.log.warning("webhook for %s failed after %d attempts: %s", payment_id,
                                 tries, attempt.error)
            self._finish(entry_id, payment_id, attempt, tries)
        except redis.RedisError as exc:
            self.log.warning("webhook state not recorded (will be retried): %s", exc)
        except Exception:
            self.log.exception("webhook entry %s cannot be delivered", entry_id)
        finally:
            self.slots.release()


    def _finish(self, entry_id: bytes, payment_id: str | None, attempt: Attempt,
                tries: int) -> None:
        """Record the delivery's final state on the outcome and take the entry off the queue."""
        pipe = self.redis.pipeline(transaction=False)
        if payment_id is not None:
            key = store.outcome_key(payment_id)
            pipe.hset(key, mapping={
                "webhook_status": "delivered" if attempt.delivered else "failed",
                "webhook_attempts": tries, "webhook_http_status": attempt.http_status or 0,
                "webhook_error": attempt.error or "",
            })
            # Should the outcome have expired meanwhile, the hset made it anew: let it expire.
            pipe.expire(key, self.settings.redis.outcome_ttl, nx=True)
        pipe.xack(store.WEBHOOK_STREAM, store.WEBHOOK_GROUP, entry_id)
        pipe.xdel(store.WEBHOOK_STREAM, entry_id)
        pipe.execute()
        if self.metrics is not None:
            self.metrics.webhook(delivery_result(payment_id, attempt))


def delivery_result(payment_id: str | None, attempt: Attempt) -> str:
    """The word a finished delivery counts under (paysim_webhook_deliveries_total)."""
    if payment_id is None:
        return MALFORMED
    if attempt.refused:
        return REFUSED
    return DELIVERED if attempt.delivered else FAILED


def backoffs(attempts: int) -> list[float]:
    """The wait after each failed attempt: 0.5 s, doubling, at most 30 s."""
    return [min(FIRST_BACKOFF_S * 2**i, MAX_BACKOFF_S) for i in range(attempts)]


@dataclass(frozen=True)
class Attempt:
    delivered: bool
    http_status: int | None
    error: str | None
    refused: bool = False  # by the callback policy, before connecting: never retried


def callback_policy(settings: Settings, resolve: bool = False) -> CallbackPolicy:
    """Where webhooks may go: never to the configured Kafka brokers, Redis or HTTP API, nor to
    the local stack's ports on this machine; only to ``webhook.allow`` when it is set.

    ``resolve`` adds the addresses of the configured host names (the dispatcher's, once at
    start: a URL may name a broker by its address). The edge and the CLI do no DNS."""
    own: list[Endpoint] = []
    for server in settings.kafka_bootstrap.split(","):
        host, _, port = server.strip().rpartition(":")
        own.append(Endpoint(host, int(port), "Kafka"))
    redis_url = urllib.parse.urlsplit(settings.redis_url)
    if redis_url.scheme in ("redis", "rediss") and redis_url.hostname:
        own.append(Endpoint(redis_url.hostname, redis_url.port or 6379, "Redis"))
    own.append(Endpoint(settings.http.host, settings.http.port, "HTTP API"))
    stack = settings.stack
    for node in range(1, stack.brokers + 1):
        kafka_port, controller_port = stack.broker_ports(node)
        own += [Endpoint("127.0.0.1", kafka_port, "Kafka"),
                Endpoint("127.0.0.1", controller_port, "Kafka controller")]
    own.append(Endpoint("127.0.0.1", stack.redis_port, "Redis"))
    if resolve:
        own += [Endpoint(address, endpoint.port, endpoint.what) for endpoint in list(own)
                for address in _addresses_of(endpoint.host)]
    return CallbackPolicy(forbidden=tuple(dict.fromkeys(own)), allow=settings.webhook.allow)


def _addresses_of(host: str) -> list[str]:
    """The addresses of a host name; none for an address, or a name that does not resolve."""
    try:
        ipaddress.ip_address(host.strip("[]"))
        return []
    except ValueError:
        pass
    try:
        return sorted({str(info[4][0]) for info in _resolve(host, 0)})
    except OSError:
        return []


def _resolve(host: str, port: int) -> list[Any]:
    return socket.getaddrinfo(host, port, type=socket.SOCK_STREAM)


class CallbackRefused(OSError):
    """The connection's destination is refused by the callback policy."""


def _checked_connection(policy: CallbackPolicy, base: type[http.client.HTTPConnection]
                        ) -> type[http.client.HTTPConnection]:
    """``base`` (HTTP or HTTPS) connecting only to addresses the policy allows: the host is
    resolved once, every address checked, and the socket opened to those very addresses (no
    second lookup that could answer otherwise)."""

    class Checked(base):  # type: ignore[valid-type,misc]
        def __init__(self, *args: Any, **kwargs: Any) -> None:
            super().__init__(*args, **kwargs)
            self._create_connection = self._connect_checked

        def _connect_checked(self, address: tuple[str, int], timeout: Any,
                             source_address: Any = None) -> socket.socket:
            host, port = address
            found = _resolve(host, port)
            refusal = refused_destination(host, port, policy,
                                          [str(info[4][0]) for info in found])
            if refusal is not None:
                raise CallbackRefused(refusal)
            last: OSError = OSError(f"{host} resolves to no address")
            for info in found:
                try:
                    return socket.create_connection((info[4][0], port), timeout,
                                                    source_address)
                except OSError as exc:
                    last = exc
            raise last

    return Checked


class _HTTPHandler(urllib.request.HTTPHandler):
    def __init__(self, policy: CallbackPolicy) -> None:
        super().__init__()
        self.connection = _checked_connection(policy, http.client.HTTPConnection)

    def http_open(self, req: urllib.request.Request) -> http.client.HTTPResponse:
        return self.do_open(self.connection, req)


class _HTTPSHandler(urllib.request.HTTPSHandler):
    def __init__(self, policy: CallbackPolicy) -> None:
        super().__init__()
        self.connection = _checked_connection(policy, http.client.HTTPSConnection)

    def https_open(self, req: urllib.request.Request) -> http.client.HTTPResponse:
        return self.do_open(self.connection, req, context=self._context)


def signed_headers(body: bytes, secret: bytes, event_id: str) -> dict[str, str]:
    """One signature under both names: Stripe's, for receivers on Stripe's libraries, and
    paysim's own, which receivers set up before already read."""
    signature = sign(body, secret)
    return {"Content-Type": "application/json", STRIPE_SIGNATURE_HEADER: signature,
            SIGNATURE_HEADER: signature, "Paysim-Event-Id": event_id,
            "User-Agent": "paysim-webhooks/1"}


def post(url: str, body: bytes, secret: bytes, event_id: str, timeout: float,
         policy: CallbackPolicy) -> Attempt:
    """One signed POST; 2xx is delivered. Never raises: a failure is in the Attempt."""
    refusal = refused_callback(url, policy)
    if refusal is not None:
        return Attempt(False, None, f"refused: {refusal}", refused=True)
    request = urllib.request.Request(url, data=body, method="POST",
                                     headers=signed_headers(body, secret, event_id))
    opener = urllib.request.build_opener(urllib.request.ProxyHandler({}),
                                         _HTTPHandler(policy), _HTTPSHandler(policy))
    try:
        with opener.open(request, timeout=timeout) as response:
            return Attempt(200 <= response.status < 300, response.status, None)
    except urllib.error.HTTPError as exc:
        return Attempt(False, exc.code, f"HTTP {exc.code}")
    except urllib.error.URLError as exc:
        if isinstance(exc.reason, CallbackRefused):
            return Attempt(False, None, f"refused: {exc.reason}", refused=True)
        return Attempt(False, None, str(exc.reason)[:200])
    except (OSError, ValueError, http.client.HTTPException) as exc:
        reason = getattr(exc, "reason", exc)
        return Attempt(False, None, str(reason)[:200])
