"""Bring your own service: `run-all --external processor` leaves the processor's consumer
group to examples/external-processor (no paysim import), `ps` shows it with its lag, and
`paysim conformance processor` passes it, and fails each deliberately broken variant on the
case that variant breaks. `paysim conformance authorizer` and `notifier` pass paysim's own
services, started apart in the groups run-all left external, and fail a broken one on the
cases it breaks."""

from __future__ import annotations

import json
import subprocess
import sys
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

import pytest
from confluent_kafka import Producer

from paysim.infra.config import Settings, settings_env
from paysim.infra.kafka import client_config
from paysim.infra.waiting import wait_until
from paysim.ops.conformance_cases import processor_suite
from tests.helpers import free_port, run_paysim, settings_for
from tests.integration.pipeline_helpers import (
    child_env,
    injected,
    notified,
    notified_so_far,
    reason_counts,
    running_pipeline,
    send,
    start_send,
)

EXAMPLE = Path(__file__).resolve().parents[2] / "examples" / "external-processor" / "processor.py"
TOPICS = {f"topics.{name}": f"byos.{name}" for name in (
    "requested", "authorized", "results", "notifications", "dlq", "operations", "events",
    "settlements")}
CONFORMANCE_TIMEOUT = "90"  # a new member waits out the group's last one (6 s) at most


@pytest.fixture(scope="module")
def external(local_stack, service_flags, tmp_path_factory) -> Iterator[Settings]:
    """run-all --external processor on topics of its own (so the group's offsets and the
    topics' records are this module's alone), with no random issuer declines."""
    settings = settings_for({**service_flags, **TOPICS, "http.port": free_port(),
                             "issuer.decline_rate": 0, "issuer.fault_rate": 0,
                             "services.dir": str(tmp_path_factory.mktemp("byos"))})
    with running_pipeline(settings, "--external", "processor"):
        yield settings


def start_example(settings: Settings, broken: str | None = None) -> subprocess.Popen:
    """The example processor as its README runs it: plain environment variables."""
    env = {"PATH": "/usr/bin:/bin", "KAFKA_BOOTSTRAP": settings.kafka_bootstrap,
           "REDIS_URL": settings.redis_url, "AUTHORIZED_TOPIC": settings.topics.authorized,
           "RESULTS_TOPIC": settings.topics.results, "DLQ_TOPIC": settings.topics.dlq,
           **({"BROKEN": broken} if broken else {})}
    return subprocess.Popen([sys.executable, str(EXAMPLE)], env=env,
                            stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True)


@contextmanager
def stopped_after(child: subprocess.Popen, timeout: float) -> Iterator[subprocess.Popen]:
    """``child`` for the block, stopped cleanly (SIGTERM) after it: it must exit 0."""
    try:
        yield child
    finally:
        child.terminate()
        _, err = child.communicate(timeout=timeout)
    assert child.returncode == 0, err


@contextmanager
def example(settings: Settings, broken: str | None = None) -> Iterator[subprocess.Popen]:
    """The example running for the block, stopped cleanly after it."""
    with stopped_after(start_example(settings, broken), 30) as child:
        yield child


def conformance(settings: Settings, *args: str) -> subprocess.CompletedProcess[str]:
    return run_paysim("conformance", "processor", "--timeout", CONFORMANCE_TIMEOUT, *args,
                      env=settings_env(settings), timeout=300)


def processor_row(settings: Settings) -> dict:
    result = run_paysim("ps", "--json", env=settings_env(settings))
    assert result.returncode == 0, result.stdout + result.stderr
    rows = {row["name"]: row for row in json.loads(result.stdout)["services"]}
    assert "processor-0" not in rows  # paysim's own is not started
    return rows["processor"]


def test_ps_shows_the_external_processor_with_its_consumer_groups_lag(external) -> None:
    before = processor_row(external)
    assert before["state"] == "external"
    producer = Producer(client_config(external))
    payments = [record for case in processor_suite("conformance-ps").cases[:5]
                for record in case.sends]
    for record in payments:
        producer.produce(external.topics.authorized, key=record.key, value=record.value)
    assert producer.flush(30) == 0
    assert processor_row(external)["lag"] == before["lag"] + len(payments)
    with example(external):
        assert wait_until(lambda: processor_row(external)["lag"] == 0, timeout=90,
                          interval=0.5)


def test_the_example_passes_conformance(external) -> None:
    with example(external):
        result = conformance(external)
    assert result.returncode == 0, result.stdout + result.stderr
    assert "23 passed, 0 failed" in result.stdout
    assert "FAIL" not in result.stdout


def test_send_runs_through_the_external_processor(external) -> None:
    """`send` takes the external processor as provided, and the example decides its load as
    paysim's would (no random declines in this run's issuer: the injected outcomes)."""
    with example(external):
        report = send(external, "--count", "200", "--seed", "7", "--timeout", "60")
    assert reason_counts(report) == dict(injected(7, 200, external))


def test_the_example_killed_mid_run_decides_each_payment_once(external) -> None:
    """SIGKILL in the middle of a run, then started again: every payment still gets the
    outcome it was injected with, once (a batch decided twice would spend twice, and cards
    near their limits would be declined)."""
    before = notified_so_far(external)
    child, stdout, stderr = start_send(external, "--count", "600", "--rate", "150",
                                       "--seed", "9", "--timeout", "90")
    first = start_example(external)
    try:
        assert wait_until(lambda: notified(external) >= before + 150, timeout=90)
    finally:
        first.kill()
        first.wait(30)
    try:
        with example(external):
            child.wait(timeout=180)
    finally:
        child.kill()
    assert child.returncode == 0, stderr.text()
    report = json.loads(stdout.text())
    assert report["outcomes"]["lost"] == 0
    assert report["outcomes"]["completed"] == 600
    assert reason_counts(report) == dict(injected(9, 600, external))


# Each breakage and the cases it must fail, no more and no fewer.
BROKEN = {
    "no-dlq": {"dead letter: not JSON", "dead letter: schema version 2",
               "dead letter: a field missing (token)", "dead letter: unknown currency ABC",
               "dead letter: amount 0"},
    "no-transactions": {"outputs only in committed transactions"},
    "double-spend": {"redelivered record: one decision, spent once"},
}


@pytest.mark.parametrize("broken", sorted(BROKEN))
def test_a_broken_example_fails_the_case_it_breaks(external, broken: str) -> None:
    with example(external, broken):
        result = conformance(external, "--json")
    assert result.returncode == 1, result.stdout + result.stderr
    cases = json.loads(result.stdout)["cases"]
    assert len(cases) == 23
    assert {case["name"] for case in cases if not case["passed"]} == BROKEN[broken]


def test_paysims_own_processor_passes_conformance(external) -> None:
    """The cases hold paysim to what they hold others to: its own processor, in the group
    left external, passes them all."""
    own = subprocess.Popen([sys.executable, "-m", "paysim", "service", "processor"],
                           env={**child_env(external), "PATH": "/usr/bin:/bin"},
                           stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True)
    try:
        result = conformance(external, "--json")
    finally:
        own.terminate()
        _, err = own.communicate(timeout=60)
    assert result.returncode == 0, result.stdout + err
    assert all(case["passed"] for case in json.loads(result.stdout)["cases"])


BROKEN_SERVICE = Path(__file__).resolve().parent / "broken_service.py"
# A breakage of paysim's own service per suite, and the cases it must fail, no more, no fewer.
BROKEN_OWN = {
    "authorizer": ("skip-cvv", {"N7 CVV check failed (4 digits on a Visa)",
                                "N7 CVV check failed (3 digits on an Amex)",
                                "the first failing check decides (14, 54, N7, 13 in that order)"}),
    "notifier": ("random-event-id", {"redelivered record: one event id"}),
}
SUITE_SIZES = {"authorizer": 24, "notifier": 14}  # cases, with "consumed" and "transactions"


@pytest.fixture(scope="module")
def edges_external(local_stack, service_flags, tmp_path_factory) -> Iterator[Settings]:
    """run-all --external authorizer --external notifier, on topics of their own."""
    topics = {name: value.replace("byos.", "byos-edges.") for name, value in TOPICS.items()}
    settings = settings_for({**service_flags, **topics, "http.port": free_port(),
                             "services.dir": str(tmp_path_factory.mktemp("byos-edges"))})
    with running_pipeline(settings, "--external", "authorizer", "--external", "notifier"):
        yield settings


@contextmanager
def own_service(settings: Settings, service: str,
                breakage: str | None = None) -> Iterator[subprocess.Popen]:
    """paysim's own ``service`` (broken by ``breakage``) in the group left external, stopped
    cleanly after the block."""
    command = ([str(BROKEN_SERVICE), service, breakage] if breakage
               else ["-m", "paysim", "service", service])
    child = subprocess.Popen([sys.executable, *command],
                             env={**child_env(settings), "PATH": "/usr/bin:/bin",
                                  "PYTHONPATH": str(BROKEN_SERVICE.parents[2])},
                             stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True)
    with stopped_after(child, 60):
        yield child


@pytest.mark.parametrize("service", ["authorizer", "notifier"])
def test_paysims_own_service_passes_its_conformance_suite(edges_external, service) -> None:
    with own_service(edges_external, service):
        result = run_paysim("conformance", service, "--timeout", CONFORMANCE_TIMEOUT,
                            env=settings_env(edges_external), timeout=300)
    assert result.returncode == 0, result.stdout + result.stderr
    size = SUITE_SIZES[service]
    assert f"{size} passed, 0 failed" in result.stdout, result.stdout
    assert "FAIL" not in result.stdout


@pytest.mark.parametrize("service", ["authorizer", "notifier"])
def test_a_broken_service_fails_the_cases_it_breaks(edges_external, service) -> None:
    breakage, failing = BROKEN_OWN[service]
    with own_service(edges_external, service, breakage):
        result = run_paysim("conformance", service, "--timeout", CONFORMANCE_TIMEOUT, "--json",
                            env=settings_env(edges_external), timeout=300)
    assert result.returncode == 1, result.stdout + result.stderr
    cases = json.loads(result.stdout)["cases"]
    assert len(cases) == SUITE_SIZES[service]
    assert {case["name"] for case in cases if not case["passed"]} == failing


def test_conformance_with_redis_unreachable_is_one_line(external) -> None:
    result = conformance(external, "--redis-url", "redis://127.0.0.1:1/0")
    assert result.returncode == 1
    assert result.stderr.strip() == ("paysim: error: Redis at redis://127.0.0.1:1/0 does not "
                                     "answer: Error 111 connecting to 127.0.0.1:1. Connection "
                                     "refused.")
