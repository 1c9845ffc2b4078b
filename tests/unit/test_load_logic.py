"""Schedules, thresholds, scenario files and replay files: pure logic, no services."""

from __future__ import annotations

import itertools
import json
import re
from pathlib import Path

import pytest

from paysim.infra.config import load_settings
from paysim.infra.errors import ConfigError
from paysim.load.plan import SendRequest, plan_run
from paysim.load.replay import read_paysim_csv, read_record
from paysim.load.runner import SEND_TICK_S, tick_end
from paysim.load.scenario import load_scenario
from paysim.load.schedule import Profile, Stage, parse_duration
from paysim.load.thresholds import WorstWindow, evaluate, parse_threshold

SCENARIOS = sorted((Path(__file__).resolve().parents[2] / "scenarios").glob("*.toml"))


def test_a_constant_rate_is_evenly_spaced() -> None:
    offsets = list(Profile.constant(250, 4).offsets())
    assert len(offsets) == 1000
    assert all(abs((b - a) - 0.004) < 1e-9 for a, b in itertools.pairwise(offsets))
    assert offsets[-1] == pytest.approx(4.0)


def test_a_linear_ramp_follows_the_integral_of_its_rate() -> None:
    profile = Profile((Stage(10, 100),), start_rate=0)
    offsets = list(profile.offsets())
    assert len(offsets) == profile.expected_count() == 500
    # By time t the ramp has sent 5 t^2 payments (rate 10 t): 125 by 5 s.
    assert sum(1 for o in offsets if o <= 5.0) == 125
    assert all(a <= b for a, b in itertools.pairwise(offsets))


def test_stages_chain_and_their_counts_add_up() -> None:
    profile = Profile((Stage(5, 50), Stage(5, 150), Stage(10, 150), Stage(5, 0)), start_rate=50)
    offsets = list(profile.offsets())
    assert len(offsets) == profile.expected_count() == 250 + 500 + 1500 + 375
    assert offsets[-1] <= profile.duration_s
    assert profile.rate_at(7.5) == pytest.approx(100)
    assert profile.mean_rate() == pytest.approx(2625 / 25)


@pytest.mark.parametrize(("text", "seconds"), [("90s", 90), ("2m", 120), ("1h30m", 5400),
                                                ("500ms", 0.5), ("12", 12), ("1m30s", 90)])
def test_durations(text: str, seconds: float) -> None:
    assert parse_duration(text) == seconds


@pytest.mark.parametrize("text", ["", "abc", "10x", "s", "5m3"])
def test_bad_durations(text: str) -> None:
    with pytest.raises(ValueError, match="a duration like"):
        parse_duration(text)


def test_thresholds_compare_and_scale_with_the_target() -> None:
    rate = parse_threshold("achieved_rate >= 0.98 * target")
    assert rate.holds({"achieved_rate": 99.0, "target": 100.0}) == (True, 99.0)
    assert rate.holds({"achieved_rate": 97.0, "target": 100.0}) == (False, 97.0)
    assert parse_threshold("lost == 0").holds({"lost": 1.0}) == (False, 1.0)
    assert parse_threshold("p99_ms < 250").holds({}) == (False, None)


def test_a_windowed_threshold_reports_its_worst_failing_window() -> None:
    upper = parse_threshold("p99_ms < 100", window_s=10)
    windows = [(0, {"p99_ms": 150.0}), (10, {"p99_ms": 400.0}), (20, {"p99_ms": 90.0})]
    result = evaluate(upper, {"p99_ms": 80.0}, windows)
    assert not result.passed
    assert result.failed_windows == 2
    assert result.worst_window == WorstWindow(start_s=10, actual=400.0)
    lower = parse_threshold("approved_ratio > 0.9", window_s=10)
    windows = [(0, {"approved_ratio": 0.8}), (10, {"approved_ratio": 0.2}),
               (20, {"approved_ratio": 0.95})]
    assert evaluate(lower, {"approved_ratio": 0.95}, windows).worst_window == WorstWindow(
        start_s=10, actual=0.2)


@pytest.mark.parametrize("text", ["p99 < 250", "p99_ms << 1", "p99_ms < abc", "< 5",
                                  "p99_ms < 5 * rate"])
def test_malformed_thresholds(text: str) -> None:
    with pytest.raises(ValueError):
        parse_threshold(text, known={"p99_ms"})


@pytest.mark.parametrize("path", SCENARIOS, ids=[p.stem for p in SCENARIOS])
def test_each_shipped_scenario_parses(path: Path) -> None:
    scenario = load_scenario(path)
    assert scenario.name == path.stem
    assert scenario.thresholds
    assert scenario.profile is not None and scenario.profile.expected_count() > 0


def test_the_shipped_scenarios_are_the_ones_documented() -> None:
    assert {p.stem for p in SCENARIOS} >= {"smoke", "steady", "black-friday", "issuer-outage"}


@pytest.mark.parametrize(("text", "fragment"), [
    ("[load]\nrate = 'fast'\nduration = '10s'\n", "load.rate: expected payments per second"),
    ("[load]\nrate = 10\nduration = 'soon'\n", "load.duration: expected a duration"),
    ("[load]\nrate = 10\n", "load.duration: expected"),
    ("[load]\nstages = [{ duration = '5s', target = -1 }]\n", "load.stages[0].target"),
    ("[load]\nstages = [{ duration = 'x', target = 5 }]\n", "load.stages[0].duration"),
    ("[mix]\nbad_card_share = 2\n", "mix.bad_card_share: expected a number from 0 to 1"),
    ("[issuer]\noutages = [{ start = '20s', end = '10s' }]\n", "issuer.outages[0].end"),
    ("[population]\ncountries = { XX = 1 }\n", "population.countries: expected a table"),
    ("[[thresholds]]\nexpr = 'p99 < 5'\n", "thresholds[0].expr: expected"),
    ("[[thresholds]]\nexpr = 'nosuch_ms < 5'\n", "thresholds[0].expr: expected a known metric"),
    ("speed = 3\n", "speed: expected one of"),
    ("[load\n", "not valid TOML"),
])
def test_malformed_scenarios_are_one_line_naming_the_key(tmp_path: Path, text: str,
                                                         fragment: str) -> None:
    path = tmp_path / "bad.toml"
    path.write_text(text)
    with pytest.raises(ConfigError) as error:
        load_scenario(path)
    message = str(error.value)
    assert str(path) in message and fragment in message
    assert "\n" not in message


def test_a_missing_scenario_file(tmp_path: Path) -> None:
    with pytest.raises(ConfigError, match="does not exist"):
        load_scenario(tmp_path / "nope.toml")


def test_bad_record_files_are_one_line(tmp_path: Path) -> None:
    path = tmp_path / "r.jsonl"
    path.write_text('{"paysim_record": 1}\n{"seq": 0}\n')
    with pytest.raises(ConfigError, match=r"r.jsonl:2: not a recorded payment"):
        read_record(path)
    path.write_text('{"hello": 1}\n')
    with pytest.raises(ConfigError, match="not a paysim record file"):
        read_record(path)


def test_paysim_csv_accounts_map_to_stable_cards(tmp_path: Path) -> None:
    path = tmp_path / "p.csv"
    path.write_text("step,type,amount,nameOrig,nameDest\n1,PAYMENT,12.34,C1,M1\n"
                    "2,TRANSFER,100.00,C1,M2\n3,CASH_OUT,5.00,C2,M1\n")
    payments = read_paysim_csv(path)
    assert [p.amount for p in payments] == [1234, 10000, 500]
    assert payments[0].card == payments[1].card != payments[2].card
    assert payments[1].merchant.mcc == "4829"
    path.write_text("step,type,amount\n1,PAYMENT,1\n")
    with pytest.raises(ConfigError, match="no column 'nameOrig'"):
        read_paysim_csv(path)


# nan passes every range comparison (each is False) and inf passes any open-ended one: both
# reached the schedule's integer arithmetic and ended as "internal error" (issue 17).
@pytest.mark.parametrize(("text", "fragment"), [
    ("[load]\nrate = nan\nduration = '10s'\n", "load.rate: expected"),
    ("[load]\nrate = inf\nduration = '10s'\n", "load.rate: expected"),
    ("[load]\nrate = 10\nduration = 'inf'\n", "load.duration: expected"),
    ("[load]\nrate = 10\nduration = 'nan'\n", "load.duration: expected"),
    ("[load]\nrate = 10\nduration = 1e400\n", "load.duration: expected"),
    ("[load]\nstart_rate = nan\nstages = [{ duration = '5s', target = 5 }]\n",
     "load.start_rate: expected"),
    ("[load]\nstages = [{ duration = '5s', target = inf }]\n", "load.stages[0].target"),
    ("[load]\nstages = [{ duration = 'inf', target = 5 }]\n", "load.stages[0].duration"),
    ("[population]\namount_scale = nan\n", "population.amount_scale: expected"),
    ("[population]\namount_scale = inf\n", "population.amount_scale: expected"),
    ("[population]\ncountries = { US = inf }\n", "population.countries: expected"),
    ("[population]\nnetworks = { visa = nan }\n", "population.networks: expected"),
    ("[mix]\nbad_card_share = nan\n", "mix.bad_card_share: expected"),
    ("[issuer]\ndecline_rate = nan\n", "issuer.decline_rate: expected"),
    ("[issuer]\nfault_rate = nan\n", "issuer.fault_rate: expected"),
    ("[issuer]\nadded_latency_ms = nan\n", "issuer.added_latency_ms: expected"),
    ("[issuer]\noutages = [{ start = '10s', end = 'inf' }]\n", "issuer.outages[0].end"),
    ("[issuer]\noutages = [{ start = 'nan', end = '20s' }]\n", "issuer.outages[0].start"),
    ("[[thresholds]]\nexpr = 'p99_ms < 5'\nwindow = 'inf'\n", "thresholds[0].window"),
])
def test_nan_and_inf_in_a_scenario_are_one_line_naming_the_key(tmp_path: Path, text: str,
                                                               fragment: str) -> None:
    test_malformed_scenarios_are_one_line_naming_the_key(tmp_path, text, fragment)


@pytest.mark.parametrize("text", ["nan", "inf", "-inf", "infinity", "1e400", "1e400s"])
def test_durations_are_finite(text: str) -> None:
    with pytest.raises(ValueError, match="a duration like"):
        parse_duration(text)


@pytest.mark.parametrize(("text", "fragment"), [
    ("[load]\nrate = 2000000\nduration = '10s'\n", "load.rate: expected payments per second"),
    ("[load]\nstages = [{ duration = '5s', target = 1e9 }]\n", "load.stages[0].target"),
    ("[load]\ncount = 1000000000\n", "load.count: expected a whole number from 1 to"),
    # A ramp to the highest rate over an hour: 1.8 billion payments.
    ("[load]\nstages = [{ duration = '1h', target = 1000000 }]\n",
     "load: the profile would schedule 1,800,000,000 payments; at most 100,000,000"),
    ("[load]\nrate = 1000\nduration = '1000000s'\n",
     "load: the profile would schedule 1,000,000,000 payments; at most 100,000,000"),
])
def test_a_scenario_within_the_rate_and_count_bounds(tmp_path: Path, text: str,
                                                     fragment: str) -> None:
    test_malformed_scenarios_are_one_line_naming_the_key(tmp_path, text, fragment)


@pytest.mark.parametrize(("request_", "fragment"), [
    (SendRequest(stages=("10s:inf",)), "--stage: expected"),
    (SendRequest(stages=("10s:nan",)), "--stage: expected"),
    (SendRequest(stages=("inf:10",)), "--stage: expected"),
    (SendRequest(stages=("nan:10",)), "--stage: expected"),
    (SendRequest(stages=("10s:1000000000",)), "--stage: expected"),
    (SendRequest(rate=10, duration="inf"), "--duration: expected"),
    (SendRequest(rate=10, duration="nan"), "--duration: expected"),
    (SendRequest(stages=("1h:1000000",)),
     "--stage: the profile would schedule 1,800,000,000 payments; at most 100,000,000"),
    (SendRequest(rate=1_000_000, duration="1000s"),
     "--rate: the profile would schedule 1,000,000,000 payments; at most 100,000,000"),
])
def test_flags_of_a_profile_out_of_bounds_are_one_line(request_: SendRequest,
                                                       fragment: str) -> None:
    with pytest.raises(ConfigError) as error:
        plan_run(load_settings(env={}), request_)
    assert fragment in str(error.value)
    assert "\n" not in str(error.value)


@pytest.mark.parametrize(("flags", "fragment"), [
    ({"via": "http"}, "a lifecycle mix is sent straight onto Kafka: drop --via http"),
    ({"replay": "run.jsonl"}, "--replay sends recorded payments only"),
])
def test_a_lifecycle_mix_goes_onto_kafka_and_not_with_a_replay(tmp_path: Path, flags: dict,
                                                              fragment: str) -> None:
    path = tmp_path / "mix.toml"
    path.write_text("[lifecycle]\nrefund_share = 0.1\nhold_ttl = '5s'\n")
    with pytest.raises(ConfigError, match=re.escape(fragment)):
        plan_run(load_settings(env={}), SendRequest(scenario=str(path), **flags))
    planned = plan_run(load_settings(env={}), SendRequest(scenario=str(path)))
    assert planned.plan.lifecycle is not None and planned.plan.lifecycle.refund_share == 0.1
    assert planned.options.issuer is not None and planned.options.issuer.hold_ttl_s == 5.0


def test_count_caps_what_a_long_profile_schedules() -> None:
    planned = plan_run(load_settings(env={}), SendRequest(rate=1_000_000, duration="1000s",
                                                          count=1000, seed=1))
    assert planned.plan.count == 1000


def test_replay_offsets_must_be_finite(tmp_path: Path) -> None:
    path = tmp_path / "r.jsonl"
    path.write_text('{"paysim_record": 1}\n' + json.dumps({
        "seq": 0, "amount": 100, "currency": "USD", "offset_s": "nan",
        "card": {"number": "4242424242424242", "exp_month": 1, "exp_year": 2099, "cvv": "123"},
        "merchant": {"id": "m", "name": "M", "mcc": "5999", "country": "US"}}) + "\n")
    with pytest.raises(ConfigError, match=r"r.jsonl:2: not a recorded payment"):
        read_record(path)


def test_the_scheduler_wakes_for_a_payment_never_before_it_is_due_and_within_a_tick() -> None:
    """tick_end: the payments of one tick share one wake, at the tick's end; a payment on a
    tick's end (in spite of float error) is sent at it, not a tick later."""
    offsets = [n / 2000 for n in range(4000)] + [n / 7919 for n in range(8000)]
    for offset in offsets:
        wake = tick_end(offset)
        assert offset - 1e-12 <= wake <= offset + SEND_TICK_S
    assert tick_end(0.003) == pytest.approx(0.003) and tick_end(0.0) == 0.0
    # 2,000/s: two payments a wake (the first, due at 0, wakes alone).
    assert len({round(tick_end(n / 2000), 9) for n in range(2000)}) == 1001
