"""A run's measurements as one generator hands them to another: every counter and every HDR
histogram (encoded, as report.json carries them), so that the generators of a distributed
run merge into exactly the figures one generator would have measured. Counts add and
histograms merge; nothing is averaged."""

from __future__ import annotations

from collections import Counter

import msgspec
from hdrh.histogram import HdrHistogram

from paysim.load.metrics import OperationMetrics, RunMetrics, Second, new_histogram


class SecondWire(msgspec.Struct, frozen=True):
    index: int
    sent: int
    completed: int
    approved: int
    declined: int
    reasons: dict[str, int]
    latency: str


class OperationsWire(msgspec.Struct, frozen=True):
    scheduled: dict[str, int]
    answered: dict[str, int]
    latency: dict[str, str]
    codes: list[tuple[str, str, int]]  # kind, reason code, count
    amounts: list[tuple[str, str, str, int]]  # kind, reason code, currency, minor units
    invalid: list[tuple[str, bool, int]]  # kind, refused, count
    last_answer_us: int | None


class MetricsWire(msgspec.Struct, frozen=True):
    started_us: int
    sent: int
    completed: int
    dropped: int
    last_send_us: int
    end_to_end: str
    stages: dict[str, str]
    send_delay: str
    reasons: list[tuple[str, str, int]]  # status, reason code, count
    approved_amounts: dict[str, int]
    seconds: list[SecondWire]
    operations: OperationsWire | None = None
    seconds_from: int = 0  # ``seconds`` holds every second of the run from this one on


def _encode(histogram: HdrHistogram) -> str:
    return histogram.encode().decode("ascii")


def _decoded(text: str) -> HdrHistogram:
    histogram = new_histogram()
    histogram.decode_and_add(text.encode("ascii"))
    return histogram


def to_wire(metrics: RunMetrics, seconds_from: int = 0) -> MetricsWire:
    """Everything ``metrics`` holds; of its timeline, the seconds from ``seconds_from`` on."""
    with metrics.lock:
        operations = metrics.operations
        return MetricsWire(
            started_us=metrics.started_us, sent=metrics.sent, completed=metrics.completed,
            dropped=metrics.dropped, last_send_us=metrics.last_send_us,
            end_to_end=_encode(metrics.end_to_end),
            stages={name: _encode(h) for name, h in metrics.stages.items()},
            send_delay=_encode(metrics.send_delay),
            reasons=[(status, code, n) for (status, code), n in metrics.reasons.items()],
            approved_amounts=dict(metrics.approved_amounts),
            seconds=[SecondWire(index, s.sent, s.completed, s.approved, s.declined,
                                dict(s.reasons), _encode(s.latency))
                     for index, s in sorted(metrics.seconds.items()) if index >= seconds_from],
            operations=None if operations is None else _operations_wire(operations),
            seconds_from=seconds_from)


def _operations_wire(operations: OperationMetrics) -> OperationsWire:
    with operations.lock:
        return OperationsWire(
            scheduled=dict(operations.scheduled), answered=dict(operations.answered),
            latency={kind: _encode(h) for kind, h in operations.latency.items()},
            codes=[(kind, code, n) for (kind, code), n in operations.codes.items()],
            amounts=[(kind, code, currency, amount)
                     for (kind, code), by_currency in operations.amounts.items()
                     for currency, amount in by_currency.items()],
            invalid=[(kind, refused, n) for (kind, refused), n in operations.invalid.items()],
            last_answer_us=operations.last_answer_us)


def merge(wires: list[MetricsWire], started_us: int) -> RunMetrics:
    """One RunMetrics holding every generator's measurements, from the run's common start."""
    merged = RunMetrics(started_us)
    for wire in wires:
        _add(merged, wire)
    return merged


def _add(metrics: RunMetrics, wire: MetricsWire) -> None:
    metrics.sent += wire.sent
    metrics.completed += wire.completed
    metrics.dropped += wire.dropped
    metrics.last_send_us = max(metrics.last_send_us, wire.last_send_us)
    metrics.end_to_end.add(_decoded(wire.end_to_end))
    for name, text in wire.stages.items():
        metrics.stages.setdefault(name, new_histogram()).add(_decoded(text))
    metrics.send_delay.add(_decoded(wire.send_delay))
    for status, code, n in wire.reasons:
        metrics.reasons[(status, code)] += n
    metrics.approved_amounts.update(wire.approved_amounts)
    # Seconds count from each generator's start: the run's common one, so index i is the
    # same second of wall-clock time for every generator.
    shift = (wire.started_us - metrics.started_us) // 1_000_000
    for sec in wire.seconds:
        second = metrics.seconds.setdefault(sec.index + shift, Second())
        second.sent += sec.sent
        second.completed += sec.completed
        second.approved += sec.approved
        second.declined += sec.declined
        second.reasons.update(sec.reasons)
        second.latency.add(_decoded(sec.latency))
    if wire.operations is not None:
        if metrics.operations is None:
            metrics.operations = OperationMetrics()
        _add_operations(metrics.operations, wire.operations)


def _add_operations(operations: OperationMetrics, wire: OperationsWire) -> None:
    operations.scheduled.update(wire.scheduled)
    operations.answered.update(wire.answered)
    for kind, text in wire.latency.items():
        operations.latency.setdefault(kind, new_histogram()).add(_decoded(text))
    for kind, code, n in wire.codes:
        operations.codes[(kind, code)] += n
    for kind, code, currency, amount in wire.amounts:
        operations.amounts.setdefault((kind, code), Counter())[currency] += amount
    for kind, refused, n in wire.invalid:
        operations.invalid[(kind, refused)] += n
    if wire.last_answer_us is not None:
        operations.last_answer_us = max(operations.last_answer_us or 0, wire.last_answer_us)


encode_wire = msgspec.json.Encoder().encode
decode_wire = msgspec.json.Decoder(MetricsWire).decode
