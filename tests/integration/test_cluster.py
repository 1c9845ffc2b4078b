"""A three-node KRaft cluster from the same jars and a Redis Cluster (3 primaries, a replica
each), both started by paysim's own stack code: in one distributed run a broker, a Redis
primary and a generator are SIGKILLed, and nothing is lost or doubled (issue 15's faults)."""

from __future__ import annotations

import json
import os
import signal
import time
from collections.abc import Iterator
from pathlib import Path

import pytest
import redis

from paysim.infra.config import Settings, settings_env
from paysim.infra.errors import PaysimError
from paysim.infra.kafka import admin_client
from paysim.infra.waiting import wait_until
from paysim.pipeline import store
from paysim.stack.manager import LocalStack
from paysim.stack.redis import RedisClusterNode
from tests.helpers import free_port, free_port_run, run_paysim, settings_for
from tests.integration.fault_helpers import (
    LIFECYCLE_MIX,
    Fault,
    audited_clean,
    baseline_p99,
    fault_windows,
    first_entries,
    format_windows,
    generator_beat,
    sent_and_latency,
)
from tests.integration.pipeline_helpers import (
    paysim,
    redis_cluster_flags,
    run_done_entries,
    running_pipeline,
    send_with_faults,
)

RATE, WORKERS = 30, 2  # payments/s, 15/s from each generator: the 2 cores run 3 brokers too
# The faults come on the run's progress, each once AFTER more payments were notified and no
# service has more than SETTLED_LAG records waiting, and the sender is interrupted AFTER
# payments after the last: the run lasts as long as the faults need (about 2,000 payments),
# never more than SECONDS.
AFTER, SECONDS = 400, 150
SETTLED_LAG = 3 * RATE
PROMOTED_S = 60.0  # the bound on a replica's promotion (cluster-node-timeout is 5 s)


@pytest.fixture(scope="module")
def cluster(tmp_path_factory: pytest.TempPathFactory) -> Iterator[tuple[Settings, LocalStack]]:
    home = tmp_path_factory.mktemp("cluster")
    settings = settings_for({
        **redis_cluster_flags(home), "stack.brokers": 3,
        # A broker n listens on port + 2 (n - 1) (StackSettings.broker_ports).
        "stack.kafka_port": free_port_run(3, step=2),
        "stack.controller_port": free_port_run(3, step=2),
        "http.port": free_port(), "secrets.file": str(home / "secrets.json"),
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
    # `stack status` finds both clusters from the stack's own records, also when not told.
    plain = {**settings_env(settings), "PAYSIM_STACK_BROKERS": "1",
             "PAYSIM_STACK_REDIS_CLUSTER": "0"}
    status = json.loads(run_paysim("stack", "status", "--json", env=plain).stdout)
    assert "kafka" not in status and "redis" not in status, status
    assert [status[f"kafka-{n}"]["state"] for n in (1, 2, 3)] == ["up"] * 3, status
    assert [status[f"redis-{n}"]["state"] for n in range(1, 7)] == ["up"] * 6, status


def primaries(settings: Settings) -> set[int]:
    """The ports of the Redis Cluster's primaries, as a fresh client's slot map has them,
    once the cluster says it is ok (empty before, or while no node answers)."""
    try:
        client = store.connect(settings)
    except PaysimError:
        return set()
    try:
        if client.cluster_info()["cluster_state"] != "ok":
            return set()
        return {node.port for node in client.get_primaries()}
    except redis.RedisError:
        return set()
    finally:
        client.close()


def kill_broker(stack: LocalStack, name: str) -> Fault:
    record = stack.running(next(c for c in stack.components if c.name == name))
    assert record is not None
    os.kill(record.pid, signal.SIGKILL)
    return Fault(time.monotonic(), f"SIGKILL broker {name} (pid {record.pid})")


def kill_primary(settings: Settings, stack: LocalStack, node: RedisClusterNode) -> Fault:
    """SIGKILL a primary and wait until its replica has taken its slots over."""
    record = stack.running(node)
    assert record is not None
    os.kill(record.pid, signal.SIGKILL)
    killed = time.monotonic()

    def promoted() -> bool:
        now = primaries(settings)
        return len(now) == 3 and node.port not in now

    assert wait_until(promoted, timeout=PROMOTED_S, interval=0.2), primaries(settings)
    took = time.monotonic() - killed
    return Fault(killed, f"SIGKILL Redis primary {node.name} (pid {record.pid}), replica "
                 f"promoted after {took:.1f} s", time.time(), took)


def kill_generator(settings: Settings, share: int) -> Fault:
    """SIGKILL generator ``share`` of the run in progress (the only distributed run on this
    module's Redis)."""
    client = store.connect(settings)
    try:
        beat = generator_beat(client, share, WORKERS)
    finally:
        client.close()
    assert beat is not None, "the generator has not beaten yet"
    os.kill(beat.pid, signal.SIGKILL)
    return Fault(time.monotonic(), f"SIGKILL generator {share} (pid {beat.pid}, "
                 f"{beat.sent:,} sent)")


def test_a_broker_a_redis_primary_and_a_generator_killed_in_one_run_lose_nothing(
        cluster, tmp_path: Path) -> None:
    """Issue 15's fault run, during `send --workers 2` with the lifecycle mix. The killed
    broker and Redis node stay down; the killed generator's share is reported dead with what
    it had sent, and its unsent payments are neither sent nor lost."""
    settings, stack = cluster
    victim = next(node for node in stack.cluster_nodes if node.port in primaries(settings))
    mix = tmp_path / "mix.toml"
    mix.write_text(LIFECYCLE_MIX)
    start, start_wall = time.monotonic(), time.time()
    result, done = send_with_faults(
        settings, [(AFTER, lambda: kill_broker(stack, "kafka-2")),
                   (AFTER, lambda: kill_primary(settings, stack, victim)),
                   (AFTER, lambda: kill_generator(settings, 1))],
        "--workers", str(WORKERS), "--scenario", str(mix), "--rate", str(RATE),
        "--duration", f"{SECONDS}s", "--seed", "77", "--timeout", "180",
        settle_lag=SETTLED_LAG, interrupt_after=AFTER)
    print("\n".join(f"{f.at - start:5.1f} s  {f.label}" for f in done))

    # Interrupted, as asked, and naming the dead generator; the report covers both shares.
    assert result.returncode == 130, result.stderr[-2000:]
    assert "1 generator(s) died before handing in: share(s) 1" in result.stderr
    report = json.loads(result.stdout)
    # The report's "lost" after an interrupt are the payments with no outcome within its 5 s
    # grace: with the 2 cores this loaded, a few may be later than that. The audit, below,
    # finds whether any is lost.
    late = report["outcomes"]["lost"]
    [alive, dead] = report["workers"]
    share = RATE * SECONDS // WORKERS
    assert (alive["status"], alive["scheduled"]) == ("ok", share) and alive["sent"] < share
    assert (dead["status"], dead["scheduled"]) == ("dead", share)
    assert 0 < dead["sent"] < alive["sent"]
    assert report["load"]["scheduled"] == RATE * SECONDS
    assert report["load"]["sent"] == alive["sent"]  # a dead share's counts are its last beat

    found = audited_clean(settings, report["run_id"])
    # The audit counts what reached payments.requested: all the live share, and of the dead
    # one what it sent before the kill (its last beat is up to a second old, and the kill
    # may drop a few records still in its producer), never its unsent payments.
    from_dead = found["sent"] - alive["sent"]
    generator = (f"the killed generator: {dead['sent']:,} sent by its last beat, "
                 f"{from_dead:,} in the audit, {share - from_dead:,} of its share never sent; "
                 f"{late:,} payments answered over 5 s after the interrupt")
    print(generator)
    assert dead["sent"] - 10 <= from_dead <= dead["sent"] + RATE and from_dead < share

    entries = first_entries(run_done_entries(settings, report["run_id"]))
    latencies = sent_and_latency(entries, start_wall - start)
    base = baseline_p99(latencies, done)
    table = format_windows(done, fault_windows(latencies, done), base)
    audit = paysim(settings, "audit", "--run", report["run_id"])
    summary = tmp_path / "fault-run.txt"
    summary.write_text(
        f"{found['sent']:,} payments sent at {RATE}/s by {WORKERS} generators; baseline p99 "
        f"{base:,.0f} ms (the payments sent in the 10 s before the first fault's window)\n"
        + "\n".join(f"{f.at - start:5.1f} s  {f.label}" for f in done)
        + f"\n{generator}\n\n{table}\n\n{audit.stdout}")
    print(f"{summary.read_text()}\nthe fault run's summary, as above: {summary}")

    # The killed broker and Redis node stay down; the cluster serves on without them.
    status = json.loads(run_paysim("stack", "status", "--json",
                                   env=settings_env(settings)).stdout)
    assert status["kafka-2"]["state"] == status[victim.name]["state"] == "down"
    assert status["kafka-1"]["state"] == status["kafka-3"]["state"] == "up"
    now = primaries(settings)
    assert len(now) == 3 and victim.port not in now, now
