"""Thresholds judged on a run as it goes (load/live_verdicts.py), and a distributed run's
generators' measurements merged live (load/distributed_live.py): pure logic on RunMetrics
filled by hand, Redis faked."""

from __future__ import annotations

from paysim.domain.messages import REQUESTED, now_us
from paysim.load import metrics_wire
from paysim.load.distributed_live import LiveHandIn, LiveMerge, live_key
from paysim.load.live_verdicts import LiveJudge, live_values
from paysim.load.metrics import STAGE_STAMPS, RunMetrics
from paysim.load.report import RunInfo, build_report
from paysim.load.runner import Tick
from paysim.load.thresholds import Threshold, parse_threshold
from paysim.pipeline import store
from paysim.pipeline.store import DoneEntry
from tests.unit.fakes import FakeRedis

S = 1_000_000  # µs


def pay(metrics: RunMetrics, n: int, second: int, latency_ms: float,
        status: str = "approved") -> None:
    """``n`` payments intended at ``second`` of the run, each done ``latency_ms`` later."""
    for i in range(n):
        intended = metrics.started_us + second * S + i
        metrics.record_send(intended, intended + 100)
        done = intended + int(latency_ms * 1000)
        stamps = {REQUESTED: intended, **{stamp: done for stamp in STAGE_STAMPS.values()}}
        metrics.record_outcome(DoneEntry(f"p{second}-{i}", status,
                                         "00" if status == "approved" else "51", 100, "USD", i,
                                         stamps), intended)


def judged(thresholds: list[Threshold], metrics: RunMetrics,
           at_second: float, target: float | None = 10.0) -> dict[str, store.LiveVerdict]:
    verdicts = LiveJudge(thresholds).verdicts(metrics, metrics.started_us + int(at_second * S),
                                              target)
    return {v.expression: v for v in verdicts}


def test_each_threshold_is_passing_failing_or_pending_on_the_run_so_far() -> None:
    metrics = RunMetrics(1_000 * S)
    thresholds = [parse_threshold(text) for text in
                  ("p99_ms < 250", "p99_ms < 5", "sent >= 1000", "lost == 0",
                   "achieved_rate >= 0.9 * target", "declined_ratio < 0.5")]
    before = judged(thresholds, metrics, 0.5)
    assert before["p99_ms < 250"].state == store.PENDING  # nothing completed yet
    assert before["p99_ms < 250"].actual is None
    pay(metrics, 10, 0, 20.0)
    pay(metrics, 10, 1, 30.0)
    now = judged(thresholds, metrics, 2.0)
    assert now["p99_ms < 250"].state == store.PASSING
    assert 29.0 < (now["p99_ms < 250"].actual or 0) < 31.0
    assert now["p99_ms < 5"].state == store.FAILING
    assert now["sent >= 1000"].state == store.FAILING  # so far: 20 sent
    assert now["sent >= 1000"].actual == 20.0 and now["sent >= 1000"].bound == 1000.0
    assert now["lost == 0"].state == store.PENDING  # only the run's end knows
    assert now["achieved_rate >= 0.9 * target"].bound == 9.0
    assert now["declined_ratio < 0.5"].state == store.PASSING
    pay(metrics, 30, 2, 30.0, status="declined")
    assert judged(thresholds, metrics, 3.0)["declined_ratio < 0.5"].state == store.FAILING


def test_a_windowed_threshold_is_judged_on_its_windows_once_they_are_over() -> None:
    metrics = RunMetrics(1_000 * S)
    window = parse_threshold("p99_ms < 100", window_s=2)
    judge = LiveJudge([window])
    for second in range(4):
        pay(metrics, 5, second, 20.0)
    pay(metrics, 5, 4, 500.0)  # a slow second in the third window, [4, 5]
    pay(metrics, 5, 5, 20.0)

    def state(at_second: int) -> store.LiveVerdict:
        [verdict] = judge.verdicts(metrics, metrics.started_us + at_second * S, None)
        return verdict

    # The whole run's p99 is over 100 ms from the slow second on: failing at once.
    assert state(5).state == store.FAILING and state(5).failed_windows == 0
    later = state(8)  # window [4, 5] is over (two seconds behind)
    assert later.state == store.FAILING and later.failed_windows == 1
    assert later.expression == "p99_ms < 100 @ 2s"


def test_at_the_runs_end_the_live_verdicts_are_the_reports() -> None:
    """One implementation: on the finished run the live judge and the report agree."""
    metrics = RunMetrics(1_000 * S)
    for second in range(6):
        pay(metrics, 8, second, 40.0 if second != 3 else 400.0)
    pay(metrics, 4, 5, 50.0, status="declined")
    texts = [("p99_ms < 250", None), ("p50_ms < 100", None), ("authorizer_p99_ms < 1000", None),
             ("send_delay_p99_ms < 1", None), ("sent >= 50", None),
             ("approved_ratio > 0.95", None), ("p99_ms < 250", 2), ("completed > 7", 1)]
    thresholds = [parse_threshold(text, window) for text, window in texts]
    info = RunInfo(run_id="r", seed=1, via="kafka", mode="open", scenario=None,
                   target_rate=10.0, stages=[], scheduled=52, lost_ids=[],
                   finished_us=metrics.started_us + 6 * S)
    report = build_report(metrics, info, thresholds)
    live = LiveJudge(thresholds).verdicts(metrics, metrics.started_us + 9 * S, 10.0)
    assert [v.state == store.PASSING for v in live] == [t.passed for t in report.thresholds]
    assert [v.failed_windows for v in live] == [t.failed_windows for t in report.thresholds]
    assert {v.state for v in live} == {store.PASSING, store.FAILING}


def test_only_the_histograms_the_thresholds_name_are_read() -> None:
    metrics = RunMetrics(1_000 * S)
    pay(metrics, 3, 0, 10.0)
    values = live_values(metrics, metrics.started_us + S, None, {"p99_ms", "sent"})
    assert "p99_ms" in values and "mean_ms" in values
    assert not any(name.startswith(("authorizer_", "send_delay_")) for name in values)
    stage = live_values(metrics, metrics.started_us + S, None, {"processor_p50_ms"})
    assert "processor_p50_ms" in stage and "p99_ms" not in stage


def tick(sent: int) -> Tick:
    return Tick(elapsed_s=1.0, sent=sent, completed=0, dropped=0, scheduled=100,
                target_rate=None, current_rate=0.0, approved=0, declined=0,
                rolling_p99_ms=None)


def test_the_coordinator_merges_its_generators_live_measurements() -> None:
    client = FakeRedis()
    start = now_us() - 20 * S
    shares = [RunMetrics(start), RunMetrics(start)]
    for second in range(20):
        pay(shares[0], 2, second, 10.0)
        pay(shares[1], 3, second, 30.0)
    for k, metrics in enumerate(shares):
        LiveHandIn(client, "run-1", k, every_s=0)(metrics)  # type: ignore[arg-type]
    wire = metrics_wire.decode_wire(client.strings[live_key("run-1", 0)])
    # The timeline cut to its last seconds; the whole-run figures all there.
    assert 12 <= wire.seconds_from <= 14 and all(s.index >= wire.seconds_from
                                                   for s in wire.seconds)
    assert wire.sent == 40
    merge = LiveMerge("run-1", 2, start, every_s=0)
    merged = merge.refresh(client)  # type: ignore[arg-type]
    assert merged is not None
    assert (merged.sent, merged.completed) == (100, 100)
    assert merged.end_to_end.get_total_count() == 100
    # Every second either generator still carries is whole: 5 payments in each.
    assert all(merged.seconds[i].sent == 5 for i in range(wire.seconds_from, 20))
    # The rolling p99 over the merged timeline is the slower generator's 30 ms.
    p99 = merge.tick(tick(100)).rolling_p99_ms
    assert p99 is not None and 29.0 < p99 < 31.0
    # A later hand-in (one more second) keeps the seconds already merged.
    pay(shares[0], 2, 20, 10.0)
    LiveHandIn(client, "run-1", 0, every_s=0)(shares[0])  # type: ignore[arg-type]
    merged = merge.refresh(client)  # type: ignore[arg-type]
    assert merged is not None and merged.sent == 102
    assert merged.seconds[20].sent == 2 and merged.seconds[wire.seconds_from].sent == 5
