"""An HTTP authorization endpoint as the target: each payment one request in the target's
format (a RequestTemplate), its answer read for the decision.

Requests go from a pool of ``concurrency`` threads (the runner's sender pool), each with its
own keep-alive connection, so that many are in flight at once; latency runs from the intended
send time to the answer, so a target that queues them shows it. Whatever goes wrong with one
request (refused, timed out, an unexpected status, a body that is not JSON or has no decision
in it) is one Failure of its kind, counted in the report; the run goes on.
"""

from __future__ import annotations

import http.client
import json
import threading
import urllib.parse
from dataclasses import dataclass, field

from paysim.domain.decisions import Status
from paysim.domain.messages import NOTIFIED, REQUESTED, CaptureMode, now_us
from paysim.infra.config import Settings
from paysim.infra.errors import ConfigError
from paysim.load.generator import GeneratedPayment
from paysim.load.ingress import Failure, Sent
from paysim.load.report import TargetInfo
from paysim.load.targets.template import (
    NoDecision,
    RequestTemplate,
    load_request_template,
    new_fields,
)
from paysim.pipeline.store import DoneEntry

DEFAULT_CONCURRENCY = 64
MAX_CONCURRENCY = 1024


@dataclass(frozen=True)
class Address:
    scheme: str
    host: str
    port: int
    path: str  # with the query, as sent

    @property
    def url(self) -> str:
        return f"{self.scheme}://{self.host}:{self.port}{self.path}"


def parse_target_url(url: str) -> Address:
    """``--target``'s URL; ConfigError when it is not an http(s) URL with a host."""
    try:
        parts = urllib.parse.urlsplit(url)
        port = parts.port
    except ValueError as exc:
        raise ConfigError(f"--target: {exc}") from None
    if parts.scheme not in ("http", "https") or not parts.hostname:
        raise ConfigError(f"--target: an http:// or https:// URL with a host, got {url!r}")
    if parts.username or parts.password:
        raise ConfigError("--target: no credentials in the URL; put them in the template's "
                          "request.headers")
    path = (parts.path or "/") + (f"?{parts.query}" if parts.query else "")
    return Address(parts.scheme, parts.hostname,
                   port or (443 if parts.scheme == "https" else 80), path)


class HttpTargetIngress:
    """The runner's ingress for an HTTP target: one request per payment, the answer its
    outcome (or its failure)."""

    def __init__(self, address: Address, template: RequestTemplate, concurrency: int,
                 timeout: float) -> None:
        self.address = address
        self.template = template
        self.senders = concurrency
        self.timeout = timeout
        self._local = threading.local()
        self._opened: list[http.client.HTTPConnection] = []
        self._lock = threading.Lock()

    def _connection(self) -> http.client.HTTPConnection:
        connection = getattr(self._local, "connection", None)
        if connection is None:
            kind = (http.client.HTTPSConnection if self.address.scheme == "https"
                    else http.client.HTTPConnection)
            connection = kind(self.address.host, self.address.port, timeout=self.timeout)
            self._local.connection = connection
            with self._lock:
                self._opened.append(connection)
        return connection

    def _exchange(self, body: bytes, headers: dict[str, str]) -> tuple[int, bytes]:
        """One request on this thread's connection; a kept-alive connection the server
        closed meanwhile is opened again, once."""
        for attempt in (1, 2):
            connection = self._connection()
            reused = connection.sock is not None
            try:
                connection.request(self.template.method, self.address.path, body, headers)
                response = connection.getresponse()
                return response.status, response.read()
            except (ConnectionResetError, BrokenPipeError):  # RemoteDisconnected among them
                connection.close()  # the next request opens it again
                # Only a kept-alive connection the server had closed is tried again: a new
                # one that fails may have reached the target, and a payment is not resent.
                if attempt == 2 or not reused:
                    raise
            except BaseException:
                connection.close()  # a half-read answer would poison the next request
                raise
        raise AssertionError("unreachable")

    def send(self, payment: GeneratedPayment, run_id: str, callback_url: str | None,
             capture: CaptureMode = CaptureMode.AUTOMATIC) -> Sent:
        fields = new_fields(payment, run_id)
        headers = {name: str(value) for name, value in self.template.headers(fields).items()}
        headers.setdefault("Content-Type", "application/json")
        body = json.dumps(self.template.body(fields)).encode()
        requested = now_us()
        failure = None
        try:
            status, answer = self._exchange(body, headers)
        except ConnectionRefusedError:
            failure = Failure("refused", f"{self.address.url} refused the connection")
        except TimeoutError:
            failure = Failure("timeout", f"{self.address.url} did not answer in "
                              f"{self.timeout:g} s")
        except (OSError, http.client.HTTPException) as exc:
            # Not the exception's text alone: an SSL or parse error may quote the exchange.
            failure = Failure("unreachable", f"{self.address.url}: {type(exc).__name__}")
        if failure is not None:
            return Sent(fields.payment_id, failure=_for(failure, fields.payment_id))
        answered = now_us()
        outcome = read_answer(self.template, status, answer)
        if isinstance(outcome, Failure):
            return Sent(fields.payment_id, failure=_for(outcome, fields.payment_id))
        approved, reason = outcome
        return Sent(fields.payment_id, DoneEntry(
            fields.payment_id, Status.APPROVED if approved else Status.DECLINED, reason,
            payment.amount, payment.currency, payment.seq,
            {REQUESTED: requested, NOTIFIED: answered}))

    def finish(self) -> None:
        with self._lock:
            for connection in self._opened:
                connection.close()


def _for(failure: Failure, payment_id: str) -> Failure:
    return Failure(failure.kind, failure.line, payment_id)


def read_answer(template: RequestTemplate, status: int,
                answer: bytes) -> tuple[bool, str] | Failure:
    """(approved, reason) from an answer, or the Failure that says why there is none. The
    answer itself is never quoted: a target may echo the card back."""
    if not template.statuses(status):
        return Failure(f"status {status}", f"answered {status}, not a status that carries a "
                       "decision (the template's response.statuses)")
    document = None
    if answer.strip():
        try:
            document = json.loads(answer)
        except (ValueError, UnicodeDecodeError):
            document = None
            if template.rule.decision is not None or template.rule.reason is not None:
                return Failure("not json", f"answered {status} with a body that is not JSON "
                               f"({len(answer)} bytes)")
    elif template.rule.decision is not None:
        return Failure("not json", f"answered {status} with an empty body")
    try:
        decision = template.rule.read(document, default=template.approves(status))
    except NoDecision as exc:
        return Failure("no decision", f"answered {status} with {exc}")
    return decision.approved, decision.reason


@dataclass
class HttpAnswers:
    """The outcome source of an HTTP target: the answers come back with the sends, so there
    is nothing to read; it only paces the collector."""

    pause: threading.Event = field(default_factory=threading.Event)
    ended: bool = False  # every answer comes with its send: this source never fails

    def read(self) -> tuple[list[DoneEntry], list[Failure]]:
        self.pause.wait(0.2)
        return [], []

    def close(self) -> None:
        self.pause.set()


class HttpTarget:
    """``paysim send --target URL --request-template FILE``."""

    def __init__(self, url: str, template_path: str, concurrency: int = DEFAULT_CONCURRENCY,
                 timeout: float = 30.0) -> None:
        if not 1 <= concurrency <= MAX_CONCURRENCY:
            raise ConfigError(f"--concurrency: 1 to {MAX_CONCURRENCY}, got {concurrency}")
        self.address = parse_target_url(url)
        self.template = load_request_template(template_path)
        self.concurrency = concurrency
        self.timeout = timeout
        self.info = TargetInfo(kind="http", address=self.address.url, concurrency=concurrency)

    def open(self, settings: Settings, run_id: str) -> tuple[HttpTargetIngress, HttpAnswers]:
        return (HttpTargetIngress(self.address, self.template, self.concurrency, self.timeout),
                HttpAnswers())
