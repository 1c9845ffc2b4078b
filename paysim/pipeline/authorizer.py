"""Authorizer: checks the card, tokenizes it, and passes the payment on or declines it."""

from __future__ import annotations

from datetime import UTC, datetime

import redis

from paysim.domain import cards, decisions
from paysim.domain.decisions import Status
from paysim.domain.messages import (
    AUTHORIZED,
    Codec,
    PaymentAuthorized,
    PaymentOutcome,
    PaymentRequested,
    encode,
    failed_check,
    now_us,
)
from paysim.infra.config import Settings
from paysim.infra.secrets import Keys
from paysim.pipeline import store
from paysim.pipeline.service import Output, Rejected, Service, ServiceSpec


def masked_or_none(number: str) -> str | None:
    digits = cards.ascii_digits(number) and len(number) >= cards.MIN_PAN_DIGITS
    return cards.mask(number) if digits else None


def authorize(request: PaymentRequested, card: cards.CardBlock, settings: Settings,
              token_key: bytes) -> PaymentAuthorized | PaymentOutcome:
    """The authorizer's decision for one payment: on to the issuer, or declined for good."""
    at = now_us()
    check = decisions.check_card(card, request.amount, request.currency,
                                 datetime.fromtimestamp(at / 1e6, UTC),
                                 settings.issuer.max_amount_usd)
    common = {
        "payment_id": request.payment_id, "run_id": request.run_id, "seq": request.seq,
        "amount": request.amount, "currency": request.currency, "merchant": request.merchant,
        "callback_url": request.callback_url, "stages": {**request.stages, AUTHORIZED: at},
        "capture": request.capture, "partial_approval": request.partial_approval,
    }
    if not check.accepted:
        return PaymentOutcome(
            **common, status=Status.DECLINED, reason_code=check.reason,
            reason_text=decisions.reason_text(check.reason),
            masked_pan=masked_or_none(card.number), network=check.network,
        )
    return PaymentAuthorized(
        **common, token=cards.tokenize(card.number, token_key),
        masked_pan=cards.mask(card.number), network=check.network,
        exp_month=card.exp_month, exp_year=card.exp_year,
        test_reason=decisions.TEST_CARDS.get(card.number),
    )


class Authorizer(Service[PaymentRequested]):
    codec = Codec(PaymentRequested)
    dead_letters_keep_original = False  # the edge topic: a bad record may hold a clear PAN

    def __init__(self, spec: ServiceSpec, settings: Settings, redis_client: redis.Redis,
                 keys: Keys) -> None:
        super().__init__(spec, settings, redis_client)
        self.cipher = cards.CardCipher(keys.card_key)
        self.token_key = keys.token_key

    def decide(self, item: PaymentRequested, pipe: redis.client.Pipeline) -> list[Output]:
        try:
            card = self.cipher.decrypt(item.card, item.payment_id.encode())
        except ValueError as exc:
            raise Rejected(str(exc)) from None
        # The declared rules (the callback URL, no card number in free text), as the HTTP API
        # applies them; the dead letter keeps no bytes of the record (see above).
        problem = failed_check(item)
        if problem is not None:
            raise Rejected(problem)
        verdict = authorize(item, card, self.settings, self.token_key)
        if isinstance(verdict, PaymentAuthorized):
            return [Output(self.settings.topics.authorized, verdict.token, encode(verdict))]
        store.write_decision(pipe, verdict.payment_id, verdict.status,
                             self.settings.redis.outcome_ttl)
        return [Output(self.settings.topics.results, verdict.payment_id, encode(verdict))]
