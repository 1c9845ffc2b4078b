"""Delivers queued webhooks with retries and backoff, and records each delivery's state.

The queue is a Redis stream read through a consumer group: an entry is acknowledged only once
it was delivered or its attempts ran out, so a delivery interrupted by a crash is claimed again
after a restart (at least once; the event id lets the client deduplicate).
"""

from __future__ import annotations

import http.client
import logging
import threading
import urllib.error
import urllib.request
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass

import redis

from paysim.domain.webhooks import (
    SIGNATURE_HEADER,
    STRIPE_SIGNATURE_HEADER,
    sign,
    valid_callback_url,
)
from paysim.infra.config import Settings
from paysim.pipeline import store

MAX_IN_FLIGHT = 64
WORKERS = 8
FIRST_BACKOFF_S = 0.5
MAX_BACKOFF_S = 30.0


class WebhookDispatcher(threading.Thread):
    def __init__(self, settings: Settings, client: redis.Redis, secret: bytes, consumer: str,
                 stop: threading.Event) -> None:
        super().__init__(name="webhooks", daemon=True)
        self.settings = settings
        self.redis = client
        self.secret = secret
        self.consumer = consumer
        self.stop_event = stop
        self.slots = threading.BoundedSemaphore(MAX_IN_FLIGHT)
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
        read = self.redis.xreadgroup(store.WEBHOOK_GROUP, self.consumer,
                                     {store.WEBHOOK_STREAM: ">"}, count=50, block=500)
        return [entry for _, entries in read for entry in entries]

    def _post_with_retries(self, url: str, body: bytes,
                           event: str) -> tuple[Attempt, int] | None:
        """The last attempt and how many were made; None when stopped before an answer."""
        attempts = self.settings.webhook.max_attempts
        for tries, backoff in enumerate(backoffs(attempts), start=1):
            attempt = post(url, body, self.secret, event, self.settings.webhook.timeout)
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
            if not attempt.delivered:
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


def backoffs(attempts: int) -> list[float]:
    """The wait after each failed attempt: 0.5 s, doubling, at most 30 s."""
    return [min(FIRST_BACKOFF_S * 2**i, MAX_BACKOFF_S) for i in range(attempts)]


@dataclass(frozen=True)
class Attempt:
    delivered: bool
    http_status: int | None
    error: str | None


def signed_headers(body: bytes, secret: bytes, event_id: str) -> dict[str, str]:
    """One signature under both names: Stripe's, for receivers on Stripe's libraries, and
    paysim's own, which receivers set up before already read."""
    signature = sign(body, secret)
    return {"Content-Type": "application/json", STRIPE_SIGNATURE_HEADER: signature,
            SIGNATURE_HEADER: signature, "Paysim-Event-Id": event_id,
            "User-Agent": "paysim-webhooks/1"}


def post(url: str, body: bytes, secret: bytes, event_id: str, timeout: float) -> Attempt:
    """One signed POST; 2xx is delivered. Never raises: a failure is in the Attempt."""
    if not valid_callback_url(url):
        return Attempt(False, None, "not an http(s) URL")
    request = urllib.request.Request(url, data=body, method="POST",
                                     headers=signed_headers(body, secret, event_id))
    try:
        with urllib.request.urlopen(request, timeout=timeout) as response:
            return Attempt(200 <= response.status < 300, response.status, None)
    except urllib.error.HTTPError as exc:
        return Attempt(False, exc.code, f"HTTP {exc.code}")
    except (urllib.error.URLError, OSError, ValueError, http.client.HTTPException) as exc:
        reason = getattr(exc, "reason", exc)
        return Attempt(False, None, str(reason)[:200])
