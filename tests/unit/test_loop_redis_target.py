"""Which Redis clients the edge's loop client stands in for (paysim.edge.loop_redis), read
from their URLs without connecting: a plain Redis over TCP or a Unix socket, with its
database, credentials and timeouts; a cluster or TLS stays on the thread batcher."""

from __future__ import annotations

import redis
from redis.cluster import RedisCluster

from paysim.edge.loop_redis import LoopRedis, Target, pipes_for, target_of
from paysim.edge.steps import RedisBatcher


def test_a_plain_redis_url_gives_its_address_database_credentials_and_timeouts() -> None:
    client = redis.Redis.from_url("redis://edge:s3cret@10.1.2.3:6390/4?client_name=paysim",
                                  socket_timeout=7, socket_connect_timeout=2)
    target = target_of(client)
    assert target == Target(host="10.1.2.3", port=6390, path=None, db=4, username="edge",
                            password="s3cret", client_name="paysim", timeout_s=7.0,
                            connect_timeout_s=2.0)
    assert target.handshake() == (("AUTH", "edge", "s3cret"),
                                  ("CLIENT", "SETNAME", "paysim"), ("SELECT", 4))
    assert isinstance(pipes_for(client), LoopRedis)


def test_a_unix_socket_and_no_credentials_need_no_handshake() -> None:
    target = target_of(redis.Redis.from_url("unix:///run/redis.sock", socket_timeout=3))
    assert target is not None
    assert (target.path, target.db, target.timeout_s, target.handshake()) == (
        "/run/redis.sock", 0, 3.0, ())


def test_a_password_without_a_user_authenticates_as_the_default_user() -> None:
    target = target_of(redis.Redis.from_url("redis://:pw@127.0.0.1:6379/0"))
    assert target is not None and target.handshake() == (("AUTH", "pw"),)


def test_tls_resp3_decoded_replies_and_a_cluster_stay_on_the_thread_batcher() -> None:
    for client in (redis.Redis.from_url("rediss://127.0.0.1:6379/0"),
                   redis.Redis.from_url("redis://127.0.0.1:6379/0?protocol=3"),
                   redis.Redis.from_url("redis://127.0.0.1:6379/0", decode_responses=True)):
        assert target_of(client) is None
        assert isinstance(pipes_for(client), RedisBatcher)
    # Not connected: a cluster client asks a node for its slots when it is built.
    cluster = RedisCluster.__new__(RedisCluster)
    assert target_of(cluster) is None
