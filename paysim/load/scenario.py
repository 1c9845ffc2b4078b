"""Scenario files (scenarios/*.toml): population, mix, issuer behaviour, load profile,
thresholds. Every mistake is one line naming the file, the key and what was expected."""

from __future__ import annotations

import tomllib
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from paysim.domain import decisions
from paysim.domain.lifecycle import DISPUTE_REASONS
from paysim.infra.config import finite_number
from paysim.infra.errors import ConfigError
from paysim.load.generator import COUNTRIES, NETWORKS, Mix, PopulationSpec
from paysim.load.lifecycle import Delay, LifecycleSpec
from paysim.load.schedule import (
    MAX_RATE,
    MAX_SCHEDULED,
    Profile,
    Stage,
    parse_duration,
    scheduled_count,
)
from paysim.load.thresholds import Threshold, parse_threshold

THRESHOLD_METRICS = (
    {f"{prefix}{name}" for prefix in ("", "authorizer_", "processor_", "notifier_",
                                      "send_delay_")
     for name in ("p50_ms", "p90_ms", "p99_ms", "p999_ms", "max_ms", "min_ms", "mean_ms")}
    | {f"reason_{code.lower()}_ratio" for code in decisions.REASONS}
    | {"approved_ratio", "declined_ratio", "lost", "dropped", "sent", "completed",
       "achieved_rate", "throughput", "errors"}
)


@dataclass(frozen=True)
class IssuerSpec:
    decline_rate: float = 0.02
    fault_rate: float = 0.005
    added_latency_ms: float = 0.0
    outages_s: tuple[tuple[float, float], ...] = ()  # (start, end) seconds into the run


@dataclass(frozen=True)
class Scenario:
    name: str
    description: str
    path: Path
    seed: int | None
    population: PopulationSpec
    mix: Mix
    issuer: IssuerSpec
    profile: Profile | None  # None: a burst of `count`
    count: int | None
    thresholds: tuple[Threshold, ...]
    lifecycle: LifecycleSpec | None = None  # None: no [lifecycle] table, payments only


class _Reader:
    """Typed access to a TOML table that reports the full key path of any mistake."""

    def __init__(self, path: Path, table: dict[str, Any], prefix: str = "") -> None:
        self.path, self.table, self.prefix = path, table, prefix

    def fail(self, key: str, expected: str, got: Any) -> ConfigError:
        return ConfigError(f"{self.path}: {self.prefix}{key}: expected {expected}, got {got!r}")

    def check_keys(self, allowed: set[str]) -> None:
        for key in self.table:
            if key not in allowed:
                raise self.fail(key, f"one of {', '.join(sorted(allowed))}", key)

    def get(self, key: str, parse: Callable[[Any], Any], expected: str, default: Any) -> Any:
        if key not in self.table:
            return default
        try:
            return parse(self.table[key])
        except (TypeError, ValueError):
            raise self.fail(key, expected, self.table[key]) from None

    def sub(self, key: str) -> _Reader:
        value = self.table.get(key, {})
        if not isinstance(value, dict):
            raise self.fail(key, "a table", value)
        return _Reader(self.path, value, f"{self.prefix}{key}.")

    def items(self, key: str) -> list[_Reader]:
        value = self.table.get(key, [])
        if not isinstance(value, list) or not all(isinstance(v, dict) for v in value):
            raise self.fail(key, "a list of tables", value)
        return [_Reader(self.path, v, f"{self.prefix}{key}[{i}].") for i, v in enumerate(value)]


def _number(low: float, high: float | None = None) -> Callable[[Any], float]:
    def parse(raw: Any) -> float:
        if not isinstance(raw, int | float):  # a TOML number, not text
            raise ValueError
        value = finite_number(raw)
        if value < low or (high is not None and value > high):
            raise ValueError
        return value

    return parse


def _whole(low: int, high: int | None = None) -> Callable[[Any], int]:
    def parse(raw: Any) -> int:
        if isinstance(raw, bool) or not isinstance(raw, int) or raw < low:
            raise ValueError
        if high is not None and raw > high:
            raise ValueError
        return raw

    return parse


def _duration(raw: Any) -> float:
    if isinstance(raw, bool):
        raise ValueError
    seconds = parse_duration(str(raw))
    if seconds < 0:
        raise ValueError
    return seconds


def _text(raw: Any) -> str:
    if not isinstance(raw, str):
        raise ValueError
    return raw


def _weights(known: set[str], what: str) -> Callable[[Any], tuple[tuple[str, float], ...]]:
    def parse(raw: Any) -> tuple[tuple[str, float], ...]:
        if not isinstance(raw, dict) or not raw:
            raise ValueError
        pairs = []
        for name, weight in raw.items():
            if name not in known or not isinstance(weight, int | float):
                raise ValueError
            pairs.append((name, finite_number(weight)))
        total = sum(w for _, w in pairs)
        # Finite weights can still add up to inf (two of 1e308).
        if any(w < 0 for _, w in pairs) or not 0 < total < float("inf"):
            raise ValueError
        return tuple(pairs)

    return parse


RATIO = "a number from 0 to 1"
RATE = f"payments per second from 0 to {MAX_RATE:,}"
DURATION = "a duration like 30s, 2m or 1h30m"


def load_scenario(path: str | Path) -> Scenario:
    path = Path(path)
    try:
        data = tomllib.loads(path.read_text())
    except FileNotFoundError:
        raise ConfigError(f"scenario file {path} does not exist") from None
    except (OSError, UnicodeDecodeError) as exc:
        raise ConfigError(f"scenario file {path} cannot be read: {exc}") from None
    except tomllib.TOMLDecodeError as exc:
        raise ConfigError(f"{path}: not valid TOML: {exc}") from None
    top = _Reader(path, data)
    top.check_keys({"name", "description", "seed", "population", "mix", "issuer", "load",
                    "thresholds", "lifecycle"})

    pop = top.sub("population")
    pop.check_keys({"cardholders", "merchants", "countries", "networks", "amount_scale"})
    default = PopulationSpec()
    population = PopulationSpec(
        cardholders=pop.get("cardholders", _whole(1), "a whole number >= 1",
                            default.cardholders),
        merchants=pop.get("merchants", _whole(1), "a whole number >= 1", default.merchants),
        countries=pop.get("countries", _weights(set(COUNTRIES), "country"),
                          f"a table of weights by country ({', '.join(COUNTRIES)})",
                          default.countries),
        networks=pop.get("networks", _weights(set(NETWORKS), "network"),
                         f"a table of weights by network ({', '.join(NETWORKS)})",
                         default.networks),
        amount_scale=pop.get("amount_scale", _number(0.001), "a number > 0", 1.0),
    )

    mix_table = top.sub("mix")
    mix_table.check_keys({"bad_card_share", "test_card_share"})
    mix = Mix(mix_table.get("bad_card_share", _number(0, 1), RATIO, Mix().bad_card_share),
              mix_table.get("test_card_share", _number(0, 1), RATIO, Mix().test_card_share))
    if mix.bad_card_share + mix.test_card_share > 1:
        raise mix_table.fail("test_card_share", "bad_card_share + test_card_share <= 1",
                             mix.test_card_share)

    iss = top.sub("issuer")
    iss.check_keys({"decline_rate", "fault_rate", "added_latency_ms", "outages"})
    outages = []
    for window in iss.items("outages"):
        window.check_keys({"start", "end"})
        start = window.get("start", _duration, DURATION, None)
        end = window.get("end", _duration, DURATION, None)
        if start is None or end is None:
            raise window.fail("start" if start is None else "end", DURATION, None)
        if end <= start:
            raise window.fail("end", f"a time after start ({start:g} s)", window.table["end"])
        outages.append((start, end))
    issuer = IssuerSpec(
        decline_rate=iss.get("decline_rate", _number(0, 1), RATIO, IssuerSpec.decline_rate),
        fault_rate=iss.get("fault_rate", _number(0, 1), RATIO, IssuerSpec.fault_rate),
        added_latency_ms=iss.get("added_latency_ms", _number(0, 60_000),
                                 "milliseconds from 0 to 60000", 0.0),
        outages_s=tuple(outages),
    )

    profile, count = _load_profile(top.sub("load"))

    thresholds = []
    for entry in top.items("thresholds"):
        entry.check_keys({"expr", "window"})
        expression = entry.get("expr", _text, "a threshold expression", None)
        if expression is None:
            raise entry.fail("expr", "a threshold expression like 'p99_ms < 250'", None)
        window = entry.get("window", _duration, DURATION, None)
        try:
            thresholds.append(parse_threshold(
                expression, int(window) if window else None, THRESHOLD_METRICS))
        except ValueError as exc:
            raise ConfigError(f"{path}: {entry.prefix}expr: expected {exc}") from None

    return Scenario(
        name=top.get("name", _text, "a string", path.stem),
        description=top.get("description", _text, "a string", ""),
        path=path, seed=top.get("seed", _whole(0), "a whole number >= 0", None),
        population=population, mix=mix, issuer=issuer, profile=profile, count=count,
        thresholds=tuple(thresholds),
        lifecycle=_lifecycle(top.sub("lifecycle")) if "lifecycle" in top.table else None,
    )


def _load_profile(load: _Reader) -> tuple[Profile | None, int | None]:
    load.check_keys({"rate", "duration", "count", "start_rate", "stages"})
    rate = load.get("rate", _number(0.001, MAX_RATE),
                    f"payments per second from 0.001 to {MAX_RATE:,}", None)
    duration = load.get("duration", _duration, DURATION, None)
    count = load.get("count", _whole(1, MAX_SCHEDULED),
                     f"a whole number from 1 to {MAX_SCHEDULED:,}", None)
    stages = []
    for stage in load.items("stages"):
        stage.check_keys({"duration", "target"})
        length = stage.get("duration", _duration, DURATION, None)
        target = stage.get("target", _number(0, MAX_RATE), RATE, None)
        if length is None or target is None or length <= 0:
            raise stage.fail("duration" if length is None or length <= 0 else "target",
                             DURATION if length is None or length <= 0 else RATE,
                             stage.table.get("duration" if length is None else "target"))
        stages.append(Stage(length, target))
    if stages:
        if rate is not None or duration is not None:
            raise load.fail("stages", "either stages or rate and duration, not both", "both")
        start = load.get("start_rate", _number(0, MAX_RATE), RATE, 0.0)
        return _bounded(load, Profile(tuple(stages), start_rate=start)), None
    if rate is not None:
        if duration is None and count is None:
            raise load.fail("duration", f"{DURATION} (or count) with rate", None)
        length = duration if duration is not None else count / rate
        return _bounded(load, Profile.constant(rate, length)), None
    return None, count


def _bounded(load: _Reader, profile: Profile) -> Profile:
    try:
        scheduled_count(profile)
    except ValueError as exc:
        raise ConfigError(f"{load.path}: {load.prefix.rstrip('.')}: {exc}") from None
    return profile


MAX_DELAY_S = 3600.0  # a run waits for its follow-ups: seconds to minutes, not days
DELAY = ('a duration up to 1h like 2s, or a table { min = "1s", max = "5s" } (uniform) or '
         '{ mean = "2s", max = "30s" } (exponential)')


def _delay(raw: Any) -> Delay:
    def seconds(value: Any) -> float:
        length = _duration(value)
        if length > MAX_DELAY_S:
            raise ValueError
        return length

    if not isinstance(raw, dict):
        return Delay.fixed(seconds(raw))
    if set(raw) == {"min", "max"}:
        low, high = seconds(raw["min"]), seconds(raw["max"])
        if high < low:
            raise ValueError
        return Delay(low, high)
    if set(raw) in ({"mean"}, {"mean", "max"}):
        mean = seconds(raw["mean"])
        return Delay(0.0, seconds(raw.get("max", min(MAX_DELAY_S, 10 * mean))), mean)
    raise ValueError


def _run_duration(table: _Reader, name: str) -> float | None:
    """An optional setting the run gives the services in place of theirs (hold TTL,
    settlement window): from 1 s to an hour, as a run waits for it."""
    seconds = table.get(name, _duration, "a duration from 1s to 1h", None)
    if seconds is not None and not 1 <= seconds <= MAX_DELAY_S:
        raise table.fail(name, "a duration from 1s to 1h", table.table[name])
    return seconds


def _lifecycle(table: _Reader) -> LifecycleSpec:
    """The [lifecycle] table: every share a ratio, every delay bounded, the shares that
    split one whole adding up to at most 1."""
    fields = {
        "manual_capture_share": RATIO, "partial_capture_share": RATIO,
        "split_capture_share": RATIO, "increment_share": RATIO, "increment_fraction": RATIO,
        "void_share": RATIO, "expire_share": RATIO, "refund_share": RATIO,
        "partial_refund_share": RATIO, "reversal_share": RATIO, "reversal_race_share": RATIO,
        "dispute_share": RATIO, "dispute_won_share": RATIO, "partial_approval_share": RATIO,
        "invalid_share": RATIO,
    }
    delays = ("capture_delay", "increment_delay", "void_delay", "refund_delay",
              "reversal_delay", "dispute_delay", "resolve_delay")
    table.check_keys({*fields, *delays, "split_parts", "hold_ttl", "settlement_window",
                      "dispute_reasons"})
    default = LifecycleSpec()
    values: dict[str, Any] = {
        name: table.get(name, _number(0, 1), RATIO, getattr(default, name)) for name in fields}
    values.update({name: table.get(name, _delay, DELAY, getattr(default, name))
                   for name in delays})
    values["split_parts"] = table.get("split_parts", _whole(2, 10), "a whole number from 2 to 10",
                                      default.split_parts)
    values["dispute_reasons"] = table.get(
        "dispute_reasons", _weights(set(DISPUTE_REASONS), "reason code"),
        f"a table of weights by reason code ({', '.join(DISPUTE_REASONS)})",
        default.dispute_reasons)
    values["hold_ttl_s"] = hold_ttl = _run_duration(table, "hold_ttl")
    values["settlement_window_s"] = _run_duration(table, "settlement_window")
    spec = LifecycleSpec(**values)
    for first, second in (("void_share", "expire_share"), ("refund_share", "dispute_share")):
        if getattr(spec, first) + getattr(spec, second) > 1:
            raise table.fail(second, f"{first} + {second} <= 1", getattr(spec, second))
    if spec.expire_share > 0 and hold_ttl is None:
        raise table.fail("hold_ttl", "a duration (holds left to expire need one)", None)
    return spec
