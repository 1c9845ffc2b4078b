"""The ledger service: applies each operation on payments.operations (capture, increment,
void, expiry, reversal, refund, dispute, resolution) to its payment's record and its card's
book, once; stores every operation's answer (the HTTP API waits for it); puts the events on
payments.events and sends them to the payment's callback URL as webhooks."""

from __future__ import annotations

from datetime import UTC, datetime

import redis

from paysim.domain import lifecycle
from paysim.domain.decisions import IssuerRates
from paysim.domain.lifecycle import Change, PaymentRecord
from paysim.domain.messages import Codec, OperationRequested, now_us
from paysim.infra.config import Settings
from paysim.pipeline import store
from paysim.pipeline.events import event_outputs, queue_event_webhooks
from paysim.pipeline.ledger_store import CardRef, CardSnapshot, CardWrite, LedgerStore
from paysim.pipeline.run_rates import RunRates
from paysim.pipeline.service import Output, Service, ServiceSpec


class LedgerService(Service[OperationRequested]):
    codec = Codec(OperationRequested)

    def __init__(self, spec: ServiceSpec, settings: Settings, redis_client: redis.Redis) -> None:
        super().__init__(spec, settings, redis_client)
        self.ledger = LedgerStore.for_settings(redis_client, settings)
        self.run_rates = RunRates(redis_client, IssuerRates())
        self._changes: dict[str, Change] = {}
        self._streams_renewed: set[str] = set()

    def prepare(self, items: list[OperationRequested]) -> None:
        """Every card's operations in order, decided on one read, written atomically."""
        self._changes, self._streams_renewed = {}, set()
        now = now_us()
        day = datetime.fromtimestamp(now / 1e6, UTC).strftime("%Y%m%d")
        by_card: dict[CardRef, list[OperationRequested]] = {}
        for op in items:
            by_card.setdefault(CardRef(op.run_id, op.token), []).append(op)

        rates = self.run_rates.of(set(card.run_id for card in by_card))

        def decide_card(card: CardRef, snapshot: CardSnapshot) -> CardWrite:
            write = self.ledger.card_write(rates[card.run_id].settlement_window_s)
            for op in by_card[card]:
                before = snapshot.records.get(op.payment_id)
                answer = snapshot.answers.get(op.op_id)
                if answer is not None:  # applied before: a redelivered batch
                    change = lifecycle.replayed(before or _unknown(op), op.op_id, answer)
                else:
                    funds = None if before is None else snapshot.funds(before.currency)
                    change = lifecycle.operate(op, before, funds, now)
                    snapshot.take(change)
                    snapshot.answers[op.op_id] = change.answer
                    write.take(change, before, day, op.op_id)
                self._changes[op.op_id] = change
            return write

        self.ledger.settle({card: (None, {op.payment_id for op in ops}, {op.op_id for op in ops})
                            for card, ops in by_card.items()}, day, decide_card)

    def decide(self, item: OperationRequested, pipe: redis.client.Pipeline) -> list[Output]:
        change = self._changes[item.op_id]
        # Read back by `paysim send` (a redelivered batch adds the entry again: the reader
        # keeps the first).
        store.add_operation_done(pipe, item.run_id, store.OperationDone(
            item.op_id, item.kind, item.payment_id, change.answer.code, change.answer.amount,
            item.requested_at, now_us()))
        stream = store.run_operations_key(item.run_id)
        if stream not in self._streams_renewed:  # once per run and batch is enough
            self._streams_renewed.add(stream)
            pipe.expire(stream, self.settings.redis.outcome_ttl)
        queue_event_webhooks(pipe, change)
        return event_outputs(self.settings.topics.events, change)


def _unknown(op: OperationRequested) -> PaymentRecord:
    return PaymentRecord(payment_id=op.payment_id, run_id=op.run_id, token=op.token)
