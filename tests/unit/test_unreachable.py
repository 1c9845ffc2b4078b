"""Every command that talks to Kafka or Redis fails with one line, in bounded time, naming what
it could not reach, when nothing answers there (no stack needed: the addresses are dead)."""

from __future__ import annotations

import time
from pathlib import Path

import pytest

from paysim.infra.config import load_settings
from paysim.ops import readiness
from tests.helpers import assert_one_line_error
from tests.unit.cli_runner import PaysimCli

DEAD_KAFKA = "127.0.0.1:1"
DEAD_REDIS = "redis://127.0.0.1:1/0"
KAFKA_TIMEOUT_S = 1  # PAYSIM_KAFKA_TIMEOUT: short, so each test takes seconds
# The commands run in this process (tests/unit/cli_runner.py); `run-all --detach` still starts
# its supervisor as a process of its own, and that child is what finds Kafka dead. What a
# command may take beyond the Kafka timeout: that child's interpreter start and imports, one
# Redis connection refused, a busy machine. A command that waits out librdkafka's own 30 s or
# more fails this.
SLACK_S = 10


@pytest.fixture
def dead_env(tmp_path: Path) -> dict[str, str]:
    """Both services at dead addresses, the Kafka timeout short, and private folders: no
    supervisor record or local stack of the developer's is seen or started."""
    return {"PAYSIM_KAFKA_BOOTSTRAP": DEAD_KAFKA, "PAYSIM_REDIS_URL": DEAD_REDIS,
            "PAYSIM_KAFKA_TIMEOUT": str(KAFKA_TIMEOUT_S),
            "PAYSIM_SERVICES_DIR": str(tmp_path / "services"),
            "PAYSIM_STACK_DIR": str(tmp_path / "stack"),
            "PAYSIM_SECRETS_FILE": str(tmp_path / "secrets.json")}


@pytest.mark.parametrize(
    ("args", "fragment"),
    [
        # audit checks Redis before it reads whole topics; the scan reads the topics first.
        (["audit"], f"Redis at {DEAD_REDIS}"),
        (["audit", "--run", "r1", "--json"], f"Redis at {DEAD_REDIS}"),
        (["audit", "--pci"], f"Kafka at {DEAD_KAFKA} did not answer in {KAFKA_TIMEOUT_S} s"),
        (["send", "--count", "1"], f"Redis at {DEAD_REDIS}"),
        (["status", "some-payment"], f"Redis at {DEAD_REDIS}"),
        (["ps"], f"Redis at {DEAD_REDIS}"),
        (["run-all", "--no-live"], f"Kafka at {DEAD_KAFKA}"),
        (["run-all", "--detach"], f"Kafka at {DEAD_KAFKA}"),
        (["topics", "ensure"], f"Kafka at {DEAD_KAFKA} did not answer in {KAFKA_TIMEOUT_S} s"),
        (["conformance", "processor"],
         f"Kafka at {DEAD_KAFKA} did not answer in {KAFKA_TIMEOUT_S} s"),
    ],
    ids=lambda value: " ".join(value) if isinstance(value, list) else None,
)
def test_dead_kafka_and_redis_give_one_line_in_bounded_time(
        args: list[str], fragment: str, dead_env: dict[str, str],
        paysim_cli: PaysimCli) -> None:
    started = time.monotonic()
    result = paysim_cli(*args, env=dead_env)
    took = time.monotonic() - started
    assert_one_line_error(result, 1, fragment)
    assert took < KAFKA_TIMEOUT_S + SLACK_S, f"took {took:.1f} s"


def test_a_dead_redis_cluster_gives_one_line(dead_env: dict[str, str],
                                             paysim_cli: PaysimCli) -> None:
    # The cluster client asks the named node for the slots as it is made, not on first use.
    dead_cluster = "redis+cluster://127.0.0.1:1"
    result = paysim_cli("ps", env={**dead_env, "PAYSIM_REDIS_URL": dead_cluster})
    assert_one_line_error(result, 1, f"Redis at {dead_cluster} does not answer")


def test_the_kafka_timeout_is_a_checked_setting(dead_env: dict[str, str],
                                                paysim_cli: PaysimCli) -> None:
    result = paysim_cli("topics", "ensure", env={**dead_env, "PAYSIM_KAFKA_TIMEOUT": "0"})
    assert_one_line_error(result, 2, "PAYSIM_KAFKA_TIMEOUT: expected a number of seconds > 0")


def test_the_readiness_probe_waits_no_longer_than_the_kafka_timeout(
        dead_env: dict[str, str]) -> None:
    """run-all's probe gives Kafka 3 s, or kafka.timeout (1 s here) when that is shorter."""
    settings = load_settings(env=dead_env)
    started = time.monotonic()
    assert readiness.answering(settings) == (False, False)
    assert time.monotonic() - started < readiness.PROBE_TIMEOUT_S


def test_instances_beyond_their_topic_s_partitions_are_said() -> None:
    inputs = {"authorizer": "payments.requested", "processor": "payments.authorized"}
    partitions = {"payments.requested": 6, "payments.authorized": 2}
    counts = {"authorizer": 6, "processor": 3, "ledger": 9}
    [line] = readiness.beyond_partitions(counts, inputs, partitions, {"payments.authorized"})
    assert line.startswith("processor: 3 instances on the 2 partitions of "
                           "payments.authorized: 1 of them will get no partition")
    assert "topics.partitions sets" in line
    [there] = readiness.beyond_partitions(counts, inputs, partitions, set())
    assert "was there already: add partitions to it on the broker" in there
    assert readiness.beyond_partitions({"processor": 2}, inputs, partitions, set()) == []


def test_the_services_input_topics_are_the_ones_checked() -> None:
    settings = load_settings(env={"PAYSIM_TOPICS_AUTHORIZED": "mine.authorized"})
    topics = readiness.input_topics(settings, ["authorizer", "processor", "http"])
    assert topics == {"authorizer": settings.topics.requested, "processor": "mine.authorized"}
