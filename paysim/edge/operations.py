"""The operations on a payment over HTTP: capture, increment, void, refund, reverse, and the
test helpers dispute and resolve.

Each finds the payment (its outcome, or for a reversal that may come first, the route the
edge noted when it took the payment), checks the step against the payment's record with the
ledger's own rules (an invalid one is 409 at once, naming the state), puts the operation on
payments.operations, and waits for the ledger service's answer: 200 with the payment as it
now is, 409 if the ledger refused it meanwhile, or 202 if no answer came in time (the
operation stays queued and applies once; GET /payments/<id> shows it).
"""

from __future__ import annotations

import hashlib
import json
import uuid
from dataclasses import dataclass

import msgspec
import redis
from msgspec import UNSET

from paysim.domain import decisions, lifecycle
from paysim.domain.lifecycle import Answer, PaymentRecord
from paysim.domain.messages import OperationKind, OperationRequested, encode, now_us
from paysim.domain.requests import (
    CaptureBody,
    DisputeBody,
    IncrementBody,
    OperationBody,
    RefundBody,
    ResolveBody,
)
from paysim.edge.answers import (
    Error,
    OperationApplied,
    OperationPending,
    OperationView,
    Refused,
    body,
)
from paysim.edge.delivery import Deliveries
from paysim.edge.idempotency import Answer as HttpAnswer
from paysim.edge.idempotency import Write
from paysim.edge.validation import short
from paysim.infra.config import Settings
from paysim.infra.tracing import RequestTrace
from paysim.infra.waiting import wait_until
from paysim.pipeline import ledger_store, store

ANSWER_WAIT_S = 5.0


@dataclass(frozen=True)
class Route:
    """Where an operation on one payment goes: its path, its kind, the body it takes."""

    path: str
    kind: OperationKind
    body: type[OperationBody]
    summary: str


# The dispute helpers sit under /test/, as Stripe's test helpers do: a real merchant does not
# open a dispute, the cardholder's bank does. A payment has at most one dispute, so a
# dispute's id is its payment's id.
ROUTES = (
    Route("/payments/<payment_id>/capture", OperationKind.CAPTURE, CaptureBody,
          "Capture part or all of what a payment holds (several captures allowed; `final` "
          "releases the rest)"),
    Route("/payments/<payment_id>/increment", OperationKind.INCREMENT, IncrementBody,
          "Raise a manually captured payment's hold (hotels, car rental)"),
    Route("/payments/<payment_id>/void", OperationKind.VOID, OperationBody,
          "Release a hold nothing was captured from"),
    Route("/payments/<payment_id>/refunds", OperationKind.REFUND, RefundBody,
          "Return part or all of what was captured (several refunds allowed)"),
    Route("/payments/<payment_id>/reverse", OperationKind.REVERSE, OperationBody,
          "Undo the authorization (ISO 8583 0400), before or after it reached the issuer"),
    Route("/test/payments/<payment_id>/dispute", OperationKind.DISPUTE, DisputeBody,
          "Test helper: the cardholder disputes the payment (a chargeback)"),
    Route("/test/disputes/<payment_id>/resolve", OperationKind.RESOLVE, ResolveBody,
          "Test helper: the dispute (its id is the payment's) is won or lost"),
)


def route_key(payment_id: str) -> str:
    """Where the edge notes a payment it took (run and card token), for a reversal that
    comes before its outcome."""
    return f"paysim:route:{payment_id}"


def route_note(payment_id: str, run_id: str, token: str, ttl: int) -> Write:
    """The note of a payment's run and card token, written before the payment is sent."""
    return Write(route_key(payment_id), msgspec.json.encode((run_id, token)), ttl)


def operation_id(idempotency_key: str | None, path: str) -> str:
    """The operation's id: fixed by the request's Idempotency-Key and path (the payment and
    the operation: a retry after a lost answer cannot apply twice, whatever the edge
    remembers, and the same key on another payment is another operation), else new."""
    if idempotency_key is None:
        return f"op_{uuid.uuid4().hex}"
    scoped = f"{path}\n{idempotency_key}".encode()
    return "op_" + hashlib.sha256(scoped).hexdigest()[:32]


class Operations:
    def __init__(self, settings: Settings, deliveries: Deliveries,
                 client: redis.Redis) -> None:
        self.settings = settings
        self.deliveries = deliveries
        self.redis = client

    def apply(self, route: Route, payment_id: str, fields: OperationBody, op_id: str,
              traced: RequestTrace) -> HttpAnswer:
        """The operation checked, sent and answered; ``traced``: the request's tracing (its
        operation's span continues the request's traceparent, else the payment's trace)."""
        stored = store.read_outcome(self.redis, payment_id)
        if stored is not None and not stored.outcome.token:
            # Declined by the card checks, before it had a token: it never reached the ledger.
            return _conflict(Answer(lifecycle.NOT_PERMITTED, 0, f"cannot {route.kind}: the "
                                    "payment was declined"), None, "declined")
        where = self._locate(payment_id, stored, route.kind)
        if where is None:
            return HttpAnswer(404, body(Error(error=f"no payment {short(payment_id)} (unknown, "
                                                    "not finished, or expired)")))
        run_id, token = where
        op = OperationRequested(op_id=op_id, kind=route.kind, payment_id=payment_id,
                                run_id=run_id, token=token, requested_at=now_us(),
                                **msgspec.structs.asdict(fields))
        record = ledger_store.read_record(self.redis, run_id, token, payment_id)
        refusal = self._refusal(op, record)
        if refusal is not None:
            return refusal
        topic = self.settings.topics.operations
        payment_trace = None if stored is None else stored.trace_id
        with traced.sending(topic, payment_id, payment_trace) as trace:
            failure = self.deliveries.deliver(topic, token, encode(op), headers=trace.headers)
            trace.failed(failure)
        if failure is not None:
            return HttpAnswer(503, body(Error(error=f"operation not accepted, Kafka is "
                                                    f"unavailable: {failure}")))
        answer = self._answer(run_id, token, op_id)
        if answer is None:
            return HttpAnswer(202, body(OperationPending(
                operation=_operation(op, None),
                message=f"accepted; not applied within {ANSWER_WAIT_S:g} s")))
        record = ledger_store.read_record(self.redis, run_id, token, payment_id)
        if not answer.ok:
            return _conflict(answer, record)
        return HttpAnswer(200, body(OperationApplied(
            operation=_operation(op, answer),
            payment=None if record is None else ledger_store.record_view(record))))

    def _locate(self, payment_id: str, stored: store.StoredOutcome | None,
                kind: OperationKind) -> tuple[str, str] | None:
        """The payment's run and card token: from its outcome, or (a reversal may come
        first) from the route the edge noted when it took it."""
        if stored is not None and stored.outcome.token:
            return stored.outcome.run_id, stored.outcome.token
        if stored is not None or kind != OperationKind.REVERSE:
            return None
        noted = self.redis.get(route_key(payment_id))
        if noted is None:
            return None
        run_id, token = json.loads(noted)
        return run_id, token

    def _refusal(self, op: OperationRequested,
                 record: PaymentRecord | None) -> HttpAnswer | None:
        """A step the ledger would refuse now (the same rules, on the record as it is):
        409 naming the state, without a trip through Kafka."""
        if op.kind == OperationKind.REVERSE:
            return None  # never refused
        if record is None or record.authorization is None:
            return _conflict(Answer(lifecycle.NOT_PERMITTED, 0, f"cannot {op.kind}: the "
                                    "payment is declined or not yet authorized"), None)
        funds = None
        if op.kind == OperationKind.INCREMENT:
            book = ledger_store.book_from_hash(
                self.redis.hgetall(ledger_store.card_key(op.run_id, op.token)))
            funds = lifecycle.CardFunds(book, 0)  # the daily limit is the ledger's to check
        change = lifecycle.operate(op, record, funds, now_us())
        return None if change.answer.ok else _conflict(change.answer, record)

    def _answer(self, run_id: str, token: str, op_id: str) -> Answer | None:
        found: list[Answer] = []

        def answered() -> bool:
            answer = ledger_store.read_answer(self.redis, run_id, token, op_id)
            if answer is not None:
                found.append(answer)
            return answer is not None

        wait_until(answered, ANSWER_WAIT_S, interval=0.005)
        return found[0] if found else None


def _operation(op: OperationRequested, answer: Answer | None) -> OperationView:
    if answer is None:
        return OperationView(id=op.op_id, kind=op.kind, status="pending")
    return OperationView(id=op.op_id, kind=op.kind, status="applied", amount=answer.amount,
                         reason_code=answer.code)


def _conflict(answer: Answer, record: PaymentRecord | None,
              state: str | None = None) -> HttpAnswer:
    if record is not None:
        state = record.state
    return HttpAnswer(409, body(Refused(
        error=answer.error or decisions.reason_text(answer.code), reason_code=answer.code,
        state=UNSET if state is None else state)))
