"""Notifier: confirms each final outcome in Redis and tells the client."""

from __future__ import annotations

import msgspec
import redis

from paysim.domain.messages import NOTIFIED, Codec, Notification, PaymentOutcome, encode, now_us
from paysim.infra.config import Settings
from paysim.pipeline import store
from paysim.pipeline.notifications import event_id, notification_for, queue_webhook
from paysim.pipeline.service import Output, Service, ServiceSpec


class Notifier(Service[PaymentOutcome]):
    codec = Codec(PaymentOutcome)

    def __init__(self, spec: ServiceSpec, settings: Settings, redis_client: redis.Redis) -> None:
        super().__init__(spec, settings, redis_client)
        self._one_by_one = store.is_cluster(redis_client)  # see store.NotifiedBatch
        self._streams_renewed: set[str] = set()
        # The batch being decided, by the pipeline it goes to (a new one each batch, so an
        # aborted batch leaves nothing behind), and its webhooks, queued after its outcomes.
        self._pipe: redis.client.Pipeline | None = None
        self._batch = store.NotifiedBatch()
        self._webhooks: list[tuple[str, Notification]] = []

    def prepare(self, items: list[PaymentOutcome]) -> None:
        self._streams_renewed = set()

    def decide(self, item: PaymentOutcome, pipe: redis.client.Pipeline) -> list[Output]:
        at = now_us()
        outcome = msgspec.structs.replace(item, stages={**item.stages, NOTIFIED: at})
        notification = notification_for(outcome, event_id(item.payment_id), at)
        webhook_status = "pending" if item.callback_url else "none"
        output = Output(self.settings.topics.notifications, item.payment_id,
                        encode(notification))
        if self._one_by_one:
            self._write_one(pipe, outcome, webhook_status, notification)
            return [output]
        if pipe is not self._pipe:
            self._pipe, self._batch, self._webhooks = pipe, store.NotifiedBatch(), []
        self._batch.add(outcome, webhook_status, self.trace_id)
        if item.callback_url:
            self._webhooks.append((item.callback_url, notification))
        return [output]

    def finish(self, pipe: redis.client.Pipeline) -> None:
        if pipe is not self._pipe:
            return  # nothing decided into it (or a cluster's commands, queued already)
        self._batch.write(pipe, self.settings.redis.outcome_ttl)
        # After the outcomes: the dispatcher records a delivery on the outcome hash.
        for url, notification in self._webhooks:
            queue_webhook(pipe, url, notification)
        self._pipe, self._batch, self._webhooks = None, store.NotifiedBatch(), []

    def _write_one(self, pipe: redis.client.Pipeline, outcome: PaymentOutcome,
                   webhook_status: str, notification: Notification) -> None:
        """The batch's writes command by command (a Redis Cluster)."""
        ttl = self.settings.redis.outcome_ttl
        traced = {} if self.trace_id is None else {"trace_id": self.trace_id}
        store.write_outcome(pipe, outcome, ttl, notification="sent",
                            webhook_status=webhook_status, **traced)
        store.add_done_entry(pipe, outcome)
        done = store.run_stream_key(outcome.run_id)
        if done not in self._streams_renewed:  # once per run and batch is enough
            self._streams_renewed.add(done)
            pipe.expire(done, ttl)
        if outcome.callback_url:
            queue_webhook(pipe, outcome.callback_url, notification)
