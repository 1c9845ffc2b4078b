"""The notifier's golden cases for `paysim conformance notifier` (pure).

Per PaymentOutcome on the results topic, what a client and paysim's own tools can observe:
a Notification on the notifications topic keyed by the payment id, with one event id however
often the outcome is delivered; the outcome in Redis (`paysim:payment:<id>`: `status` and the
whole outcome as `doc`, with an expiry), which the HTTP API's GET /payments/<id> and `paysim
audit` read; and an entry on the run's stream (`paysim:run:<run>:done`), which is how `paysim
send` learns that a payment is done. docs/conformance.md has the contract in full.
"""

from __future__ import annotations

import uuid
from dataclasses import dataclass

import msgspec

from paysim.domain import decisions
from paysim.domain.decisions import Status
from paysim.domain.messages import (
    AUTHORIZED,
    NOTIFIED,
    PROCESSED,
    REQUESTED,
    Codec,
    Notification,
    PaymentOutcome,
    SchemaError,
    encode,
)
from paysim.domain.webhooks import SignatureError, verify
from paysim.infra.secrets import Keys
from paysim.ops.conformance_cases import (
    CURRENCY,
    MERCHANT,
    Case,
    Expectation,
    Observed,
    Output,
    Send,
    Suite,
    first_problem,
    new_token,
    poison_case,
    records,
)
from paysim.pipeline.notifications import WebhookEvent
from paysim.pipeline.store import outcome_key, read_done_entry

# What a notification copies from the outcome.
ECHOED = ("payment_id", "run_id", "status", "reason_code", "amount", "currency", "masked_pan")

_notifications = Codec(Notification)
_outcomes = Codec(PaymentOutcome)
_webhooks = msgspec.json.Decoder(WebhookEvent[Notification])


@dataclass(frozen=True)
class Notified(Expectation):
    """The outcome told: its notification record(s), its stored outcome, its run's entry;
    with ``webhook_secret``, its webhook too, signed with that key."""

    status: str
    code: str
    roles: tuple[str, ...] = ("notifications",)
    webhook_secret: bytes | None = None

    @property
    def awaits_webhook(self) -> bool:  # type: ignore[override]
        return self.webhook_secret is not None

    def judge(self, payment_id: str, sent: bytes, observed: Observed) -> tuple[list[str], str]:
        outcome = msgspec.json.decode(sent, type=PaymentOutcome)
        outputs = observed.outputs(payment_id, "notifications")
        problems = [] if outputs else [f"no notifications record for payment {payment_id}"]
        problems += first_problem(outputs, lambda output: _notification_problem(output,
                                                                               outcome))
        events = {_notifications.decode(o.value).event_id for o in outputs
                  if not _notification_problem(o, outcome)}
        if len(events) > 1:
            problems.append(f"{len(outputs)} notifications with {len(events)} event ids; "
                            "a payment has one")
        problems += _stored_problems(payment_id, outcome, observed)
        problems += _done_problems(payment_id, outcome, observed)
        told = f"{self.status} {self.code}: {records(outputs)}, one event id, stored, on " \
               "the run's stream"
        if self.webhook_secret is None:
            return problems, told
        posts = observed.webhooks.get(payment_id, [])
        problems += _webhook_problems(posts, outcome, events, self.webhook_secret)
        return problems, f"{told}, {len(posts)} signed webhook{'s' if len(posts) > 1 else ''}"

    def awaited_key(self, payment_id: str) -> str | None:
        return outcome_key(payment_id)


def _notification_problem(output: Output, outcome: PaymentOutcome) -> str | None:
    where = f"notifications record at {output.partition}/{output.offset}"
    try:
        notification = _notifications.decode(output.value)
    except SchemaError as exc:
        return f"{where}: {exc}"
    changed = [name for name in ECHOED if getattr(notification, name) != getattr(outcome, name)]
    if changed:
        return f"{where} changed {', '.join(changed)}"
    if not notification.event_id or notification.notified_at <= 0:
        return f"{where}: an event id and notified_at are required"
    if output.key != outcome.payment_id.encode():
        return f"{where} not keyed by the payment id"
    return None


def _webhook_problems(posts: list[tuple[str | None, bytes]], outcome: PaymentOutcome,
                      events: set[str], secret: bytes) -> list[str]:
    """Each POST to the payment's callback_url: signed with the webhook key, Stripe's event
    envelope around the notification, the notification's event id as its id."""
    if not posts:
        return ["no webhook posted to the payment's callback_url"]
    for signature, body in posts:
        try:
            verify(body, signature, secret)
        except SignatureError as exc:
            return [f"webhook signature: {exc}"]
        try:
            event = _webhooks.decode(body)
        except (msgspec.DecodeError, msgspec.ValidationError) as exc:
            return [f"webhook body is not an event around a notification: {exc}"]
        if event.type != f"payment.{outcome.status}":
            return [f"webhook type {event.type!r}, expected 'payment.{outcome.status}'"]
        told = event.data.object
        if event.id not in events or told.event_id != event.id:
            return ["webhook id is not its notification's event id"]
        changed = [name for name in ECHOED if getattr(told, name) != getattr(outcome, name)]
        if changed:
            return [f"webhook changed {', '.join(changed)}"]
    return []


def _stored_problems(payment_id: str, outcome: PaymentOutcome,
                     observed: Observed) -> list[str]:
    key = outcome_key(payment_id)
    found = observed.outcomes.get(payment_id)
    if found is None:
        return [f"no outcome stored under {key}"]
    fields, ttl = found
    if fields.get("status") != outcome.status.encode():
        return [f"{key} status is {fields.get('status')!r}, expected {outcome.status!r}"]
    try:
        stored = _outcomes.decode(fields.get("doc", b""))
    except SchemaError as exc:
        return [f"{key} doc: {exc}"]
    if (stored.payment_id, stored.reason_code, stored.amount) != (
            payment_id, outcome.reason_code, outcome.amount) or NOTIFIED not in stored.stages:
        return [f"{key} doc is not the outcome with its 'notified' stage"]
    if ttl <= 0:
        return [f"{key} has no expiry"]
    return []


def _done_problems(payment_id: str, outcome: PaymentOutcome,
                   observed: Observed) -> list[str]:
    raw = observed.done.get(payment_id, [])
    if not raw:
        return [f"no entry for payment {payment_id} on its run's stream"]
    for value in raw:
        try:
            entry = read_done_entry({b"o": value})
        except ValueError as exc:
            return [f"run stream entry: {exc}"]
        got = (entry.status, entry.reason_code, entry.amount, entry.currency, entry.seq)
        want = (outcome.status, outcome.reason_code, outcome.amount, outcome.currency,
                outcome.seq)
        if got != want:
            return [f"run stream entry says {got}, expected {want}"]
        if NOTIFIED not in entry.stages or any(entry.stages.get(stage) != at
                                               for stage, at in outcome.stages.items()):
            return ["run stream entry's stages: the outcome's kept and 'notified' added"]
    return []


def _outcome(run_id: str, seq: int, status: Status, code: str, *, amount: int = 2_500,
             approved: int | None = None, token: str | None = None) -> PaymentOutcome:
    stages = {REQUESTED: 1, AUTHORIZED: 2} if token is None else {
        REQUESTED: 1, AUTHORIZED: 2, PROCESSED: 3}
    return PaymentOutcome(
        payment_id=str(uuid.uuid4()), run_id=run_id, seq=seq, amount=amount,
        currency=CURRENCY, merchant=MERCHANT, stages=stages, status=status, reason_code=code,
        reason_text=decisions.reason_text(code), token=token,
        masked_pan="424242******4242", network="visa",
        approved_amount=approved if approved is not None else (
            amount if status == Status.APPROVED else None))


def _send(outcome: PaymentOutcome, *, aborted: bool = False) -> Send:
    """Keyed as its writer keys it: by card token (the processor), else the payment id."""
    return Send(outcome.token or outcome.payment_id, encode(outcome), outcome.payment_id,
                aborted)


def notifier_suite(run_id: str, keys: Keys | None = None, webhooks: str | None = None) -> Suite:
    """Outcomes of every kind told, a webhook (with ``keys`` and the receiver's URL
    ``webhooks``), redelivery, aborted input and poison records."""
    seq = iter(range(1_000_000))

    def outcome(status: Status, code: str, **kwargs) -> PaymentOutcome:
        return _outcome(run_id, next(seq), status, code, **kwargs)

    cases = []
    for name, told in [
        ("00 approved", outcome(Status.APPROVED, "00", token=new_token())),
        ("10 partially approved", outcome(Status.APPROVED, "10", token=new_token(),
                                          approved=1_000)),
        ("51 declined by the issuer", outcome(Status.DECLINED, "51", token=new_token())),
        ("91 issuer unavailable", outcome(Status.DECLINED, "91", token=new_token())),
        ("14 declined by the authorizer (no token)", outcome(Status.DECLINED, "14")),
    ]:
        cases.append(Case(name, [_send(told)],
                          {told.payment_id: Notified(told.status, told.reason_code)}))
    if keys is not None and webhooks is not None:
        called = outcome(Status.DECLINED, "51", token=new_token())
        called = msgspec.structs.replace(called,
                                         callback_url=f"{webhooks}/{called.payment_id}")
        cases.append(Case("webhook: signed, to the callback_url", [_send(called)], {
            called.payment_id: Notified(called.status, called.reason_code,
                                        webhook_secret=keys.webhook_secret)}))
    twice = outcome(Status.APPROVED, "00", token=new_token())
    cases.append(Case("redelivered record: one event id", [_send(twice), _send(twice)],
                      {twice.payment_id: Notified(twice.status, twice.reason_code)}))
    card = new_token()
    aborted = outcome(Status.APPROVED, "00", token=card)
    follower = outcome(Status.DECLINED, "05", token=card)
    cases.append(Case("input of an aborted transaction is not read",
                      [_send(aborted, aborted=True), _send(follower)],
                      {aborted.payment_id: None,
                       follower.payment_id: Notified(follower.status, follower.reason_code)}))

    cases.append(poison_case("dead letter: not JSON", b"{this is not json"))
    wrong_v = outcome(Status.APPROVED, "00", token=new_token())
    cases.append(poison_case("dead letter: schema version 2",
                             encode(msgspec.structs.replace(wrong_v, v=2)), wrong_v.payment_id))
    missing = msgspec.json.decode(encode(outcome(Status.DECLINED, "05", token=new_token())))
    del missing["status"]
    cases.append(poison_case("dead letter: a field missing (status)",
                             msgspec.json.encode(missing), missing["payment_id"]))
    not_uuid = msgspec.json.decode(encode(outcome(Status.DECLINED, "05", token=new_token())))
    not_uuid["payment_id"] = f"not-a-uuid-{not_uuid['payment_id']}"
    cases.append(poison_case("dead letter: payment_id not a UUID", msgspec.json.encode(not_uuid),
                             not_uuid["payment_id"]))
    return Suite(run_id, cases, outputs=("notifications",))
