"""Bring the local stack up, down, and say what runs: the same steps for every component."""

from __future__ import annotations

import socket
import time
from dataclasses import asdict, dataclass

from paysim.config import StackSettings
from paysim.errors import PaysimError
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
from paysim.stack.redis import RedisServer
from paysim.waiting import wait_until

PROBE_TIMEOUT_S = 2.0


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


class LocalStack:
    """The Kafka broker and redis-server that paysim runs under ``settings.dir``."""

    def __init__(self, settings: StackSettings, announce: Announce = print) -> None:
        self.settings = settings
        self.announce = announce
        # Redis first: it is up in milliseconds while the broker's JVM starts.
        self.components: list[Component] = [RedisServer(settings), KafkaBroker(settings)]

    def record(self, component: Component) -> ProcessRecord | None:
        return ProcessRecord.load(component.record_path)

    def running(self, component: Component) -> ProcessRecord | None:
        record = self.record(component)
        return record if is_running(record) else None

    def prepare(self) -> None:
        """Check every program is installed and fetch the broker's jars; start nothing."""
        raise_if_missing([item for c in self.components for item in c.missing_programs()])
        ensure_kafka_jars(self.settings.cache_dir, self.announce)

    def up(self, fresh: bool = False) -> list[StartResult]:
        """Start what is not running and wait until every component answers."""
        if fresh:
            self.down()
            for component in self.components:
                self.announce(f"wiping {component.name} data in {component.data_dir}")
                component.wipe()
        results: dict[str, StartResult] = {}
        to_start = []
        for component in self.components:
            record = self.running(component)
            if record:
                results[component.name] = StartResult(component.name, False, record.pid,
                                                      record.address, 0.0)
            else:
                to_start.append(component)
        raise_if_missing([item for c in to_start for item in c.missing_programs()])
        for component in to_start:
            self._check_ports_free(component)
        for component in to_start:
            component.home.mkdir(parents=True, exist_ok=True)
            component.prepare(self.announce)
        started = {c.name: self._start(c) for c in to_start}
        for component in to_start:
            record, began = started[component.name]
            self._wait_until_answering(component, record)
            results[component.name] = StartResult(component.name, True, record.pid,
                                                  record.address, time.monotonic() - began)
        return [results[c.name] for c in self.components]

    def _check_ports_free(self, component: Component) -> None:
        for port in component.ports():
            if port_in_use(port):
                raise PaysimError(
                    f"port {port} on 127.0.0.1 is taken by a process paysim did not start; stop "
                    f"it, or give the local {component.name} other ports with "
                    f"{component.port_flags}"
                )

    def _start(self, component: Component) -> tuple[ProcessRecord, float]:
        began = time.monotonic()
        pid = start_detached(component.command(), component.output_path, component.home)
        record = ProcessRecord(pid=pid, address=component.address, version=component.version(),
                               started_at=time.time(), boot_ticks=boot_ticks(pid) or 0)
        record.save(component.record_path)
        return record, began

    def _wait_until_answering(self, component: Component, record: ProcessRecord) -> None:
        def answering() -> bool:
            if not is_alive(record.pid):
                component.record_path.unlink(missing_ok=True)
                raise PaysimError(f"{component.name} exited while starting",
                                  details=component.log_tail())
            return component.answers(PROBE_TIMEOUT_S)

        if wait_until(answering, self.settings.start_timeout):
            return
        stop(record.pid, self.settings.stop_timeout)
        component.record_path.unlink(missing_ok=True)
        raise PaysimError(
            f"{component.name} did not answer on {record.address} within "
            f"{self.settings.start_timeout:.0f} s; stopped it",
            details=component.log_tail(),
        )

    def down(self) -> list[StopResult]:
        """Stop every running component; an empty list means nothing was running."""
        results = []
        for component in reversed(self.components):
            record = self.running(component)
            if record:
                killed = stop(record.pid, self.settings.stop_timeout)
                results.append(StopResult(component.name, record.pid, killed))
            component.record_path.unlink(missing_ok=True)
        return results

    def status(self) -> list[ComponentStatus]:
        return [self._status(component) for component in self.components]

    def _status(self, component: Component) -> ComponentStatus:
        record = self.running(component)
        if record is None:
            return ComponentStatus(component.name, "down", None, component.address,
                                   component.version(), str(component.data_dir), None)
        state = "up" if component.answers(PROBE_TIMEOUT_S) else "not answering"
        return ComponentStatus(component.name, state, record.pid, record.address, record.version,
                               str(component.data_dir), time.time() - record.started_at)

    def pids(self) -> list[int]:
        return [record.pid for c in self.components if (record := self.running(c))]

