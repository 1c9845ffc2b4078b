"""The local Apache Kafka broker: one KRaft node (broker and controller) on the JVM."""

from __future__ import annotations

import base64
import json
import os
from pathlib import Path

from paysim.infra.config import StackSettings
from paysim.infra.kafka import cluster_metadata
from paysim.stack.component import Announce, Component
from paysim.stack.jars import ensure_kafka_jars, jars_ready, kafka_version, libs_dir
from paysim.stack.prerequisites import Missing, find_java, find_mvn
from paysim.stack.process import run_logged

# What a single node needs for transactions and consumer groups to work at once: every
# internal topic at replication factor 1 / min ISR 1 (else init_transactions() times out with
# COORDINATOR_NOT_AVAILABLE), and no initial rebalance delay. docker-compose.yml mirrors these;
# a test keeps the two in step.
SINGLE_NODE_SETTINGS: dict[str, str] = {
    "offsets.topic.replication.factor": "1",
    "transaction.state.log.replication.factor": "1",
    "transaction.state.log.min.isr": "1",
    "share.coordinator.state.topic.replication.factor": "1",
    "share.coordinator.state.topic.min.isr": "1",
    "default.replication.factor": "1",
    "min.insync.replicas": "1",
    "group.initial.rebalance.delay.ms": "0",
    # paysim creates its topics itself with their configured partitions.
    "auto.create.topics.enable": "false",
    # After a SIGKILL the restarted broker is refused (DUPLICATE_BROKER_REGISTRATION) until the
    # dead incarnation's session expires: 9 s by default. On loopback a 3 s session is safe and
    # cuts a restart from about 12 s to about 5 s.
    "broker.heartbeat.interval.ms": "500",
    "broker.session.timeout.ms": "3000",
    # Verification (KIP-890) makes each partition leader ask the transaction coordinator
    # about every transactional produce: one more round trip per batch. librdkafka does not
    # speak the newer protocol that makes it cheap; off, the broker spent 13% less CPU at
    # 2,000 payments/s (docs/performance.md).
    "transaction.partition.verification.enable": "false",
}

LOG4J2_YAML = """\
Configuration:
  Properties:
    Property:
      - name: logDir
        value: "{log_dir}"
  Appenders:
    Console:
      name: STDOUT
      PatternLayout:
        pattern: "[%d] %p %m (%c)%n"
      ThresholdFilter:
        level: WARN
    RollingFile:
      name: BROKER
      fileName: "${{logDir}}/broker.log"
      filePattern: "${{logDir}}/broker.log.%i"
      PatternLayout:
        pattern: "[%d] %p %m (%c)%n"
      SizeBasedTriggeringPolicy:
        size: 20MB
      DefaultRollOverStrategy:
        max: 3
  Loggers:
    Logger:
      - name: kafka.request.logger
        level: WARN
      - name: org.apache.kafka.controller
        level: INFO
    Root:
      level: INFO
      AppenderRef:
        - ref: STDOUT
        - ref: BROKER
"""


def _properties_value(value: str) -> str:
    """Java reads .properties as ISO-8859-1: escape backslashes and anything non-ASCII."""
    escaped = value.replace("\\", "\\\\")
    return "".join(c if ord(c) < 128 else f"\\u{ord(c):04x}" for c in escaped)


def new_cluster_id() -> str:
    """16 random bytes as URL-safe base64 without padding, as Kafka's own tool makes them."""
    while True:
        cluster_id = base64.urlsafe_b64encode(os.urandom(16)).decode().rstrip("=")
        if not cluster_id.startswith("-"):  # a leading '-' would read as a flag to the tool
            return cluster_id


def cluster_settings(nodes: int) -> dict[str, str]:
    """SINGLE_NODE_SETTINGS, or for several nodes: internal topics and defaults replicated
    to 3 (at most) with 2 in sync, so a cluster of 3 goes on with one node down."""
    if nodes == 1:
        return dict(SINGLE_NODE_SETTINGS)
    replicas, in_sync = str(min(3, nodes)), str(min(2, nodes))
    return {
        **SINGLE_NODE_SETTINGS,
        "offsets.topic.replication.factor": replicas,
        "transaction.state.log.replication.factor": replicas,
        "transaction.state.log.min.isr": in_sync,
        "share.coordinator.state.topic.replication.factor": replicas,
        "share.coordinator.state.topic.min.isr": in_sync,
        "default.replication.factor": replicas,
        "min.insync.replicas": in_sync,
    }


class KafkaBroker(Component):
    """Node ``node`` of the local cluster (broker and controller in one process)."""

    def __init__(self, settings: StackSettings, node: int = 1) -> None:
        super().__init__(settings)
        self.node = node
        # One node keeps the plain name (and the folder it always had).
        self.name = "kafka" if settings.brokers == 1 else f"kafka-{node}"

    @property
    def port(self) -> int:
        return self.settings.broker_ports(self.node)[0]

    def ports(self) -> list[int]:
        return list(self.settings.broker_ports(self.node))

    @property
    def port_flags(self) -> str:
        return "--kafka-port and --controller-port"

    @property
    def properties_path(self) -> Path:
        return self.home / "server.properties"

    @property
    def libs(self) -> Path:
        return libs_dir(self.settings.cache_dir)

    def version(self) -> str:
        return kafka_version()

    def log_paths(self) -> list[Path]:
        return [self.output_path, self.home / "broker.log"]

    def missing_programs(self) -> list[Missing]:
        _, missing_java = find_java()
        missing = [missing_java] if missing_java else []
        if not jars_ready(self.settings.cache_dir):
            _, missing_mvn = find_mvn()
            missing += [missing_mvn] if missing_mvn else []
        return missing

    def wipe(self) -> None:
        super().wipe()
        self.cluster_id_path.unlink(missing_ok=True)

    @property
    def cluster_id_path(self) -> Path:
        # Every node of a cluster is formatted with the same id.
        if self.settings.brokers == 1:
            return self.home / "cluster.id"
        return self.settings.dir / "kafka-cluster.id"

    def server_properties(self) -> dict[str, str]:
        s = self.settings
        client, controller = s.broker_ports(self.node)
        voters = ",".join(f"{n}@127.0.0.1:{s.broker_ports(n)[1]}"
                          for n in range(1, s.brokers + 1))
        return {
            "process.roles": "broker,controller",
            "node.id": str(self.node),
            "controller.quorum.voters": voters,
            "listeners": f"PLAINTEXT://127.0.0.1:{client},CONTROLLER://127.0.0.1:{controller}",
            "advertised.listeners": f"PLAINTEXT://127.0.0.1:{client}",
            "controller.listener.names": "CONTROLLER",
            "inter.broker.listener.name": "PLAINTEXT",
            "listener.security.protocol.map": "CONTROLLER:PLAINTEXT,PLAINTEXT:PLAINTEXT",
            "log.dirs": str(self.data_dir),
            **cluster_settings(s.brokers),
            # Sized for a laptop: two cores, a 512 MiB heap.
            "num.network.threads": "2",
            "num.io.threads": "2",
            "log.cleaner.dedupe.buffer.size": str(16 * 1024 * 1024),
        }

    def prepare(self, announce: Announce) -> None:
        ensure_kafka_jars(self.settings.cache_dir, announce)
        self.data_dir.mkdir(parents=True, exist_ok=True)
        self.properties_path.write_text(
            "".join(f"{key}={_properties_value(value)}\n"
                    for key, value in self.server_properties().items())
        )
        # A JSON string is a valid YAML double-quoted scalar, escapes and all.
        (self.home / "log4j2.yaml").write_text(
            LOG4J2_YAML.format(log_dir=json.dumps(str(self.home))[1:-1])
        )
        if not (self.data_dir / "meta.properties").exists():
            self._format_storage()

    def _java(self) -> str:
        java, missing = find_java()
        if java is None:
            raise AssertionError(f"java vanished after the prerequisite check: {missing}")
        return java

    def _format_storage(self) -> None:
        # The cluster id is kept: a formatted log folder rejects any other id.
        id_path = self.cluster_id_path
        if not id_path.exists():
            id_path.write_text(new_cluster_id() + "\n")
        run_logged(
            [self._java(), "-Xmx256m", "-cp", f"{self.libs}/*",
             f"-Dlog4j2.configurationFile={self.home / 'log4j2.yaml'}",
             "kafka.tools.StorageTool", "format", "-t", id_path.read_text().strip(),
             "-c", str(self.properties_path), "--ignore-formatted"],
            log=self.home / "format.log", what="formatting the Kafka storage folder",
            timeout=self.settings.start_timeout,
        )

    def command(self) -> list[str]:
        heap = f"{self.settings.kafka_heap_mb}m"
        # The throughput collector, not G1: G1's write barriers and concurrent threads cost the
        # broker's request threads CPU on two shared cores, and its short pauses bought nothing
        # for a 512 MiB heap. ParallelGC against G1 in five alternated pairs of shortened
        # benchmark phases (issue 16, session 11): saturation 8,686-9,301 against 8,162-8,876
        # payments/s, the 2,000/s p99 82-92 against 98-120 ms, half the time stopped for
        # collections (docs/performance.md, "The broker's garbage collector").
        return [
            self._java(), f"-Xms{heap}", f"-Xmx{heap}", "-XX:+UseParallelGC",
            "-XX:+ExitOnOutOfMemoryError", "-Djava.awt.headless=true",
            f"-Dlog4j2.configurationFile={self.home / 'log4j2.yaml'}",
            "-cp", f"{self.libs}/*", "kafka.Kafka", str(self.properties_path),
        ]

    def answers(self, address: str, timeout: float) -> bool:
        return cluster_metadata({"bootstrap.servers": address}, timeout) is not None
