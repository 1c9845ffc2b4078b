"""A three-node KRaft cluster from the same jars: a broker killed mid-run loses nothing."""

from __future__ import annotations

import json
import os
import signal
from collections.abc import Iterator

import pytest

from paysim.infra.config import Settings, settings_env
from paysim.infra.kafka import admin_client
from paysim.stack.manager import LocalStack
from tests.helpers import free_port, free_port_run, run_paysim, settings_for
from tests.integration.pipeline_helpers import running_pipeline, send_with_fault


@pytest.fixture(scope="module")
def cluster(tmp_path_factory: pytest.TempPathFactory) -> Iterator[tuple[Settings, LocalStack]]:
    home = tmp_path_factory.mktemp("cluster")
    settings = settings_for({
        "stack.dir": str(home / "stack"), "stack.brokers": 3,
        "stack.kafka_port": free_port_run(3), "stack.controller_port": free_port_run(3),
        "stack.redis_port": free_port(), "http.port": free_port(),
        "services.dir": str(home / "services"), "secrets.file": str(home / "secrets.json"),
        "services.stuck_after": 10,
    })
    stack = LocalStack(settings.stack, announce=print)
    try:
        stack.up()
        with running_pipeline(settings):
            yield settings, stack
    finally:
        stack.down()


def test_topics_are_replicated_three_times_with_two_in_sync(cluster) -> None:
    settings, _ = cluster
    metadata = admin_client(settings).list_topics(timeout=30)
    assert len(metadata.brokers) == 3
    for name in settings.topics.names():
        for partition in metadata.topics[name].partitions.values():
            assert len(partition.replicas) == 3


def test_a_broker_killed_mid_run_loses_and_doubles_nothing(cluster) -> None:
    settings, stack = cluster
    victim = next(c for c in stack.components if c.name == "kafka-2")
    pid = stack.running(victim).pid
    # Killed once 450 of the run's 2,250 payments (150/s for 15 s) were notified: 12 s of
    # sending are left, however long the start took.
    result = send_with_fault(settings, 450, lambda: os.kill(pid, signal.SIGKILL),
                             "--rate", "150", "--duration", "15s", "--seed", "77",
                             "--timeout", "180")
    assert result.returncode == 0, result.stderr[-2000:]
    report = json.loads(result.stdout)
    assert report["load"]["sent"] == 2250
    assert report["outcomes"]["lost"] == 0
    audit = run_paysim("audit", "--run", report["run_id"], "--json", env=settings_env(settings))
    found = json.loads(audit.stdout)
    assert audit.returncode == 0, found
    assert (found["sent"], found["lost_count"], found["doubled_count"]) == (2250, 0, 0)
    assert found["ledger_mismatches"] == []
    status = json.loads(run_paysim("stack", "status", "--json", env=settings_env(settings)
                                   ).stdout)
    assert status["kafka-2"]["state"] == "down"
    assert status["kafka-1"]["state"] == status["kafka-3"]["state"] == "up"
