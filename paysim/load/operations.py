"""A run's follow-up operations under way: planned (load/lifecycle.py), sent onto
payments.operations at their intended times, their answers read back from the run's
operations stream.

Two threads. The sender keeps the planned operations in a heap by intended time and produces
each when it is due, keyed by its card's token (one card's operations stay in order, as its
payments do); one that cannot be sent on time is sent late and its latency still counts from
the intended time (open model, as for payments). The reader XREADs the stream the ledger
service writes (one entry per answered operation), in batches, and hands each answer to the
planner, whose next operations go back on the heap.
"""

from __future__ import annotations

import heapq
import itertools
import threading
from collections.abc import Callable

import redis
from confluent_kafka import KafkaException, Producer

from paysim.domain.decisions import APPROVING
from paysim.domain.messages import (
    NOTIFIED,
    PROCESSED,
    OperationKind,
    OperationRequested,
    encode,
    now_us,
)
from paysim.infra.config import Settings
from paysim.infra.kafka import client_config, error_text, produce, quiet_logger
from paysim.infra.tracing import TRACEPARENT, open_tracer, sending
from paysim.load.lifecycle import Fate, FollowUps, LifecycleSpec, PlannedOp
from paysim.load.metrics import OperationMetrics
from paysim.pipeline import store
from paysim.pipeline.registry import GENERATOR
from paysim.pipeline.store import DoneEntry

READ_BATCH = 2000
IDLE_WAIT_S = 0.2


class OperationLoad:
    def __init__(self, settings: Settings, run_id: str, spec: LifecycleSpec, seed: int,
                 halted: Callable[[], bool]) -> None:
        self.settings, self.run_id = settings, run_id
        self.followups = FollowUps(spec, seed, spec.hold_ttl_s or settings.lifecycle.hold_ttl)
        self.metrics = OperationMetrics()
        self.halted = halted  # the run stopped sending: send no more operations either
        self.changed = threading.Condition()
        self._due: list[tuple[int, int, PlannedOp]] = []  # (due µs, order, op)
        self._order = itertools.count()
        self._waiting: dict[str, PlannedOp] = {}  # sent or expected, not answered yet
        self._answered_ids: set[str] = set()  # counted already: a redelivered answer is not
        self.latest_due_us = 0
        self.errors: list[str] = []
        self._stop = threading.Event()
        self._threads: list[threading.Thread] = []
        # The generator's tracer (one per process): each operation's span continues its
        # payment's trace. None unless an OTLP endpoint is set.
        self.tracer = open_tracer(settings, GENERATOR)
        self.producer = Producer(client_config(settings, **{
            "enable.idempotence": True, "linger.ms": 5, "logger": quiet_logger}))

    # ------------------------------------------------------------ what the runner tells it

    def fate(self, seq: int) -> Fate:
        return self.followups.fate(seq)

    def payment_sent(self, payment_id: str, token: str, currency: str, amount: int,
                     fate: Fate, intended_us: int, traceparent: str | None = None) -> None:
        with self.changed:
            self._plan(self.followups.sent(payment_id, token, currency, amount, fate,
                                           intended_us, traceparent))

    def authorization(self, entry: DoneEntry) -> None:
        """A payment's outcome: plan what follows it, from its notified time."""
        answered = entry.stages.get(NOTIFIED) or now_us()
        with self.changed:
            self._plan(self.followups.authorized(entry.payment_id, entry.reason_code,
                                                 entry.amount, answered,
                                                 entry.stages.get(PROCESSED)))

    def _plan(self, ops: list[PlannedOp]) -> None:
        """Under the lock: each op on the heap, or (expected ones) straight to waiting."""
        for op in ops:
            if op.op_id in self._answered_ids:
                # The ledger's expiry, read (and counted) before the authorization it
                # follows was: a hold whose TTL ran out while its outcome was on the way.
                continue
            self.metrics.record_scheduled(op.kind)
            self.latest_due_us = max(self.latest_due_us, op.due_us)
            if op.expected:
                self._waiting[op.op_id] = op
            else:
                heapq.heappush(self._due, (op.due_us, next(self._order), op))
        if ops:
            self.changed.notify_all()

    # ---------------------------------------------------------------- the two threads

    def start(self, client: redis.Redis) -> None:
        self._threads = [threading.Thread(target=self._send_due, daemon=True),
                         threading.Thread(target=self._read_answers, args=(client,),
                                          daemon=True)]
        for thread in self._threads:
            thread.start()

    def stop(self) -> None:
        self._stop.set()
        with self.changed:
            self.changed.notify_all()
        for thread in self._threads:
            thread.join()
        self.producer.flush(10)
        if self.tracer is not None:
            self.tracer.flush()

    def pending(self) -> int:
        """Operations planned and not answered yet (sent, due or expected)."""
        with self.changed:
            return len(self._due) + len(self._waiting)

    def wait_for_change(self, timeout_s: float) -> None:
        with self.changed:
            self.changed.wait(timeout_s)

    def _send_due(self) -> None:
        while not self._stop.is_set():
            with self.changed:
                if not self._due or self.halted():
                    self.changed.wait(IDLE_WAIT_S)
                    continue
                wait_s = (self._due[0][0] - now_us()) / 1e6
                if wait_s > 0:
                    self.changed.wait(min(wait_s, IDLE_WAIT_S))
                    continue
                now = now_us()
                ready = []
                while self._due and self._due[0][0] <= now:
                    op = heapq.heappop(self._due)[2]
                    self._waiting[op.op_id] = op  # before it is sent: its answer may be quick
                    ready.append(op)
            try:
                for op in ready:
                    self._produce(op)
                self.producer.poll(0)
            except KafkaException as exc:  # the run reports it; its operations stay pending
                self.errors.append(f"Kafka did not take an operation: {error_text(exc)}")
                return

    def _produce(self, op: PlannedOp) -> None:
        """One operation onto Kafka; when tracing, in its own span, a child of its payment's
        first span (sampled as the payment was)."""
        topic = self.settings.topics.operations
        parent = None if op.traceparent is None else {TRACEPARENT: op.traceparent}
        with sending(self.tracer, topic, op.payment_id, parent) as trace:
            produce(self.producer, topic, encode(self._message(op)), key=op.token,
                    on_delivery=self._delivered, headers=trace.headers)

    def _message(self, op: PlannedOp) -> OperationRequested:
        return OperationRequested(op_id=op.op_id, kind=op.kind, payment_id=op.payment_id,
                                  run_id=self.run_id, token=op.token, amount=op.amount,
                                  final=op.final, reason_code=op.reason_code, won=op.won,
                                  requested_at=now_us())

    def _delivered(self, error, _message) -> None:
        if error is not None:
            self.errors.append(f"Kafka did not take an operation: {error.str()}")

    def _read_answers(self, client: redis.Redis) -> None:
        key, last_id = store.run_operations_key(self.run_id), "0"
        while not self._stop.is_set():
            try:
                answers, last_id = store.read_stream(client, key, last_id,
                                                     store.read_operations_done, READ_BATCH,
                                                     int(IDLE_WAIT_S * 1000))
            except redis.RedisError:
                if self._stop.wait(0.5):
                    return
                continue
            if answers:
                with self.changed:
                    for answer in answers:
                        self._answered(answer)
                    self.changed.notify_all()

    def _answered(self, answer: store.OperationDone) -> None:
        """Under the lock: one answer counted (the first, if a batch was redelivered) and
        what follows it planned."""
        if answer.op_id in self._answered_ids:
            return
        op = self._waiting.pop(answer.op_id, None) or self._unplanned(answer)
        if op is None:
            return
        self._answered_ids.add(answer.op_id)
        self.metrics.record_answer(op.kind, answer.reason_code, answer.amount, op.currency,
                                   op.due_us, answer.answered_at)
        if op.invalid:
            self.metrics.record_invalid(op.kind, answer.reason_code not in APPROVING)
        self._plan(self.followups.answered(op, answer.reason_code, answer.amount,
                                           answer.answered_at))

    def _unplanned(self, answer: store.OperationDone) -> PlannedOp | None:
        """The ledger's own expiry of a hold of this run that the mix meant to capture (a
        chain of captures slower than the hold's TTL): counted as the ledger answered it,
        from when the expiry was sent. Anything else not planned here is not the run's."""
        life = self.followups.lives.get(answer.payment_id)
        if answer.kind != OperationKind.EXPIRE or life is None:
            return None
        self.metrics.record_scheduled(OperationKind.EXPIRE)
        return PlannedOp(answer.op_id, OperationKind.EXPIRE, answer.payment_id, life.token,
                         life.currency, answer.requested_at, expected=True)
