"""The store's buckets: slot-aligned tags, a card's keys in one slot with its bucket's indexes,
and the call groups (every bucket in one call on one Redis, one per bucket on a cluster)."""

from __future__ import annotations

from collections import Counter
from pathlib import Path

from redis.cluster import RedisCluster
from redis.crc import REDIS_CLUSTER_HASH_SLOTS, key_slot

from paysim.infra.config import load_settings
from paysim.pipeline import ledger_store, settlement_store
from paysim.pipeline.shard_store import BUCKETS, TAGS, bucket_of, call_groups
from paysim.stack.manager import LocalStack
from tests.unit.fakes import FakeRedis

SHARE = REDIS_CLUSTER_HASH_SLOTS // BUCKETS


def test_each_buckets_tag_hashes_into_its_own_share_of_the_slots() -> None:
    slots = [key_slot(f"x:{tag}:y".encode()) for tag in TAGS]
    assert [slot // SHARE for slot in slots] == list(range(BUCKETS))


def test_a_cards_keys_share_one_slot_with_its_buckets_indexes() -> None:
    run, token = "run-1", "tok_abc"
    bucket = bucket_of(run, token)
    keys = [ledger_store.card_key(run, token), ledger_store.record_key(run, token, "p-1"),
            ledger_store.answer_key(run, token, "op-1"), ledger_store.holds_key(bucket),
            ledger_store.windows_key(bucket), ledger_store.movements_key(bucket, run, 60),
            settlement_store.book_key(bucket, run), settlement_store.batches_key(bucket, run),
            settlement_store.closes_key(bucket, run), settlement_store.runs_key(bucket)]
    assert len({key_slot(key.encode()) for key in keys}) == 1


def test_cards_spread_over_the_buckets() -> None:
    counts = Counter(bucket_of("run-1", f"tok_{n}") for n in range(4000))
    assert set(counts) == set(range(BUCKETS))
    assert max(counts.values()) < 1.3 * 4000 / BUCKETS


def test_one_call_for_every_bucket_on_one_redis_and_one_per_bucket_on_a_cluster() -> None:
    assert call_groups(FakeRedis(), [5, 2, 5]) == [[2, 5]]  # type: ignore[arg-type]
    cluster = RedisCluster.__new__(RedisCluster)  # its type is all call_groups asks
    assert call_groups(cluster, [5, 2, 5]) == [[2], [5]]
    assert call_groups(cluster, []) == []


def test_the_local_cluster_is_six_nodes_on_their_own_ports_and_bus_ports(
        tmp_path: Path) -> None:
    settings = load_settings({"stack.redis_cluster": True, "stack.redis_port": 21000,
                              "stack.dir": str(tmp_path)}, env={})
    stack = LocalStack(settings.stack, kafka=False)
    assert [c.name for c in stack.components] == [f"redis-{n}" for n in range(1, 7)]
    assert [c.ports() for c in stack.components] == [[21000 + n, 21006 + n] for n in range(6)]
    conf = stack.cluster_nodes[1].conf()
    assert (conf["cluster-enabled"], conf["cluster-port"]) == ("yes", "21007")
    assert conf["cluster-config-file"] == str(tmp_path / "redis-2" / "data" / "nodes.conf")
