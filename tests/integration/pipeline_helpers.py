"""The pipeline as the integration tests run it: `paysim run-all --detach` and the CLI; runs
in the background, and faults injected on their progress."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import threading
import time
from collections import Counter
from collections.abc import Callable, Iterator, Sequence
from contextlib import contextmanager
from pathlib import Path
from typing import IO, TypeVar

import redis

from paysim.domain import decisions
from paysim.infra.config import Settings, settings_env
from paysim.infra.waiting import wait_until
from paysim.load.generator import Mix, PaymentStream, build_population
from paysim.pipeline import store
from paysim.pipeline.registry import NOTIFIER, PIPELINE_NAMES
from paysim.stack.redis import CLUSTER_NODES
from tests.helpers import free_port, free_port_run, run_paysim, settings_for


@contextmanager
def running_pipeline(settings: Settings, *args: str,
                     env: dict[str, str] | None = None) -> Iterator[Settings]:
    """`paysim run-all --detach` (and ``args``) with these settings (and ``env``, its
    children's too), stopped on the way out."""
    started = run_paysim("run-all", "--detach", *args,
                         env={**settings_env(settings), **(env or {})})
    assert started.returncode == 0, started.stdout + started.stderr
    try:
        yield settings
    finally:
        run_paysim("stop", env=settings_env(settings))


@contextmanager
def pipeline_on(flags: dict[str, object]) -> Iterator[Settings]:
    """run-all in the background on the stack of ``flags``, with no random issuer declines so
    every outcome is the one the generator injected."""
    with running_pipeline(settings_for({**flags, "http.port": free_port(),
                                        "issuer.decline_rate": 0,
                                        "issuer.fault_rate": 0})) as settings:
        yield settings


def redis_cluster_flags(home: Path) -> dict[str, object]:
    """A local Redis Cluster of its own under ``home`` (`stack up --redis-cluster`: 3
    primaries, a replica each), with the services' folders beside it."""
    return {"stack.dir": str(home / "stack"), "stack.redis_cluster": True,
            # Each node's port, then each node's cluster bus port: one run of free ports.
            "stack.redis_port": free_port_run(2 * CLUSTER_NODES, step=1),
            "services.dir": str(home / "services"), "lifecycle.runs_dir": str(home / "runs")}


def paysim(settings: Settings, *args: str) -> subprocess.CompletedProcess[str]:
    return run_paysim(*args, env=settings_env(settings))


def send(settings: Settings, *args: str) -> dict:
    result = paysim(settings, "send", "--json", *args)
    assert result.returncode == 0, result.stdout + result.stderr
    return json.loads(result.stdout)


def injected(seed: int, count: int, settings: Settings) -> Counter:
    stream = PaymentStream(build_population(seed), seed, Mix(), settings.issuer.max_amount_usd)
    return Counter(p.expected or decisions.APPROVED for p in stream.take(count))


def reason_counts(report: dict) -> dict[str, int]:
    return {row["reason_code"]: row["count"] for row in report["outcomes"]["by_reason"]}


def run_done_entries(settings: Settings, run_id: str) -> list[store.DoneEntry]:
    client = store.connect(settings)
    try:
        return [entry for _, fields in client.xrange(store.run_stream_key(run_id))
                for entry in store.read_done_entries(fields)]
    finally:
        client.close()


def child_env(settings: Settings) -> dict[str, str]:
    """The environment of a paysim child process, as run_paysim gives it."""
    env = {k: v for k, v in os.environ.items() if not k.startswith("PAYSIM_")}
    env.update(settings_env(settings))
    return env


class Lines:
    """A child's output, read line by line on a thread, so a test can wait on what it says
    (and a full pipe never blocks the child)."""

    def __init__(self, stream: IO[str]) -> None:
        self.lines: list[str] = []
        self._thread = threading.Thread(target=self._read, args=(stream,), daemon=True)
        self._thread.start()

    def _read(self, stream: IO[str]) -> None:
        for line in stream:
            self.lines.append(line)

    def saying(self, text: str) -> bool:
        return any(text in line for line in self.lines)

    def text(self) -> str:
        self._thread.join(10)
        return "".join(self.lines)


def start_send(settings: Settings, *args: str) -> tuple[subprocess.Popen[str], Lines, Lines]:
    """`paysim send --json` in the background: the child, its stdout and its stderr."""
    child = subprocess.Popen([sys.executable, "-m", "paysim", "send", "--json", *args],
                             stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
                             env=child_env(settings))
    return child, Lines(child.stdout), Lines(child.stderr)  # type: ignore[arg-type]


def heartbeats(settings: Settings) -> dict[str, store.Heartbeat]:
    """The services' fresh heartbeats, by instance name."""
    client = store.connect(settings)
    try:
        return store.read_heartbeats(client)
    finally:
        client.close()


def notified(settings: Settings) -> int:
    """Payments the notifiers have finished, by their heartbeats (all runs, since they
    started): a run's progress is how much this grew since before it."""
    return sum(beat.processed for beat in heartbeats(settings).values()
               if beat.service == NOTIFIER.name)


def notified_so_far(settings: Settings) -> int:
    """notified(), from heartbeats written after this call: every payment finished before
    it is counted. (A heartbeat is up to a second old; one from before the end of the last
    run would count that run's tail as progress of the next.) A notifier writes its heartbeat
    between batches, so one written after now includes the batch in progress now."""
    now = time.time()
    assert wait_until(lambda: any(beat.service == NOTIFIER.name for beat in
                                  heartbeats(settings).values()) and all(
        beat.seen_at > now for beat in heartbeats(settings).values()
        if beat.service == NOTIFIER.name), timeout=30), heartbeats(settings)
    return notified(settings)


class Progress:
    """Payments the notifiers finished since this was made, by their heartbeats, as a count
    that never goes back: a notifier killed and restarted counts from 0 again, so each process
    keeps the most it reported. A read that fails (Redis restarting) keeps the last count."""

    def __init__(self, settings: Settings) -> None:
        self.settings = settings
        self._most: dict[int, int] = {}  # by notifier pid
        self._beats: dict[str, store.Heartbeat] = {}
        notified_so_far(settings)  # every payment finished before now is in the heartbeats
        self._read()
        self._start = sum(self._most.values())

    def _read(self) -> None:
        try:
            self._beats = heartbeats(self.settings)
        except redis.RedisError:
            return
        for beat in self._beats.values():
            if beat.service == NOTIFIER.name:
                self._most[beat.pid] = max(self._most.get(beat.pid, 0), beat.processed)

    def count(self) -> int:
        self._read()
        return sum(self._most.values()) - self._start

    def caught_up(self, lag: int) -> bool:
        """Every pipeline service is up, none with more than ``lag`` records waiting."""
        self._read()
        up = {beat.service: beat.lag for beat in self._beats.values()
              if beat.service in PIPELINE_NAMES}
        return set(up) == set(PIPELINE_NAMES) and max(up.values()) <= lag


R = TypeVar("R")


def send_with_faults(settings: Settings, faults: Sequence[tuple[int, Callable[[], R]]],
                     *args: str, settle_lag: int | None = None,
                     interrupt_after: int | None = None,
                     ) -> tuple[subprocess.CompletedProcess[str], list[R]]:
    """`paysim send --json` with ``args``, and each ``(after, fault)`` called in turn once
    ``after`` more payments of the run were notified (counted from the end of the fault
    before) and, with ``settle_lag``, no service has more than that many records waiting:
    on the run's progress, not on a time since launch, which a slow start or a slow recovery
    would make miss the run. Fails when the run ends before a fault. With
    ``interrupt_after``, the run is interrupted (SIGINT: it stops sending, waits for what is
    in flight and reports) once that many more payments were notified after the last fault.
    Returns the finished send and what each fault returned."""
    progress = Progress(settings)
    child, stdout, stderr = start_send(settings, *args)

    def progressed(after: int, what: str) -> None:
        target = progress.count() + after
        reached = wait_until(lambda: child.poll() is not None or (
            progress.count() >= target
            and (settle_lag is None or progress.caught_up(settle_lag))), 120)
        assert reached and child.poll() is None, (
            f"{what}: {after - target + progress.count()} of {after} payments notified; "
            f"{stderr.text()[-2000:]}")

    results: list[R] = []
    try:
        for number, (after, fault) in enumerate(faults, 1):
            progressed(after, f"fault {number} of {len(faults)} not injected")
            results.append(fault())
        if interrupt_after is not None:
            progressed(interrupt_after, "not interrupted")
            child.send_signal(signal.SIGINT)
        child.wait(420)
    finally:
        if child.poll() is None:
            child.kill()
    return (subprocess.CompletedProcess(child.args, child.returncode, stdout.text(),
                                        stderr.text()), results)


def send_with_fault(settings: Settings, after: int, fault: Callable[[], object],
                    *args: str) -> subprocess.CompletedProcess[str]:
    """send_with_faults with one fault."""
    return send_with_faults(settings, [(after, fault)], *args)[0]
