"""`paysim run-all`: start the services as local processes, restart any that dies, stop all."""

from __future__ import annotations

import contextlib
import ctypes
import fcntl
import os
import signal
import subprocess
import sys
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

import redis

from paysim import __version__
from paysim.infra.config import Settings, settings_env
from paysim.infra.errors import PaysimError
from paysim.infra.kafka import cluster_metadata
from paysim.infra.topics import ensure_topics
from paysim.infra.waiting import wait_until
from paysim.pipeline import registry, store
from paysim.stack.logs import tail_lines
from paysim.stack.manager import LocalStack
from paysim.stack.process import ProcessRecord, boot_ticks, is_alive, is_running
from paysim.stack.process import stop as stop_process

FIRST_RESTART_DELAY_S = 1.0
MAX_RESTART_DELAY_S = 30.0
HEALTHY_AFTER_S = 30.0  # a child that ran this long restarts again without delay
WATCH_EVERY_S = 2.0
PR_SET_PDEATHSIG = 1

Announce = Callable[[str], None]


def _die_with_parent() -> None:
    # The kernel sends SIGTERM to the child when the supervisor dies, even by SIGKILL, so no
    # service outlives it.
    ctypes.CDLL("libc.so.6", use_errno=True).prctl(PR_SET_PDEATHSIG, signal.SIGTERM)


@dataclass
class Child:
    service: str
    instance: int
    log_path: Path
    process: subprocess.Popen | None = None
    restarts: int = 0
    started_at: float = 0.0
    restart_at: float | None = None
    delay: float = FIRST_RESTART_DELAY_S
    last_exit: int | None = None
    last_seen: float = 0.0  # when its heartbeat last changed (or it started)

    @property
    def name(self) -> str:
        return f"{self.service}-{self.instance}"

    @property
    def pid(self) -> int | None:
        return self.process.pid if self.process else None

    @property
    def running(self) -> bool:
        return self.process is not None and self.process.poll() is None


def answering(settings: Settings) -> tuple[bool, bool]:
    """(Kafka answers, Redis answers) at the configured addresses."""
    kafka = cluster_metadata({"bootstrap.servers": settings.kafka_bootstrap,
                              **settings.kafka.client}, timeout=3) is not None
    client = redis.Redis.from_url(settings.redis_url, socket_timeout=3, socket_connect_timeout=3)
    try:
        redis_ok = bool(client.ping())
    except redis.RedisError:
        redis_ok = False
    finally:
        client.close()
    return kafka, redis_ok


def ensure_services_reachable(settings: Settings, announce: Announce) -> None:
    """Kafka and Redis must answer; start the local stack for whatever is not configured."""
    kafka_ok, redis_ok = answering(settings)
    if kafka_ok and redis_ok:
        return
    local_needed = (not kafka_ok and settings.kafka.bootstrap is None) or (
        not redis_ok and settings.redis.url is None)
    if local_needed:
        announce("no Kafka or Redis answers on the defaults: starting the local stack")
        for result in LocalStack(settings.stack, announce).up():
            announce(f"  {result.name} {'started' if result.started else 'already running'} "
                     f"on {result.address}")
        kafka_ok, redis_ok = answering(settings)
    if not kafka_ok:
        raise PaysimError(f"Kafka at {settings.kafka_bootstrap} does not answer")
    if not redis_ok:
        raise PaysimError(f"Redis at {settings.redis_url} does not answer")


@dataclass
class Supervisor:
    settings: Settings
    counts: dict[str, int]  # service -> instances
    announce: Announce
    children: list[Child] = field(default_factory=list)
    stopping: bool = False

    def __post_init__(self) -> None:
        logs = self.settings.services.dir / "logs"
        logs.mkdir(parents=True, exist_ok=True)
        self.children = [Child(service, i, logs / f"{service}-{i}.log")
                         for service in registry.NAMES for i in range(self.counts.get(service, 1))]
        self.env = {**os.environ, **settings_env(self.settings)}

    def start_all(self) -> None:
        for child in self.children:
            self._start(child)

    def _start(self, child: Child) -> None:
        command = [sys.executable, "-m", "paysim", "service", child.service,
                   "--instance", str(child.instance)]
        with child.log_path.open("ab") as log, open(os.devnull, "rb") as devnull:
            child.process = subprocess.Popen(
                command, stdin=devnull, stdout=log, stderr=subprocess.STDOUT, env=self.env,
                start_new_session=True, preexec_fn=_die_with_parent,
            )
        child.started_at = child.last_seen = time.time()
        child.restart_at = None

    def watch(self, beats: dict[str, dict[str, str]]) -> None:
        """Kill a running child whose heartbeat has been silent for `services.stuck_after`.

        A service writes its heartbeat between batches; silent that long it is stuck
        (librdkafka can hang in a transactional call after a broker restart, past its own
        timeout). Killed, it is restarted like any child that dies."""
        now = time.time()
        stuck_after = self.settings.services.stuck_after
        for child in self.children:
            if not child.running:
                continue
            beat = beats.get(child.name)
            if beat and int(beat.get("pid", 0)) == child.pid:
                child.last_seen = max(child.last_seen, float(beat["seen_at"]))
            if now - child.last_seen > stuck_after:
                self.announce(f"{child.name} sent no heartbeat for {stuck_after:.0f} s: "
                              "killed as stuck")
                child.process.kill()
                child.process.wait(10)

    def poll(self) -> None:
        """Restart children that died, each after its backoff."""
        now = time.time()
        for child in self.children:
            if child.process is None or child.running:
                if child.restart_at is not None and now >= child.restart_at and not self.stopping:
                    child.restarts += 1
                    self._start(child)
                    self.announce(f"{child.name} restarted (pid {child.pid}, restart "
                                  f"{child.restarts})")
                continue
            if self.stopping or child.restart_at is not None:
                continue
            child.last_exit = child.process.returncode
            ran = now - child.started_at
            child.delay = (FIRST_RESTART_DELAY_S if ran >= HEALTHY_AFTER_S
                           else min(child.delay * 2, MAX_RESTART_DELAY_S))
            child.restart_at = now + child.delay
            child.process = None
            self.announce(f"{child.name} exited with code {child.last_exit} after {ran:.1f} s; "
                          f"restarting in {child.delay:.0f} s (log: {child.log_path})")

    def stop_all(self, grace_s: float = 30.0) -> None:
        """SIGTERM every child (each finishes its batch and commits), SIGKILL stragglers."""
        self.stopping = True
        live = [c for c in self.children if c.running]
        for child in live:
            child.process.send_signal(signal.SIGTERM)
        deadline = time.monotonic() + grace_s
        for child in live:
            try:
                child.process.wait(max(0.1, deadline - time.monotonic()))
            except subprocess.TimeoutExpired:
                child.process.kill()
                child.process.wait(10)
                self.announce(f"{child.name} did not stop in {grace_s:.0f} s: killed")


@dataclass(frozen=True)
class ServiceView:
    name: str
    state: str  # up, starting, restarting, down
    pid: int | None
    restarts: int
    processed: int
    dead_letters: int
    lag: int
    uptime_s: float | None


def read_heartbeats(client: redis.Redis) -> dict[str, dict[str, str]]:
    """Live services by name ("processor-0"), from their heartbeat hashes."""
    beats = {}
    now = time.time()
    for beat in store.read_heartbeat_hashes(client):
        if "service" in beat and now - float(beat["seen_at"]) < store.HEARTBEAT_FRESH_S:
            beats[f"{beat['service']}-{beat['instance']}"] = beat
    return beats


def view(children: list[Child], beats: dict[str, dict[str, str]]) -> list[ServiceView]:
    rows = []
    for child in children:
        beat = beats.get(child.name)
        alive = child.running and child.pid is not None and is_alive(child.pid)
        if not alive:
            state = "restarting" if child.restart_at else "down"
        else:
            state = "up" if beat and int(beat.get("pid", 0)) == child.pid else "starting"
        rows.append(ServiceView(
            child.name, state, child.pid if alive else None, child.restarts,
            int(beat["processed"]) if beat else 0, int(beat["dead_letters"]) if beat else 0,
            int(beat["lag"]) if beat else 0, time.time() - child.started_at if alive else None,
        ))
    return rows


def prepare_run(settings: Settings, announce: Announce) -> None:
    ensure_services_reachable(settings, announce)
    report = ensure_topics(settings)
    if report.created:
        announce(f"created topics: {', '.join(report.created)}")


def record_path(settings: Settings) -> Path:
    return settings.services.dir / "run-all.json"


def running_supervisor(settings: Settings) -> ProcessRecord | None:
    record = ProcessRecord.load(record_path(settings))
    return record if is_running(record) else None


def run_all(settings: Settings, counts: dict[str, int], announce: Announce,
            stop: threading.Event, tick: Callable[[Supervisor], None] | None = None) -> None:
    """Start everything, keep it running until ``stop`` is set, then stop it all cleanly."""
    settings.services.dir.mkdir(parents=True, exist_ok=True)
    # Held for the supervisor's life: a second run-all on the same folder would start a second
    # set of services fencing the first (they share transactional ids).
    lock = (settings.services.dir / "run-all.lock").open("a")
    try:
        fcntl.flock(lock, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except BlockingIOError:
        lock.close()
        other = running_supervisor(settings)
        raise PaysimError("paysim services already run"
                          + (f" (supervisor pid {other.pid})" if other else "")
                          + "; `paysim stop` stops them") from None
    ProcessRecord(pid=os.getpid(), address=f"{settings.http.host}:{settings.http.port}",
                  version=__version__, started_at=time.time(),
                  boot_ticks=boot_ticks(os.getpid()) or 0,
                  details={"counts": counts}).save(record_path(settings))
    supervisor = None
    client = redis.Redis.from_url(settings.redis_url, socket_timeout=3, socket_connect_timeout=3)
    try:
        prepare_run(settings, announce)
        supervisor = Supervisor(settings, counts, announce)
        supervisor.start_all()
        last_watch = time.monotonic()
        while not stop.wait(0.5):
            supervisor.poll()
            if time.monotonic() - last_watch >= WATCH_EVERY_S:
                last_watch = time.monotonic()
                # While Redis is away there are no heartbeats to judge by.
                with contextlib.suppress(redis.RedisError):
                    supervisor.watch(read_heartbeats(client))
            if tick:
                tick(supervisor)
    finally:
        if supervisor is not None:
            announce("stopping the services")
            supervisor.stop_all()
        record_path(settings).unlink(missing_ok=True)
        client.close()
        lock.close()


def start_in_background(settings: Settings, counts: dict[str, int], argv: list[str],
                        timeout: float = 120.0) -> tuple[ProcessRecord, bool]:
    """`run-all --detach`: a supervisor of its own, returned (with True) once every service
    is up; or the one already running (with False)."""
    record = running_supervisor(settings)
    if record:
        return record, False
    settings.services.dir.mkdir(parents=True, exist_ok=True)
    log = settings.services.dir / "run-all.log"
    start = log.stat().st_size if log.exists() else 0
    with log.open("ab") as out, open(os.devnull, "rb") as devnull:
        process = subprocess.Popen(
            [sys.executable, "-m", "paysim", *argv], stdin=devnull, stdout=out,
            stderr=subprocess.STDOUT, start_new_session=True,
            env={**os.environ, **settings_env(settings)},
        )
    client = redis.Redis.from_url(settings.redis_url, socket_timeout=3, socket_connect_timeout=3)
    wanted = set(registry.instance_names(counts))

    def all_up() -> bool:
        if process.poll() is not None:
            if running_supervisor(settings):  # another run-all got there first
                return True
            raise PaysimError(f"run-all exited with code {process.returncode} while starting",
                              details=tail_lines(log, start=start))
        try:
            beats = read_heartbeats(client)
        except redis.RedisError:
            return False  # the local stack may still be starting
        return wanted <= beats.keys()

    try:
        if not wait_until(all_up, timeout, interval=0.25):
            process.terminate()
            raise PaysimError(f"the services did not all report within {timeout:.0f} s",
                              details=tail_lines(log, start=start))
    finally:
        client.close()
    record = running_supervisor(settings)
    if record is None:
        raise PaysimError("run-all stopped right after starting", details=tail_lines(log,
                                                                                    start=start))
    return record, record.pid == process.pid


def stop_background(settings: Settings) -> ProcessRecord | None:
    """Stop a detached run-all and its services; None when none was running."""
    record = running_supervisor(settings)
    if record is None:
        record_path(settings).unlink(missing_ok=True)
        return None
    stop_process(record.pid, grace_s=60.0)
    record_path(settings).unlink(missing_ok=True)
    return record
