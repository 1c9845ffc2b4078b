"""Run a load: send each payment at its intended time, read outcomes as they come, measure.

Three threads: the scheduler sends (itself, or through a pool of workers when the ingress wants
several senders, as the HTTP API does), the collector reads the run's stream of notified
payments, and a ticker reports progress. A payment that cannot be sent on time is sent late,
with its send delay recorded; one more than ``max_send_delay_s`` late is dropped and counted,
as k6 counts dropped iterations, so a generator that cannot keep up says so instead of quietly
sending less.
"""

from __future__ import annotations

import dataclasses
import json
import math
import sys
import threading
import time
from collections.abc import Callable, Iterable, Iterator
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path
from typing import Protocol, TextIO

import redis
from confluent_kafka import KafkaException

from paysim.domain.decisions import IssuerRates
from paysim.domain.messages import NOTIFIED, now_us
from paysim.infra.config import Settings
from paysim.infra.errors import PaysimError
from paysim.infra.files import writing
from paysim.infra.kafka import error_text
from paysim.load.generator import GeneratedPayment
from paysim.load.ingress import Failure, Ingress, new_run_id, open_ingress
from paysim.load.lifecycle import LifecycleSpec
from paysim.load.metrics import RunMetrics
from paysim.load.operations import OperationLoad
from paysim.load.report import RunInfo, TargetInfo
from paysim.load.schedule import Profile
from paysim.pipeline import store
from paysim.pipeline.store import DoneEntry

TICK_S = 0.5
SCHEDULER_SWITCH_INTERVAL_S = 0.0005
# The scheduler wakes at most once per tick and sends every payment due by then: a wake
# (a timed wait, the GIL back) cost the sender 15-25 µs of CPU, once a payment at 2,000/s.
# A payment leaves at most one tick after its intended time; its latency still counts from
# that time (its send delay says how late it left).
SEND_TICK_S = 0.001
READ_BATCH = 2000


@dataclass(frozen=True)
class Plan:
    """What to send and when. ``offsets`` None means a burst: as fast as possible."""

    payments: Iterator[GeneratedPayment]
    count: int
    offsets: Iterable[float] | None = None
    profile: Profile | None = None
    scenario: str | None = None
    seed: int | None = None
    lifecycle: LifecycleSpec | None = None  # follow-up operations; None: payments only


@dataclass(frozen=True)
class RunOptions:
    via: str = "kafka"
    timeout: float = 120.0  # seconds to wait for outcomes after the last send
    callback_url: str | None = None
    record: Path | None = None
    max_send_delay_s: float = 5.0
    issuer: IssuerRates | None = None  # the run's issuer; None: the processor's settings
    issuer_outages_s: tuple[tuple[float, float], ...] = ()  # relative to the run's start
    # A distributed run: this generator sends the payments numbered k, k + n, k + 2n... of
    # the schedule (share (k, n)), from the run's common start (Unix µs).
    share: tuple[int, int] | None = None
    start_at_us: int | None = None

    def mine(self, index: int) -> bool:
        """Whether payment ``index`` of the schedule is this generator's to send."""
        return self.share is None or index % self.share[1] == self.share[0]

    def share_of(self, count: int) -> int:
        """How many of ``count`` scheduled payments are this generator's."""
        return count if self.share is None else share_size(count, *self.share)


def share_size(count: int, share: int, shares: int) -> int:
    """How many of payments 0..count-1 are share ``share`` of ``shares`` (k, k + n, ...)."""
    return max(0, (count - share + shares - 1) // shares)


class OutcomeSource(Protocol):
    """Where the collector reads outcomes: paysim's run stream, or a target's answers."""

    def read(self) -> tuple[list[DoneEntry], list[Failure]]:
        """The next outcomes (and records that failed to give one), waiting at most about
        0.2 s for them."""
        ...

    # True once the source can give no more (a fatal error, reported as a failure): the
    # collector stops waiting, and what is still awaited is lost.
    ended: bool

    def close(self) -> None: ...


class Target(Protocol):
    """A system that is not paysim's pipeline (load/targets): where payments go and where
    their outcomes come from, instead of paysim's ingress and run stream."""

    info: TargetInfo

    def open(self, settings: Settings, run_id: str) -> tuple[Ingress, OutcomeSource]:
        """Connected and ready: the outcome source first, so no early answer is missed."""
        ...


class RunStream:
    """The run's stream of notified payments in Redis, as paysim's notifier writes it."""

    ended = False  # Redis gone: the run goes on, and its timeout ends the wait

    def __init__(self, client: redis.Redis, run_id: str, stop: threading.Event) -> None:
        self.client = client
        self.key = store.run_stream_key(run_id)
        self.last_id = "0"
        self.stop = stop

    def read(self) -> tuple[list[DoneEntry], list[Failure]]:
        try:
            entries, self.last_id = store.read_stream(self.client, self.key, self.last_id,
                                                      store.read_done_entries, READ_BATCH, 200)
        except redis.RedisError:
            self.stop.wait(0.5)  # Redis back: the run goes on; not back: the timeout ends it
            return [], []
        return entries, []

    def close(self) -> None:
        pass


@dataclass
class Tick:
    elapsed_s: float
    sent: int
    completed: int
    dropped: int
    scheduled: int
    target_rate: float | None
    current_rate: float
    approved: int
    declined: int
    rolling_p99_ms: float | None
    operations: int | None = None  # a lifecycle mix's operations planned so far
    operations_answered: int = 0
    errors: int = 0  # a target's failures (load/targets)
    rolling_p50_ms: float | None = None

    @property
    def in_flight(self) -> int:
        return self.sent - self.completed - self.errors


class Interrupt:
    """The user's Ctrl-C as a run sees it. The first stops sending and waits at most
    ``grace_s`` for the outcomes of what was sent; the second stops waiting at once. Either
    way the run ends with its (partial) report, so it can be audited."""

    def __init__(self, grace_s: float = 5.0) -> None:
        self.grace_s = grace_s
        self.stop_sending = threading.Event()
        self.stop_waiting = threading.Event()
        self.first_at: float | None = None  # monotonic time of the first request

    def request(self) -> None:
        """Safe from a signal handler: only sets events."""
        if self.stop_sending.is_set():
            self.stop_waiting.set()
        else:
            self.first_at = time.monotonic()
            self.stop_sending.set()

    @property
    def requested(self) -> bool:
        return self.stop_sending.is_set()


@dataclass
class _Ledger:
    """Sent payments and their intended times, shared by the scheduler and the collector."""

    intended: dict[str, int] = field(default_factory=dict)
    outcomes: set[str] = field(default_factory=set)
    lock: threading.Lock = field(default_factory=threading.Lock)


class LoadRun:
    def __init__(self, settings: Settings, plan: Plan, options: RunOptions,
                 run_id: str | None = None, interrupt: Interrupt | None = None,
                 target: Target | None = None) -> None:
        self.settings = settings
        self.target = target
        self.plan = plan
        self.options = options
        self.run_id = run_id or new_run_id()
        self.ledger = _Ledger()
        self.sending_done = threading.Event()
        self.stop = threading.Event()
        self.interrupt = interrupt or Interrupt()
        self.metrics: RunMetrics | None = None
        self.errors: list[str] = []
        self._last_outcome_us: int | None = None
        self.operations: OperationLoad | None = None

    def run(self, on_tick: Callable[[Tick], None] | None = None) -> tuple[RunMetrics, RunInfo]:
        # Opened first: a record file that cannot be written stops the run before it sends.
        record = None
        if self.options.record:
            with writing("the record file", self.options.record):
                record = self.options.record.open("w")
        client = store.connect(self.settings)
        source: OutcomeSource | None = None
        try:
            if self.target is None:
                ingress = open_ingress(self.settings, self.options.via)
                source = RunStream(client, self.run_id, self.stop)
            else:
                ingress, source = self.target.open(self.settings, self.run_id)
            started = self.options.start_at_us or now_us()
            self.metrics = RunMetrics(started)
            self._publish_issuer(client, started)
            if self.plan.lifecycle is not None:
                self.operations = OperationLoad(self.settings, self.run_id, self.plan.lifecycle,
                                                self.plan.seed or 0, self._sending_halted)
                self.metrics.operations = self.operations.metrics
                self.operations.start(client)
            collector = threading.Thread(target=self._collect, args=(source,), daemon=True)
            collector.start()
            ticker = None
            if on_tick:
                ticker = threading.Thread(target=self._tick, args=(on_tick,), daemon=True)
                ticker.start()
            # The scheduler waits for the GIL each time it wakes to send; at the default 5 ms
            # switch interval a busy collector made sends that much late (p99 send delay).
            switch_interval = sys.getswitchinterval()
            sys.setswitchinterval(SCHEDULER_SWITCH_INTERVAL_S)
            try:
                self._send_all(ingress, record)
            finally:
                sys.setswitchinterval(switch_interval)
                self.sending_done.set()
            collector.join()
            if self.operations is not None:
                self._wait_for_operations(self.operations)
                self.operations.stop()
                self.errors += self.operations.errors
            self.stop.set()
            if ticker:
                ticker.join()
                on_tick(self._snapshot())
            if self.errors:
                raise PaysimError(self.errors[0])
        except KafkaException as exc:
            raise PaysimError(f"Kafka at {self.settings.kafka_bootstrap}: "
                              f"{error_text(exc)}") from None
        except redis.RedisError as exc:
            raise PaysimError(f"Redis at {self.settings.redis_url}: {exc}") from None
        finally:
            self.stop.set()
            if self.operations is not None:
                self.operations.stop()
            if source is not None:
                source.close()
            client.close()
            if record:  # also when the run failed before sending
                record.close()
        with self.ledger.lock:
            lost = [pid for pid in self.ledger.intended if pid not in self.ledger.outcomes]
        profile = self.plan.profile
        info = RunInfo(
            run_id=self.run_id, seed=self.plan.seed, via=self.options.via,
            mode="burst" if self.plan.offsets is None else "open",
            scenario=self.plan.scenario,
            target_rate=round(profile.mean_rate(), 3) if profile else None,
            stages=[{"duration_s": s.duration_s, "target_rate": s.target_rate}
                    for s in profile.stages] if profile else [],
            scheduled=self.options.share_of(self.plan.count), lost_ids=lost,
            finished_us=max(self._last_outcome_us or now_us(),
                            self.metrics.operations.last_answer_us or 0
                            if self.metrics.operations else 0),
            target=self.target.info if self.target is not None else None,
        )
        return self.metrics, info

    # ---------------------------------------------------------------- sending

    def _publish_issuer(self, client: redis.Redis, started_us: int) -> None:
        if self.options.issuer is None:
            return
        outages = tuple((started_us + int(a * 1e6), started_us + int(b * 1e6))
                        for a, b in self.options.issuer_outages_s)
        rates = dataclasses.replace(self.options.issuer, outages=outages)
        store.write_run_issuer(client, self.run_id, rates, self.settings.redis.outcome_ttl)

    def _send_all(self, ingress: Ingress, record: TextIO | None) -> None:
        pool = ThreadPoolExecutor(ingress.senders) if ingress.senders > 1 else None
        try:
            if record:
                record.write(json.dumps({"paysim_record": 1, "run_id": self.run_id,
                                         "seed": self.plan.seed,
                                         "scenario": self.plan.scenario}) + "\n")
            # The schedule's zero, on both clocks at once: intended send times are wall-clock
            # microseconds (as the stage times are), the waits run on the monotonic clock.
            # Anchored anywhere earlier, every payment would count the gap as send delay.
            start, schedule_us = time.monotonic(), now_us()
            if self.options.start_at_us is not None:  # the generators' common zero
                start += (self.options.start_at_us - schedule_us) / 1e6
                schedule_us = self.options.start_at_us
            offsets = self.plan.offsets
            for index, payment in enumerate(self.plan.payments):
                if index >= self.plan.count or self._sending_halted():
                    break
                offset = next(offsets, None) if offsets is not None else None
                if offsets is not None and offset is None:
                    break
                if not self.options.mine(index):
                    continue
                if offset is not None:
                    if not self._wait_until(start + tick_end(offset)):
                        break
                    late = time.monotonic() - (start + offset)
                    if late > self.options.max_send_delay_s:
                        self.metrics.record_drop()
                        continue
                    intended = schedule_us + int(offset * 1e6)
                else:
                    intended = None
                if record:
                    record.write(record_line(payment, offset if offset is not None
                                             else (time.monotonic() - start)) + "\n")
                if pool:
                    pool.submit(self._send_pooled, ingress, payment, intended)
                else:
                    self._send(ingress, payment, intended)
        finally:
            if pool:
                # Stopped (Ctrl-C, a failed send): what waits in the queue is not sent, only
                # what is in flight finishes; a slow target may hold a long queue.
                pool.shutdown(wait=True, cancel_futures=self._sending_halted())
            ingress.finish()

    def _wait_until(self, due: float) -> bool:
        while True:
            left = due - time.monotonic()
            if left <= 0:
                return True
            if self.stop.wait(min(left, 0.05)) or self._sending_halted():
                return False

    def _sending_halted(self) -> bool:
        """A failed send, or the user, stopped the sending."""
        return self.stop.is_set() or self.interrupt.requested

    def _send(self, ingress: Ingress, payment: GeneratedPayment, intended: int | None) -> None:
        """Send one payment; ``intended`` None (a burst) counts from the actual send."""
        sent_us = now_us()
        operations = self.operations
        if operations is None:
            handed = ingress.send(payment, self.run_id, self.options.callback_url)
        else:
            fate = operations.fate(payment.seq)
            handed = ingress.send(payment, self.run_id, self.options.callback_url,
                                  fate.capture, fate.partial_approval)
            operations.payment_sent(handed.payment_id, handed.token or "", payment.currency,
                                    payment.amount, fate,
                                    intended if intended is not None else sent_us,
                                    handed.traceparent)
        self._sent(handed.payment_id, intended if intended is not None else sent_us, sent_us)
        if handed.outcome is not None:  # declined at the edge: the answer is its outcome
            self._outcomes([handed.outcome])
        elif handed.failure is not None:
            self._failure(handed.failure)

    def _send_pooled(self, ingress: Ingress, payment: GeneratedPayment,
                     intended: int | None) -> None:
        """``_send`` on a pool thread: a failure stops the run, which reports it."""
        try:
            self._send(ingress, payment, intended)
        except PaysimError as exc:
            self.errors.append(str(exc))
            self.stop.set()

    def _sent(self, payment_id: str, intended: int, sent: int) -> None:
        with self.ledger.lock:
            self.ledger.intended[payment_id] = intended
        self.metrics.record_send(intended, sent)

    # ---------------------------------------------------------------- collecting

    def _outcomes(self, entries: list[DoneEntry]) -> list[DoneEntry]:
        """Record what was read, under one lock for the whole read (not two a payment: the
        sender waits on the same lock); returns the entries read before their send was noted.
        A replayed duplicate is left out."""
        fresh: list[tuple[DoneEntry, int]] = []
        early: list[DoneEntry] = []
        with self.ledger.lock:
            intended, outcomes = self.ledger.intended, self.ledger.outcomes
            for entry in entries:
                sent_for = intended.get(entry.payment_id)
                if sent_for is None:
                    early.append(entry)
                elif entry.payment_id not in outcomes:
                    outcomes.add(entry.payment_id)
                    fresh.append((entry, sent_for))
        self.metrics.record_outcomes(fresh)
        last = self._last_outcome_us
        for entry, _ in fresh:
            if self.operations is not None:
                self.operations.authorization(entry)
            notified = entry.stages.get(NOTIFIED)
            if notified and (last is None or notified > last):
                last = notified
        self._last_outcome_us = last
        return early

    def _failure(self, failure: Failure) -> None:
        """A payment that ended without an outcome (an error, not lost), or an outcome
        record that could not be read."""
        if failure.payment_id is not None:
            with self.ledger.lock:
                if failure.payment_id in self.ledger.outcomes:
                    return
                self.ledger.outcomes.add(failure.payment_id)
        self.metrics.record_error(failure.kind, failure.line)

    def _collect(self, source: OutcomeSource) -> None:
        early: list[DoneEntry] = []  # read before the sender noted their send
        deadline = None
        while True:
            if self.sending_done.is_set() and deadline is None:
                deadline = time.monotonic() + self.options.timeout
            if self.interrupt.requested and self.interrupt.first_at is not None:
                cut = self.interrupt.first_at + self.interrupt.grace_s
                deadline = cut if deadline is None else min(deadline, cut)
            if self.interrupt.stop_waiting.is_set() or self.stop.is_set():
                return
            with self.ledger.lock:
                all_in = len(self.ledger.outcomes) >= len(self.ledger.intended)
            if self.sending_done.is_set() and all_in and not early:
                return
            if deadline is not None and time.monotonic() >= deadline:
                return
            read, failures = source.read()
            for failure in failures:
                self._failure(failure)
            # Another generator's payments of the same run are not this one's to count.
            early = self._outcomes([entry for entry in early + read
                                    if self.options.mine(entry.seq)])
            if source.ended:  # after the outcomes read with its end: they are not lost
                return

    def _wait_for_operations(self, operations: OperationLoad) -> None:
        """Until every planned operation is answered, or the timeout passed the last one's
        intended time (or the user's Ctrl-C cut the wait short)."""
        outcomes_in_us = now_us()
        timeout_us = int(self.options.timeout * 1e6)
        while operations.pending():
            if self.interrupt.stop_waiting.is_set():
                return
            first = self.interrupt.first_at
            if first is not None and time.monotonic() >= first + self.interrupt.grace_s:
                return
            if now_us() >= max(outcomes_in_us, operations.latest_due_us) + timeout_us:
                return
            operations.wait_for_change(0.2)

    # ---------------------------------------------------------------- progress

    def _snapshot(self) -> Tick:
        metrics = self.metrics
        now = now_us()
        elapsed = (now - metrics.started_us) / 1e6
        with metrics.lock:
            second = metrics.seconds.get(int(elapsed) - 1)
            approved = sum(n for (status, _), n in metrics.reasons.items()
                           if status == "approved")
            sent, completed, dropped = metrics.sent, metrics.completed, metrics.dropped
            errors = sum(metrics.errors.values())
        profile = self.plan.profile
        p50, p99 = metrics.rolling_ms(now, (50.0, 99.0))
        return Tick(
            elapsed_s=elapsed, sent=sent, completed=completed, dropped=dropped,
            scheduled=self.plan.count,
            target_rate=profile.rate_at(elapsed) if profile else None,
            current_rate=float(second.sent) if second else 0.0,
            approved=approved, declined=completed - approved,
            rolling_p99_ms=p99, rolling_p50_ms=p50, errors=errors,
            **self._operation_counts(),
        )

    def _operation_counts(self) -> dict[str, int]:
        ops = self.metrics.operations if self.metrics else None
        if ops is None:
            return {}
        with ops.lock:
            return {"operations": sum(ops.scheduled.values()),
                    "operations_answered": sum(ops.answered.values())}

    def _tick(self, on_tick: Callable[[Tick], None]) -> None:
        while not self.stop.wait(TICK_S):
            on_tick(self._snapshot())


def tick_end(offset_s: float) -> float:
    """The end of the scheduler's tick that ``offset_s`` falls in (offset_s itself when it
    is on a tick's end): when the scheduler wakes to send the payment due at ``offset_s``."""
    # Less a hair: 0.003 / 0.001 is 3.0000000000000004 in floats, and must stay in tick 3.
    return math.ceil(offset_s / SEND_TICK_S - 1e-9) * SEND_TICK_S


def record_line(payment: GeneratedPayment, offset_s: float) -> str:
    """One line of a --record file: a fake payment and when it was meant to be sent."""
    card = payment.card
    return json.dumps({
        "seq": payment.seq, "offset_s": round(offset_s, 6),
        "card": {"number": card.number, "exp_month": card.exp_month,
                 "exp_year": card.exp_year, "cvv": card.cvv},
        "amount": payment.amount, "currency": payment.currency,
        "merchant": {"id": payment.merchant.id, "name": payment.merchant.name,
                     "mcc": payment.merchant.mcc, "country": payment.merchant.country},
        "expected": payment.expected,
    })

