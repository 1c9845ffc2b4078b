"""From what the user asked (flags, a scenario, a replay file) to what the runner does."""

from __future__ import annotations

import random
from dataclasses import dataclass, field, replace
from pathlib import Path

from paysim.domain.decisions import IssuerRates
from paysim.infra.config import Settings, finite_number
from paysim.infra.errors import ConfigError
from paysim.load.generator import Mix, PaymentStream, PopulationSpec, build_population
from paysim.load.lifecycle import LifecycleSpec
from paysim.load.replay import read_paysim_csv, read_record
from paysim.load.runner import Plan, RunOptions, Target
from paysim.load.scenario import THRESHOLD_METRICS, IssuerSpec, Scenario, load_scenario
from paysim.load.schedule import (
    MAX_RATE,
    Profile,
    Stage,
    parse_duration,
    scheduled_count,
)
from paysim.load.targets.choice import TargetFlags, open_target
from paysim.load.thresholds import Threshold, parse_threshold

DEFAULT_COUNT = 1000
PAYSIM_CSV_RATE = 100.0


@dataclass(frozen=True)
class SendRequest:
    """`paysim send`'s flags; None means not given (a scenario's value, else the default)."""

    count: int | None = None
    rate: float | None = None
    duration: str | None = None
    stages: tuple[str, ...] = ()  # "30s:100" each
    start_rate: float | None = None
    scenario: str | None = None
    replay: str | None = None
    record: str | None = None
    seed: int | None = None
    bad_share: float | None = None
    test_card_share: float | None = None
    thresholds: tuple[str, ...] = ()  # "p99_ms < 250" or "p99_ms < 250 @ 10s"
    via: str = "kafka"
    timeout: float = 120.0
    callback_url: str | None = None
    # Follow-up operations (captures, refunds...); None: the scenario's [lifecycle], if any.
    lifecycle: LifecycleSpec | None = None
    # Another system to drive instead of paysim's pipeline (load/targets).
    target: TargetFlags = field(default_factory=TargetFlags)


@dataclass(frozen=True)
class PlannedRun:
    """A request worked out: what the runner sends and how, and the thresholds to check."""

    plan: Plan
    options: RunOptions
    thresholds: tuple[Threshold, ...]
    target: Target | None = None  # None: paysim's own pipeline


def _stage(text: str) -> Stage:
    length, sep, rate = text.partition(":")
    try:
        stage = Stage(parse_duration(length), finite_number(rate))
    except ValueError:
        stage = None
    if (not sep or stage is None or stage.duration_s <= 0
            or not 0 <= stage.target_rate <= MAX_RATE):
        raise ConfigError(f"--stage: expected DURATION:RATE such as 30s:100 (a rate from 0 to "
                          f"{MAX_RATE:,}/s), got {text!r}")
    return stage


def _threshold(text: str) -> Threshold:
    expression, _, window = text.partition("@")
    try:
        seconds = int(parse_duration(window)) if window.strip() else None
        return parse_threshold(expression, seconds, THRESHOLD_METRICS)
    except ValueError as exc:
        raise ConfigError(f"--threshold: expected {exc}") from None


def _profile(request: SendRequest, scenario: Scenario | None) -> tuple[Profile | None, int]:
    if request.stages:
        profile = Profile(tuple(_stage(s) for s in request.stages),
                          start_rate=request.start_rate or 0.0)
        source = "--stage"
    elif request.rate is not None:
        source = "--rate"
        if request.duration is not None:
            try:
                length = parse_duration(request.duration)
            except ValueError as exc:
                raise ConfigError(f"--duration: expected {exc}") from None
        elif request.count is not None:
            length = request.count / request.rate
        else:
            raise ConfigError("--rate needs --duration or --count")
        profile = Profile.constant(request.rate, length)
    elif request.count is not None:
        return None, request.count
    elif scenario is not None:
        if scenario.profile is not None:
            return scenario.profile, scenario.profile.expected_count()
        return None, scenario.count or DEFAULT_COUNT
    else:
        return None, DEFAULT_COUNT
    try:
        count = scheduled_count(profile, request.count)
    except ValueError as exc:
        raise ConfigError(f"{source}: {exc}") from None
    if count < 1:
        raise ConfigError("the load profile schedules no payment: raise --rate or --duration")
    return profile, count


def plan_run(settings: Settings, request: SendRequest) -> PlannedRun:
    """The run a request asks for. A mistake in the request is a ConfigError here, before
    anything is sent. The seed used is the plan's: the flag's, else the scenario's, else a
    random one."""
    scenario = load_scenario(request.scenario) if request.scenario else None
    seed = request.seed if request.seed is not None else (
        scenario.seed if scenario and scenario.seed is not None else random.randrange(2**31))
    thresholds = (*(scenario.thresholds if scenario else ()),
                  *(_threshold(t) for t in request.thresholds))
    options = RunOptions(
        via=request.via, timeout=request.timeout, callback_url=request.callback_url,
        record=Path(request.record) if request.record else None,
    )
    lifecycle = request.lifecycle or (scenario.lifecycle if scenario else None)
    target = open_target(request.target, request.timeout)
    if target is not None:
        # Another system: the run's issuer and lifecycle mix are paysim's pipeline's.
        _check_target_request(request, lifecycle)
        options = replace(options, via=f"target-{target.info.kind}")
    elif lifecycle is not None and request.via != "kafka":
        raise ConfigError("a lifecycle mix is sent straight onto Kafka: drop --via "
                          f"{request.via}")
    if target is None and (scenario or lifecycle):
        # The run's issuer: the scenario's, else the services' (with the mix's hold TTL).
        spec = scenario.issuer if scenario else IssuerSpec(settings.issuer.decline_rate,
                                                           settings.issuer.fault_rate)
        options = replace(options, issuer=IssuerRates(
            spec.decline_rate, spec.fault_rate, (), spec.added_latency_ms,
            lifecycle.hold_ttl_s if lifecycle else None,
            lifecycle.settlement_window_s if lifecycle else None),
            issuer_outages_s=spec.outages_s)
    if request.replay:
        if lifecycle is not None:
            raise ConfigError("--replay sends recorded payments only: a lifecycle mix needs "
                              "a generated run")
        return PlannedRun(_replay_plan(request, seed, scenario), options, thresholds, target)

    mix = scenario.mix if scenario else Mix()
    if request.bad_share is not None or request.test_card_share is not None:
        mix = Mix(mix.bad_card_share if request.bad_share is None else request.bad_share,
                  mix.test_card_share if request.test_card_share is None
                  else request.test_card_share)
    if mix.bad_card_share + mix.test_card_share > 1:
        raise ConfigError("--bad-share and --test-card-share add up to more than 1")
    # The profile's bounds are checked before the population, which takes Faker a while.
    profile, count = _profile(request, scenario)
    population = build_population(seed, scenario.population if scenario else PopulationSpec())
    stream = PaymentStream(population, seed, mix, settings.issuer.max_amount_usd)
    plan = Plan(payments=iter(stream), count=count,
                offsets=profile.offsets() if profile else None, profile=profile,
                scenario=scenario.name if scenario else None, seed=seed, lifecycle=lifecycle)
    return PlannedRun(plan, options, thresholds, target)


def _check_target_request(request: SendRequest, lifecycle: LifecycleSpec | None) -> None:
    """What only paysim's pipeline can do, refused when another system is the target. A
    scenario's [issuer] is left aside without a word: it shapes paysim's processor."""
    if request.via != "kafka":
        raise ConfigError("--via chooses paysim's own ingress: drop it with a target")
    if request.callback_url is not None:
        raise ConfigError("--callback-url is paysim's webhook: drop it with a target")
    if lifecycle is not None:
        raise ConfigError("a lifecycle mix (captures, refunds...) needs paysim's ledger: "
                          "use a scenario without [lifecycle] with a target")


def _replay_plan(request: SendRequest, seed: int, scenario: Scenario | None) -> Plan:
    path = Path(request.replay)
    if path.suffix.lower() == ".csv":
        payments = read_paysim_csv(path)
        offsets = None
        rate = request.rate or PAYSIM_CSV_RATE
    else:
        _, recorded = read_record(path)
        if not recorded:
            raise ConfigError(f"{path}: no payments recorded")
        payments = [payment for payment, _ in recorded]
        offsets = [offset for _, offset in recorded]
        rate = request.rate
    count = len(payments) if request.count is None else min(request.count, len(payments))
    if rate is not None:  # the same payments at a constant rate
        profile = Profile.constant(rate, count / rate)
        offsets = profile.offsets()
    else:
        profile = Profile.constant(count / max(offsets[-1], 1e-3), max(offsets[-1], 1e-3))
        offsets = iter(offsets)
    return Plan(payments=iter(payments), count=count, offsets=offsets, profile=profile,
                scenario=scenario.name if scenario else f"replay of {path.name}", seed=seed)
