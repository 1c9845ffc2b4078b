"""The local redis-server, with its own data folder and AOF on so a restart keeps its data."""

from __future__ import annotations

import re
import subprocess
from functools import cache
from pathlib import Path

import redis

from paysim.infra.config import REDIS_CLUSTER_NODES, StackSettings
from paysim.stack.component import Announce, Component
from paysim.stack.prerequisites import Missing, find_redis_server

# Mirrored by docker-compose.yml's redis command; a test keeps the two in step. The AOF is
# compacted (rewritten) once it passes 1 GB rather than Redis's 64 MB: each rewrite forks a
# child that serialises the whole dataset, and on two cores the pipeline's latency rose for
# its whole length (p99 0.3 -> 2.6 s at 5,000 payments/s; docs/performance.md).
PERSISTENCE_SETTINGS: dict[str, str] = {"appendonly": "yes", "appendfsync": "everysec",
                                        "auto-aof-rewrite-min-size": "1gb"}


def _quote(value: str) -> str:
    """A redis.conf argument: double-quoted, with backslashes and quotes escaped."""
    return '"' + value.replace("\\", "\\\\").replace('"', '\\"') + '"'


@cache
def _server_version(server: str) -> str:
    try:
        out = subprocess.run([server, "--version"], capture_output=True, text=True,
                             timeout=10, check=False).stdout
    except (OSError, subprocess.TimeoutExpired):
        return "unknown"
    match = re.search(r"v=(\S+)", out)
    return match.group(1) if match else "unknown"


class RedisServer(Component):
    name = "redis"

    @property
    def port(self) -> int:
        return self.settings.redis_port

    @property
    def conf_path(self) -> Path:
        return self.home / "redis.conf"

    def log_paths(self) -> list[Path]:
        return [self.output_path, self.home / "redis.log"]

    def missing_programs(self) -> list[Missing]:
        _, missing = find_redis_server()
        return [missing] if missing else []

    def version(self) -> str:
        server, _ = find_redis_server()
        return _server_version(server) if server else "unknown"

    def conf(self) -> dict[str, str]:
        return {
            "bind": "127.0.0.1",
            "port": str(self.port),
            "dir": str(self.data_dir),
            "logfile": str(self.home / "redis.log"),
            "daemonize": "no",
            "save": "",
            **PERSISTENCE_SETTINGS,
        }

    def prepare(self, announce: Announce) -> None:
        self.data_dir.mkdir(parents=True, exist_ok=True)
        # Quoted: a folder name with spaces is one argument to redis-server.
        self.conf_path.write_text(
            "".join(f"{k} {_quote(v)}\n" for k, v in self.conf().items())
        )

    def command(self) -> list[str]:
        server, missing = find_redis_server()
        if server is None:
            raise AssertionError(f"redis-server vanished after the prerequisite check: {missing}")
        return [server, str(self.conf_path)]

    def answers(self, address: str, timeout: float) -> bool:
        host, _, port = address.rpartition(":")
        client = redis.Redis(host=host, port=int(port), socket_timeout=timeout,
                             socket_connect_timeout=timeout)
        try:
            return bool(client.ping())
        except redis.RedisError:
            return False
        finally:
            client.close()


CLUSTER_NODES = REDIS_CLUSTER_NODES  # 3 primaries, each with one replica
CLUSTER_NODE_TIMEOUT_MS = 5000  # how long a primary may be silent before its replica takes over


class RedisClusterNode(RedisServer):
    """One node of the local Redis Cluster: its own folder, port and cluster bus port
    (``redis-cli --cluster create`` joins them; nodes.conf in its data folder remembers the
    cluster across restarts)."""

    def __init__(self, settings: StackSettings, node: int) -> None:
        super().__init__(settings)
        self.node = node
        self.name = f"redis-{node}"

    @property
    def port(self) -> int:
        return self.settings.redis_port + self.node - 1

    @property
    def bus_port(self) -> int:
        return self.settings.redis_port + CLUSTER_NODES + self.node - 1

    def ports(self) -> list[int]:
        return [self.port, self.bus_port]

    @property
    def port_flags(self) -> str:
        return "--redis-port"

    def conf(self) -> dict[str, str]:
        return {**super().conf(), "cluster-enabled": "yes", "cluster-port": str(self.bus_port),
                "cluster-config-file": str(self.data_dir / "nodes.conf"),
                "cluster-node-timeout": str(CLUSTER_NODE_TIMEOUT_MS)}
