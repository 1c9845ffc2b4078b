"""How the ledger's keys spread over a Redis Cluster: BUCKETS buckets, each with one hash tag.

A Redis Cluster runs a script (or a MULTI) only on keys of one slot. The ledger's scripts
touch a card's keys together with indexes that span cards (open holds by expiry, settlement
windows, a window's movements), so those indexes are kept per bucket: a card belongs to the
bucket its (run, token) hashes to, and every key of the card and of its bucket's indexes
carries the bucket's tag. A script then touches one bucket, and so one slot.

Each bucket's tag is chosen so that its slot lies in the bucket's 1/BUCKETS share of the
16,384 slots: ``redis-cli --cluster create`` gives each primary a contiguous range, so the
buckets, and the cards, spread evenly over the primaries (docs/architecture.md).

On a single Redis there is no slot rule: a batch's buckets go in one script call (as many
round trips as before the cluster came); on a cluster, one call per bucket.
"""

from __future__ import annotations

import itertools
import zlib
from collections.abc import Iterable

from redis.crc import REDIS_CLUSTER_HASH_SLOTS, key_slot

from paysim.pipeline import store

BUCKETS = 16


def _aligned_tag(bucket: int) -> str:
    """The first tag ``b<bucket>.<n>`` whose slot falls in the bucket's share of the slots."""
    low = bucket * REDIS_CLUSTER_HASH_SLOTS // BUCKETS
    high = (bucket + 1) * REDIS_CLUSTER_HASH_SLOTS // BUCKETS
    for n in itertools.count():
        tag = f"b{bucket}.{n}"
        if low <= key_slot(tag.encode()) < high:
            return "{" + tag + "}"
    raise AssertionError("unreachable")  # itertools.count() does not end


TAGS: tuple[str, ...] = tuple(_aligned_tag(bucket) for bucket in range(BUCKETS))


def bucket_of(run_id: str, token: str) -> int:
    """The card's bucket: CRC-32 of its run and token (the same in every process)."""
    return zlib.crc32(f"{run_id}:{token}".encode()) % BUCKETS


def tag(bucket: int) -> str:
    return TAGS[bucket]


def call_groups(client: store.Client, buckets: Iterable[int]) -> list[list[int]]:
    """The buckets to cover per script call, in order: one call for all on a single Redis,
    one per bucket on a cluster."""
    ordered = sorted(set(buckets))
    if not ordered:
        return []
    return [[bucket] for bucket in ordered] if store.is_cluster(client) else [ordered]
