"""The store on a Redis Cluster: paysim's own stack code starts 3 primaries and 3 replicas
(`stack up --redis-cluster`) beside the suite's broker, run-all's services run on it, and a
bounded run with every kind of operation is answered in full, audits clean and settles. (A
primary killed mid-run: test_cluster.py's fault run, with a broker and a generator.)"""

from __future__ import annotations

import json
import uuid
from collections.abc import Iterator
from pathlib import Path

import pytest
from redis.cluster import RedisCluster

from paysim.domain.messages import OperationKind
from paysim.edge import idempotency, operations
from paysim.edge.delivery import Deliveries
from paysim.edge.steps import LoopRunner, run_blocking
from paysim.infra.config import Settings, settings_env
from paysim.infra.waiting import wait_until
from paysim.pipeline import ledger_store, settlement_store, shard_store, store
from paysim.stack.redis import CLUSTER_NODES
from tests.helpers import run_paysim
from tests.integration.pipeline_helpers import paysim, pipeline_on
from tests.integration.test_lifecycle_load import EVERY_KIND, assert_audit_clean, run_scenario
from tests.unit.on_loop import steps_on_loop


@pytest.fixture(scope="module")
def on_cluster(redis_cluster: dict[str, object]) -> Iterator[Settings]:
    """The services on the suite's broker and the session's Redis Cluster."""
    with pipeline_on(redis_cluster) as settings:
        yield settings


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
    # `stack status` finds the cluster from the stack's own records, also when not told.
    plain = {**settings_env(on_cluster), "PAYSIM_STACK_REDIS_CLUSTER": "0"}
    status = json.loads(run_paysim("stack", "status", "--json", env=plain).stdout)
    assert "redis" not in status, status
    assert [status[f"redis-{n}"]["state"] for n in range(1, CLUSTER_NODES + 1)] == [
        "up"] * CLUSTER_NODES, status


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
        idem = idempotency.Idempotency(key, b"{}", b"k" * 32)
        assert run_blocking(idem.reserving([notes[0]]), client, None) is None
        assert json.loads(client.get(notes[0].key)) == ["run-c", "tok"]
        run_blocking(idem.finishing(idempotency.Answer(200, {"payment_id": first})), client,
                     None)
        again = idempotency.Idempotency(key, b"{}", b"k" * 32)
        assert run_blocking(again.reserving([notes[1]]), client, None) == \
            idempotency.Answer(200, {"payment_id": first})
        assert client.get(notes[1].key) is None
    finally:
        client.close()


def test_reservations_of_requests_waiting_together_in_one_batch_on_the_cluster(
        on_cluster: Settings) -> None:
    """The server's event loop sends the reservations of the requests waiting at one moment
    as one pipeline: on a cluster, its commands go to the nodes holding their keys."""
    client = store.connect(on_cluster)
    try:
        keys = [f"cluster-batch-{uuid.uuid4()}" for _ in range(6)]
        notes = [operations.route_note(str(uuid.uuid4()), "run-c", "tok", 60) for _ in keys]
        assert len({client.keyslot(note.key) for note in notes}) > 1
        first = [idempotency.Idempotency(key, b"{}", b"k" * 32) for key in keys]
        runner = LoopRunner(client, Deliveries(None))  # type: ignore[arg-type]
        assert steps_on_loop(runner, [idem.reserving([note])
                                      for idem, note in zip(first, notes, strict=True)]
                             ) == [None] * len(keys)
        assert all(client.get(note.key) for note in notes)
        run_blocking(first[0].finishing(idempotency.Answer(200, {"payment_id": "p"})), client,
                     None)
        # Again with the same keys: one replay, the others still at work (409).
        runner = LoopRunner(client, Deliveries(None))  # type: ignore[arg-type]
        again = steps_on_loop(runner, [
            idempotency.Idempotency(key, b"{}", b"k" * 32).reserving()
            for key in keys[:2]])
        assert again[0] == idempotency.Answer(200, {"payment_id": "p"})
        assert again[1].startswith("raised a request with this Idempotency-Key is still")
    finally:
        client.close()
