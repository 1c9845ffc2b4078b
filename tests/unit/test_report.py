"""The run summary over a hand-made RunResult: reasons, amounts, latencies, missing payments."""

from __future__ import annotations

import pytest

from paysim import report
from paysim.report import LatencyStats, ReasonRow, percentile, summarize
from paysim.sending import RunResult, SentPayment

B = 1_700_000_000_000_000  # a base time in Unix microseconds


# ---------------------------------------------------------------------------- percentile


@pytest.mark.parametrize(("values", "pct", "expected"), [
    ([1.0], 50, 1.0),
    ([1.0], 99, 1.0),
    ([1.0, 2.0, 3.0, 4.0], 50, 2.0),
    ([1.0, 2.0, 3.0, 4.0], 75, 3.0),
    ([1.0, 2.0, 3.0, 4.0], 76, 4.0),
    ([1.0, 2.0, 3.0, 4.0], 0, 1.0),
    ([1.0, 2.0, 3.0, 4.0], 100, 4.0),
    ([15.0, 20.0, 35.0, 40.0, 50.0], 30, 20.0),  # the textbook example
    ([15.0, 20.0, 35.0, 40.0, 50.0], 40, 20.0),
    ([15.0, 20.0, 35.0, 40.0, 50.0], 50, 35.0),
    ([15.0, 20.0, 35.0, 40.0, 50.0], 100, 50.0),
    ([float(i) for i in range(1, 11)], 90, 9.0),
    ([float(i) for i in range(1, 11)], 91, 10.0),
    ([float(i) for i in range(1, 101)], 50, 50.0),
    ([float(i) for i in range(1, 101)], 90, 90.0),
    ([float(i) for i in range(1, 101)], 99, 99.0),
    ([float(i) for i in range(1, 101)], 1, 1.0),
])
def test_percentile_nearest_rank(values: list[float], pct: float, expected: float) -> None:
    assert percentile(values, pct) == expected


@pytest.mark.parametrize(("count", "pct"), [(100, 7), (1000, 99.9), (2000, 99.9)])
def test_percentile_rank_is_exact_when_pct_times_n_is_whole(count: int, pct: float) -> None:
    # The nearest rank is ceil(pct/100 * n); when that product is a whole number k, the k-th
    # value. 7 % of 100 values is the 7th; 99.9 % of 1000 values is the 999th.
    values = [float(i) for i in range(1, count + 1)]
    rank = round(pct * count / 100)
    assert percentile(values, pct) == values[rank - 1]


def test_latency_stats_in_ms() -> None:
    stats = report.latency_stats([3000, 1000, 2000, 4000, 1500])
    assert stats == LatencyStats(count=5, p50_ms=2.0, p90_ms=4.0, p99_ms=4.0, max_ms=4.0)
    assert report.latency_stats([]) is None
    assert report.latency_stats([1234]) == LatencyStats(1, 1.23, 1.23, 1.23, 1.23)


# ---------------------------------------------------------------------------- summarize


def done(payment_id: str, status: str, code: str, amount: int, currency: str,
         **stamps: int) -> dict[str, str]:
    """A done entry as `paysim send` reads it back from Redis: every value a string."""
    entry = {"payment_id": payment_id, "status": status, "reason_code": code,
             "amount": str(amount), "currency": currency, "seq": payment_id[1:]}
    entry.update({f"t_{stage}": str(B + at) for stage, at in stamps.items()})
    return entry


def sent(payment_id: str, expected: str | None, amount: int, currency: str) -> SentPayment:
    return SentPayment(payment_id, int(payment_id[1:]), expected, amount, currency)


@pytest.fixture
def result() -> RunResult:
    outcomes = {
        "p1": done("p1", "approved", "00", 12345, "USD",
                   requested=0, authorized=2000, processed=5000, notified=6000),
        "p2": done("p2", "approved", "00", 1000, "USD",
                   requested=0, authorized=1000, processed=4000, notified=10000),
        "p3": done("p3", "approved", "00", 500, "JPY",
                   requested=0, authorized=3000, processed=3500, notified=4500),
        "p4": done("p4", "declined", "51", 700, "USD",
                   requested=0, authorized=4000, processed=12000, notified=13000),
        # Declined by the authorizer: no processed stage.
        "p5": done("p5", "declined", "14", 800, "EUR",
                   requested=0, authorized=1500, notified=9500),
        # Declined at the HTTP edge: only its request time.
        "p7": done("p7", "declined", "13", 0, "USD", requested=0),
        # Not a payment of this run: ignored.
        "other": done("p99", "approved", "00", 99999, "GBP",
                      requested=0, authorized=1, processed=2, notified=3),
    }
    payments = [sent("p1", None, 12345, "USD"), sent("p2", None, 1000, "USD"),
                sent("p3", None, 500, "JPY"), sent("p4", "51", 700, "USD"),
                sent("p5", "14", 800, "EUR"), sent("p6", None, 42, "USD"),
                sent("p7", "13", 0, "USD"), sent("p8", None, 1, "USD")]
    return RunResult("run-test", payments, outcomes, started_us=B, finished_us=B + 2_000_000)


def test_counts_and_missing(result: RunResult) -> None:
    summary = summarize(result)
    assert summary.run_id == "run-test"
    assert summary.sent == 8
    assert summary.completed == 6
    assert summary.missing == ["p6", "p8"]


def test_reasons_counted_and_shared(result: RunResult) -> None:
    assert summarize(result).reasons == [
        ReasonRow("approved", "00", "approved", 3, 0.5),
        ReasonRow("declined", "13", "invalid amount", 1, 0.1667),
        ReasonRow("declined", "14", "invalid card number", 1, 0.1667),
        ReasonRow("declined", "51", "insufficient funds", 1, 0.1667),
    ]


def test_approved_amounts_per_currency_formatted(result: RunResult) -> None:
    amounts = summarize(result).approved_amounts
    assert amounts == {"JPY": "500 JPY", "USD": "133.45 USD"}
    assert list(amounts) == ["JPY", "USD"]


def test_elapsed_and_throughput(result: RunResult) -> None:
    summary = summarize(result)
    assert summary.elapsed_s == 2.0
    assert summary.throughput_per_s == 3.0


def test_latency_per_stage_in_ms(result: RunResult) -> None:
    stages = summarize(result).stages
    assert list(stages) == ["authorizer", "processor", "notifier"]
    # requested -> authorized: 2, 1, 3, 4, 1.5 ms
    assert stages["authorizer"] == LatencyStats(5, 2.0, 4.0, 4.0, 4.0)
    # authorized -> processed: 3, 3, 0.5, 8 ms
    assert stages["processor"] == LatencyStats(4, 3.0, 8.0, 8.0, 8.0)


def test_authorizer_declines_count_in_the_notifier_stage(result: RunResult) -> None:
    # processed -> notified: 1, 6, 1, 1 ms; and p5 authorized -> notified: 8 ms
    assert summarize(result).stages["notifier"] == LatencyStats(5, 1.0, 8.0, 8.0, 8.0)


def test_end_to_end(result: RunResult) -> None:
    # requested -> notified: 6, 10, 4.5, 13, 9.5 ms
    assert summarize(result).end_to_end == LatencyStats(5, 9.5, 13.0, 13.0, 13.0)


def test_only_authorizer_declines() -> None:
    outcomes = {
        f"p{i}": done(f"p{i}", "declined", "54", 100, "USD",
                      requested=0, authorized=1000, notified=1000 + 1000 * i)
        for i in range(1, 4)
    }
    payments = [sent(f"p{i}", "54", 100, "USD") for i in range(1, 4)]
    summary = summarize(RunResult("r", payments, outcomes, B, B + 1_000_000))
    assert set(summary.stages) == {"authorizer", "notifier"}
    assert summary.stages["notifier"] == LatencyStats(3, 2.0, 3.0, 3.0, 3.0)
    assert summary.approved_amounts == {}
    assert summary.reasons == [ReasonRow("declined", "54", "expired card", 3, 1.0)]


def test_nothing_came_back() -> None:
    payments = [sent("p1", None, 100, "USD"), sent("p2", None, 100, "USD")]
    summary = summarize(RunResult("r", payments, {}, B, B))
    assert summary.completed == 0
    assert summary.missing == ["p1", "p2"]
    assert summary.reasons == []
    assert summary.stages == {}
    assert summary.end_to_end is None
    assert summary.throughput_per_s == 0.0
    assert summary.as_dict()["missing"] == ["p1", "p2"]


def test_as_dict_is_plain_data(result: RunResult) -> None:
    data = summarize(result).as_dict()
    assert data["stages"]["notifier"] == {"count": 5, "p50_ms": 1.0, "p90_ms": 8.0,
                                          "p99_ms": 8.0, "max_ms": 8.0}
    assert data["reasons"][0] == {"status": "approved", "reason_code": "00",
                                  "reason_text": "approved", "count": 3, "share": 0.5}
