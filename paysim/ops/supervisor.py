"""The supervisor of `paysim run-all`: each service a child process, restarted with backoff when
it dies, killed when its heartbeat goes silent, stopped in order."""

from __future__ import annotations

import ctypes
import os
import signal
import subprocess
import sys
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

from paysim.infra.config import Settings, settings_env
from paysim.infra.files import PRIVATE_UMASK
from paysim.pipeline import registry, store

FIRST_RESTART_DELAY_S = 1.0
MAX_RESTART_DELAY_S = 30.0
HEALTHY_AFTER_S = 30.0  # a child that ran this long restarts again without delay
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


@dataclass
class Supervisor:
    settings: Settings
    counts: dict[str, int]  # service -> instances
    announce: Announce
    external: tuple[str, ...] = ()  # services left to an outside implementation
    children: list[Child] = field(default_factory=list)
    stopping: bool = False

    def __post_init__(self) -> None:
        logs = self.settings.services.dir / "logs"
        logs.mkdir(parents=True, exist_ok=True)
        first = self.settings.services.first_instance
        self.children = [Child(service, i, logs / f"{service}-{i}.log")
                         for service in registry.NAMES if service not in self.external
                         for i in range(first, first + self.counts.get(service, 1))]
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
                start_new_session=True, preexec_fn=_die_with_parent, umask=PRIVATE_UMASK,
            )
        child.started_at = child.last_seen = time.time()
        child.restart_at = None

    def watch(self, beats: dict[str, store.Heartbeat]) -> None:
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
            if beat and beat.pid == child.pid:
                child.last_seen = max(child.last_seen, beat.seen_at)
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
