"""The store on a Redis Cluster: paysim's own stack code starts 3 primaries and 3 replicas
(`stack up --redis-cluster`) beside the suite's broker, run-all's services run on it, and a
bounded run with every kind of operation is answered in full, audits clean and settles; a
primary killed mid-run is replaced by its replica, and nothing is lost."""

from __future__ import annotations

import json
import os
import signal
import uuid
from collections.abc import Iterator
from pathlib import Path

import pytest
from redis.cluster import RedisCluster

from paysim.domain.messages import OperationKind
from paysim.edge import idempotency, operations
from paysim.infra.config import Settings
from paysim.infra.waiting import wait_until
from paysim.pipeline import ledger_store, settlement_store, shard_store, store
from paysim.stack.manager import LocalStack
from paysim.stack.redis import CLUSTER_NODES
from tests.helpers import free_port, free_port_run, settings_for
from tests.integration.pipeline_helpers import paysim, running_pipeline, send_with_fault
from tests.integration.test_lifecycle_load import EVERY_KIND, assert_audit_clean, run_scenario


@pytest.fixture(scope="module")
def on_cluster(local_stack: LocalStack, service_flags: dict[str, object],
               tmp_path_factory: pytest.TempPathFactory) -> Iterator[Settings]:
    """The services on the suite's broker and a Redis Cluster of this module's own."""
    home = tmp_path_factory.mktemp("redis-cluster")
    settings = settings_for({
        **service_flags, "stack.dir": str(home / "stack"), "stack.redis_cluster": True,
        # Each node's port, then each node's cluster bus port: one run of free ports.
        "stack.redis_port": free_port_run(2 * CLUSTER_NODES, step=1),
        "services.dir": str(home / "services"), "http.port": free_port(),
        "lifecycle.runs_dir": str(home / "runs"),
        "issuer.decline_rate": 0, "issuer.fault_rate": 0})
    stack = LocalStack(settings.stack, announce=print, kafka=False)
    try:
        stack.up()
        with running_pipeline(settings):
            yield settings
    finally:
        stack.down()


def test_the_stack_forms_a_cluster_of_three_primaries_with_a_replica_each(
        on_cluster: Settings) -> None:
    client = store.connect_answering(on_cluster)
    try:
        assert isinstance(client, RedisCluster)
        info = client.cluster_info()
        assert info["cluster_state"] == "ok" and int(info["cluster_known_nodes"]) == 6

        def roles() -> tuple[int, int]:
            # A replica shows in the slot map once it has synced: read the map again.
            client.nodes_manager.initialize()
            return len(client.get_primaries()), len(client.get_replicas())

        assert wait_until(lambda: roles() == (3, 3), timeout=30), roles()
    finally:
        client.close()


def test_every_operation_kind_on_the_cluster_is_answered_and_audits_clean(
        on_cluster: Settings, tmp_path: Path) -> None:
    """The lifecycle load test's scenario (every kind of operation, 240 payments), on the
    cluster; then `paysim settle` closes its window bucket by bucket."""
    report = run_scenario(on_cluster, tmp_path, EVERY_KIND)

    assert report.load.sent == 240 and report.outcomes.lost == 0
    table = report.lifecycle
    assert table is not None and table.lost == 0, table.kinds
    kinds = {row.kind: row for row in table.kinds}
    assert set(kinds) == {kind.value for kind in OperationKind}, sorted(kinds)
    assert all(row.answered == row.scheduled > 0 for row in kinds.values())
    assert_audit_clean(on_cluster, report.run_id)

    client = store.connect_answering(on_cluster)
    try:
        # The seed's contract, one key per payment, on whichever primary owns its slot.
        done = [store.read_done_entry(fields) for _, fields in
                client.xrange(store.run_stream_key(report.run_id))]
        assert len({entry.payment_id for entry in done}) == 240
        assert all(client.get(store.result_key(entry.payment_id)) == entry.status.encode()
                   for entry in done)
        # The buckets, and so the cards, spread over every primary.
        owners = {client.get_node_from_key(ledger_store.holds_key(bucket)).name
                  for bucket in range(shard_store.BUCKETS)}
        cards = [sum(1 for _ in client.scan_iter(match=f"paysim:card:*:{report.run_id}:*",
                                                 count=1000, target_nodes=node))
                 for node in client.get_primaries()]
        assert len(owners) == 3 and all(count > 0 for count in cards), cards

        settled = paysim(on_cluster, "settle", "--run", report.run_id)
        assert settled.returncode == 0, settled.stderr
        assert "closed 1 window(s)" in settled.stdout, settled.stdout
        assert settlement_store.unsettled(client, report.run_id) == []
        batches = settlement_store.read_batches(client, report.run_id)
        # One batch per bucket and merchant: each names its bucket.
        assert batches and all(".b" in batch.batch_id for batch in batches)
        assert len({batch.batch_id for batch in batches}) == len(batches)
        book = settlement_store.read_book(client, report.run_id)
        assert sum(book.lines.values()) == 0  # the payouts balance on the run's book
    finally:
        client.close()


def test_a_primary_killed_mid_run_is_replaced_by_its_replica_and_nothing_is_lost(
        on_cluster: Settings) -> None:
    """Last in the module: the killed node stays down."""
    stack = LocalStack(on_cluster.stack, announce=print, kafka=False)
    client = store.connect_answering(on_cluster)
    try:
        primaries = {node.port for node in client.get_primaries()}
    finally:
        client.close()
    victim = next(node for node in stack.cluster_nodes if node.port in primaries)
    record = stack.running(victim)
    assert record is not None
    # Killed once 300 of the run's 1,200 payments (100/s for 12 s) were notified.
    result = send_with_fault(on_cluster, 300, lambda: os.kill(record.pid, signal.SIGKILL),
                             "--rate", "100", "--duration", "12s", "--seed", "15",
                             "--timeout", "180")
    assert result.returncode == 0, result.stderr[-2000:]
    report = json.loads(result.stdout)
    assert report["load"]["sent"] == 1200 and report["outcomes"]["lost"] == 0
    assert_audit_clean(on_cluster, report["run_id"])
    client = store.connect_answering(on_cluster)
    try:
        # The victim's replica took its slots over: three primaries, the victim not one.
        assert client.cluster_info()["cluster_state"] == "ok"
        now = {node.port for node in client.get_primaries()}
        assert len(now) == 3 and victim.port not in now, now
    finally:
        client.close()


def test_an_idempotency_reservation_with_its_route_note_on_the_cluster(
        on_cluster: Settings) -> None:
    """The reservation and the route note are one pipeline over two slots; a replay's own
    note is removed again."""
    client = store.connect(on_cluster)
    try:
        key, first, second = (f"cluster-{uuid.uuid4()}" for _ in range(3))
        notes = [operations.route_note(payment_id, "run-c", "tok", 60)
                 for payment_id in (first, second)]
        assert len({client.keyslot(note.key) for note in notes}
                   | {client.keyslot(store.idempotency_key(key))}) > 1  # across slots
        idem = idempotency.Idempotency(client, key, b"{}", b"k" * 32)
        assert idem.reserve([notes[0]]) is None
        assert json.loads(client.get(notes[0].key)) == ["run-c", "tok"]
        idem.finish(idempotency.Answer(200, {"payment_id": first}))
        again = idempotency.Idempotency(client, key, b"{}", b"k" * 32)
        assert again.reserve([notes[1]]) == idempotency.Answer(200, {"payment_id": first})
        assert client.get(notes[1].key) is None
    finally:
        client.close()
