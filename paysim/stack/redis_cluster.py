"""The local Redis Cluster: its nodes joined once with ``redis-cli --cluster create`` (slots
split over 3 primaries, a replica each), then waited on until every node says
cluster_state:ok. A restarted cluster re-forms from each node's nodes.conf on its own."""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path

import redis

from paysim.infra.errors import PaysimError
from paysim.infra.waiting import wait_until
from paysim.stack.component import Announce
from paysim.stack.logs import tail_lines
from paysim.stack.prerequisites import find_redis_cli
from paysim.stack.process import run_logged
from paysim.stack.redis import RedisClusterNode

REPLICAS = 1
CREATE_TIMEOUT_S = 120.0


def cluster_info(address: str, timeout: float = 2.0) -> dict[str, str] | None:
    """A node's CLUSTER INFO as text fields; None when it does not answer."""
    host, _, port = address.rpartition(":")
    client = redis.Redis(host=host, port=int(port), socket_timeout=timeout,
                         socket_connect_timeout=timeout)
    try:
        raw = client.execute_command("CLUSTER INFO")
    except redis.RedisError:
        return None
    finally:
        client.close()
    # redis-py parses the reply into its fields.
    return {str(name): str(value) for name, value in raw.items()}


def _formed(info: dict[str, str] | None, nodes: int) -> bool:
    return (info is not None and info.get("cluster_state") == "ok"
            and info.get("cluster_known_nodes") == str(nodes))


def _blank(info: dict[str, str] | None) -> bool:
    """A node that has joined no cluster yet (its first start)."""
    return (info is not None and info.get("cluster_known_nodes") == "1"
            and info.get("cluster_slots_assigned") == "0")


def cluster_ok(nodes: Sequence[RedisClusterNode]) -> bool:
    return all(_formed(cluster_info(node.address), len(nodes)) for node in nodes)


def form_cluster(nodes: Sequence[RedisClusterNode], log: Path, timeout: float,
                 announce: Announce) -> None:
    """Join fresh nodes into a cluster (once), then wait until every node reports it ok."""
    infos = [cluster_info(node.address) for node in nodes]
    if all(_blank(info) for info in infos):
        cli, missing = find_redis_cli()
        if cli is None:
            raise PaysimError(f"the local Redis Cluster needs {missing}")
        announce(f"creating the Redis Cluster over {len(nodes)} nodes")
        run_logged([cli, "--cluster", "create", *(node.address for node in nodes),
                    "--cluster-replicas", str(REPLICAS), "--cluster-yes"],
                   log, "redis-cli --cluster create", timeout=CREATE_TIMEOUT_S)
    if not wait_until(lambda: cluster_ok(nodes), timeout=timeout, interval=0.2):
        states = ", ".join(f"{node.name}: {(info or {}).get('cluster_state', 'no answer')}"
                           for node, info in zip(nodes, [cluster_info(n.address)
                                                         for n in nodes], strict=True))
        raise PaysimError(
            f"the Redis Cluster did not report cluster_state:ok within {timeout:.0f} s "
            f"({states}); `paysim stack up --fresh --redis-cluster` starts it anew",
            details=tail_lines(log) if log.exists() else [])
