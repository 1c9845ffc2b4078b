"""Processor: the issuer. Answers each authorized payment from its card's funds and limits
and holds (and, unless the capture is manual, captures) the amount on the ledger."""

from __future__ import annotations

import functools
import time
from datetime import UTC, datetime

import redis

from paysim.domain import decisions, lifecycle, money
from paysim.domain.decisions import IssuerRates, Status
from paysim.domain.lifecycle import EventKind
from paysim.domain.messages import (
    PROCESSED,
    Codec,
    PaymentAuthorized,
    PaymentOutcome,
    encode,
    now_us,
)
from paysim.infra.config import Settings
from paysim.pipeline import store
from paysim.pipeline.events import event_outputs, queue_event_webhooks
from paysim.pipeline.ledger_store import CardRef, CardSnapshot, CardWrite, LedgerStore
from paysim.pipeline.run_rates import RunRates
from paysim.pipeline.service import Output, Rejected, Service, ServiceSpec

# A card's profile is fixed by its token, so it is worked out once per card (its hash was a
# tenth of a payment's time). Per card, not per card and currency: keyed by currency too, the
# cache grew by a card's every currency (21,000 entries, 5.6 MiB, per 40,000 payments of the
# benchmark) and was most of the processor's RSS growth under load.
_profile = functools.lru_cache(maxsize=16_384)(decisions.card_profile)


def issuer_identity(item: PaymentAuthorized) -> tuple[object, ...]:
    # What fixes the issuer's random answers: the same generated payment (same --seed) gets
    # the same answer in every run, whatever its payment id.
    return (item.token, item.amount, item.currency, item.merchant.id, item.seq)


# What the notifier's payment.approved already tells the client.
AUTHORIZATION = frozenset({EventKind.AUTHORIZED})


class Processor(Service[PaymentAuthorized]):
    codec = Codec(PaymentAuthorized)

    def __init__(self, spec: ServiceSpec, settings: Settings, redis_client: redis.Redis) -> None:
        super().__init__(spec, settings, redis_client)
        self.rates = IssuerRates(settings.issuer.decline_rate, settings.issuer.fault_rate)
        self.ledger = LedgerStore.for_settings(redis_client, settings)
        self._answers: dict[str, str] = {}  # the issuer's own answers, before the ledger
        self._changes: dict[str, lifecycle.Change] = {}
        self._rejected: dict[str, str] = {}
        self.run_rates = RunRates(redis_client, self.rates)
        self._cluster = store.is_cluster(redis_client)
        self._decisions: list[tuple[str, str]] = []  # the batch's (payment id, status)

    def prepare(self, items: list[PaymentAuthorized]) -> None:
        """Issuer prechecks, then the ledger's answer for the rest (one read, one write)."""
        self._answers, self._changes, self._rejected = {}, {}, {}
        to_settle: dict[CardRef, list[PaymentAuthorized]] = {}
        rates = self.run_rates.of({item.run_id for item in items})
        now = now_us()
        latency_ms = max((rates[item.run_id].added_latency_ms for item in items), default=0.0)
        if latency_ms > 0:
            time.sleep(latency_ms / 1000)  # the issuer answering slowly, once per batch
        for item in items:
            # The authorizer never passes these on; a record written past it may.
            if not money.is_currency(item.currency):
                self._rejected[item.payment_id] = f"unknown currency {item.currency!r}"
                continue
            if item.amount <= 0:
                self._rejected[item.payment_id] = f"amount {item.amount} is not positive"
                continue
            answer = decisions.issuer_precheck(item.test_reason, rates[item.run_id], now,
                                               *issuer_identity(item))
            if answer is None:
                to_settle.setdefault(CardRef(item.run_id, item.token), []).append(item)
            else:
                self._answers[item.payment_id] = answer
        if not to_settle:
            return
        # The daily limit counts by the day the issuer processes the payment, in UTC.
        day = datetime.fromtimestamp(now / 1e6, UTC).strftime("%Y%m%d")
        hold_ttl = self.settings.lifecycle.hold_ttl

        def decide_card(card: CardRef, snapshot: CardSnapshot) -> CardWrite:
            write = self.ledger.card_write(rates[card.run_id].settlement_window_s)
            for item in to_settle[card]:
                before = snapshot.records[item.payment_id]
                hold_ttl_us = round((rates[item.run_id].hold_ttl_s or hold_ttl) * 1e6)
                change = lifecycle.authorize(self._authorization(item), before,
                                             snapshot.funds(item.currency), now, hold_ttl_us)
                snapshot.take(change)
                write.take(change, before, day)
                self._changes[item.payment_id] = change
            return write

        self.ledger.settle({card: ({item.currency for item in batch},
                                   {item.payment_id for item in batch}, set())
                            for card, batch in to_settle.items()}, day, decide_card)

    def _authorization(self, item: PaymentAuthorized) -> lifecycle.Authorization:
        credit, daily = self._limits(item.token, item.test_reason, item.currency)
        return lifecycle.Authorization(
            payment_id=item.payment_id, run_id=item.run_id, token=item.token,
            amount=item.amount, currency=item.currency, merchant_id=item.merchant.id,
            network=item.network, capture=item.capture,
            partial_approval=item.partial_approval, credit_limit=credit, daily_limit=daily,
            callback_url=item.callback_url)

    @staticmethod
    def _limits(token: str, test_reason: str | None, currency: str) -> tuple[int, int]:
        """A card's credit and daily limits in the currency."""
        profile = _profile(token, test_reason)
        return (money.minor_units(profile.credit_limit_usd, currency),
                money.minor_units(profile.daily_limit_usd, currency))

    def finish(self, pipe: redis.client.Pipeline) -> None:
        """The batch's decisions, written together (store.write_decisions)."""
        decided, self._decisions = self._decisions, []
        store.write_decisions(pipe, decided, self.settings.redis.outcome_ttl, self._cluster)

    def decide(self, item: PaymentAuthorized, pipe: redis.client.Pipeline) -> list[Output]:
        if item.payment_id in self._rejected:
            raise Rejected(self._rejected[item.payment_id])
        change = self._changes.get(item.payment_id)
        code = self._answers[item.payment_id] if change is None else change.answer.code
        approved = code in decisions.APPROVING
        outcome = PaymentOutcome(
            payment_id=item.payment_id, run_id=item.run_id, seq=item.seq, amount=item.amount,
            currency=item.currency, merchant=item.merchant, callback_url=item.callback_url,
            stages={**item.stages, PROCESSED: now_us()}, capture=item.capture,
            partial_approval=item.partial_approval,
            status=Status.APPROVED if approved else Status.DECLINED,
            reason_code=code, reason_text=decisions.reason_text(code), token=item.token,
            masked_pan=item.masked_pan, network=item.network,
            approved_amount=change.answer.amount if change is not None and approved else None,
        )
        self._decisions.append((outcome.payment_id, outcome.status))
        outputs = [Output(self.settings.topics.results, item.token, encode(outcome))]
        if change is not None:
            outputs += event_outputs(self.settings.topics.events, change)
            # The authorization reaches the client as the notifier's payment.approved; what
            # came with it (an automatic capture) as an event webhook of its own.
            queue_event_webhooks(pipe, change, skip=AUTHORIZATION)
        return outputs
