"""Processor: the issuer. Settles each authorized payment against its card's ledger."""

from __future__ import annotations

import logging
import time
from datetime import UTC, datetime

import redis

from paysim.domain import decisions, money
from paysim.domain.decisions import IssuerRates, Status
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
from paysim.pipeline.service import Output, Rejected, Service, ServiceSpec


def issuer_identity(item: PaymentAuthorized) -> tuple[object, ...]:
    # What fixes the issuer's random answers: the same generated payment (same --seed) gets
    # the same answer in every run, whatever its payment id.
    return (item.token, item.amount, item.currency, item.merchant.id, item.seq)


RUN_RATES_KEPT = 1000


class Processor(Service[PaymentAuthorized]):
    codec = Codec(PaymentAuthorized)

    def __init__(self, spec: ServiceSpec, settings: Settings, redis_client: redis.Redis) -> None:
        super().__init__(spec, settings, redis_client)
        self.rates = IssuerRates(settings.issuer.decline_rate, settings.issuer.fault_rate)
        self.settle = redis_client.register_script(store.SETTLE_LUA)
        self._answers: dict[str, str] = {}
        self._rejected: dict[str, str] = {}
        self._run_rates: dict[str, IssuerRates] = {}

    def _rates_for(self, run_ids: set[str]) -> dict[str, IssuerRates]:
        """Each run's issuer behaviour: set by its sender, else this processor's settings."""
        unknown = [run for run in run_ids if run not in self._run_rates]
        if unknown:
            for run, raw in zip(unknown, self.redis.mget(
                    [store.run_issuer_key(run) for run in unknown]), strict=True):
                self._run_rates[run] = self._parse_rates(run, raw)
            while len(self._run_rates) > RUN_RATES_KEPT:  # oldest first
                self._run_rates.pop(next(iter(self._run_rates)))
        return {run: self._run_rates[run] for run in run_ids}

    def _parse_rates(self, run: str, raw: bytes | None) -> IssuerRates:
        if not raw:
            return self.rates
        try:
            return store.decode_run_issuer(raw)
        except (ValueError, TypeError, AttributeError):
            logging.getLogger(__name__).warning(
                "run %s has an unreadable issuer setting; using the defaults", run)
            return self.rates

    def prepare(self, items: list[PaymentAuthorized]) -> None:
        """Issuer prechecks, then one pipeline of ledger settlements for the rest."""
        self._answers = {}
        to_settle = []
        rates = self._rates_for({item.run_id for item in items})
        now = now_us()
        latency_ms = max((rates[item.run_id].added_latency_ms for item in items), default=0.0)
        if latency_ms > 0:
            time.sleep(latency_ms / 1000)  # the issuer answering slowly, once per batch
        self._rejected: dict[str, str] = {}
        for item in items:
            if not money.is_currency(item.currency):  # the authorizer never passes one on
                self._rejected[item.payment_id] = f"unknown currency {item.currency!r}"
                continue
            answer = decisions.issuer_precheck(item.test_reason, rates[item.run_id], now,
                                               *issuer_identity(item))
            if answer is None:
                to_settle.append(item)
            else:
                self._answers[item.payment_id] = answer
        if not to_settle:
            return
        # The daily limit counts by the day the issuer processes the payment, in UTC.
        day = datetime.fromtimestamp(now / 1e6, UTC).strftime("%Y%m%d")
        keys: list[str] = []
        args: list[object] = [self.settings.redis.ledger_ttl, day]
        for item in to_settle:
            profile = decisions.card_profile(item.token, item.test_reason)
            keys += (store.ledger_key(item.run_id, item.token),
                     store.settle_marker_key(item.payment_id))
            args += (item.amount, item.currency,
                     money.minor_units(profile.credit_limit_usd, item.currency),
                     money.minor_units(profile.daily_limit_usd, item.currency))
        answers = self.settle(keys=keys, args=args)
        for item, answer in zip(to_settle, answers, strict=True):
            self._answers[item.payment_id] = answer.decode()  # a reason code, as bytes

    def decide(self, item: PaymentAuthorized, pipe: redis.client.Pipeline) -> list[Output]:
        if item.payment_id in self._rejected:
            raise Rejected(self._rejected[item.payment_id])
        code = self._answers[item.payment_id]
        outcome = PaymentOutcome(
            payment_id=item.payment_id, run_id=item.run_id, seq=item.seq, amount=item.amount,
            currency=item.currency, merchant=item.merchant, callback_url=item.callback_url,
            stages={**item.stages, PROCESSED: now_us()},
            status=Status.APPROVED if code == decisions.APPROVED else Status.DECLINED,
            reason_code=code, reason_text=decisions.reason_text(code), token=item.token,
            masked_pan=item.masked_pan, network=item.network,
        )
        store.write_decision(pipe, outcome.payment_id, outcome.status,
                             self.settings.redis.outcome_ttl)
        return [Output(self.settings.topics.results, item.token, encode(outcome))]
