"""Distributed load generation on the real broker and Redis: generators as processes sharing
one schedule, a generator joining from "another host" (`paysim worker`), and one killed
mid-run, reported with what it had sent."""

from __future__ import annotations

import itertools
import os
import signal
import threading
from itertools import islice
from pathlib import Path

import pytest

from paysim.infra.config import Settings
from paysim.infra.waiting import wait_until
from paysim.load import distributed
from paysim.load.distributed import Coordinated, run_distributed, run_worker
from paysim.load.plan import SendRequest
from paysim.load.replay import read_record
from paysim.load.schedule import Profile
from paysim.pipeline import store
from tests.integration.fault_helpers import generator_beat, started_runs
from tests.integration.test_lifecycle_load import assert_audit_clean


def test_a_distributed_run_publishes_its_merged_progress_and_verdicts_live(
        pipeline: Settings) -> None:
    """What the dashboard reads (store.read_run_progress) while `send --workers 2` runs: the
    generators' counts growing to the total, their rows, the merged rolling p99, and each
    threshold's verdict on the run so far."""
    request = SendRequest(rate=40, count=200, seed=73, timeout=60,
                          thresholds=("p99_ms < 5000", "sent >= 200"))
    done: list[Coordinated] = []
    runner = threading.Thread(target=lambda: done.append(
        run_distributed(pipeline, request, workers=2)), daemon=True)
    seen: list[store.RunProgress] = []
    client = store.connect(pipeline)
    try:
        runner.start()

        def finished() -> bool:
            seen.extend(run for run in store.read_run_progress(client) if run.generators)
            return any(run.finished for run in seen)

        assert wait_until(finished, timeout=90), seen[-1:] or "no progress published"
        runner.join(30)
    finally:
        client.close()
    [coordinated] = done
    ours = [run for run in seen if run.run_id == coordinated.report.run_id]
    assert ours, "the coordinator published nothing under its run's id"
    assert all(a.sent <= b.sent for a, b in itertools.pairwise(ours))
    under_way = [run for run in ours if 0 < run.sent < 200 and not run.finished]
    assert under_way, [run.sent for run in ours]
    last = ours[-1]
    assert last.finished and (last.scheduled, last.sent, last.completed) == (200, 200, 200)
    assert [(g.share, g.sent, g.alive) for g in last.generators] == [(0, 100, True),
                                                                      (1, 100, True)]
    assert any(run.rolling_p99_ms is not None for run in ours)
    assert last.reasons and sum(last.reasons.values()) == 200
    # The verdicts: p99 passing once measured; the total failing so far, then passing.
    assert [(v.expression, v.state) for v in last.verdicts] == [
        ("p99_ms < 5000", store.PASSING), ("sent >= 200", store.PASSING)]
    assert any(v.expression == "sent >= 200" and v.state == store.FAILING
               for run in under_way for v in run.verdicts)


def test_two_generators_send_one_schedule_with_one_merged_report(pipeline: Settings,
                                                                 tmp_path: Path) -> None:
    record = tmp_path / "run.jsonl"
    request = SendRequest(rate=100, count=300, seed=71, timeout=60, record=str(record))
    coordinated = run_distributed(pipeline, request, workers=2)

    report = coordinated.report
    assert coordinated.dead == []
    assert (report.load.scheduled, report.load.sent, report.outcomes.completed) == (300, 300,
                                                                                    300)
    assert report.outcomes.lost == 0 and report.latency.end_to_end.count == 300
    assert report.load.target_rate == 100.0
    rows = report.workers or []
    assert [(r.share, r.scheduled, r.sent, r.completed, r.status) for r in rows] == [
        (0, 150, 150, 150, "ok"), (1, 150, 150, 150, "ok")]
    assert len({r.pid for r in rows}) == 2 and all(r.rate_per_s > 0 for r in rows)
    # One run: the pipeline saw every payment once, under the run's one id.
    assert sum(s.sent for s in report.timeline) == 300
    assert_audit_clean(pipeline, report.run_id)
    # The merged record file is the one schedule: every payment once, at the intended times
    # one generator would have used (100/s: 10 ms apart).
    _, recorded = read_record(record)
    assert [payment.seq for payment, _ in recorded] == list(range(300))
    assert [round(offset, 6) for _, offset in recorded] == [
        round(offset, 6) for offset in islice(Profile.constant(100, 3).offsets(), 300)]
    assert coordinated.record_parts_away == []


def test_a_generator_on_another_host_joins_with_paysim_worker(pipeline: Settings,
                                                               tmp_path: Path) -> None:
    scenario = tmp_path / "small.toml"  # the joining host gets its text, not the path
    scenario.write_text('name = "small"\nseed = 9\n[load]\nrate = 50\ncount = 100\n')
    result: list[Coordinated] = []
    coordinator = threading.Thread(target=lambda: result.append(run_distributed(
        pipeline, SendRequest(scenario=str(scenario), timeout=60), workers=3, local=2)))
    coordinator.start()
    joined: list[tuple[str, int, int]] = []
    handed = run_worker(pipeline, wait_s=60,
                        on_joined=lambda *args: joined.append(args))
    coordinator.join(120)
    [coordinated] = result
    report = coordinated.report
    assert joined[0][0] == report.run_id and joined[0][2] == 3
    assert report.scenario == "small" and report.load.sent == 100
    assert report.outcomes.completed == 100 and report.outcomes.lost == 0
    assert handed.scheduled == len(range(joined[0][1], 100, 3)) == handed.metrics.sent
    assert sorted(r.status for r in report.workers or []) == ["ok"] * 3


def test_a_generator_killed_mid_run_is_reported_with_what_it_sent(pipeline: Settings) -> None:
    result: list[Coordinated] = []
    client = store.connect(pipeline)
    earlier = started_runs(client)  # the other tests' runs
    coordinator = threading.Thread(target=lambda: result.append(run_distributed(
        pipeline, SendRequest(rate=40, count=400, seed=5, timeout=30), workers=2)))
    coordinator.start()
    try:
        def victim() -> distributed.Beat | None:
            beat = generator_beat(client, 1, 2, earlier)
            return beat if beat is not None and beat.sent >= 20 else None

        assert wait_until(lambda: victim() is not None, timeout=60)
        beat = victim()
        assert beat is not None
        os.kill(beat.pid, signal.SIGKILL)
    finally:
        client.close()
    coordinator.join(120)
    [coordinated] = result
    report = coordinated.report
    assert coordinated.dead == [1]
    [alive, dead] = report.workers or []
    assert (alive.status, alive.sent) == ("ok", 200)
    assert dead.status == "dead" and 20 <= dead.sent < 200 and dead.scheduled == 200
    # Its unsent share is not silently lost: scheduled counts it, sent does not.
    assert report.load.scheduled == 400 and report.load.sent == 200


@pytest.fixture(autouse=True)
def _no_open_runs_left(pipeline: Settings):
    yield
    client = store.connect(pipeline)
    try:
        assert client.zcard(distributed.OPEN_RUNS) == 0
    finally:
        client.close()
