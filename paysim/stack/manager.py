"""Bring the local stack up, down, and say what runs: the same steps for every component."""

from __future__ import annotations

import fcntl
import os
import socket
import time
from collections.abc import Callable, Iterator
from concurrent.futures import ThreadPoolExecutor
from contextlib import contextmanager
from dataclasses import asdict, dataclass, replace
from pathlib import Path

from paysim.infra.config import MAX_BROKERS, StackSettings
from paysim.infra.errors import PaysimError
from paysim.infra.files import owner_only
from paysim.infra.waiting import wait_until
from paysim.stack.component import Announce, Component
from paysim.stack.jars import ensure_kafka_jars
from paysim.stack.kafka import KafkaBroker
from paysim.stack.prerequisites import raise_if_missing
from paysim.stack.process import (
    ProcessRecord,
    boot_ticks,
    is_alive,
    is_running,
    start_detached,
    stop,
)
from paysim.stack.redis import CLUSTER_NODES, RedisClusterNode, RedisServer
from paysim.stack.redis_cluster import form_cluster

PROBE_TIMEOUT_S = 2.0
PORT_GRACE_S = 5.0


@dataclass(frozen=True)
class StartResult:
    name: str
    started: bool  # False: it was already running
    pid: int
    address: str
    seconds: float


@dataclass(frozen=True)
class StopResult:
    name: str
    pid: int
    killed: bool  # True: it ignored SIGTERM for the grace period and got SIGKILL


@dataclass(frozen=True)
class ComponentStatus:
    name: str
    state: str  # "up", "down", or "not answering" (process alive, no reply)
    pid: int | None
    address: str
    version: str
    data_dir: str
    uptime_s: float | None

    def as_dict(self) -> dict[str, object]:
        return asdict(self)


def port_in_use(port: int) -> bool:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as probe:
        probe.settimeout(0.5)
        return probe.connect_ex(("127.0.0.1", port)) == 0


def port_holder(port: int) -> str:
    """Which local process listens on ``port`` ("pid 123 (java)"), as far as /proc tells."""
    inodes = set()
    for table in ("/proc/net/tcp", "/proc/net/tcp6"):
        try:
            lines = Path(table).read_text().splitlines()[1:]
        except OSError:
            continue
        for line in lines:
            fields = line.split()
            if len(fields) > 9 and int(fields[1].rsplit(":", 1)[1], 16) == port:
                inodes.add(fields[9])
    for fd_dir in Path("/proc").glob("[0-9]*/fd"):
        try:
            for fd in fd_dir.iterdir():
                target = os.readlink(fd)
                if target.startswith("socket:[") and target[8:-1] in inodes:
                    pid = fd_dir.parent.name
                    name = (fd_dir.parent / "comm").read_text().strip()
                    return f"pid {pid} ({name})"
        except OSError:
            continue
    return "a process this user cannot see"


class LocalStack:
    """The Kafka broker and redis-server (or Redis Cluster) that paysim runs under
    ``settings.dir``."""

    def __init__(self, settings: StackSettings, announce: Announce = print,
                 kafka: bool = True) -> None:
        """``kafka``: False for Redis alone (a test's Redis Cluster beside the suite's
        broker)."""
        self.settings = settings
        self.announce = announce
        self.cluster_nodes = [RedisClusterNode(settings, node)
                              for node in range(1, CLUSTER_NODES + 1)
                              ] if settings.redis_cluster else []
        redis_parts: list[Component] = list(self.cluster_nodes) or [RedisServer(settings)]
        # Redis first: it is up in milliseconds while the brokers' JVMs start.
        self.components: list[Component] = redis_parts + [
            KafkaBroker(settings, node) for node in range(1, settings.brokers + 1) if kafka]

    @contextmanager
    def _locked(self) -> Iterator[None]:
        """One stack command at a time per stack folder: two `up`s at once would each start
        processes and overwrite each other's pid records."""
        # Everything written in the stack folder while locked (configs, logs, pid records) is
        # its owner's alone.
        with owner_only():
            try:
                self.settings.dir.mkdir(parents=True, exist_ok=True)
                handle = (self.settings.dir / ".lock").open("a")
            except OSError as exc:
                raise PaysimError(f"cannot use the stack folder {self.settings.dir}: "
                                  f"{exc.strerror}") from None
            with handle:
                fcntl.flock(handle, fcntl.LOCK_EX)
                yield

    def record(self, component: Component) -> ProcessRecord | None:
        return ProcessRecord.load(component.record_path)

    def running(self, component: Component) -> ProcessRecord | None:
        record = self.record(component)
        return record if is_running(record) else None

    def prepare(self) -> None:
        """Check every program is installed and fetch the broker's jars; start nothing."""
        with self._locked():
            raise_if_missing([item for c in self.components for item in c.missing_programs()])
            ensure_kafka_jars(self.settings.cache_dir, self.announce)

    def up(self, fresh: bool = False) -> list[StartResult]:
        """Start what is not running and wait until every component answers."""
        with self._locked():
            if fresh:
                self._down()
                for component in self.components:
                    self.announce(f"wiping {component.name} data in {component.data_dir}")
                    component.wipe()
            running = {c.name: record for c in self.components if (record := self.running(c))}
            to_start = [c for c in self.components if c.name not in running]
            raise_if_missing([item for c in to_start for item in c.missing_programs()])
            for component in to_start:
                self._check_ports_free(component)
            started: dict[str, tuple[ProcessRecord, float, dict]] = {}
            try:
                for component in to_start:
                    _in_folder(component.home, component.home.mkdir, parents=True,
                               exist_ok=True)
                    _in_folder(component.home, component.prepare, self.announce)
                for component in to_start:
                    started[component.name] = self._start(component)
                results = []
                for component in self.components:
                    if component.name in started:
                        record, began, log_sizes = started[component.name]
                        self._wait_until_answering(component, record, log_sizes)
                        seconds = time.monotonic() - began
                    else:
                        record, seconds = running[component.name], 0.0
                        # Running is not answering: a second `up` right after an interrupted
                        # one must also wait for the broker to be ready.
                        self._wait_until_answering(component, record, component.log_sizes())
                    results.append(StartResult(component.name, component.name in started,
                                               record.pid, record.address, seconds))
                if self.cluster_nodes:
                    form_cluster(self.cluster_nodes, self.settings.dir / "redis-cluster.log",
                                 self.settings.start_timeout, self.announce)
                return results
            except PaysimError as exc:
                self._undo(started, exc)
                raise

    def _undo(self, started: dict[str, tuple[ProcessRecord, float, dict]],
              error: PaysimError) -> None:
        """Stop what this `up` started, so a failed `up` leaves nothing half-running."""
        for component in self.components:
            if component.name in started and self.running(component):
                stop(started[component.name][0].pid, self.settings.stop_timeout)
                error.details.append(f"stopped {component.name}, which this `up` had started")
            if component.name in started:
                component.record_path.unlink(missing_ok=True)

    def _check_ports_free(self, component: Component) -> None:
        for port in component.ports():
            # A process just killed (or a child it forked, like redis-server's AOF rewrite) can
            # hold its port for a moment after: give it a few seconds before calling it taken.
            if not wait_until(lambda port=port: not port_in_use(port), timeout=PORT_GRACE_S,
                              interval=0.1):
                raise PaysimError(
                    f"port {port} on 127.0.0.1 is taken by {port_holder(port)}, which paysim "
                    f"did not start; stop it, or give the local {component.name} other ports "
                    f"with {component.port_flags}"
                )

    def _start(self, component: Component) -> tuple[ProcessRecord, float, dict]:
        log_sizes = component.log_sizes()
        began = time.monotonic()
        pid = start_detached(component.command(), component.output_path, component.home)
        record = ProcessRecord(pid=pid, address=component.address, version=component.version(),
                               started_at=time.time(), boot_ticks=boot_ticks(pid) or 0)
        record.save(component.record_path)
        return record, began, log_sizes

    def _wait_until_answering(self, component: Component, record: ProcessRecord,
                              log_sizes: dict) -> None:
        def answering() -> bool:
            if not is_alive(record.pid):
                component.record_path.unlink(missing_ok=True)
                raise PaysimError(f"{component.name} exited while starting",
                                  details=component.log_tail(log_sizes))
            return component.answers(record.address, PROBE_TIMEOUT_S)

        if wait_until(answering, self.settings.start_timeout):
            return
        raise PaysimError(
            f"{component.name} did not answer on {record.address} within "
            f"{self.settings.start_timeout:.0f} s",
            details=component.log_tail(log_sizes),
        )

    def down(self) -> list[StopResult]:
        """Stop every running component; an empty list means nothing was running."""
        with self._locked():
            return self._down()

    def _down(self) -> list[StopResult]:
        """Stop every component that runs under the stack folder, also one started with other
        flags (a `stack up --brokers 3` followed by a plain `stack down`)."""
        configured = {c.name: c.record_path for c in self.components}
        found = {path.parent.name: path for path in self.settings.dir.glob("*/pid.json")}
        running = []
        for name, record_path in sorted({**found, **configured}.items()):
            record = ProcessRecord.load(record_path)
            if is_running(record):
                running.append((name, record))
            else:
                record_path.unlink(missing_ok=True)
        # All at once: a cluster's nodes stopped one by one leave the last waiting for a
        # controller quorum that is gone; together, each finishes its controlled shutdown.
        with ThreadPoolExecutor(max(1, len(running))) as pool:
            killed = list(pool.map(lambda item: stop(item[1].pid, self.settings.stop_timeout),
                                   running))
        for name, _ in running:
            (self.settings.dir / name / "pid.json").unlink(missing_ok=True)
        return [StopResult(name, record.pid, was_killed)
                for (name, record), was_killed in zip(running, killed, strict=True)]

    def status(self) -> list[ComponentStatus]:
        """Each component's state; a Redis Cluster or a Kafka of several brokers that runs
        under the stack folder is shown node by node even when these settings name a single
        redis-server or broker (a `stack status` without `--redis-cluster` or `--brokers`)."""
        return [self._status(component) for component in self._shown()]

    def _shown(self) -> list[Component]:
        redis_parts = [c for c in self.components if not isinstance(c, KafkaBroker)]
        brokers = [c for c in self.components if isinstance(c, KafkaBroker)]
        if not self.cluster_nodes:
            nodes = [RedisClusterNode(self.settings, node)
                     for node in range(1, CLUSTER_NODES + 1)]
            if not self.running(redis_parts[0]) and any(self.running(n) for n in nodes):
                redis_parts = nodes  # the cluster in the single server's place
        if len(brokers) == 1 and not self.running(brokers[0]):
            brokers = self._recorded_brokers() or brokers
        return [*redis_parts, *brokers]

    def _recorded_brokers(self) -> list[KafkaBroker]:
        """The brokers of a Kafka of several nodes running under the stack folder while these
        settings name one (a `stack status` without `--brokers` after `stack up --brokers 3`);
        none when there is no such Kafka."""
        many = replace(self.settings, brokers=MAX_BROKERS)  # names its nodes kafka-<n>
        count = 0
        while count < MAX_BROKERS and self.running(KafkaBroker(many, count + 1)):
            count += 1
        if count < 2:
            return []
        found = replace(self.settings, brokers=count)
        return [KafkaBroker(found, node) for node in range(1, count + 1)]

    def _status(self, component: Component) -> ComponentStatus:
        record = self.running(component)
        if record is None:
            return ComponentStatus(component.name, "down", None, component.address,
                                   component.version(), str(component.data_dir), None)
        # The recorded address: the one it was started on, whatever the flags say now.
        answers = component.answers(record.address, PROBE_TIMEOUT_S)
        return ComponentStatus(component.name, "up" if answers else "not answering", record.pid,
                               record.address, record.version, str(component.data_dir),
                               time.time() - record.started_at)

    def pids(self) -> list[int]:
        return [record.pid for c in self.components if (record := self.running(c))]


def _in_folder(folder: Path, action: Callable[..., object], *args: object,
               **kwargs: object) -> None:
    """Run a step that writes under ``folder``; a file-system failure becomes one line."""
    try:
        action(*args, **kwargs)
    except OSError as exc:
        raise PaysimError(f"cannot write under {folder}: {exc.strerror or exc}") from None
