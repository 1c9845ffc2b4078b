"""Notifier: confirms each final outcome in Redis and tells the client."""

from __future__ import annotations

import msgspec
import redis

from paysim.domain.messages import NOTIFIED, Codec, PaymentOutcome, encode, now_us
from paysim.infra.config import Settings
from paysim.pipeline import store
from paysim.pipeline.notifications import event_id, notification_for, queue_webhook
from paysim.pipeline.service import Output, Service, ServiceSpec


class Notifier(Service[PaymentOutcome]):
    codec = Codec(PaymentOutcome)

    def __init__(self, spec: ServiceSpec, settings: Settings, redis_client: redis.Redis) -> None:
        super().__init__(spec, settings, redis_client)
        self._streams_renewed: set[str] = set()

    def prepare(self, items: list[PaymentOutcome]) -> None:
        self._streams_renewed = set()

    def decide(self, item: PaymentOutcome, pipe: redis.client.Pipeline) -> list[Output]:
        at = now_us()
        outcome = msgspec.structs.replace(item, stages={**item.stages, NOTIFIED: at})
        notification = notification_for(outcome, event_id(item.payment_id), at)
        ttl = self.settings.redis.outcome_ttl
        traced = {} if self.trace_id is None else {"trace_id": self.trace_id}
        store.write_outcome(pipe, outcome, ttl, notification="sent",
                            webhook_status="pending" if item.callback_url else "none", **traced)
        store.add_done_entry(pipe, outcome)
        done = store.run_stream_key(item.run_id)
        if done not in self._streams_renewed:  # once per run and batch is enough
            self._streams_renewed.add(done)
            pipe.expire(done, ttl)
        if item.callback_url:
            queue_webhook(pipe, item.callback_url, notification)
        return [Output(self.settings.topics.notifications, item.payment_id,
                       encode(notification))]
