"""Distributed load generation, the pure parts: the shares of one schedule, and merging the
generators' measurements into the figures one generator would have made."""

from __future__ import annotations

import json
import random

import pytest
import redis

from paysim.domain.messages import AUTHORIZED, NOTIFIED, PROCESSED, REQUESTED
from paysim.infra.config import load_settings
from paysim.infra.errors import ConfigError
from paysim.load import distributed, metrics_wire
from paysim.load.distributed import merge_record, record_part, run_distributed
from paysim.load.metrics import OperationMetrics, RunMetrics
from paysim.load.plan import SendRequest
from paysim.load.report import RunInfo, build_report
from paysim.load.runner import RunOptions, share_size
from paysim.load.targets.choice import TargetFlags
from paysim.pipeline.store import DoneEntry

START = 1_800_000_000_000_000


@pytest.mark.parametrize(("count", "workers"), [(1, 1), (10, 3), (7, 7), (5, 8), (1000, 4)])
def test_the_shares_interleave_into_exactly_the_whole_schedule(count: int, workers: int) -> None:
    shares = [RunOptions(share=(k, workers)) for k in range(workers)]
    owners = [[k for k, options in enumerate(shares) if options.mine(i)] for i in range(count)]
    assert all(len(owner) == 1 for owner in owners)  # each payment sent by one generator
    assert [share_size(count, k, workers) for k in range(workers)] == [
        sum(1 for owner in owners if owner == [k]) for k in range(workers)]
    assert sum(options.share_of(count) for options in shares) == count


def entry(n: int, rng: random.Random) -> DoneEntry:
    sent = START + n * 10_000
    stamps = {REQUESTED: sent}
    for stage in (AUTHORIZED, PROCESSED, NOTIFIED):
        sent += rng.randint(200, 60_000)
        stamps[stage] = sent
    status = "approved" if n % 7 else "declined"
    return DoneEntry(f"p{n}", status, "00" if n % 7 else "05", 100 + n, "EUR", n, stamps)


def test_merged_generators_measure_what_one_generator_would() -> None:
    rng = random.Random(4)
    entries = [entry(n, rng) for n in range(3_000)]
    one = RunMetrics(START)
    parts = [RunMetrics(START), RunMetrics(START)]  # generators share the run's start
    for n, done in enumerate(entries):
        for metrics in (one, parts[n % 2]):
            metrics.record_send(done.stages[REQUESTED], done.stages[REQUESTED] + 50)
            metrics.record_outcome(done, done.stages[REQUESTED])
    one.operations, parts[0].operations = OperationMetrics(), OperationMetrics()
    for metrics in (one.operations, parts[0].operations):
        metrics.record_scheduled("capture")
        metrics.record_answer("capture", "00", 500, "EUR", START, START + 9_000)
        metrics.record_invalid("void", True)
    wires = [metrics_wire.decode_wire(metrics_wire.encode_wire(metrics_wire.to_wire(p)))
             for p in parts]
    merged = metrics_wire.merge(wires, START)
    info = RunInfo("r", 1, "kafka", "open", None, 100.0, [], 3_000, [], START + 40_000_000)
    a, b = build_report(one, info), build_report(merged, info)
    assert a.load == b.load and a.outcomes == b.outcomes and a.latency == b.latency
    assert a.lifecycle == b.lifecycle
    assert [(s.second, s.sent, s.completed) for s in a.timeline] == [
        (s.second, s.sent, s.completed) for s in b.timeline]


@pytest.mark.parametrize(("request_", "workers", "local", "fragment"), [
    (SendRequest(count=10), 0, None, "--workers: expected 1 to 64"),
    (SendRequest(count=10), 2, 3, "--local-workers from 0 to --workers"),
    (SendRequest(count=10, replay="run.jsonl"), 2, None, "drop --workers"),
    (SendRequest(count=10, target=TargetFlags(url="http://127.0.0.1:9/pay")), 2, None,
     "drop --workers"),
    (SendRequest(rate=float("nan"), count=10), 2, None, "--rate"),
])
def test_a_distributed_run_names_a_bad_request_before_it_starts(
        request_: SendRequest, workers: int, local: int | None, fragment: str) -> None:
    settings = load_settings({"redis.url": "redis://127.0.0.1:1/0"}, env={})
    with pytest.raises(ConfigError, match=fragment.replace("-", r"\-")):
        run_distributed(settings, request_, workers, local)


def test_the_record_parts_merge_into_one_file_in_intended_order(tmp_path) -> None:
    record = tmp_path / "run.jsonl"
    header = json.dumps({"paysim_record": 1, "run_id": "r", "seed": 1, "scenario": None})
    for share in (0, 1):  # share 2 ran on another host: its part is not here
        lines = [header] + [json.dumps({"seq": seq, "offset_s": seq / 100})
                            for seq in range(share, 9, 3)]
        record_part(record, share).write_text("\n".join(lines) + "\n")
    assert merge_record(record, 3) == [2]
    merged = record.read_text().splitlines()
    assert merged[0] == header
    assert [json.loads(line)["seq"] for line in merged[1:]] == [0, 1, 3, 4, 6, 7]
    assert not record_part(record, 0).exists() and not record_part(record, 1).exists()


def test_coordination_rides_out_a_redis_failover_and_gives_up_after_the_bound(
        monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(distributed, "RETRY_EVERY_S", 0)
    calls: list[int] = []

    def flaky() -> str:
        calls.append(1)
        if len(calls) <= 3:
            raise redis.ConnectionError("connection refused")  # the primary is down
        return "answered"

    assert distributed._riding_out(flaky) == "answered" and len(calls) == 4

    monkeypatch.setattr(distributed, "OUTAGE_S", 0)  # no outage is short enough now

    def down() -> str:
        raise redis.ConnectionError("connection refused")

    with pytest.raises(redis.ConnectionError):
        distributed._riding_out(down)
