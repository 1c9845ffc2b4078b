"""Consumer-group rebalances mid-run lose nothing and double nothing, and the processors that
join take their share of the work."""

from __future__ import annotations

import json
import signal
import subprocess
import sys

from confluent_kafka import KafkaException
from confluent_kafka.admin import AdminClient

from paysim.infra.config import Settings
from paysim.infra.kafka import admin_client
from paysim.infra.waiting import wait_until
from paysim.pipeline.registry import PROCESSOR
from tests.integration.pipeline_helpers import (
    child_env,
    heartbeats,
    notified,
    notified_so_far,
    paysim,
    start_send,
)

GROUP = f"paysim-{PROCESSOR.name}"  # the processors' consumer group (pipeline.loop)


def assigned_partitions(admin: AdminClient) -> list[int]:
    """How many partitions each member of the processors' group holds; [] while Kafka cannot
    say (the group rebalancing, a request timing out)."""
    try:
        [future] = admin.describe_consumer_groups([GROUP], request_timeout=5).values()
        group = future.result(timeout=10)
    except (KafkaException, TimeoutError):  # concurrent.futures' is the builtin since 3.11
        return []
    return sorted(len(member.assignment.topic_partitions) for member in group.members)


def members_holding_partitions(admin: AdminClient, count: int) -> bool:
    """The group has ``count`` members and each holds partitions (its rebalance is done)."""
    held = assigned_partitions(admin)
    return len(held) == count and all(held)


def processed(settings: Settings) -> dict[str, int]:
    """Each processor instance with a fresh heartbeat: what it has processed."""
    return {name: beat.processed for name, beat in heartbeats(settings).items()
            if beat.service == PROCESSOR.name}


def all_processing(settings: Settings, since: dict[str, int], names: set[str]) -> bool:
    """Exactly ``names`` report, and each has processed more than in ``since``."""
    now = processed(settings)
    return set(now) == names and all(now[name] > since.get(name, 0) for name in names)


def test_scaling_the_processor_from_1_to_3_and_back_to_2_mid_run(pipeline: Settings) -> None:
    extra: list[subprocess.Popen] = []
    admin = admin_client(pipeline)
    before = notified_so_far(pipeline)
    # Each step waits on the run's progress and the group's state, not on time; the run is
    # long enough for all of them, and ended with Ctrl-C once they are done.
    child, stdout, stderr = start_send(pipeline, "--rate", "150", "--duration", "600s",
                                       "--seed", "31")
    try:
        assert wait_until(lambda: notified(pipeline) >= before + 300, timeout=90)
        extra += [subprocess.Popen(
            [sys.executable, "-m", "paysim", "service", "processor", "--instance", str(i)],
            env=child_env(pipeline), stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
            for i in (1, 2)]

        # Three members, each holding partitions, and each of the three processing.
        assert wait_until(lambda: members_holding_partitions(admin, 3), timeout=90,
                          interval=0.5), assigned_partitions(admin)
        three = {"processor-0", "processor-1", "processor-2"}
        joined = processed(pipeline)
        assert wait_until(lambda: all_processing(pipeline, joined, three), timeout=60), (
            joined, processed(pipeline))

        extra[0].send_signal(signal.SIGTERM)
        assert extra[0].wait(60) == 0, "the leaving processor stopped cleanly"

        # Two members again, the leaver's heartbeat gone, and both of the others processing.
        assert wait_until(lambda: members_holding_partitions(admin, 2), timeout=90,
                          interval=0.5), assigned_partitions(admin)
        left = processed(pipeline)
        two = {"processor-0", "processor-2"}
        assert wait_until(lambda: all_processing(pipeline, left, two), timeout=60), (
            left, processed(pipeline))

        child.send_signal(signal.SIGINT)
        child.wait(timeout=120)
    finally:
        if child.poll() is None:
            child.kill()
        for process in extra:
            process.send_signal(signal.SIGTERM)
        for process in extra:
            process.wait(60)
    errors = stderr.text()
    assert child.returncode == 130, errors  # the Ctrl-C that ended the run
    report = json.loads(stdout.text())
    assert report["load"]["sent"] >= 300
    assert report["outcomes"]["completed"] == report["load"]["sent"]

    audit = paysim(pipeline, "audit", "--run", report["run_id"], "--json")
    found = json.loads(audit.stdout)
    assert audit.returncode == 0, found
    assert (found["sent"], found["lost_count"], found["doubled_count"]) == (
        report["load"]["sent"], 0, 0)
    assert found["ledger_mismatches"] == []
