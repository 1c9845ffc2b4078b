"""`paysim run-all` in the foreground or detached, and `paysim stop`: the single-instance lock,
the supervisor's pid record, the loop that keeps the services running."""

from __future__ import annotations

import contextlib
import fcntl
import os
import subprocess
import sys
import threading
import time
from collections.abc import Callable
from pathlib import Path

import redis

from paysim import __version__
from paysim.infra import tracing
from paysim.infra.config import Settings, settings_env
from paysim.infra.errors import PaysimError
from paysim.infra.files import PRIVATE_UMASK, owner_only, writing
from paysim.infra.kafka import group_lag
from paysim.infra.waiting import wait_until
from paysim.ops.readiness import Announce, prepare_run
from paysim.ops.supervisor import Supervisor
from paysim.pipeline import registry, store
from paysim.stack.logs import tail_lines
from paysim.stack.process import ProcessRecord, boot_ticks, is_running
from paysim.stack.process import stop as stop_process

WATCH_EVERY_S = 2.0
EXTERNAL_MARK_TTL_S = 10  # renewed every WATCH_EVERY_S while run-all runs


def record_path(settings: Settings) -> Path:
    return settings.services.dir / "run-all.json"


def running_supervisor(settings: Settings) -> ProcessRecord | None:
    record = ProcessRecord.load(record_path(settings))
    return record if is_running(record) else None


def _services_folder(settings: Settings) -> contextlib.AbstractContextManager[None]:
    return writing("the services folder", settings.services.dir)


@owner_only()
def run_all(settings: Settings, counts: dict[str, int], announce: Announce,
            stop: threading.Event, tick: Callable[[Supervisor], None] | None = None,
            external: tuple[str, ...] = ()) -> None:
    """Start everything but the ``external`` services (their consumer groups are left to an
    outside implementation), keep it running until ``stop`` is set, then stop it cleanly."""
    # Tracing misconfigured (a bad OTEL_TRACES_SAMPLER_ARG, the packages missing): one line
    # here, not every child failing and restarting.
    tracing.check(settings)
    with _services_folder(settings):
        settings.services.dir.mkdir(parents=True, exist_ok=True)
        # Held for the supervisor's life: a second run-all on the same folder would start a
        # second set of services fencing the first (they share transactional ids).
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
                  details={"counts": counts, "external": list(external)}
                  ).save(record_path(settings))
    supervisor = None
    client = store.connect(settings, timeout=3.0)
    try:
        prepare_run(settings, announce,
                    {name: n for name, n in counts.items() if name not in external})
        supervisor = Supervisor(settings, counts, announce, external)
        supervisor.start_all()
        for name in external:
            spec = registry.by_name(name)
            announce(f"{name} is external: consumer group {spec.group} on "
                     f"{spec.topic(settings)} is left to an outside implementation")
        _mark_external(client, external)
        last_watch = time.monotonic()
        while not stop.wait(0.5):
            supervisor.poll()
            if time.monotonic() - last_watch >= WATCH_EVERY_S:
                last_watch = time.monotonic()
                # While Redis is away there are no heartbeats to judge by.
                with contextlib.suppress(redis.RedisError):
                    supervisor.watch(store.read_heartbeats(client))
                _mark_external(client, external)
            if tick:
                tick(supervisor)
    finally:
        if supervisor is not None:
            announce("stopping the services")
            supervisor.stop_all()
            _mark_external(client, ())
        record_path(settings).unlink(missing_ok=True)
        client.close()
        lock.close()


def _mark_external(client: redis.Redis, external: tuple[str, ...]) -> None:
    """Tell `send` and the edge's health check that these are provided (from outside)."""
    with contextlib.suppress(redis.RedisError):  # Redis away: the mark expires meanwhile
        store.mark_external(client, external, EXTERNAL_MARK_TTL_S)


ERROR_PREFIX = "paysim: error: "  # how the CLI starts the one line of a failure


@owner_only()
def start_in_background(settings: Settings, counts: dict[str, int], argv: list[str],
                        timeout: float = 120.0,
                        external: tuple[str, ...] = ()) -> tuple[ProcessRecord, bool]:
    """`run-all --detach`: a supervisor of its own, returned (with True) once every service
    is up; or the one already running (with False)."""
    record = running_supervisor(settings)
    if record:
        return record, False
    log = settings.services.dir / "run-all.log"
    with _services_folder(settings):
        settings.services.dir.mkdir(parents=True, exist_ok=True)
        start = log.stat().st_size if log.exists() else 0
        out = log.open("ab")
    with out, open(os.devnull, "rb") as devnull:
        process = subprocess.Popen(
            [sys.executable, "-m", "paysim", *argv], stdin=devnull, stdout=out,
            stderr=subprocess.STDOUT, start_new_session=True, umask=PRIVATE_UMASK,
            env={**os.environ, **settings_env(settings)},
        )
    client = store.connect(settings, timeout=3.0)
    wanted = set(registry.instance_names(counts, external, settings.services.first_instance))

    def all_up() -> bool:
        if process.poll() is not None:
            if running_supervisor(settings):  # another run-all got there first
                return True
            lines = tail_lines(log, start=start)
            # The child's own one-line error, when it gave one, is the whole story.
            reason = next((line.removeprefix(ERROR_PREFIX) for line in reversed(lines)
                           if line.startswith(ERROR_PREFIX)), None)
            if reason is not None:
                raise PaysimError(f"run-all could not start: {reason} (log: {log})")
            raise PaysimError(f"run-all exited with code {process.returncode} while starting",
                              details=lines)
        try:
            beats = store.read_heartbeats(client)
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
        with _services_folder(settings):
            record_path(settings).unlink(missing_ok=True)
        return None
    stop_process(record.pid, grace_s=60.0)
    record_path(settings).unlink(missing_ok=True)
    return record


def external_services(record: ProcessRecord | None) -> tuple[str, ...]:
    """The services a running run-all left to an outside implementation."""
    if record is None:
        return ()
    return tuple(name for name in record.details.get("external", [])
                 if name in registry.EXTERNAL_NAMES)


def external_lag(settings: Settings, name: str, timeout: float = 5.0) -> int | None:
    """An external service's lag: its consumer group's committed offsets against the high
    watermarks of its input topic (None when Kafka does not answer)."""
    spec = registry.by_name(name)
    return group_lag(settings, spec.group, spec.topic(settings), timeout)
